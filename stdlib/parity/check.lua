--- parity.check{...} — the default workflow, as a list of stages that parity.workflow runs:
--- scaffold (both module trees, how they map), smoke (greedy liveness), e2e (teacher-forced
--- 3-tensor comparison at the low precision) and e2e32 (the fp32 leg, which sees bugs smaller
--- than the low-precision noise), components (each mapped component on the same real inputs)
--- and localize (the primary fault and its cause). A new stage is a file under stages/ (the
--- stage contract: parity.workflow) and a line here.
local context = require("parity.context")
local core = require("parity.core")
local verdict = require("parity.verdict")
local workflow = require("parity.workflow")

local M = {}

--- The default workflow's stages, in the order they run: parity.stages.<name> each.
---@type string[]
M.STAGES = { "scaffold", "smoke", "e2e", "e2e32", "components", "localize" }

---@class parity.CheckOptions
---@field reference string|parity.Bundle
---@field target string|parity.Bundle|parity.Saved  a model, or the logits a foreign engine saved (parity.saved)
---@field dtype string|nil         low precision under test (default "bf16")
---@field prompts integer|nil      K prompts (default 4)
---@field prompt_len integer|nil   P tokens a prompt (default 16)
---@field new_tokens integer|nil   N greedy tokens (default 16)
---@field seed integer|nil         seed of the random prompts (default 0)
---@field inputs string|nil        prompts from a .safetensors file instead (input_ids [K, P]; whole
---                                sequences [K, P + N] when written by parity inputs)
---@field topk integer|nil         k of top-k agreement (default 5)
---@field vocab_size integer|nil   overrides what the bundles say
---@field thresholds table|nil     overrides of parity.thresholds.DEFAULTS
---@field thresholds_file string|nil  a Lua file returning such a table (run sandboxed)
---@field recipe_file string|nil   a calibration recipe (parity.recipe): its thresholds under thresholds/thresholds_file
---@field baseline string|nil     "3-tensor" (default with an fp32 reference) or "2-tensor" (the default without)
---@field mapping table|nil        mapping entries (see parity.mapping), for differently structured trees
---@field mapping_file string|nil  a Lua file returning them (run sandboxed)
---@field out string|nil           results directory (default "parity-results")
---@field cache boolean|nil        reuse reference outputs from disk (default true)
---@field cache_dir string|nil     default $XDG_CACHE_HOME/parity or ~/.cache/parity
---@field log fun(msg: string)|nil log lines (default: print)
---@field quiet boolean|nil        no progress on stderr (shown for work past 2 s otherwise)
---@field patches table|nil        patch files (or sets, parity.patches) the target computes with
---@field confirm boolean|nil      try repairs of the first divergence (parity.confirm)
---@field stages string[]|nil       the stages to run, by name (default M.STAGES; those they need run too)
---@field unpatched boolean|nil    with patches: the port's e2e figures without them too (default true)
---@field downstream table|nil     {reference, target, tolerance}: lm-eval results of both, judged (stage downstream)
---@field device string|nil       where the models run: "cpu" (default) or "cuda[:N]"
---@field reference_device string|nil  the reference's device, when it differs (default: device)
---@field sweep string|nil         "full" (default: every mapped component) or "adaptive" (a clean one vouches for those inside it)
---@field max_capture_mb integer|nil the reference's captures are cached up to this size (default: an eighth of the memory)

