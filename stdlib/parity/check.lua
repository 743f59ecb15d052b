--- parity.check{...} — the default workflow, end-to-end part: teacher-forced 3-tensor
--- comparison (stage e2e) and greedy liveness (stage smoke), judged by the gates. Each stage's
--- JSON is written to the results directory as soon as it exists; verdict.json comes last.
local core = require("parity.core")
local bundle = require("parity.bundle")
local lm = require("parity.lm")
local thresholds = require("parity.thresholds")
local validate = require("parity.validate")

local M = {}

local FORMAT = 1  -- bump when what the reference cache stores changes

---@class parity.CheckOptions
---@field reference string|parity.Bundle
---@field target string|parity.Bundle
---@field dtype string|nil         low precision under test (default "bf16")
---@field prompts integer|nil      K prompts (default 4)
---@field prompt_len integer|nil   P tokens a prompt (default 16)
---@field new_tokens integer|nil   N greedy tokens (default 16)
---@field seed integer|nil         seed of the random prompts (default 0)
---@field inputs string|nil        prompts from a .safetensors file instead (input_ids [K, P])
---@field topk integer|nil         k of top-k agreement (default 5)
---@field vocab_size integer|nil   overrides what the bundles say
---@field thresholds table|nil     overrides of parity.thresholds.DEFAULTS
---@field thresholds_file string|nil  a Lua file returning such a table (run sandboxed)
---@field out string|nil           results directory (default "parity-results")
---@field cache boolean|nil        reuse reference outputs from disk (default true)
---@field cache_dir string|nil     default $XDG_CACHE_HOME/parity or ~/.cache/parity
---@field log fun(msg: string)|nil progress lines (default: print)

local function default_cache_dir()
  local xdg = os.getenv("XDG_CACHE_HOME")
  if xdg and xdg ~= "" then return xdg .. "/parity" end
  return (os.getenv("HOME") or "/tmp") .. "/.cache/parity"
end

--- The cache key: the reference's files, the inputs and every setting the outputs depend on.
local function cache_key(ref, dtype, s, prompts)
  local files = {}
  for _, d in ipairs({ "fp32", dtype }) do files[d] = core.hash_file(ref.files[d]) end
  if ref.manifest then files.manifest = core.hash_string(core.json.encode(ref.manifest)) end
  local prompt_hash = core.hash_string(core.json.encode(prompts:tolist()))
  return core.hash_string(core.json.encode({
    format = FORMAT, files = files, dtype = dtype, new_tokens = s.new_tokens, prompts = prompt_hash,
  }))
end

--- The reference side: fp32 greedy sequences, then teacher-forced logits at fp32 and `dtype`.
local function reference_outputs(ref, dtype, prompts, n)
  local seqs = lm.greedy(ref, "fp32", prompts, n)
  local p = prompts:size(1)
  local function at_positions(logits) return logits:narrow(1, p - 1, n):contiguous() end
  return {
    sequences = seqs,
    ref32 = at_positions(lm.forward(ref, "fp32", seqs)),
    ref_low = at_positions(lm.forward(ref, dtype, seqs)),
  }
end

local function load_cached(path)
  if core.path_kind(path) ~= "file" then return nil end
  local ok, t = pcall(core.tensors.load, path)
  if ok and t.sequences and t.ref32 and t.ref_low then return t end
  return nil, ok and "incomplete" or tostring(t)
end

local function gates(e, th, non_finite)
  local function gate(name, value, rule, pass)
    return { name = name, value = value, threshold = th[name] or 0, rule = rule, pass = pass }
  end
  local bad = non_finite.nan + non_finite.inf
  return {
    gate("finite", bad, "no NaN/Inf in the target's logits", bad == 0),
    gate("r_p95", e.r_ratio.p95, ("R p95 < %g"):format(th.r_p95), e.r_ratio.p95 < th.r_p95),
    gate("cosine_p5", e.cosine.p5, ("cosine p5 >= %g"):format(th.cosine_p5), e.cosine.p5 >= th.cosine_p5),
    gate("kl_p95", e.kl.p95, ("KL p95 <= %g"):format(th.kl_p95), e.kl.p95 <= th.kl_p95),
    gate("top1", e.top1_ties_excluded.rate, ("top-1 agreement (near-ties excluded) > %g"):format(th.top1),
      e.top1_ties_excluded.rate > th.top1),
  }
