--- stage gate — the logit verifier: on the same token inputs, the target's logits must match
--- the reference's at the target's dtype within dtype-aware tolerances. One bool an automation
--- loop can iterate against; NaN or Inf anywhere in the target never passes.
local core = require("parity.core")
local bundle = require("parity.bundle")
local lm = require("parity.lm")
local validate = require("parity.validate")

local M = {}
--- M.run's result (docs/cli.md, "gate"); `parity gate --json` writes it.
---@class parity.GateResult
---@field stage "gate"
---@field reference string
---@field target string
---@field dtype string the dtype compared at
---@field inputs table {file, shape}, or {random = true, shape, seed, vocab}
---@field tolerances {rtol: number, atol: number, defaults_for: string}
---@field pass boolean
---@field verdict "equivalent"|"divergent"
---@field allclose parity.AllcloseResult
---@field rel_l2 number
---@field cosine number
---@field worst_positions table[] {batch, position, token, max_abs_diff, vocab_index, target, reference}...
---@field padded {columns: integer, wins: integer, positions: integer}|nil a padded LM head's columns
---@field vocab integer
---@field patches table[]|nil the patch files the target computed with ({file, sha256, components})

--- Default tolerances per dtype (allclose: |t - r| <= atol + rtol |r|), for whole-model logits.
M.TOLERANCES = {
  fp32 = { rtol = 1e-4, atol = 1e-4 },
  bf16 = { rtol = 2e-2, atol = 2e-2 },
  fp16 = { rtol = 2e-3, atol = 2e-3 },
}

--- The positions (batch, seq) with the largest |t - r| over the vocabulary, worst first.
local function worst_positions(t, r, tokens, count)
  local diff = (t - r):abs()
  local per_pos = diff:amax(-1):nan_to_num(math.huge)  -- a NaN position sorts first
  local seq = per_pos:size(1)
  local n = math.min(count, per_pos:numel())
  local values, index = per_pos:flatten():topk(n)
  local out = core.json.array()
  for i = 0, n - 1 do
    local flat = index:select(0, i):item()
    local b, s = math.floor(flat / seq), flat % seq
    local v = diff:select(0, b):select(0, s):nan_to_num(math.huge):argmax():item()
    out[#out + 1] = {
      batch = b, position = s, token = tokens:select(0, b):select(0, s):item(),
      max_abs_diff = values:select(0, i):item(), vocab_index = v,
      target = t:select(0, b):select(0, s):select(0, v):item(),
      reference = r:select(0, b):select(0, s):select(0, v):item(),
    }
  end
  return out
end

---@class parity.GateOptions
---@field reference string|parity.Bundle
---@field target string|parity.Bundle|parity.Saved  a model, or the logits a foreign engine saved
---@field dtype string|nil    default: fp32 when the target has it, else its first dtype
---@field batch integer|nil   default 2
---@field seq integer|nil     default 32
---@field seed integer|nil    default 0
---@field inputs string|nil   token ids from a .safetensors file instead of random ones
---@field atol number|nil
---@field rtol number|nil
---@field vocab_size integer|nil  overrides what the bundles say
---@field patches string[]|nil     patch files the target computes with (parity.patches)
---@field device string|nil   where the models run: "cpu" (default) or "cuda[:N]"
---@field reference_device string|nil  the reference's device, when it differs (default: device)

