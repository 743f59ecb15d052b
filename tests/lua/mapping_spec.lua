-- parity.mapping: automatic mapping from weights, the Lua format, {i} expansion, validation; and
-- component tests through a mapping on a differently structured port.
local spec = require("parity.spec")
local mapping = require("parity.mapping")
local weights = require("parity.weights")
local describe, it, eq, truthy, raises = spec.describe, spec.it, spec.eq, spec.truthy, spec.raises
local fx = assert(arg[1], "usage: mapping_spec.lua FIXTURES_DIR")
local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p " .. tmp)

local ref, port = parity.load(fx .. "/reference/fp32.pt"), parity.load(fx .. "/port_fused/fp32.pt")

local function by_target(entries)
  local out = {}
  for _, e in ipairs(entries) do out[e.target] = e end
  return out
end

describe("mapping", function()
  it("proposes one from the weights: equal, stacked (fused q/k/v, gate/up) and containers", function()
    local entries, unmapped = weights.auto(ref, port)
    local t = by_target(entries)
    eq(t["tok_emb"].reference, "model.embed_tokens")
    eq(t["blocks.1.attn.qkv_proj"], { reference = { "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
      "model.layers.1.self_attn.v_proj" }, target = "blocks.1.attn.qkv_proj", transform = "concat" })
    eq(t["blocks.0.ffn.gate_up_proj"].reference, { "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj" })
    eq(t["final_norm"].reference, "model.norm")
    eq(t["blocks.0"].reference, "model.layers.0")
    eq(t["blocks.0.attn"].reference, "model.layers.0.self_attn")
    eq(t["blocks.1.ffn.act"].reference, "model.layers.1.mlp.act_fn", "a module without weights, by its type")
    eq(#unmapped, 0)
  end)

  it("round-trips through its Lua file, sandboxed", function()
    local entries, unmapped = weights.auto(ref, port)
    local f = assert(io.open(tmp .. "/m.lua", "w"))
    f:write(mapping.to_lua(entries, unmapped))
    f:close()
    eq(mapping.load_file(tmp .. "/m.lua"), entries)
  end)

  it("expands {i} over the layers the reference has, in execution order", function()
    local pairs_ = mapping.expand({
      { reference = { "model.layers.{i}.mlp.gate_proj", "model.layers.{i}.mlp.up_proj" }, target = "blocks.{i}.ffn.gate_up_proj",
        transform = "concat" },
      { reference = "model.embed_tokens", target = "tok_emb" },
      { reference = "model.rotary_emb", target = false, reason = "the port computes RoPE in each layer" },
    }, ref:modules(), port:modules())
    eq(#pairs_, 3)
    eq({ pairs_[1].target, pairs_[2].target, pairs_[3].target }, { "tok_emb", "blocks.0.ffn.gate_up_proj", "blocks.1.ffn.gate_up_proj" })
    eq(pairs_[3].reference, { "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj" })
  end)

  it("interleaves a rotate-half projection's rows per head, and finds the head size from the weights", function()
    eq(weights.interleave(torch.arange(8), 4):tolist(), { 0, 2, 1, 3, 4, 6, 5, 7 })
    eq(weights.interleave(torch.arange(10), 4, 0, 8):tolist(), { 0, 2, 1, 3, 4, 6, 5, 7, 8, 9 }, "the leading rows only")
    local rw = torch.randn({ 12, 5 }, { seed = 3 })
    eq({ weights.interleaved_head_dim(weights.interleave(rw, 4), rw) }, { 4 })
    eq({ weights.interleaved_head_dim(weights.interleave(rw, 4, 0, 8), rw) }, { 4, 8 })
    eq(weights.interleaved_head_dim(rw * 1.5, rw), nil, "a scaled weight is no permutation")
  end)

  it("refuses malformed entries, naming the entry", function()
    raises(function() mapping.validate({ { reference = "a", target = 3 } }, "m") end, "m: entry 1: target must be a path or false")
    raises(function() mapping.validate({ { reference = { "a", "b" }, target = "c" } }, "m") end,
      "entry 1: several reference paths need transform = \"concat\"")
    raises(function() mapping.validate({ { reference = "a", target = false } }, "m") end, "needs a reason")
    raises(function() mapping.validate({ { reference = "a", target = "b", transform = "rot" } }, "m") end, "unknown transform 'rot'")
    raises(function() mapping.validate({ { reference = "a", target = "b", interleave = { head_dim = 3 } } }, "m") end,
      "interleave = { head_dim = <an even number>")
    raises(function() mapping.validate({ { reference = "a", target = "b", interleave = { head_dim = 4, parts = { 2 } } } }, "m") end,
      "interleave.parts must index the reference paths (1..1)")
  end)
end)

describe("static weight relations", function()
  local a, b, c = torch.randn({ 2, 4 }, { seed = 1 }), torch.randn({ 3, 4 }, { seed = 2 }), torch.randn({ 4, 4 }, { seed = 3 })
  it("tells equal, transposed, reordered, scaled and different apart", function()
    eq(weights.relation(torch.cat({ a, b }, 0), { a, b }).relation, "equal")
    eq(weights.relation(c:t():contiguous(), { c }).relation, "transposed")
    eq(weights.relation(torch.cat({ b, a }, 0), { a, b }), { relation = "reordered", order = { 2, 1 } })
    local s = weights.relation(c * 1.05, { c })
    eq(s.relation, "scaled")
    truthy(math.abs(s.value - 1.05) < 1e-6, "c fitted")
    eq(weights.relation(c + torch.randn({ 4, 4 }, { seed = 4 }) * 0.1, { c }).relation, "different")
    eq(weights.relation(c, { c }).relation, "equal", "a square weight equal to itself is not 'transposed'")
  end)
end)

describe("the reference's weights as fingerprints", function()
  local rw = torch.randn({ 8, 6 }, { seed = 5 })
  local fp = weights.fingerprint_of(rw)
  local function needs(f)
    local ok, err = pcall(f)
    eq({ ok, err }, { false, weights.NEEDS_WEIGHTS })
  end
  it("finds equal what the weights find equal, and leaves the rest to the weights", function()
    eq(weights.relation(rw:clone(), { fp }).relation, "equal")
    eq(weights.relation(rw + 1e-7, { fp }).relation, "equal", "within the weight tolerance")
    local a, b = torch.randn({ 2, 4 }, { seed = 1 }), torch.randn({ 3, 4 }, { seed = 2 })
    eq(weights.relation(torch.cat({ a, b }, 0), { weights.fingerprint_of(a), weights.fingerprint_of(b) }).relation, "equal")
    needs(function() weights.relation(torch.cat({ b, a }, 0), { weights.fingerprint_of(a), weights.fingerprint_of(b) }) end)
    local one = rw + torch.arange(48):reshape({ 8, 6 }):eq(20):float() * 1e-3  -- one element off
    needs(function() weights.relation(one, { fp }) end)
    needs(function() weights.relation(rw * 1.01, { fp }) end)
    needs(function() weights.relation(rw:t():contiguous(), { weights.fingerprint_of(rw:narrow(0, 0, 6)) }) end)
    local v = torch.randn({ 5 }, { seed = 6 })
    eq(weights.relation(v:clone(), { weights.fingerprint_of(v) }).relation, "equal", "a 1-D weight: its values")
    needs(function() weights.relation(v + 1e-4, { weights.fingerprint_of(v) }) end)
    eq(weights.interleaved_head_dim(torch.randn({ 8, 6 }, { seed = 7 }), fp), nil, "not its rows: no layout to find")
    needs(function() weights.interleaved_head_dim(weights.interleave(rw, 4), fp) end)
  end)

  it("pairs a port as its weights do, also read back from their cache entry", function()
    local exact = weights.auto(ref, port)
    local s = weights.summary(ref)
    eq(weights.auto(s, port), exact)
    local captures = require("parity.captures")
    local t, index = weights.encode_summary(s)
    local back = weights.decode_summary(t, captures.tensor_json(captures.json_tensor(index)))
    eq(weights.auto(back, port), exact)
    eq(back:modules(), ref:modules())
    eq(weights.decode_summary(t, captures.tensor_json(torch.tensor({ 1, 2 }))), nil, "not an index")
    eq(weights.decode_summary({}, index), nil, "not its tensors")
  end)
end)

describe("components through a mapping", function()
  local function check(target, extra)
    local opts = { reference = fx .. "/reference", target = fx .. "/" .. target, out = tmp .. "/" .. target,
                   cache_dir = tmp .. "/cache", log = function() end, prompts = 2, new_tokens = 8 }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return parity.check(opts)
  end

  it("maps the fused port from its weights and finds every component clean", function()
    local v = check("port_fused", { sweep = "full" })  -- every one: the fused q/k/v inside a clean attention too
    eq({ v.verdict, v.summaries.scaffold.mapping, v.first_divergence }, { "equivalent", "auto", nil })
    truthy(parity.path_kind(tmp .. "/port_fused/scaffold/mapping.lua") == "file", "the proposal is on disk")
    local c = parity.json.read(tmp .. "/port_fused/components.json")
    local qkv
    for _, row in ipairs(c.components) do
      if row.target == "blocks.0.attn.qkv_proj" then qkv = row end
    end
    eq({ qkv.transform, qkv.isolated }, { "concat", true })
    truthy(qkv.r32 < 1e-4, "fused q/k/v equal the reference's three, concatenated")
  end)

  it("uses a given mapping file, with {i}", function()
    local f = assert(io.open(tmp .. "/given.lua", "w"))
    f:write([[return {
      { reference = "model.layers.{i}.input_layernorm", target = "blocks.{i}.attn_norm" },
      { reference = "model.layers.{i}.mlp.down_proj", target = "blocks.{i}.ffn.down_proj" },
    }]])
    f:close()
    local v = check("bug_eps", { mapping_file = tmp .. "/given.lua" })
    eq(v.summaries.scaffold.mapping, "given")
    eq({ v.first_divergence.reference, v.first_divergence.cause.class }, { "model.layers.0.input_layernorm", "epsilon" })
  end)

  it("refuses a given entry that names no module, naming the entry and the nearest paths", function()
    local ok, err = pcall(mapping.expand, { { reference = "model.norm", target = "final_norm" },
      { reference = "model.layers.{i}.self_atn", target = "blocks.{i}.attn" } }, ref:modules(), port:modules(), "mapping file m.lua")
    eq(ok, false)
    truthy(err:find("^mapping file m.lua: entry 2: the reference has no module 'model.layers.{i}.self_atn' %(nearest:"
      .. " 'model.layers.0.self_attn'"), err)
    ok, err = pcall(mapping.expand, { { reference = "model.norm", target = "blocks.{i}.atn" } }, ref:modules(), port:modules(), "m")
    truthy(not ok and err:find("entry 1: the target has no module 'blocks.{i}.atn' %(nearest: 'blocks.0.attn'"), err)
    ok, err = pcall(mapping.expand, { { reference = "model.norm", target = "final_norm" },
      { reference = "model.norm", target = "final_norm" } }, ref:modules(), port:modules(), "m")
    truthy(not ok and err:find("entry 2: pairs 'model.norm' again %(entry 1"), err)
    ok, err = pcall(mapping.expand, { { reference = "model.ghost", target = false, reason = "x" } }, ref:modules(),
      port:modules(), "m")
    truthy(not ok and err:find("entry 1: the reference has no module 'model.ghost'"), err)
    eq(#mapping.expand({ { reference = "model.ghost", target = "final_norm" } }, ref:modules(), port:modules()), 0,
      "without an origin (a proposal from the weights) such entries pair nothing")
  end)

  it("says missing only of what a given mapping declares absent, and lists what it leaves out", function()
    local f = assert(io.open(tmp .. "/partial.lua", "w"))
    f:write([[return {
      { reference = "model.layers.{i}.self_attn", target = "blocks.{i}.attn" },
      { reference = "model.layers.{i}.mlp", target = "blocks.{i}.ffn" },
      { reference = "model.layers.{i}", target = "blocks.{i}" },
    }]])
    f:close()
    local v = check("bug_eps", { mapping_file = tmp .. "/partial.lua" })
    eq(v.first_divergence.reference, "model.layers.0")
    truthy(v.first_divergence.cause.class ~= "missing", "the norms are left out, not missing: " .. v.first_divergence.cause.class)
    local s = parity.json.read(tmp .. "/bug_eps/scaffold.json")
    truthy(#s.unmapped_reference >= 4, "the norms left unmapped are listed")
    local lines = require("parity.report.terminal").STAGE_LINES.scaffold(v.summaries.scaffold)
    truthy(lines[2] and lines[2]:find("leaves %d+ reference modules with weights unmapped"), lines[2])
  end)

  it("localises bugs inside a differently structured port", function()
    local v = check("bug_eps")
    eq({ v.first_divergence.target, v.first_divergence.cause.class }, { "blocks.0.attn_norm", "epsilon" })
    truthy(math.abs(v.first_divergence.cause.parameter.value / 1e-2 - 1) < 0.01, "eps 1e-2 fitted")
    v = check("bug_rope")  -- inside the port's attention, which takes other inputs than the reference's
    eq({ v.first_divergence.target, v.first_divergence.cause.class }, { "blocks.0.attn", "position" })
    v = check("bug_norm_bf16")
    eq({ v.first_divergence.target, v.first_divergence.cause.class }, { "blocks.0.attn_norm", "precision" })
  end)

  it("catches transposed and mis-ordered fused weights statically, before any forward", function()
    for _, c in ipairs({ { "bug_transposed", "blocks.1.attn.out_proj", "transposed" },
                         { "bug_qkv_order", "blocks.0.attn.qkv_proj", "reordered" } }) do
      local v = check(c[1])
      local s = parity.json.read(tmp .. "/" .. c[1] .. "/scaffold.json").static
      eq({ #s, s[1].target, s[1].relation, s[1].class }, { 1, c[2], c[3], "layout" }, c[1])
      eq({ v.verdict, v.failed[1], v.first_divergence.cause.class }, { "divergent", "static", "layout" }, c[1])
    end
    eq(#parity.json.read(tmp .. "/port_fused/scaffold.json").static, 0, "a correct port: nothing to report")
  end)

  it("checks a port against the cached reference without loading it, unless its weights differ", function()
    local function loaded(name)  -- which bundles' traces the check loaded
      local seen = {}
      for _, f in ipairs(parity.json.read(tmp .. "/" .. name .. "/run.json").forwards.files) do
        seen[f:match("([^/]+)/[^/]+$")] = true
      end
      return seen
    end
    check("port_fused")  -- cached by the cases above
    eq(loaded("port_fused"), { port_fused = true }, "the target's traces alone")
    check("bug_transposed")  -- a weight that differs: how, the reference's own weights say
    eq(loaded("bug_transposed"), { bug_transposed = true, reference = true })
  end)
end)

local rc = spec.run()
os.execute("rm -rf " .. tmp)
return rc