end

--- Replaces the results in `out` by an "error" verdict.json saying `why` (so that a run which
--- dies before writing its own verdict never leaves an earlier one behind), removes the stage
--- files and the temporary files of killed runs.
---@param out string
---@param why string
function M.mark_unfinished(out, why)
  core.remove_stale_temps(out)
  for _, f in ipairs({ "smoke.json", "e2e.json" }) do os.remove(out .. "/" .. f) end
  core.json.write(out .. "/verdict.json", { verdict = "error", error = why })
end

--- Runs the check; writes smoke.json, e2e.json and verdict.json under opts.out; returns the
--- verdict table. Input errors raise (after writing verdict.json with verdict "error").
---@param opts parity.CheckOptions
---@return table
function M.run(opts)
  local out = opts.out or "parity-results"
  local log = opts.log or print
  M.mark_unfinished(out, "this run did not finish (still running, or killed)")
  local ok, result = pcall(function()
    local max = validate.MAX
    validate.settings(opts, { prompts = { "integer", 1, max.rows }, prompt_len = { "integer", 1, max.tokens },
      new_tokens = { "integer", 1, max.new_tokens }, seed = { "integer", 0, max.seed },
      topk = { "integer", 1, max.topk }, vocab_size = { "integer", 1, max.vocab } })
    local ref, target = bundle.open(opts.reference), bundle.open(opts.target)
    local dtype = opts.dtype or "bf16"
    if dtype ~= "bf16" and dtype ~= "fp16" then
      error(("check compares a low precision with fp32: --dtype must be bf16 or fp16, got %s"
        .. " (for fp32 logits use parity gate)"):format(tostring(dtype)), 0)
    end
    local th = thresholds.resolve(opts.thresholds_file and thresholds.load_file(opts.thresholds_file) or opts.thresholds)
    local s = {
      prompts = opts.prompts or 4, prompt_len = opts.prompt_len or 16, new_tokens = opts.new_tokens or 16,
      seed = opts.seed or 0, topk = opts.topk or 5,
    }
    for _, d in ipairs({ "fp32", dtype }) do ref:at(d) end  -- fail early on a missing trace
    target:at(dtype)
    local vocab = lm.shared_vocab(ref, target, opts.vocab_size)
    local prompts = opts.inputs and lm.tokens_from_file(opts.inputs, vocab)
      or lm.random_tokens(vocab, s.prompts, s.prompt_len, s.seed)
    s.prompts, s.prompt_len = prompts:size(0), prompts:size(1)
    validate.integer("prompts", s.prompts, 1, validate.MAX.rows)
    validate.integer("prompt_len + new_tokens", s.prompt_len + s.new_tokens, 2, validate.MAX.tokens)
    validate.integer("topk", s.topk, 1, math.min(vocab, validate.MAX.topk))
    lm.check_size({ ref, target }, s.prompts, s.prompt_len + s.new_tokens, vocab, 5)

    -- reference outputs, from the cache when the same reference, inputs and settings ran before
    local t0 = os.clock()
    local key = cache_key(ref, dtype, s, prompts)
    local cache_path = (opts.cache_dir or default_cache_dir()) .. "/" .. key .. ".safetensors"
    local r, why
    if opts.cache ~= false then r, why = load_cached(cache_path) end
    if r then
      log(("reference: from cache %s (%.2f s CPU)"):format(cache_path, os.clock() - t0))
    else
      r = reference_outputs(ref, dtype, prompts, s.new_tokens)
      if opts.cache ~= false then
        core.tensors.save(cache_path, r, { format = tostring(FORMAT) })
        log(("reference: computed in %.2f s CPU%s, cached as %s"):format(os.clock() - t0,
          why and (" (cache unreadable: " .. why .. ")") or "", cache_path))
      else
        log(("reference: computed in %.2f s CPU (cache off)"):format(os.clock() - t0))
      end
    end

    -- the target, teacher-forced on the reference's sequences (checked before anything is judged)
    local p = prompts:size(1)
    local t = lm.forward(target, dtype, r.sequences)
    lm.check_shape(t, { r.sequences:size(0), r.sequences:size(1), r.ref32:size(2) }, ref.path, target.path)
    local non_finite = core.metrics.non_finite(t)  -- anywhere, not only at the judged positions
    t = t:narrow(1, p - 1, s.new_tokens):contiguous()

    local ctx = { target = target, dtype = dtype, prompts = prompts, sequences = r.sequences, thresholds = th }
    local smoke = require("parity.stages.smoke").run(ctx)
    core.json.write(out .. "/smoke.json", smoke)
    core.collect()

    local e2e = require("parity.stages.e2e").run({
      ref32 = r.ref32, ref_low = r.ref_low, target = t, tokens = r.sequences:narrow(1, p, s.new_tokens),
      topk = math.min(s.topk, vocab), thresholds = th, dtype = dtype,
    })
    core.json.write(out .. "/e2e.json", e2e)
    core.collect()

    local g = gates(e2e, th, non_finite)
    local failed = {}
    for _, x in ipairs(g) do
      if not x.pass then failed[#failed + 1] = x.name end
    end
    local verdict = {
      verdict = #failed == 0 and "equivalent" or "divergent",
      reference = ref.path, target = target.path, dtype = dtype,
      settings = s, inputs = opts.inputs or core.json.null,
      thresholds = th,
      gates = g,
      failed_gates = core.json.array(failed),
      target_non_finite = non_finite,
      smoke = { match_rate = smoke.match_rate, live = smoke.live },
      e2e = { positions = e2e.positions, r_ratio = e2e.r_ratio, cosine = e2e.cosine, kl = e2e.kl,
              kl_baseline = e2e.kl_baseline, delta_p = e2e.delta_p, top1 = e2e.top1,
              top1_ties_excluded = e2e.top1_ties_excluded, topk = e2e.topk, ties = e2e.ties.count },
      stages = { "smoke", "e2e" },
    }
    core.json.write(out .. "/verdict.json", verdict)
    return verdict
  end)
  if ok then return result end
  local msg = require("parity.errors").clean(result)
  pcall(core.json.write, out .. "/verdict.json", {
    verdict = "error", error = msg,
    reference = type(opts.reference) == "string" and opts.reference or opts.reference.path,
    target = type(opts.target) == "string" and opts.target or opts.target.path,
  })
  error(msg, 0)
end

--- The terminal summary of a check.
---@param v table the verdict parity.check returned
---@param out string the results directory, for the last line
---@return string
function M.summary(v, out)
  local e = v.e2e
  local lines = {
    ("parity check: %s vs %s at %s, %d prompts x %d new tokens (teacher-forced)"):format(
      v.target, v.reference, v.dtype, v.settings.prompts, v.settings.new_tokens),
    ("  smoke   greedy match %.1f%%%s"):format(100 * v.smoke.match_rate, v.smoke.live and "" or "  (below liveness)"),
  }
  local function d(x) return ("p5 %.4g  p50 %.4g  p95 %.4g  max %.4g"):format(x.p5, x.p50, x.p95, x.max) end
  lines[#lines + 1] = "  R       " .. d(e.r_ratio)
  lines[#lines + 1] = "  cosine  " .. d(e.cosine)
  lines[#lines + 1] = "  KL      " .. d(e.kl) .. ("   (reference's own: p95 %.4g)"):format(e.kl_baseline.p95)
  lines[#lines + 1] = "  delta p " .. d(e.delta_p)
  lines[#lines + 1] = ("  top-1   %.1f%% ± %.1f%% (%d near-ties excluded; %.1f%% with them)   top-%d %.1f%%"):format(
    100 * e.top1_ties_excluded.rate, 100 * e.top1_ties_excluded.stderr, e.ties, 100 * e.top1.rate,
    e.topk.k, 100 * e.topk.rate)
  for _, g in ipairs(v.gates) do
    lines[#lines + 1] = ("  %s  %-46s %.4g"):format(g.pass and "pass" or "FAIL", g.rule, g.value)
  end
  lines[#lines + 1] = ("verdict: %s%s   (results in %s/)"):format(v.verdict:upper(),
    #v.failed_gates > 0 and (" — failed: " .. table.concat(v.failed_gates, ", ")) or "", out)
  return table.concat(lines, "\n")
end

return M
