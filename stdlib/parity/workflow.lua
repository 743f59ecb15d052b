--- The stage runner: a list of stages run in order on one parity.Context (parity.context), each
--- stage's JSON written atomically as soon as it exists; parity.verdict decides.
---
--- The stage contract. A stage is a module with `name`, `run(ctx, got) -> result[, kept]` and
--- optionally `needs` (the earlier stages whose results it reads: got.<name>, and what they kept
--- in memory: got.kept.<name>), `criteria` (rows of parity.criteria's shape, data only: what the
--- verdict judges on the stage's own result once every stage has run, after the criteria table's
--- rows for it), `summary(result)` (the small table the verdict keeps) and
--- `runs_target` (what for it runs the target's modules, not only its logits: it is skipped,
--- and says why, against saved logits, parity.saved). A result is plain data; `{skipped =
--- "why"}` is recorded as skipped, never silently. A stage never requires another stage: what
--- several share lives in library modules (parity.pairing, parity.judge, parity.figures). The
--- terminal lines of each stage's summary are parity.report.terminal's.
local core = require("parity.core")
local verdict = require("parity.verdict")

local M = {}
--- A stage module (the stage contract above).
---@class parity.Stage
---@field name string
---@field run fun(ctx: parity.Context, got: table): table, table|nil the result (plain data) and what it keeps
---@field needs string[]|nil the earlier stages whose results it reads
---@field criteria parity.Criterion[]|nil rows the verdict judges on its result, beside the criteria table's
---@field summary nil|fun(result: table): table the small table the verdict keeps
---@field runs_target string|nil what for it runs the target's modules (skipped against saved logits)

--- A stage's view of the earlier results its `needs` declare: got.<name> is that stage's result
--- (what its JSON holds), got.kept.<name> what it kept in memory for later stages (captured
--- tensors: never written). Reading any other stage's is an error: stages talk through these only.
local function needs_view(stage, results, kept)
  local allowed = {}
  for _, n in ipairs(stage.needs or {}) do allowed[n] = true end
  local function guarded(t, what)
    return setmetatable({}, {
      __index = function(_, k)
        if not allowed[k] then
          error(("stage %s reads %s's %s, which its needs do not declare"):format(stage.name, tostring(k), what), 2)
        end
        return t[k]
      end,
      __newindex = function() error(("stage %s: earlier results are read-only"):format(stage.name), 2) end,
    })
  end
  local got = guarded(results, "result")
  rawset(got, "kept", guarded(kept, "kept data"))
  return got
end

--- Checks a stage list against the stage contract: each a name (not "kept") and a run function,
--- names unique, and every stage it needs running before it.
---@param stages parity.Stage[]
---@return parity.Stage[] stages
function M.check_stages(stages)
  local seen = {}
  for i, stage in ipairs(stages) do
    if type(stage) ~= "table" or type(stage.name) ~= "string" or type(stage.run) ~= "function" then
      error(("stage %d: a stage is a table with a name and a run function"):format(i), 0)
    end
    if stage.name == "kept" or seen[stage.name] then
      error(("stage %s: %s"):format(stage.name, stage.name == "kept" and "the name is reserved" or "named twice"), 0)
    end
    for _, n in ipairs(stage.needs or {}) do
      if not seen[n] then error(("stage %s needs %s, which does not run before it"):format(stage.name, tostring(n)), 0) end
    end
    seen[stage.name] = true
  end
  return stages
end

--- Runs the stages in order and has parity.verdict decide: each stage gets the context and the
--- earlier results its `needs` declare, returns its result (plain data, written as <name>.json
--- as soon as it exists) and optionally what it keeps in memory for later stages.
---@param ctx parity.Context
---@param stages parity.Stage[] stage modules
---@return parity.Verdict verdict
function M.run(ctx, stages)
  M.check_stages(stages)
  local results, kept, times = {}, {}, {}
  local forwards = require("parity.forwards")
  local run = { stages = {}, order = {} }  -- OUT/run.json: what each stage cost
  local start = ctx.opened or forwards.now()  -- (opening it loads models too)
  for _, stage in ipairs(stages) do
    local t0, f0 = core.clock(), forwards.now()
    local result, keep
    if stage.runs_target and ctx.target.saved then
      result = { skipped = ("it needs %s, and %s"):format(stage.runs_target, ctx.target.saved) }
    else
      result, keep = stage.run(ctx, needs_view(stage, results, kept))
    end
    result.stage = stage.name
    results[stage.name], kept[stage.name] = result, keep
    core.json.write(ctx.out .. "/" .. stage.name .. ".json", result)
    core.collect()
    local seconds = core.clock() - t0
    times[#times + 1] = ("%s %.2f s"):format(stage.name, seconds)
    run.stages[stage.name], run.order[#run.order + 1] = { seconds = seconds, forwards = forwards.since(f0) }, stage.name
  end
  -- logged, and kept apart in run.json (the stage files and the verdict stay byte-identical run to
  -- run, cached or not); a stage that first needs the reference's side (or the target's passes)
  -- counts their time and forwards
  run.peak_rss_mb = math.floor(core.peak_rss() / 2 ^ 20 + 0.5)  -- the process's so far (a check of a script: its too)
  ctx.log(("memory: peak RSS %d MB"):format(run.peak_rss_mb))
  ctx.log("stages: " .. table.concat(times, ", "))
  run.forwards = forwards.since(start)
  ctx.log(forwards.line(run.forwards))
  run.spilled = core.json.array({})  -- the forwards whose captures were past --max-capture-mb (read back from a file)
  for _, s in ipairs(ctx.close and ctx:close() or {}) do run.spilled[#run.spilled + 1] = { forward = s.forward, bytes = s.bytes } end
  core.json.write(ctx.out .. "/run.json", run)
  return verdict.decide({ out = ctx.out, reference = ctx.reference.path, target = ctx.target.path, dtype = ctx.dtype,
    target_dtype = ctx.target_dtype, settings = ctx.settings, inputs = ctx.inputs_file, thresholds = ctx.thresholds,
    recipe = ctx.recipe,
    patches = ctx.patch_sets and require("parity.patches").describe(ctx.patch_sets, ctx.target.patched) },
    stages, results)
end

return M
