-- bench/localize.lua — localisation and cause accuracy: parity check on cases whose planted bug
-- is known, and whether the first divergence names the right component and cause class.
-- Dev sets (../shared/hf-devset, ...) give their cases in truth.json: a scaled parameter (its
-- module, scale), a norm eps (the first norm, epsilon), RoPE theta (the rotary embedding,
-- position), experts per token (the first MoE block, routing), a sliding window (the model,
-- whose forward builds the mask: mask), or, for bugs in the forward code
-- (bench/make_codebugs_hf.py), `where` (a Lua pattern on the path) and `cause`.
--   parity run bench/localize.lua [--two-tensor] [--fp32] FIXTURES_DIR [DEVSET_DIR...]
-- --two-tensor judges every case with the 2-tensor baseline, as if the references had no fp32.
-- --fp32 checks every target as an fp32-only port (its fp32.pt alone, check --dtype fp32): a bug
-- of the low precision alone (class precision) is then no bug; with --two-tensor too, against the
-- reference's fp32 reassociation level, as if the references had no low precision.
-- --keep DIR keeps each case's results directory as DIR/<case> (to compare two versions' JSON).
-- --sweep full tests every component (check --sweep full); --max-capture-mb N spills the captures
-- past N MiB (0: all of them) to a file read back a component at a time. Fixture cases are listed below.
local parity = require("parity")
local args = { ... }
local baseline, fp32, keep, sweep, capture_mb
while args[1] == "--two-tensor" or args[1] == "--fp32" or args[1] == "--keep" or args[1] == "--sweep"
  or args[1] == "--max-capture-mb" do
  local flag = table.remove(args, 1)
  if flag == "--fp32" then fp32 = true
  elseif flag == "--keep" then keep = table.remove(args, 1)
  elseif flag == "--sweep" then sweep = table.remove(args, 1)
  elseif flag == "--max-capture-mb" then capture_mb = assert(tonumber(table.remove(args, 1)), "--max-capture-mb N")
  else baseline = "2-tensor" end