--- Runs the gate; returns the result table (see docs/cli.md, "gate").
---@param opts parity.GateOptions
---@return parity.GateResult
function M.run(opts)
  local max = validate.MAX
  validate.settings(opts, { batch = { "integer", 1, max.rows }, seq = { "integer", 1, max.tokens },
    seed = { "integer", 0, max.seed }, atol = { "number", 0, math.huge }, rtol = { "number", 0, math.huge },
    vocab_size = { "integer", 1, max.vocab } })
  local ref, target = bundle.open(opts.reference, opts.reference_device or opts.device),
    bundle.open_target(opts.target, opts.device)
  local sets = {}
  for i, file in ipairs(opts.patches or {}) do sets[i] = require("parity.patches").load_file(file) end
  if #sets > 0 then
    if target.saved then error(("%s: saved logits cannot be patched: patch the model that computes them"):format(
      target.saved), 0) end
    if type(opts.target) == "table" then target = bundle.open_target(target.path, opts.device) end  -- not the caller's
    target:patch(sets)
  end
  -- saved logits are compared with the reference's fp32 ones unless told otherwise
  local dtype = opts.dtype or ((target.saved or target:has("fp32")) and "fp32" or target:dtypes()[1])
  local tol = M.TOLERANCES[dtype]
  if not tol then error(("unknown dtype '%s' (use fp32, bf16 or fp16)"):format(dtype), 0) end
  local vocab = lm.shared_vocab(ref, target, opts.vocab_size)
  local batch, seq, seed = opts.batch or 2, opts.seq or 32, opts.seed or 0
  if target.saved and not opts.inputs and not target.input_ids then
    error(("%s: pass --inputs FILE, the token ids its engine ran (e.g. from parity inputs)"):format(target.saved), 0)
  end
  local tokens = opts.inputs and lm.tokens_from_file(opts.inputs, vocab)
    or target.input_ids and lm.check_tokens(target.input_ids, vocab, target.path)
    or lm.random_tokens(vocab, batch, seq, seed)
  local from = opts.inputs or target.path
  validate.integer(("%s: rows of token ids"):format(from), tokens:size(0), 1, max.rows)
  validate.integer(("%s: tokens a row"):format(from), tokens:size(1), 1, max.tokens)
  lm.check_size({ ref, target }, tokens:size(0), tokens:size(1), vocab, 4)
  local r = lm.forward(ref, dtype, tokens)
  local t, padded = lm.fit_vocab(lm.forward(target, dtype, tokens), vocab, r:size(2))  -- padding: past the reference's
  r = lm.fit_vocab(r, vocab)
  lm.check_shape(t, r:size(), ref.path, target.path)

  local rtol, atol = opts.rtol or tol.rtol, opts.atol or tol.atol
  local ac = core.metrics.allclose(t, r, { rtol = rtol, atol = atol })
  -- a padded LM head whose extra rows win the argmax anywhere fails (the comparison leaves them out)
  local pass = ac.pass and not (padded and padded.wins > 0)  -- never with a NaN or Inf on either side
  return {
    stage = "gate",
    reference = ref.path,
    target = target.path,
    dtype = dtype,
    inputs = (opts.inputs or target.input_ids) and { file = opts.inputs or target.path, shape = tokens:size() }
      or { random = true, shape = tokens:size(), seed = seed, vocab = vocab },
    tolerances = { rtol = rtol, atol = atol, defaults_for = dtype },
    pass = pass,
    verdict = pass and "equivalent" or "divergent",
    allclose = ac,
    rel_l2 = core.metrics.rel_l2(t, r),
    cosine = core.metrics.cosine(t, r),
    worst_positions = worst_positions(t, r, tokens, 5),
    padded = padded,
    vocab = vocab,
    patches = #sets > 0 and require("parity.patches").describe(sets, target.patched) or nil,
  }
end

--- The terminal summary of a gate result.
---@param g parity.GateResult
---@return string
function M.summary(g)
  local ac = g.allclose
  local lines = {
    ("parity gate: reference %s, target %s at %s on %s tokens"):format(g.reference, g.target, g.dtype,
      table.concat(g.inputs.shape, " x ")),
    ("%s  allclose(rtol=%g, atol=%g): %d of %d logits outside"):format(
      ac.pass and "PASS" or "FAIL", g.tolerances.rtol, g.tolerances.atol, ac.n_fail, ac.numel),
    (ac.target_non_finite.nan + ac.target_non_finite.inf + ac.reference_non_finite.nan + ac.reference_non_finite.inf > 0)
      and "  no tolerance would pass: NaN/Inf in the logits"
      or ("  would pass with atol >= %.3g (at rtol %g) or rtol >= %.3g (at atol %g)"):format(
        ac.min_atol, g.tolerances.rtol, ac.min_rtol, g.tolerances.atol),
    ("  max |diff| %.3g, rel L2 %.3g, cosine %.8f"):format(ac.max_abs_diff, g.rel_l2, g.cosine),
  }
  for i, p in ipairs(g.patches or {}) do
    table.insert(lines, 1 + i, ("  patched with %s: %d components"):format(p.file, #p.components))
  end
  if g.padded then
    lines[#lines + 1] = ("%s  padded vocabulary: the target's %d columns past %d left out; one of them wins the argmax at %d of"
      .. " %d positions"):format(g.padded.wins == 0 and "pass" or "FAIL", g.padded.columns, g.vocab,
      g.padded.wins, g.padded.positions)
  end
  local nf_t, nf_r = ac.target_non_finite, ac.reference_non_finite
  if nf_t.nan + nf_t.inf + nf_r.nan + nf_r.inf > 0 then
    lines[#lines + 1] = ("  non-finite: target %d NaN %d Inf, reference %d NaN %d Inf"):format(
      nf_t.nan, nf_t.inf, nf_r.nan, nf_r.inf)
  end
  lines[#lines + 1] = "  worst positions (batch, position: token -> vocab index: target vs reference):"
  for _, w in ipairs(g.worst_positions) do
    lines[#lines + 1] = ("    (%d, %d: %d) -> %d: %.6g vs %.6g  |diff| %.3g"):format(
      w.batch, w.position, w.token, w.vocab_index, w.target, w.reference, w.max_abs_diff)
  end
  return table.concat(lines, "\n")
end

return M
