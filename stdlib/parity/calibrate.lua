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
--- the smoke's) stay the defaults'. Without good ports (calibrate --reference), the runs are the
--- reference's null runs (M.null_runs) and the rule a stated false-alarm rate (M.rule, M.NULL_RULE).
--- docs/calibration.md says why each rule is what it is.
local core = require("parity.core")
local criteria = require("parity.criteria")
local thresholds = require("parity.thresholds")

local M = {}

local function parity_check(o) return require("parity.check").run(o) end

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
  for _, run in ipairs(runs) do
    if not run.baseline then
      error(("%s: no e2e result (its e2e stage was skipped): nothing to calibrate on"):format(run.dir), 0)
    end
  end
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

--- The standard normal's quantile function (Acklam's rational approximation, |error| < 1.2e-9).
---@param p number in (0, 1)
---@return number
function M.normal_quantile(p)
  local a = { -39.69683028665376, 220.9460984245205, -275.9285104469687, 138.3577518672690, -30.66479806614716,
              2.506628277459239 }
  local b = { -54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572 }
  local c = { -7.784894002430293e-03, -0.3223964580411365, -2.400758277161838, -2.549732539343734,
              4.374664141464968, 2.938163982698783 }
  local d = { 7.784695709041462e-03, 0.3224671290700398, 2.445134137142996, 3.754408661907416 }
  local function tail(q)
    return (((((c[1] * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) * q + c[6])
      / ((((d[1] * q + d[2]) * q + d[3]) * q + d[4]) * q + 1)
  end
  if p < 0.02425 then return tail(math.sqrt(-2 * math.log(p))) end
  if p > 1 - 0.02425 then return -tail(math.sqrt(-2 * math.log(1 - p))) end
  local q = p - 0.5
  local r = q * q
  return (((((a[1] * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * r + a[6]) * q
    / (((((b[1] * r + b[2]) * r + b[3]) * r + b[4]) * r + b[5]) * r + 1)
end

--- Student's t distribution's upper tail P(T > t) with `df` degrees of freedom (a whole number),
--- from its closed form (Abramowitz & Stegun 26.7.3-4).
---@param t number >= 0
---@param df integer >= 1
---@return number
function M.t_tail(t, df)
  local theta = math.atan(t / math.sqrt(df))
  local c2, sum, term = math.cos(theta) ^ 2, 0, 1
  local a
  if df % 2 == 1 then
    if df > 1 then
      term = math.cos(theta)
      sum = term
      for k = 3, df - 2, 2 do term = term * c2 * (k - 1) / k; sum = sum + term end
    end
    a = 2 / math.pi * (theta + math.sin(theta) * sum)
  else
    sum = 1
    for k = 2, df - 2, 2 do term = term * c2 * (k - 1) / k; sum = sum + term end
    a = math.sin(theta) * sum
  end
  return (1 - a) / 2
end

--- The t such that P(T > t) = p, `df` degrees of freedom (bisection on M.t_tail); the normal's
--- past 1000.
---@param p number in (0, 0.5)
---@param df integer
---@return number
function M.t_quantile(p, df)
  if df > 1000 then return M.normal_quantile(1 - p) end
  local lo, hi = 0, 1
  while M.t_tail(hi, df) > p do hi = hi * 2 end
  for _ = 1, 200 do
    local mid = (lo + hi) / 2
    if M.t_tail(mid, df) > p then lo = mid else hi = mid end
  end
  return (lo + hi) / 2
end

--- A bound from the figures (see the header), kept at or past the threshold's calibration floor
--- (parity.thresholds.CALIBRATION_FLOORS) unless rule.below_floors. With rule.false_alarm (the
--- null's rule) it is an upper prediction bound of the figures' excess past a perfect port on a
--- log scale: log-mean + t sd sqrt(1 + 1/n), t Student's quantile of 1 - false_alarm / m with
--- n - 1 degrees of freedom (the spread is estimated from n figures): a new figure of the same
--- kind past it in false_alarm / m of checks, m the figures a check judges (Bonferroni:
--- false_alarm a check), were the excesses log-normal.
---@param name string the threshold's name
---@param kind "r"|"ratio"|"rate"
---@param xs number[] the good runs' figures
---@param rule table {quantile, margin, below_floors} or {false_alarm, below_floors}
---@param m integer|nil the criteria calibrated (the null's rule)
---@return number|nil value nil when the null's rule has under 2 figures
---@return number q the quantile it moved from (the null's rule: the mean)
---@return boolean floored the floor decided it
---@return string how the rule in words
function M.rule(name, kind, xs, rule, m)
  local v, q, how
  if rule.false_alarm then
    if #xs < 2 then return nil, nil, false, "under 2 runs: no spread" end
    -- the excess past a perfect port (R - 1, a ratio, 1 - a rate): on a log scale when every
    -- figure lies past a perfect port's (skewed, as a largest-of-many figure is), as it is when
    -- they lie on both sides of it (a component computing in another order than the reference's
    -- is about as often closer to fp32 as farther); figures at a perfect port's exactly (a
    -- component computing what the reference's does) pass any bound and say nothing of the
    -- spread: left out
    local perfect = kind == "r" and 1 or kind == "rate" and 1 or 0
    local es, both = {}, false
    for _, x in ipairs(xs) do
      local e = kind == "rate" and perfect - x or x - perfect
      if math.abs(e) > 1e-9 then es[#es + 1] = e; both = both or e < 0 end
    end
    if #es < 2 then return nil, nil, false, ("%d of %d off a perfect port's: no spread"):format(#es, #xs) end
    local ys, sum, sq = {}, 0, 0
    for i, e in ipairs(es) do ys[i] = both and e or math.log(e); sum = sum + ys[i] end
    local mean = sum / #ys
    for _, y in ipairs(ys) do sq = sq + (y - mean) ^ 2 end
    local t = M.t_quantile(rule.false_alarm / m, #ys - 1)
    local top = mean + t * math.sqrt(sq / (#ys - 1)) * math.sqrt(1 + 1 / #ys)
    local excess = both and top or math.exp(top)
    q = perfect + (kind == "rate" and -1 or 1) * (both and mean or math.exp(mean))
    v = kind == "rate" and math.max(0, 1 - excess) or perfect + excess
    local off = thresholds.OFF[name]
    if v ~= v or v == math.huge or (off and (kind == "rate" and v <= off or kind ~= "rate" and v >= off)) then
      return nil, q, false, ("%d figures bound it at that rate only where it switches off (more runs)"):format(#ys)
    end
    how = ("%s of the excess (Student's t, %d off a perfect port's)"):format(both and ("mean + %.3g sd"):format(t)
      or ("log-mean + %.3g log-sd"):format(t), #ys)
  elseif kind == "rate" then
    q = M.quantile(xs, 1 - rule.quantile)
    v = math.max(0, 1 - rule.margin * (1 - q))
    how = ("1 - %g x (1 - q%g)"):format(rule.margin, 1 - rule.quantile)
  else
    q = M.quantile(xs, rule.quantile)
    v = kind == "r" and 1 + rule.margin * math.max(q - 1, 0) or rule.margin * q
    how = (kind == "r" and "1 + %g x (q%g - 1)" or "%g x q%g"):format(rule.margin, rule.quantile)
  end
  local floor = thresholds.CALIBRATION_FLOORS[name]
  if floor and not rule.below_floors and (kind == "rate" and v > floor or kind ~= "rate" and v < floor) then
    return floor, q, true, how .. ", held at its calibration floor"
  end
  return v, q, false, how
end

--- The figure `key` ("r", "r32") of each of a class's isolated components in one run.
local function class_figures(run, class, key)
  local out = {}
  for _, row in ipairs(run.components) do
    local v = row[key]
    if not row.skipped and row.isolated ~= false and type(v) == "number" and criteria.class(row) == class then
      out[#out + 1] = v
    end
  end
  return out
end

--- Every calibrated threshold from `runs`: thresholds (with by_class, a class for each of
--- parity.criteria.CLASSES) and derived, name -> {value, default, n, figure, quantile, rule}.
--- A component bound's figures: under the quantile rule the largest a run's components reached
--- (what decides a check), under the null's rule every component's (a check judges each: the
--- false-alarm rate is spread over them all).
---@param runs parity.CalibrationRun[]
---@param rule table {quantile, margin, below_floors} or {false_alarm, below_floors} (M.rule)
---@return table thresholds
---@return table derived
---@return integer m the figures a check judges with what was calibrated from 2 runs or more
function M.derive(runs, rule)
  local D = thresholds.DEFAULTS
  -- what each threshold is derived from: {target table, its key in `derived`, name, kind, figure,
  -- xs, instances (the figures of it one check judges)}
  local items, floors = {}, {}
  local function item(target, key, name, kind, figure, read)
    local xs = {}
    for _, run in ipairs(runs) do xs[#xs + 1] = read(run) end
    items[#items + 1] = { target = target, key = key, name = name, kind = kind, figure = figure, xs = xs, instances = 1 }
  end
  local function components_item(target, key, name, kind, figure, read)
    local xs, pooled, seen = {}, {}, 0
    for _, run in ipairs(runs) do
      local list = read(run)
      if #list > 0 then
        seen = seen + 1
        local worst = list[1]
        for _, v in ipairs(list) do worst = math.max(worst, v) end
        xs[#xs + 1] = worst
        for _, v in ipairs(list) do pooled[#pooled + 1] = v end
      end
    end
    local whole = rule.false_alarm ~= nil
    items[#items + 1] = { target = target, key = key, name = name, kind = kind, xs = whole and pooled or xs,
      figure = (whole and "%s, each" or "%s, the largest a run"):format(figure),
      instances = whole and seen > 0 and #pooled / seen or 1 }
  end
  local th, derived = { by_class = {} }, {}
  for _, f in ipairs(M.FIGURES) do item(th, f.name, f.name, f.kind, f.figure, f.read) end
  -- the rows' sign test: the rows' R p50 of a component it flags (z >= row_z); the criterion
  -- excuses a component whose rows' p50 is under the bound
  components_item(th, "row_r_p50", "row_r_p50", "r", "rows' R p50 of a component the sign test flags", function(run)
    local out = {}
    for _, row in ipairs(run.components) do
      local q = row.rows_r
      if not row.skipped and row.isolated ~= false and type(q) == "table" and type(q.z) == "number"
        and q.z >= D.row_z then out[#out + 1] = q.p50 end
    end
    return out
  end)
  for _, class in ipairs(criteria.CLASSES) do
    th.by_class[class] = {}
    for _, key in ipairs({ { "r", "r_p95", "r" }, { "r32", "r32_p95", "ratio" } }) do
      components_item(th.by_class[class], ("by_class.%s.%s"):format(class, key[2]), key[2], key[3],
        ("%s of a component of class %s"):format(key[1] == "r" and "R" or "R32", class),
        function(run) return class_figures(run, class, key[1]) end)
    end
  end
  local m = 0  -- the figures a check judges (the null's rule spreads its false-alarm rate over them)
  for _, it in ipairs(items) do if #it.xs >= 2 then m = m + it.instances end end
  m = math.max(1, math.floor(m + 0.5))
  local function decide(it, none)
    local d = { default = D[it.name], n = #it.xs, figure = it.figure }
    local value, q, _, how
    if #it.xs > 0 then value, q, _, how = M.rule(it.name, it.kind, it.xs, rule, m) end
    if value then
      d.value, d.rule = value, how
      if rule.false_alarm then d.typical = q else d.quantile = q end
    else
      d.value, d.rule = D[it.name], #it.xs == 0 and none or ("the default: " .. how)
    end
    it.target[it.name], derived[it.key] = d.value, d
  end
  for _, it in ipairs(items) do decide(it, "the default: no run has this figure") end
  -- a class no run has gets no bounds of its own: its components are judged by r_p95 and r32_p95
  for _, it in ipairs(items) do
    if it.target ~= th and #it.xs == 0 then
      it.target[it.name] = nil
      derived[it.key].rule = "no run has this class: its components are judged by " .. it.name
    end
  end
  for class, values in pairs(th.by_class) do
    if next(values) == nil then th.by_class[class] = nil end
  end
  -- a relative bound's floor, from the runs its ratio's bound (just derived) would fail
  for _, f in ipairs(M.FLOORS) do
    local xs = {}
    for _, run in ipairs(runs) do
      local v, own = f.read(run), f.own(run)
      if v and own and v > th[f.ratio] * own then xs[#xs + 1] = v end
    end
    floors[#floors + 1] = { target = th, key = f.name, name = f.name, kind = "ratio", figure = f.figure, xs = xs }
  end
  for _, it in ipairs(floors) do decide(it, "the default: no run needed the floor") end
  return th, derived, m
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
  -- the splits: every k-subset, in order, or max_splits k-subsets drawn (Park-Miller, a fixed seed)
  local count = 1
  for i = 1, k do count = count * (n - k + i) / i end
  local splits = {}
  if count <= max_splits then
    local function combos(start, picked)
      if #picked == k then splits[#splits + 1] = { unpack(picked) }; return end
      for i = start, n do
        picked[#picked + 1] = i
        combos(i + 1, picked)
        picked[#picked] = nil
      end
    end
    combos(1, {})
  else
    local state = 12345
    for s = 1, max_splits do
      local order = {}
      for i = 1, n do order[i] = i end
      for i = 1, k do  -- a partial Fisher-Yates shuffle: the first k of a random order
        state = state * 16807 % 2147483647
        local j = i + state % (n - i + 1)
        order[i], order[j] = order[j], order[i]
      end
      splits[s] = { unpack(order, 1, k) }
    end
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

--- The null's rule (calibrate --reference): each bound where the null runs' figures leave a new
--- run of theirs past it in 1% / m of checks (M.rule), 1% a check over the m criteria calibrated;
--- leave-one-out over the seeds shows how many of them a bound from the others fails.
M.NULL_RULE = { false_alarm = 0.01 }

--- The relative size of one rounding, by dtype (x:dtype()'s names): the unit roundoff u = 2^-p.
local ROUNDING = { BFloat16 = 2 ^ -8, bfloat16 = 2 ^ -8, Half = 2 ^ -11, float16 = 2 ^ -11, Float = 2 ^ -24,
                   float32 = 2 ^ -24, float = 2 ^ -24 }

--- What the null perturbs, in words (a recipe's null.perturbation).
M.PERTURBATION = "every module with parameters of its own (none inside another) gets its floating inputs"
  .. " re-rounded: x (1 + v) in float64, v ~ U(-u, u) with u the unit roundoff of x's dtype (bf16 2^-8, fp16"
  .. " 2^-11, fp32 2^-24), rounded back to that dtype: about one rounding's independent error at each component,"
  .. " a draw per seed, per module and per call; the target is the reference so perturbed, the yardstick the"
  .. " reference perturbed by another draw"

--- A patch set perturbing the reference by one rounding at each component (M.PERTURBATION):
--- what a correct port computing in another order can look like, by seed.
---@param ref parity.Bundle the reference
---@param dtype string a trace of it to list the modules of ("bf16", ...)
---@param seed integer
---@return parity.PatchSet
---@return integer n the modules perturbed
function M.perturbation(ref, dtype, seed)
  local own = {}
  for _, m in ipairs(ref:at(dtype):modules()) do
    if m.path ~= "" and (m.params or 0) > 0 then own[#own + 1] = m.path end
  end
  local descends = require("parity.mapping").descends
  local entries = {}
  for i, path in ipairs(own) do
    local leaf = true
    for _, other in ipairs(own) do
      if other ~= path and descends(other, path) then leaf = false end  -- a descendant has its own
    end
    if leaf then
      entries[#entries + 1] = { target = path, forward = function(self, x, ...)
        local u = torch.is_tensor(x) and ROUNDING[x:dtype()]
        if u then
          local v = torch.rand(x:size(), { seed = (seed * 1000003 + i * 7919 + self.call) % 2147483647,
                                           dtype = "float64" })
          x = (x:double() * ((v * 2 - 1) * u + 1)):to(x:dtype())
        end
        return self.original(x, ...)
      end }
    end
  end
  return require("parity.patches").from_entries(entries, ("the null perturbation (seed %d)"):format(seed)), #entries
end

--- The reference's null runs: checks of the reference perturbed by one rounding at each
--- component (M.perturbation) against the reference perturbed by another draw, one a seed: two
--- implementations of the model that round differently everywhere, so the target's errors are
--- independent of the yardstick's, as a correct port's are of the reference's (perturbing the
--- target alone would add its rounding on top of the reference's own: a port less precise than
--- it). Kept in the cache (a second calibration with the same reference and settings reads them).
---@param opts table {reference, seeds, dtype, baseline, prompts, prompt_len, new_tokens, seed, cache, cache_dir, log}
---@return parity.CalibrationRun[]
---@return table null {seeds, perturbation, modules, runs_dir}
function M.null_runs(opts)
  if opts.dtype == "fp32" then
    error("calibrate --reference --dtype fp32: calibrate takes checks at bf16 or fp16, an fp32 check's bound"
      .. " (r_p95_fp32) is not calibrated", 0)
  end
  local bundle = require("parity.bundle")
  local ref = bundle.open(opts.reference)
  local cache_dir = opts.cache_dir or require("parity.context").default_cache_dir()
  if not cache_dir then
    error("calibrate --reference: no cache directory to keep its null runs in (HOME unset): pass --cache-dir DIR", 0)
  end
  local settings = { prompts = opts.prompts, prompt_len = opts.prompt_len, new_tokens = opts.new_tokens,
                     seed = opts.seed, dtype = opts.dtype, baseline = opts.baseline }
  local key = core.hash_string(core.json.encode({ reference = bundle_hash(opts.reference), settings = settings,
    perturbation = M.PERTURBATION, parity = core.version() }))
  local dir = ("%s/calibrate/%s"):format(cache_dir, key:sub(1, 32))
  local dirs, modules = {}, 0
  local dtype = opts.dtype or "bf16"
  if not ref:has(dtype) then dtype = ref:has("fp16") and "fp16" or "fp32" end
  for s = 1, opts.seeds do
    local out = ("%s/seed_%d"):format(dir, s)
    local set, n = M.perturbation(ref, dtype, s)
    modules = n
    local done = opts.cache ~= false and core.path_kind(out .. "/verdict.json") == "file"
      and (core.json.read(out .. "/verdict.json") or {}).verdict ~= "error"
    if not done then
      opts.log(("calibrate: null run %d of %d (%d modules perturbed)"):format(s, opts.seeds, n))
      -- the yardstick is the reference perturbed by another draw: two implementations that round
      -- differently everywhere, neither in the reference's own order (its outputs not cached: they
      -- are not the reference's)
      local yardstick = bundle.open(opts.reference)
      yardstick:patch({ (M.perturbation(yardstick, dtype, s + 1000003)) })
      local o = { reference = yardstick, target = opts.reference, patches = { set }, unpatched = false, out = out,
                  cache = false, cache_dir = cache_dir, quiet = true, log = function() end,
                  sweep = "full" }  -- every component's figures: the bounds are fitted on them all
      for k, v in pairs(settings) do o[k] = v end
      parity_check(o)
    end
    dirs[#dirs + 1] = out
  end
  return M.read(dirs, "null run"), { seeds = opts.seeds, perturbation = M.PERTURBATION, modules = modules,
                                       runs_dir = dir }
end

--- The recipe of `runs` (parity.recipe's fields, without its hash).
---@param runs parity.CalibrationRun[]
---@param rule table {quantile, margin, below_floors}
---@param extra table|nil {holdout, bugs (runs), null (M.null_runs' second result)}
---@return table recipe
function M.recipe(runs, rule, extra)
  extra = extra or {}
  local kind = M.kind(runs)
  local th, derived, m = M.derive(runs, rule)
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
    rule = { quantile = rule.quantile, margin = rule.margin, false_alarm = rule.false_alarm,
             criteria = rule.false_alarm and m or nil, below_floors = rule.below_floors == true },
    thresholds = th, derived = derived, runs = list, bugs = bugs, holdout = extra.holdout, null = extra.null,
  }
end

return M
