--- parity.verdict — turns the stages' results into the verdict and its cause, and is the only
--- writer of verdict.json (the error verdicts included). It owns the judgements that read more
--- than one stage: "exact in fp32" (the fp32 leg ran and passed), the precision-ordering rule (a
--- failing R p95 is a warning when the target is exact in fp32 and only rounds in another order)
--- and the precedence of causes (NaN first, then the first divergent component's, then the two
--- legs'). verdict.json is a documented interface (docs/workflow.md, "verdict.json"): its keys are snapshotted
--- by tests/lua/verdict_keys.txt, and SCHEMA changes when they do.
local core = require("parity.core")
local criteria_table = require("parity.criteria")
local thresholds = require("parity.thresholds")

local M = { SCHEMA = 2 }  -- 2: the verdict "inconclusive", the criteria's intervals
--- M.facts's: what the criteria may know of the whole run.
---@class parity.Facts
---@field absorbed fun(target: string): boolean whether the fault found at (or inside) `target` is absorbed
---@field patched fun(target: string): boolean whether a patch computes `target` (or a module containing it)
--- What M.decide is told of a finished run (parity.workflow builds it from the parity.Context).
---@class parity.RunInfo
---@field out string the results directory
---@field reference string the reference's path
---@field target string the target's path
---@field dtype string the reference's low precision whose noise is the yardstick
---@field target_dtype string the target's precision under test
---@field settings table prompts, prompt_len, new_tokens, seed, topk
---@field inputs string|nil the --inputs file
---@field thresholds parity.Thresholds
---@field patches table[]|nil the patch files applied ({file, sha256, components})
--- verdict.json (docs/workflow.md, "verdict.json"); an error verdict has verdict, error and the
--- schema fields, and the reference and the target when known.
---@class parity.Verdict
---@field verdict "equivalent"|"divergent"|"inconclusive"|"error"
---@field error string|nil what went wrong (an error verdict)
---@field inconclusive string[] the criteria whose resampled interval holds their bound (parity.confidence)
---@field cause parity.Cause|lightuserdata the most specific cause; json.null when equivalent
---@field first_divergence table|nil the localize stage's, when there is one
---@field suspects table[]
---@field reference string
---@field target string
---@field dtype string the target's precision under test
---@field noise_dtype string the reference's precision whose noise is the yardstick
---@field settings table
---@field inputs string|lightuserdata
---@field thresholds parity.Thresholds
---@field criteria parity.CriterionResult[]
---@field failed string[] the failed criteria's names
---@field warnings string[]
---@field skipped {stage: string, reason: string}[]
---@field stages string[] the stages, in the order they ran
---@field summaries table<string, table|lightuserdata> stage name -> its summary
---@field loosened parity.LoosenedThreshold[]
---@field switched_off string[]
---@field criteria_can_fail boolean
---@field patches table[]|nil
---@field confirmation table[]|nil the repairs tried (check --confirm: M.add_confirmation)
---@field schema_version integer M.SCHEMA
---@field parity_version string
---@field libtorch string

--- parity's version and the LibTorch it runs on, from core.version().
local function versions()
  local v = core.version()
  return v:match("^parity (%S+)") or v, v:match("LibTorch ([%w%.%+]+)") or "unknown"
end

--- Writes `v` as `out`/verdict.json with the schema fields.
local function write(out, v)
  v.schema_version, v.parity_version, v.libtorch = M.SCHEMA, versions()
  core.json.write(out .. "/verdict.json", v)
  return v
end

--- Whether the target is exact in fp32: the fp32 leg ran and its R32 p95 is below r32_p95.
---@param results table<string, table> stage name -> result
---@param th parity.Thresholds
---@return boolean
function M.exact32(results, th)
  local e32 = results.e2e32
  return e32 ~= nil and not e32.skipped and e32.r32.p95 < th.r32_p95
end

--- What the stages' criteria may know of the whole run once every stage has run (they read no
--- other stage's result): `absorbed(target)`, whether the localisation found the fault at (or
--- inside) that target module absorbed by the next operation; `patched(target)`, whether a patch
--- computes that target module (or one containing it) in place of the port's own.
---@param results table<string, table> stage name -> result
---@param patches table[]|nil the run's patches ({file, sha256, components})
---@return parity.Facts
function M.facts(results, patches)
  local loc = results.localize
  local first = loc and not loc.skipped and loc.first_divergence
  local descends = require("parity.mapping").descends
  local function within(target, path) return target == path or descends(target, path) end
  return {
    absorbed = function(target)
      return type(first) == "table" and first.absorbed and within(target, first.target)
    end,
    patched = function(target)
      for _, p in ipairs(patches or {}) do
        for _, c in ipairs(p.components) do
          if within(target, c) then return true end
        end
      end
      return false
    end,
  }