end
local fx = args[1]
local cases = {
  -- reference, target, expected component (a Lua pattern on the target path), expected class
  { "reference", "same_eps", "layers%.0%.input_layernorm$", "epsilon" },
  { "reference", "same_theta", "rotary_emb$", "position" },
  { "reference", "same_scale", "layers%.1%.mlp%.down_proj$", "scale" },
  { "reference", "same_residual", "layers%.1$", "residual" },
  { "noisy", "noisy_bug_nobias", "h%.1%.fc$", "missing" },
  { "reference", "bug_eps", "blocks%.0%.attn_norm$", "epsilon" },
  { "reference", "bug_eps_small", "blocks%.0%.attn_norm$", "epsilon" },
  { "reference", "bug_rope", "blocks%.0%.attn$", "position" },
  { "reference", "bug_attn_scale", "blocks%.0%.attn$", "scale" },  -- the scores' temperature: sqrt(16)
  { "reference", "bug_attn_1_over_d", "blocks%.0%.attn$", "scale" },  -- 1/sqrt(16)
  { "reference", "bug_gate_up_swap", "blocks%.0%.ffn$", "layout" },
  { "reference", "bug_attn_residual", "blocks%.0$", "residual" },  -- alpha -1 at ffn_norm's input
  { "reference", "bug_final_norm", "^final_norm$", "missing" },  -- the port never calls it
  { "reference", "bug_emb_scale", "^blocks%.0$", "scale" },  -- x8 at the first block's input
  { "reference", "bug_theta", "blocks%.0%.attn$", "position" },  -- theta x100, a fused q/k/v port
  { "reference", "bug_gqa_tile", "blocks%.0%.attn$", "layout" },  -- kv heads as a tile
  { "reference", "same_norm_nocast", "layers%.0%.input_layernorm$", "precision" },
  { "reference", "bug_norm_nocast", "blocks%.0%.attn_norm$", "precision" },
  { "reference", "bug_norm_bf16", "blocks%.0%.attn_norm$", "precision" },
  { "reference", "bug_qkv_order", "blocks%.0%.attn$", "layout" },  -- the fused weight's rows, found statically
  { "reference", "bug_transposed", "blocks%.1%.attn%.out_proj$", "layout" },
  { "noisy", "noisy_bug_eps", "h%.0%.ln_1$", "epsilon" },
  { "noisy", "noisy_bug_gelu", "h%.0$", "activation" },  -- the GELU is functional, inside the block
  { "reference", "bug_act", "blocks%.0%.ffn%.act$", "activation" },  -- mapped by the fallback (no weights)
  { "reference", "bug_mask", "blocks%.0%.attn$", "mask" },
  { "reference", "bug_rope_weights", "blocks%.0%.attn$", "position" },
  { "sandwich", "reference", "model%.layers%.0$", "missing" },  -- the port lacks the post-feedforward norm
  { "moe", "moe_bug_routing", "layers%.1%.block_sparse_moe$", "routing" },
  { "moe", "moe_bug_expert", "experts%.1%.w2$", "scale" },
  { "moe", "moe_bug_renorm", "layers%.0%.block_sparse_moe$", "routing" },  -- other weights, the same experts
  { "reference", "port_fused" }, { "reference", "port_reorder" }, { "reference", "port_rope_fp32" },
  { "reference", "port_interleaved" }, { "reference", "port_upcast" }, { "port_fused", "port_interleaved" },
  { "noisy", "noisy_port" }, { "moe", "moe" }, { "sandwich", "sandwich_scale" },
}
for i, c in ipairs(cases) do cases[i] = { fx .. "/" .. c[1], fx .. "/" .. c[2], c[3], c[4] } end
for d = 2, #args do  -- dev sets
  local devset = args[d]
  local truth = parity.json.read(devset .. "/truth.json")
  local names = {}
  for name in pairs(truth) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local t, arch = truth[name], name:match("^[^/]+")
    local where, class
    if t.where then  -- a bug in the forward code (bench/make_codebugs_hf.py)
      where, class = t.where, t.cause
    elseif t.params then
      where, class = t.params[1]:gsub("%.weight$", ""):gsub("%.", "%%.") .. "$", "scale"
    elseif t.config and t.config.rope_theta then
      where, class = "rotary_emb$", "position"
    elseif t.config and t.config.num_experts_per_tok then  -- every MoE block routes otherwise: the first
      where, class = "layers%.0%.[%w_]+$", "routing"
    elseif t.config and next(t.config) == "sliding_window" then  -- the mask is built in the model's forward
      where, class = "^m%.model$", "mask"
    elseif t.config then
      where, class = "layers%.0%.input_layernorm$", "epsilon"
    end
    cases[#cases + 1] = { devset .. "/" .. arch .. "/ref", devset .. "/" .. name, where, class }
  end
end
local out = os.tmpname()
local right_place, right_class, bugs, clean_ok, clean = 0, 0, 0, 0, 0
for _, c in ipairs(cases) do
  if fp32 and c[4] == "precision" then c[3], c[4] = nil, nil end  -- none in fp32
  local dir = keep and ("%s/%s"):format(keep, (c[2]:gsub("^.*/([^/]+)/([^/]+)$", "%1_%2"))) or out .. ".d"
  local v = parity.check({ reference = c[1], target = fp32 and c[2] .. "/fp32.pt" or c[2], out = dir,
    log = function() end, baseline = baseline, dtype = fp32 and "fp32" or nil, sweep = sweep, max_capture_mb = capture_mb })
  local f = v.first_divergence  -- absent when there is none
  local got = f and ("%s (%s)"):format(f.target, f.cause.class) or "none"
  local ok
  if c[3] then
    bugs = bugs + 1
    local place = f and f.target:find(c[3]) ~= nil
    local class = f and f.cause.class == c[4]
    right_place, right_class = right_place + (place and 1 or 0), right_class + (class and 1 or 0)
    ok = place and class
  else
    clean = clean + 1
    ok = (not f or f.absorbed) and v.verdict == "equivalent"
    clean_ok = clean_ok + (ok and 1 or 0)
  end
  print(("%-4s %-44s %s%s"):format(ok and "ok" or "MISS", c[2]:sub(-44), got,
    f and f.cause.parameter and (" %s=%s"):format(f.cause.parameter.name,
      type(f.cause.parameter.value) == "number" and ("%.4g"):format(f.cause.parameter.value) or f.cause.parameter.value) or ""))
end
os.execute("rm -rf " .. out .. ".d")
os.remove(out)
print(("planted bugs: %d/%d at the right component, %d/%d with the right cause class; correct ports clean: %d/%d")
  :format(right_place, bugs, right_class, bugs, clean_ok, clean))
return (right_place == bugs and right_class == bugs and clean_ok == clean) and 0 or 1
