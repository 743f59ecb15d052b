--- parity.calibrate — thresholds derived from the checks of known-good ports (parity calibrate).
---
--- Each calibrated threshold comes from one figure of every good run (its results directory):
--- the figure's high quantile over the runs (M.RULE.quantile), moved away from where a perfect
--- port would be by a margin: an R bound (the reference's own noise is 1) is 1 + margin x (q - 1),
--- a ratio to the reference's own figure margin x q, an agreement rate 1 - margin x (1 - q) with q
--- its low quantile. A relative bound's floor stays the default's unless a good run needed more,
--- and is never below the default's unless asked. The component bounds are derived per class
--- (parity.criteria.class: from the modules' types and the LM head's place), from the largest a
--- class's components reached in each run. The thresholds nothing calibrates (the diagnosis's,
--- the smoke's) stay the defaults'. docs/calibration.md says why each rule is what it is.
local core = require("parity.core")
local criteria = require("parity.criteria")
local thresholds = require("parity.thresholds")

local M = {}

--- The rule's defaults: the quantile of the good runs' figures, and the margin past it.
M.RULE = { quantile = 0.95, margin = 2 }

--- A results directory read: what calibrate and the held-out judging use.
---@class parity.CalibrationRun
---@field dir string
---@field verdict table verdict.json
---@field e2e table|nil e2e.json (nil when skipped)
---@field e2e32 table|nil
---@field localize table|nil
---@field components table[] components.json's rows

local function stage(dir, name)
  local path = dir .. "/" .. name .. ".json"
  if core.path_kind(path) ~= "file" then return nil end
  local r = core.json.read(path)
  if type(r) ~= "table" or r.skipped then return nil end
  return r
end

--- Reads the results directories of finished checks, all of one precision and baseline.
---@param dirs string[]
---@param what string what the runs are, for messages ("good run", "bug run")
---@return parity.CalibrationRun[]
function M.read(dirs, what)
  local runs = {}
  for _, dir in ipairs(dirs) do
    local path = dir .. "/verdict.json"
    if core.path_kind(path) ~= "file" then
      error(("%s %s: no verdict.json there: give the results directory (--out) of a finished parity check"):format(
        what, dir), 0)
    end
    local v = core.json.read(path)
    if type(v) ~= "table" or v.verdict == nil then error(("%s %s: verdict.json is not a verdict"):format(what, dir), 0) end
    if v.verdict == "error" then
      error(("%s %s: its check ended in an error (%s): run it again"):format(what, dir, tostring(v.error)), 0)
    end
    if v.dtype == "fp32" then
      error(("%s %s: an fp32 check (--dtype fp32): calibrate takes checks at bf16 or fp16, an fp32 check's"
        .. " bound (r_p95_fp32) is not calibrated"):format(what, dir), 0)
    end
    local e2e = stage(dir, "e2e")
    runs[#runs + 1] = { dir = dir, verdict = v, e2e = e2e, e2e32 = stage(dir, "e2e32"),
      localize = stage(dir, "localize"), components = (stage(dir, "components") or {}).components or {},
      baseline = e2e and e2e.baseline or (v.summaries and type(v.summaries.e2e) == "table" and v.summaries.e2e.baseline) }
  end
  return runs
end

--- Refuses runs that are not of one kind: the same precision under test, the same noise, the
--- same baseline. Returns that kind.
---@param runs parity.CalibrationRun[]
---@return table {dtype, noise_dtype, baseline}
function M.kind(runs)
  local first = runs[1]
  local kind = { dtype = first.verdict.dtype, noise_dtype = first.verdict.noise_dtype or first.verdict.dtype,
                 baseline = first.baseline }
  if not kind.baseline then error(("%s: no e2e result (its e2e stage was skipped): nothing to calibrate"):format(
    first.dir), 0) end
  for _, run in ipairs(runs) do
    local v = run.verdict
    if v.dtype ~= kind.dtype or (v.noise_dtype or v.dtype) ~= kind.noise_dtype or run.baseline ~= kind.baseline then
      error(("%s is a check of a %s target against %s noise, baseline %s; %s is of %s against %s, %s: a recipe is for"
        .. " one kind of check (calibrate each apart)"):format(run.dir, tostring(v.dtype), tostring(v.noise_dtype),
        tostring(run.baseline), first.dir, kind.dtype, kind.noise_dtype, kind.baseline), 0)
    end
  end
  return kind
end

--- The q-quantile of a list of numbers (linear between order statistics).
---@param xs number[]
---@param q number in [0, 1]
---@return number
function M.quantile(xs, q)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  local h = (#s - 1) * q + 1
  local lo = math.floor(h)
  if lo >= #s then return s[#s] end
  return s[lo] + (h - lo) * (s[lo + 1] - s[lo])
end

local function e2e_at(run, path)
  local t = run.e2e
  for key in path:gmatch("[^%.]+") do
    if type(t) ~= "table" then return nil end
    t = t[key]
  end
  return type(t) == "number" and t or nil
end

local function ratio_of(figure, own)
  return function(run)
    local f, o = figure(run), own(run)
    if f and o and o > 0 then return f / o end
  end
end

local kl = function(run) return e2e_at(run, "kl.p95") end
local own_kl = function(run) return e2e_at(run, "own_kl.p95") end
local gap = function(run) local c = e2e_at(run, "cosine.p5"); return c and 1 - c end
local own_gap = function(run) local c = e2e_at(run, "own_cosine.p5"); return c and 1 - c end

--- The thresholds calibrate derives from the whole-model figures: the figure of each run it
--- reads, and how the bound sits relative to it (`kind`: "r", "ratio" or "rate", M.rule).
M.FIGURES = {
  { name = "r_p95", kind = "r", figure = "R p95 (e2e)", read = function(run) return e2e_at(run, "r_ratio.p95") end },
  { name = "r32_p95", kind = "ratio", figure = "R32 p95 (e2e32)",
    read = function(run) return run.e2e32 and run.e2e32.r32 and run.e2e32.r32.p95 end },
  { name = "kl_ratio", kind = "ratio", figure = "KL p95 / the reference's own", read = ratio_of(kl, own_kl) },
  { name = "cosine_ratio", kind = "ratio", figure = "(1 - cosine p5) / the reference's own",
    read = ratio_of(gap, own_gap) },
  { name = "top1", kind = "rate", figure = "top-1 agreement, near-ties excluded",
    read = function(run) return e2e_at(run, "top1_ties_excluded.rate") end },
}

--- The relative bounds' floors: each the default's, unless a good run's figure is above its
--- ratio's bound (it needed the floor).
M.FLOORS = {
  { name = "kl_floor", ratio = "kl_ratio", figure = "KL p95 where the ratio's bound would fail", read = kl, own = own_kl },
  { name = "cosine_floor", ratio = "cosine_ratio", figure = "1 - cosine p5 where the ratio's bound would fail",
    read = gap, own = own_gap },
}

--- A bound from the figures' quantile and the margin (see the header), kept at or past the
--- threshold's calibration floor (parity.thresholds.CALIBRATION_FLOORS) unless rule.below_floors.
---@param name string the threshold's name
---@param kind "r"|"ratio"|"rate"
---@param xs number[] the good runs' figures
---@param rule table {quantile, margin, below_floors}
---@return number value
---@return number q the quantile it moved from
---@return boolean floored the floor decided it
function M.rule(name, kind, xs, rule)
  local v, q
  if kind == "rate" then
    q = M.quantile(xs, 1 - rule.quantile)
    v = math.max(0, 1 - rule.margin * (1 - q))
  else
    q = M.quantile(xs, rule.quantile)
    v = kind == "r" and 1 + rule.margin * math.max(q - 1, 0) or rule.margin * q
  end
  local floor = thresholds.CALIBRATION_FLOORS[name]
  if floor and not rule.below_floors and (kind == "rate" and v > floor or kind ~= "rate" and v < floor) then
    return floor, q, true
  end
  return v, q, false
end

--- The largest figure `key` ("r", "r32") a class's isolated components reached in one run, or nil.
local function class_max(run, class, key)
  local worst
  for _, row in ipairs(run.components) do
    local v = row[key]
    if not row.skipped and row.isolated ~= false and type(v) == "number" and criteria.class(row) == class then
      worst = math.max(worst or v, v)
    end
  end
  return worst
end

--- Every calibrated threshold from `runs`: thresholds (with by_class, a class for each of
--- parity.criteria.CLASSES) and derived, name -> {value, default, n, figure, quantile, rule}.
---@param runs parity.CalibrationRun[]
---@param rule table {quantile, margin, below_floors}
---@return table thresholds
---@return table derived
function M.derive(runs, rule)
  local D = thresholds.DEFAULTS
  local th, derived = {}, {}
  local function put(target, key, name, kind, figure, xs)
    local d = { default = D[name], n = #xs, figure = figure }
    if #xs == 0 then
      d.value, d.rule = D[name], "the default: no run has this figure"
    else
      local q, floored
      d.value, q, floored = M.rule(name, kind, xs, rule)
      d.quantile = q
      d.rule = ({ r = "1 + %g x (q%g - 1)", ratio = "%g x q%g", rate = "1 - %g x (1 - q%g)" })[kind]:format(
        rule.margin, kind == "rate" and 1 - rule.quantile or rule.quantile)
        .. (floored and ", held at its calibration floor" or "")
    end
    target[name], derived[key] = d.value, d
  end
  for _, f in ipairs(M.FIGURES) do
    local xs = {}
    for _, run in ipairs(runs) do xs[#xs + 1] = f.read(run) end
    put(th, f.name, f.name, f.kind, f.figure, xs)
  end
  for _, f in ipairs(M.FLOORS) do
    local xs = {}
    for _, run in ipairs(runs) do
      local v, own = f.read(run), f.own(run)
      if v and own and v > th[f.ratio] * own then xs[#xs + 1] = v end
    end
    local d = { default = D[f.name], n = #xs, figure = f.figure }
    if #xs == 0 then
      d.value, d.rule = D[f.name], "the default: no run needed the floor"
    else
      local floored
      d.value, d.quantile, floored = M.rule(f.name, "ratio", xs, rule)
      d.rule = ("%g x q%g"):format(rule.margin, rule.quantile) .. (floored and ", held at its calibration floor" or "")
    end
    th[f.name], derived[f.name] = d.value, d
  end
  th.by_class = {}
  for _, class in ipairs(criteria.CLASSES) do
    th.by_class[class] = {}
    for _, key in ipairs({ { "r", "r_p95", "r" }, { "r32", "r32_p95", "ratio" } }) do
      local xs = {}
      for _, run in ipairs(runs) do xs[#xs + 1] = class_max(run, class, key[1]) end
      put(th.by_class[class], ("by_class.%s.%s"):format(class, key[2]), key[2], key[3],
        ("the largest %s of the %s class's components (isolated)"):format(key[1] == "r" and "R" or "R32", class), xs)
    end
  end
  return th, derived
end

--- The criteria a recorded run fails under thresholds `th` (names, in the order judged): its e2e
--- and e2e32 criteria judged again (the precision-ordering rule included), each component's own
--- rows, and what fails whatever the thresholds (the static check, NaN/Inf, a padded head's win)
--- as its verdict recorded it. Intervals are not resampled here: a figure past its bound fails.
---@param run parity.CalibrationRun
---@param th parity.Thresholds resolved (parity.thresholds.resolve)
---@return string[]
function M.failures(run, th)
  local verdict = require("parity.verdict")
  local out, seen = {}, {}
  local function add(name) if not seen[name] then seen[name], out[#out + 1] = true, name end end
  for _, c in ipairs(run.verdict.criteria or {}) do
    if not c.pass and not c.warn and (c.name == "static" or c.name == "finite" or c.name == "finite32"
      or c.name == "padded") then add(c.name) end
  end
  local results = { e2e = run.e2e, e2e32 = run.e2e32, localize = run.localize }
  for _, name in ipairs({ "e2e", "e2e32" }) do
    if results[name] then
      for _, c in ipairs(criteria.evaluate(name, results[name], th)) do
        if c.name == "r_p95" then verdict.precision_ordering(c, results, th) end
        if not c.pass and not c.warn then add(c.name) end
      end
    end
  end
  for _, row in ipairs(run.components) do
    if criteria.component_fails(row, th) then add("components") end
  end
  return out
end

--- Leave-k-out: every way of holding k good runs out (at most `max_splits`, drawn with a fixed
--- seed past that), calibrated on the rest and judged on the held-out ones and on `bugs`.
---@param runs parity.CalibrationRun[]
---@param bugs parity.CalibrationRun[]
---@param k integer
---@param rule table
---@param max_splits integer|nil default 200
---@return table {k, splits, held, false_alarms, false_alarm_rate, alarms = {dir...}, bugs, caught, caught_rate, missed}
function M.holdout(runs, bugs, k, rule, max_splits)
  max_splits = max_splits or 200
  local n = #runs
  if k < 1 or k >= n then
    error(("--holdout %s: hold out at least 1 of the %d good runs and keep at least one to calibrate on"):format(
      tostring(k), n), 0)
  end
  -- the splits: every k-subset, in order, or max_splits of them drawn (a fixed seed)
  local splits = {}
  local function combos(start, picked)
    if #splits > 100000 then return end
    if #picked == k then splits[#splits + 1] = { unpack(picked) }; return end
    for i = start, n do
      picked[#picked + 1] = i
      combos(i + 1, picked)
      picked[#picked] = nil
    end
  end
  combos(1, {})
  if #splits > max_splits then
    local rng, drawn = 12345, {}
    for i = 1, max_splits do
      rng = (rng * 1103515245 + 12345) % 2147483648
      local j = i + rng % (#splits - i + 1)
      splits[i], splits[j] = splits[j], splits[i]
      drawn[i] = splits[i]
    end
    splits = drawn
  end
  local held, alarms, alarmed, caught, judged, missed = 0, 0, {}, 0, 0, {}
  for _, split in ipairs(splits) do
    local out, train = {}, {}
    for _, i in ipairs(split) do out[i] = true end
    for i, run in ipairs(runs) do if not out[i] then train[#train + 1] = run end end
    local th = thresholds.resolve(nil, (M.derive(train, rule)))
    for i in pairs(out) do
      held = held + 1
      local fails = M.failures(runs[i], th)
      if #fails > 0 then alarms, alarmed[runs[i].dir .. " (" .. table.concat(fails, ", ") .. ")"] = alarms + 1, true end
    end
    for _, bug in ipairs(bugs) do
      judged = judged + 1
      if #M.failures(bug, th) > 0 then caught = caught + 1 else missed[bug.dir] = true end
    end
  end
  local function list(set)
    local l = {}
    for dir in pairs(set) do l[#l + 1] = dir end
    table.sort(l)
    return l
  end
  return { k = k, splits = #splits, held = held, false_alarms = alarms, false_alarm_rate = alarms / held,
           alarmed = list(alarmed), bugs = #bugs, bug_judgements = judged, caught = caught,
           caught_rate = judged > 0 and caught / judged or nil, missed = list(missed) }
end

--- A bundle's files hashed together (their names and contents, in name order), or nil when it
--- is gone.
local function bundle_hash(path)
  if type(path) ~= "string" then return nil end
  local kind = core.path_kind(path)
  if kind == "file" then return core.hash_file(path) end
  if kind ~= "dir" then return nil end
  local names = core.list_dir(path)
  table.sort(names)
  local parts = {}
  for _, name in ipairs(names) do
    local f = path .. "/" .. name
    if core.path_kind(f) == "file" then parts[#parts + 1] = name .. "\0" .. core.hash_file(f) end
  end
  return core.hash_string(table.concat(parts, "\n"))
end

--- The recipe of `runs` (parity.recipe's fields, without its hash).
---@param runs parity.CalibrationRun[]
---@param rule table {quantile, margin, below_floors}
---@param extra table|nil {holdout, bugs (runs)}
---@return table recipe
function M.recipe(runs, rule, extra)
  extra = extra or {}
  local kind = M.kind(runs)
  local th, derived = M.derive(runs, rule)
  local function provenance(run)
    local v, s = run.verdict, run.verdict.settings or {}
    return { results = run.dir, reference = v.reference, target = v.target,
             reference_sha256 = bundle_hash(v.reference) or "absent when calibrated",
             target_sha256 = bundle_hash(v.target) or "absent when calibrated",
             prompts = s.prompts, prompt_len = s.prompt_len, new_tokens = s.new_tokens, seed = s.seed,
             inputs = type(v.inputs) == "string" and v.inputs or nil, verdict = v.verdict,
             parity_version = v.parity_version }
  end
  local list = {}
  for i, run in ipairs(runs) do list[i] = provenance(run) end
  local bugs
  if extra.bugs and #extra.bugs > 0 then
    bugs = {}
    local full = thresholds.resolve(nil, th)
    for i, run in ipairs(extra.bugs) do
      local p = provenance(run)
      p.fails = M.failures(run, full)
      bugs[i] = p
    end
  end
  return {
    parity_recipe = require("parity.recipe").SCHEMA,
    parity_version = core.version():match("^parity (%S+)") or core.version(),
    made = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    dtype = kind.dtype, noise_dtype = kind.noise_dtype, baseline = kind.baseline,
    rule = { quantile = rule.quantile, margin = rule.margin, below_floors = rule.below_floors == true },
    thresholds = th, derived = derived, runs = list, bugs = bugs, holdout = extra.holdout,
  }
end

return M