end

--- The precision-ordering rule: R p95 >= r_p95 is a warning, not a failure, when the fp32 leg
--- shows the target exact and R p50 stays under r_p50_precision, unless a component is
--- consistently less precise than the reference (localize). A port that only rounds in another
--- order (RoPE applied in fp32, a hand-written LayerNorm) has noise as large as the reference's
--- own but independent of it, so its per-position R is near 1 typically and spread wide (p95
--- 1.3-1.7 measured); one computing at a lower precision (a variance summed in bf16) is above 1
--- typically (p50 1.3). Sets `warn` and `why` on criterion `c` (e2e's r_p95) when it applies.
---@param c parity.CriterionResult e2e's r_p95, judged
---@param results table<string, table> stage name -> result
---@param th parity.Thresholds
---@return parity.CriterionResult c
function M.precision_ordering(c, results, th)
  local e, loc = results.e2e, results.localize
  if c.pass or not e or e.skipped or not M.exact32(results, th) then return c end
  local less = loc and not loc.skipped and loc.less_precise and #loc.less_precise > 0
  if e.r_ratio.p50 < th.r_p50_precision and not less then
    c.warn, c.why = true, ("exact in fp32 (R32 p95 %.3g) and R p50 %.3g < %g: a precision-ordering difference, not a"
      .. " bug"):format(results.e2e32.r32.p95, e.r_ratio.p50, th.r_p50_precision)
  end
  return c
end

--- What kind of divergence the failed criteria point to, from the two legs: the fp32 leg
--- separates a computation difference (the target differs in fp32 too) from a precision one
--- (exact in fp32, different only at the low precision).
---@param failed table<string, boolean> failed criterion names
---@param results table<string, table> stage name -> result
---@param run parity.RunInfo {dtype, target_dtype}: the check's precisions (parity.context.precisions)
---@return parity.Cause|nil cause nil when neither leg nor the logits' finiteness failed
function M.leg_cause(failed, results, run)
  local dtype = run.dtype
  if failed.finite or failed.finite32 then
    return { class = "non_finite", detail = "NaN or Inf in the target's logits" }
  end
  local padded = (results.e2e and results.e2e.padded) or (results.e2e32 and results.e2e32.padded)
  if failed.padded and not (failed.r_p95 or failed.r32_p95 or failed.kl or failed.cosine or failed.top1) then
    return { class = "vocabulary", detail = ("a padded LM head: one of the target's %d columns past the vocabulary wins the"
      .. " argmax at %d of %d positions (the compared ones agree): its padding rows must give logits below the real ones"
      .. " (zero rows, or logits masked to -inf), or cut the logits to the vocabulary"):format(padded.columns, padded.wins,
      padded.positions) }
  end
  local low = failed.r_p95 or failed.kl or failed.cosine or failed.top1
  if failed.downstream and not (low or failed.r32_p95) then
    local worst
    for _, row in ipairs(results.downstream.tasks) do
      if row.verdict == "divergent" and (not worst or row.regression > worst.regression) then worst = row end
    end
    return { class = "downstream", detail = ("%s's %s regresses by %.4f (95%% interval %.4f..%.4f), past the"
      .. " tolerance %g, while the logits' criteria pass"):format(worst.task, worst.metric, worst.regression, worst.lo,
      worst.hi, results.downstream.tolerance) }
  end
  local e32 = results.e2e32
  if run.target_dtype == "fp32" and (low or failed.r32_p95) then  -- an fp32 check: any difference is a computation's
    local figure = failed.r32_p95 and ("R32 p95 %.3g, in units of the reference's own %s noise"):format(e32.r32.p95, dtype)
      or ("R p95 %.3g, in units of the reference's own fp32 reassociation level"):format(results.e2e.r_ratio.p95)
    return { class = "formula", detail = ("the target differs from the reference in fp32 (%s): a computation"
      .. " difference"):format(figure) }
  end
  if failed.r32_p95 then
    return { class = "formula", detail = ("the target differs from the reference in fp32 too (R32 p95 %.3g): a"
      .. " computation difference%s"):format(e32.r32.p95, low and "" or (", smaller than the %s noise"):format(dtype)) }
  end
  if not low then return nil end
  if e32 and not e32.skipped then
    return { class = "precision", detail = ("exact in fp32 (R32 p95 %.3g) but not at %s (R p95 %.3g): an operation"
      .. " computed at a lower precision (e.g. a norm's variance accumulated in %s) or in another order"
      .. " (e.g. q scaled before QK^T instead of the scores after)"):format(e32.r32.p95, dtype,
      results.e2e.r_ratio.p95, dtype) }
  end
  return { class = "unknown", detail = ("%s has no fp32 trace to tell a computation difference from a precision one"):format(
    results.e2e and results.e2e.baseline == "2-tensor" and "the reference" or "the target") }
end

--- The verdict of a finished run, written to run.out/verdict.json: "equivalent" when every
--- criterion passes, else "divergent" with a cause.
---@param run parity.RunInfo {out, reference, target, dtype, target_dtype, settings, inputs, thresholds}
---@param stages parity.Stage[] the stage modules, in the order they ran
---@param results table<string, table> stage name -> result
---@return parity.Verdict verdict
function M.decide(run, stages, results)
  local th = run.thresholds
  local facts = M.facts(results, run.patches)
  local criteria, failed, failed_set, warnings, skipped, summaries, order = {}, {}, {}, {}, {}, {}, {}
  for _, stage in ipairs(stages) do
    local result = results[stage.name]
    order[#order + 1] = stage.name
    if result.skipped then
      skipped[#skipped + 1] = { stage = stage.name, reason = result.skipped }
      warnings[#warnings + 1] = ("%s skipped: %s"):format(stage.name, result.skipped)
    else
      summaries[stage.name] = stage.summary and stage.summary(result) or core.json.null
      -- the criteria table's rows for this stage, then the rows a stage of one's own carries
      for _, c in ipairs(criteria_table.evaluate(stage.name, result, thresholds.at(th, result.dtype), facts,
                                                 stage.criteria)) do
        c.stage = stage.name
        if c.name == "r_p95" then M.precision_ordering(c, results, th) end
        criteria[#criteria + 1] = c
        if not c.pass and c.warn then
          warnings[#warnings + 1] = ("%s: %s (%.4g)%s"):format(stage.name, c.rule, c.value, c.why and (": " .. c.why) or "")
        elseif not c.pass then
          failed[#failed + 1], failed_set[c.name] = c.name, true
        end
      end
    end
  end
  -- how sure the e2e figures are (resampled over sequences): a failure the resamples do not
  -- agree on decides nothing, and neither does a pass they do not agree on
  -- (a criterion its thresholds switch off has nothing to decide)
  local audit = thresholds.audit(th)
  local off = {}
  for _, name in ipairs(audit.switched_off) do off[name] = true end
  local decidable = {}
  for _, c in ipairs(criteria) do
    if not off[c.name] then decidable[#decidable + 1] = c end
  end
  require("parity.confidence").intervals(decidable, results, function(dtype) return thresholds.at(th, dtype) end)
  local conclusive_failure, inconclusive = false, {}
  for _, c in ipairs(criteria) do
    -- (a passing R p95 the precision-ordering rule would excuse if it failed is decided either way)
    local excused = c.name == "r_p95" and c.pass and M.precision_ordering({ pass = false }, results, th).warn
    local open = c.interval and not c.interval.conclusive
    if open and excused then c.interval.excused, open = "precision ordering: a failure would be a warning", false end
    if not c.warn and open then inconclusive[#inconclusive + 1] = c.name end
    if not c.pass and not c.warn and not open then conclusive_failure = true end
  end
  local loc = results.localize
  local first = loc and not loc.skipped and loc.first_divergence ~= core.json.null and loc.first_divergence or nil
  -- the most specific cause: NaN first, then the first divergent component's, then the two legs'
  local why = M.leg_cause(failed_set, results, run)
  if #failed > 0 and first and not first.absorbed and not (why and why.class == "non_finite") then
    why = first.cause
  end
  -- thresholds looser than the defaults, and whether the criteria can still fail at all
  for i, w in ipairs(audit.warnings) do table.insert(warnings, i, w) end
  return write(run.out, {
    verdict = conclusive_failure and "divergent" or #inconclusive > 0 and "inconclusive"
      or #failed == 0 and "equivalent" or "divergent",
    inconclusive = core.json.array(inconclusive),  -- the criteria whose interval holds their bound
    cause = why or core.json.null,
    first_divergence = first,  -- absent when there is none
    suspects = loc and not loc.skipped and loc.suspects or core.json.array(),
    reference = run.reference, target = run.target, dtype = run.target_dtype, noise_dtype = run.dtype,
    settings = run.settings, inputs = run.inputs or core.json.null, thresholds = th,
    criteria = criteria, failed = core.json.array(failed), warnings = core.json.array(warnings),
    skipped = core.json.array(skipped), stages = order, summaries = summaries,
    loosened = core.json.array(audit.loosened), switched_off = core.json.array(audit.switched_off),
    criteria_can_fail = audit.criteria_can_fail,
    patches = run.patches,  -- absent without patches: {file, sha256, components}...
    recipe = run.recipe,  -- absent without a recipe: {file, sha256, made, dtype, baseline, runs}
  })
end

--- The exit code of a verdict: 0 equivalent, 1 divergent (or an error verdict), 3 inconclusive
--- (never 0: automation must not read it as a pass).
---@param v parity.Verdict
---@return integer
function M.exit_code(v)
  return v.verdict == "equivalent" and 0 or v.verdict == "inconclusive" and 3 or 1
end

--- The end-to-end criteria's figures of a verdict: {[name] = value} (e2e's and e2e32's).
---@param v parity.Verdict
---@return table<string, number>
function M.figures(v)
  local out = {}
  for _, c in ipairs(v.criteria or {}) do
    if c.stage == "e2e" or c.stage == "e2e32" then out[c.name] = c.value end
  end
  return out
end

--- Adds what a patched run's figures were without its patches (parity.check.unpatched) to its
--- verdict and writes it again: `unpatched`, {verdict, criteria = {[name] = value}, components =
--- {target, r, r32, before = {r, r32}}..., results}, or {error} when that run failed.
---@param out string the results directory
---@param v parity.Verdict the verdict written there
---@param before table
---@return parity.Verdict verdict
function M.add_unpatched(out, v, before)
  v.unpatched = before
  core.json.write(out .. "/verdict.json", v)
  return v
end

--- Adds the confirmations by repair (parity.confirm) to a finished run's verdict and writes it
--- again: `confirmation`, {patch, kind, what, confirmed, before, after, results, rounds}... The
--- verdict stays what the port as it is gives.
---@param out string the results directory
---@param v parity.Verdict the verdict written there
---@param confirmations table[]
---@return parity.Verdict verdict
function M.add_confirmation(out, v, confirmations)
  v.confirmation = core.json.array(confirmations)
  core.json.write(out .. "/verdict.json", v)
  return v
end

--- Writes an "error" verdict to `out` saying `why` (with `extra` fields: the reference and the
--- target when known). A failure to write is ignored: the error that led here is what the user sees.
---@param out string the results directory
---@param why string
---@param extra table<string, any>|nil more fields of the verdict ({reference, target})
function M.error(out, why, extra)
  local v = { verdict = "error", error = why }
  for k, x in pairs(extra or {}) do v[k] = x end
  os.remove(out .. "/verdict.json")  -- first: removing needs no space, writing may fail
  pcall(write, out, v)
end

--- Marks the verdict.json in `out` "error", saying `why`, and touches nothing else there (a bad
--- command line: the last run's other results stay as they were).
---@param out string the results directory
---@param why string
function M.mark_usage_error(out, why) M.error(out, "usage error: " .. why) end

--- Replaces the results in `out` by an "error" verdict.json saying `why` (so that a run which
--- dies before writing its own verdict never leaves an earlier one behind), removes the files of
--- `stage_names` (<name>.json) and the temporary files of killed runs. Raises when the verdict
--- cannot be written (the run must not start then).
---@param out string the results directory
---@param why string
---@param stage_names string[] the stages whose <name>.json go
function M.mark_unfinished(out, why, stage_names)
  os.remove(out .. "/verdict.json")
  core.remove_stale_temps(out)
  core.remove_stale_temps(out .. "/scaffold")
  for _, name in ipairs(stage_names) do os.remove(out .. "/" .. name .. ".json") end
  write(out, { verdict = "error", error = why })
end

return M