--- The stage modules of a check that runs `names` (default: M.STAGES) and the stages they
--- need, in M.STAGES's order.
---@param names string[]|nil
---@return parity.Stage[]
function M.stages(names)
  local wanted, known = {}, {}
  for _, name in ipairs(M.STAGES) do known[name] = true end
  local function want(name)
    if not known[name] then
      error(("check: option 'stages' names %s, not a stage of the check (%s)"):format(tostring(name),
        table.concat(M.STAGES, ", ")), 0)
    end
    wanted[name] = true
    for _, n in ipairs(require("parity.stages." .. name).needs or {}) do want(n) end
  end
  for _, name in ipairs(names or M.STAGES) do want(name) end
  local out = {}
  for _, name in ipairs(M.STAGES) do
    if wanted[name] then out[#out + 1] = require("parity.stages." .. name) end
  end
  return out
end

--- The end-to-end figures of the port as it is, without the check's patches: its e2e stages
--- (against the cached reference, the target's teacher-forced passes only) under OUT/unpatched/,
--- and the patched components' figures before, from the components stage's rows.
---@param opts parity.CheckOptions a check's, with patches
---@param out string its results directory
---@return table before {verdict, criteria = {[name] = value}, components = {target, r, r32, before}..., results}
function M.unpatched(opts, out)
  local o = {}
  for k, x in pairs(opts) do o[k] = x end
  o.patches, o.confirm, o.out, o.quiet, o.log = nil, nil, out .. "/unpatched", true, function() end
  local v = workflow.run(context.open(o), M.stages({ "e2e", "e2e32" }))
  local components = core.json.array()
  for _, row in ipairs((core.json.read(out .. "/components.json") or {}).components or {}) do
    if row.unpatched then
      components[#components + 1] = { target = row.target, r = row.r, r32 = row.r32, before = row.unpatched }
    end
  end
  return { verdict = v.verdict, criteria = verdict.figures(v), components = components, results = o.out }
end

--- The reports every check writes from its results directory (parity.report.*).
M.REPORTS = { "junit.xml", "report.html" }

--- Writes the reports of the results in `out`, from the directory alone: OUT/junit.xml and
--- OUT/report.html. A report that cannot be written does not undo the check: it is left out,
--- and what failed is returned (and said on stderr).
---@param out string
---@return string[] failed "report.html: why", one a report not written
function M.reports(out)
  local failed = {}
  for i, name in ipairs({ "junit", "html" }) do
    local ok, err = pcall(require("parity.report." .. name).write, out)
    if not ok then
      local why = require("parity.errors").clean(err)
      failed[#failed + 1] = ("%s: %s"):format(M.REPORTS[i], why)
      io.stderr:write(("parity: warning: %s/%s not written: %s\n"):format(out, M.REPORTS[i], why))
    end
  end
  return failed
end

--- Runs the check; writes <stage>.json and verdict.json under opts.out; returns the verdict.
--- Input errors raise, after writing verdict.json with verdict "error".
---@param opts parity.CheckOptions
---@return parity.Verdict verdict
function M.run(opts)
  if type(opts) ~= "table" then error(("check: expects a table of options, got %s"):format(type(opts)), 0) end
  local out = opts.out or "parity-results"
  if type(out) ~= "string" or out == "" then error("check: out must name a directory, got an empty path", 0) end
  local stages = M.stages(opts.stages)
  if opts.downstream then stages[#stages + 1] = require("parity.stages.downstream") end
  local files = { "downstream", "run" }  -- an earlier run's stage files go too
  for _, name in ipairs(M.STAGES) do files[#files + 1] = name end
  verdict.mark_unfinished(out, "this run did not finish (still running, or killed)", files)
  for _, name in ipairs(M.REPORTS) do os.remove(out .. "/" .. name) end
  -- one model's weights held at a time: each loads for its passes and goes when the next loads
  local ok, result = pcall(require("parity.bundle").one_at_a_time, function() return workflow.run(context.open(opts), stages) end)
  if ok and result.patches and opts.unpatched ~= false then  -- the figures the patches changed
    local fine, before = pcall(M.unpatched, opts, out)
    result = verdict.add_unpatched(out, result, fine and before or { error = require("parity.errors").clean(before) })
  end
  if ok and opts.confirm then  -- the repairs, each a check of its own under OUT/confirm/
    local fine, confirmations = pcall(require("parity.confirm").run, opts, result, M.run)
    if not fine then  -- the port's verdict stands; the confirmation says why it has none
      confirmations = { { kind = "error", confirmed = false, error = require("parity.errors").clean(confirmations),
                          before = {}, after = {}, rounds = 0 } }
    end
    result = verdict.add_confirmation(out, result, confirmations)
  end
  if not ok then
    local msg = require("parity.errors").clean(result)
    local function path(x) return type(x) == "string" and x or type(x) == "table" and x.path or nil end
    verdict.error(out, msg, { reference = path(opts.reference), target = path(opts.target) })
    M.reports(out)  -- (the error that led here is what the user sees)
    error(msg, 0)
  end
  M.reports(out)
  return result
end

return M
