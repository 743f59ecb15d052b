--- Thresholds of the verdict's criteria: defaults, overridable from a Lua table or a thresholds file.
--- A thresholds file is a Lua chunk returning a table; it runs in parity.sandbox (text only,
--- safe globals, limits), because such files are shared between teams. Values are validated.
local criteria = require("parity.criteria")
local sandbox = require("parity.sandbox")
local validate = require("parity.validate")

local M = {}
--- The thresholds a check judges by: M.DEFAULTS overlaid with a table or a file's (M.resolve),
--- or M.at's view of them at one precision. Each is a number; M.DEFAULTS says what it bounds.
---@class parity.Thresholds
---@field r_p95 number R p95 must be below this
---@field r_p50_precision number with an exact fp32 leg, a failing R p95 is a warning while R p50 is below this
---@field r32_p95 number the fp32 leg's R32 p95 must be below this
---@field r_p95_fp32 number R's bound in an fp32 check against the reference's fp32 reassociation level
---@field kl_ratio number KL p95 <= max(kl_ratio x the reference's own, kl_floor)
---@field kl_floor number
---@field cosine_ratio number 1 - cosine p5 <= max(cosine_ratio x the reference's own, cosine_floor)
---@field cosine_floor number
---@field top1 number top-1 agreement (near-ties excluded) must be above this
---@field tie_factor number a flip is a near-tie within tie_factor x the reference's own precision noise
---@field smoke_match number smoke's greedy match rate below this x the reference's own is a warning
---@field r_over number a component whose R is below this is markedly more precise (a warning)
---@field row_z number the rows' sign-test z at or above which a component is consistently less precise
---@field row_r_p50 number ... and the rows' R p50 at or above which it is
--- A threshold looser than its default (M.audit).
---@class parity.LoosenedThreshold
---@field name string
---@field default number
---@field given number
---@field off boolean so loose that its criterion is switched off (M.OFF)
---@field factor number how many times looser than the default counts as loosened (M.KINDS)
--- What resolved thresholds loosen (M.audit).
---@class parity.ThresholdAudit
---@field loosened parity.LoosenedThreshold[] in name order
---@field switched_off string[] the names of the criteria switched off
---@field criteria_can_fail boolean false when every criterion they govern is switched off
---@field warnings string[] a line for each loosened threshold (and one when no criterion can fail)

--- name -> default. Criteria compare per-position percentiles of the e2e stages; the
--- distributional ones are relative to what the reference itself does at the low precision
--- on the same positions, with an absolute floor for the near-zero case. docs/thresholds.md
--- gives the measurements behind each default.
M.DEFAULTS = {
  r_p95 = 1.2,          -- R = ||t - r32|| / ||r_low - r32||: p95 must be below this (seeds: tau_R)
  r_p50_precision = 1.1,  -- with an exact fp32 leg, R p95 >= r_p95 is only a warning (precision
                          -- ordering) while R p50 stays below this
  r32_p95 = 3e-4,       -- the fp32 leg, R32 = ||t32 - r32|| / ||r_low - r32||: p95 must be below this
  r_p95_fp32 = 6,       -- an fp32 check against a reference without a low-precision trace: R's bound
                        -- (e2e, components) in units of its fp32 reassociation level, the bar of
                        -- r32_p95 carried over: the bf16 noise is 2.1-2.6e4 x that level (the same
                        -- bugs' R32 and R, fixtures and dev set), 3e-4 x 2e4 = 6; correct ports of
                        -- another structure reach 1.6, the planted bugs 100 and more
  kl_ratio = 2.0,       -- KL(P_r32 || P_t) p95 <= max(kl_ratio x the reference's own KL p95, kl_floor)
  kl_floor = 1e-4,      --   (the reference's own: KL(P_r32 || P_r_low)), in nats
  cosine_ratio = 2.0,   -- 1 - cosine p5 <= max(cosine_ratio x the reference's own 1 - cosine p5,
  cosine_floor = 1e-6,  --   cosine_floor)
  top1 = 0.5,           -- top-1 agreement, near-ties excluded, must be above this (seeds: > 50%)
  tie_factor = 2.0,     -- a flip is a near-tie when the reference's top-2 gap <= tie_factor x its
                        -- own precision noise at that position (max |ref_low - ref32|)
  smoke_match = 0.3,    -- smoke: a greedy match rate below this x the reference's own low-precision
                        -- match rate is a warning (seeds: 30% liveness)
  r_over = 0.8,         -- a component whose own R is below this is markedly more precise than the
                        -- reference at the low precision (seeds: over-precision, an extra upcast): a warning
  row_z = 4,            -- a component is consistently less precise than the reference when its rows'
  row_r_p50 = 1.05,     --   R_i > 1 at more rows than chance allows (the sign test's z >= row_z: one
                        --   in 30,000 components by chance) and their R p50 >= row_r_p50
}

--- The diagnosis's cut-offs: where a difference starts, when a fit explains one, what an
--- amplifier is. They say what a figure is (exact arithmetic, a dtype's rounding), not how much
--- divergence a port may have, so no thresholds file or recipe changes them.
M.CUTOFFS = {
  -- a child's input differs from the reference's when their relative L2 (fp32) is above this; a
  -- fused q/k/v's reassociation is 2e-5 (parity.signatures)
  differs = 1e-3,
  -- a fit (a scale, a residual, an eps) explains a difference when it leaves under this share of
  -- it (parity.signatures, parity.causes); the fixtures' planted bugs leave under 1e-3, rounding 0.3-1
  fits = 0.05,
  -- a temperature's fit, which re-runs the reference in fp32, explains one under this: a q/k norm
  -- that undoes most of a projection's scale leaves 0.05 with another tau (parity.signatures)
  exact = 1e-3,
  -- two weights are equal within this x max(1, their largest |value|): fp32's own rounding of a
  -- converted weight is 6e-8 of it (parity.mapping)
  weight_equal = 1e-6,
  -- a weight is a scaled copy when the scaled fit leaves this share of its norm, the rounding of
  -- its dtype (a bf16 weight scaled is rounded again: 2^-8 = 3.9e-3) (parity.mapping)
  weight_scaled = { float32 = 1e-5, float64 = 1e-12, low = 4e-3 },
  -- a component is an amplifier when its output is off by at least this x what it inherits
  -- (parity.judge.role): twice, well past a carrier's run-to-run spread (1.0-1.3 on the fixtures)
  amplifies = 2,
}

--- The strictest value parity calibrate derives for each threshold it calibrates (unless asked,
--- --below-floors): what a check's own sampling and a correct port's other rounding reach
--- however alike the good ports were. Good ports whose components compute exactly what the
--- reference's do (R 1, R32 0, top-1 1) say nothing about how far another correct
--- implementation may be; these bounds stay where one is still inside.
M.CALIBRATION_FLOORS = {
  r_p95 = 1.1,         -- an R p95 a correct port reaches from its sampling alone: half the default's excess
  r32_p95 = 1e-4,      -- fp32's reassociation in units of bf16's noise is 2^-16 = 1.5e-5; a correct port of
                       -- another structure 6x that (a third of the default)
  kl_ratio = 1,        -- the reference's own: a port is not expected closer than its own low precision
  cosine_ratio = 1,    --   (the same)
  kl_floor = 1e-4,     -- the defaults' floors
  cosine_floor = 1e-6,
  top1 = 0.9,          -- (a rate: at most this) a flip outside the near-ties at 1 in 10 positions
  row_r_p50 = 1.05,    -- the default's: a component's rows above the noise by less are not consistently so
}

--- name -> {lo, hi}: the closed range a value must lie in (finite numbers only).
M.RANGES = {
  r_p95 = { 0, math.huge }, r_p50_precision = { 0, math.huge }, r32_p95 = { 0, math.huge }, r_p95_fp32 = { 0, math.huge },
  kl_ratio = { 0, math.huge }, kl_floor = { 0, math.huge }, cosine_ratio = { 0, math.huge },
  cosine_floor = { 0, 2 }, top1 = { 0, 1 }, tie_factor = { 0, math.huge }, smoke_match = { 0, 1 }, r_over = { 0, 1 },
  row_z = { 0, math.huge }, row_r_p50 = { 0, math.huge },
}

--- How each threshold loosens, and when it is "loosened" (listed in the verdict, a warning) or
--- "off" (its criterion switched off). A kind says the direction and the measure of looseness,
--- how many times looser the given value is than the default (below 1: tighter):
---   ratio  passes below, larger is looser: given / default                       loosened > 10x
---   r      an R bound (1 = the reference's own noise), larger is looser: the excess
---          over that noise, (given - 1) / (default - 1)                          loosened > 10x
---   rate   passes above (an agreement, a fraction), smaller is looser: default / given
---                                                                                loosened > 2x
---   gap    a cosine bound, passes above, smaller is looser: (1 - given) / (1 - default)
---                                                                                loosened > 10x
--- (parity.diff's thresholds use the same kinds.)
M.KINDS = { ratio = { loosened = 10, larger = true }, r = { loosened = 10, larger = true },
            rate = { loosened = 2 }, gap = { loosened = 10 } }

--- name -> kind, from the direction each stage judges it in (stages/e2e, e2e32, smoke, localize).
M.KIND = {
  r_p95 = "r", r_p50_precision = "r", row_r_p50 = "r", r_p95_fp32 = "r",
  r32_p95 = "ratio", kl_ratio = "ratio", kl_floor = "ratio", cosine_ratio = "ratio", cosine_floor = "ratio",
  tie_factor = "ratio", row_z = "ratio",
  top1 = "rate", smoke_match = "rate", r_over = "rate",
}

--- name -> the value at which (or past which) a threshold switches its criterion off: no result
--- a target with finite logits gives fails it. R and R32 are in units of the reference's own
--- low-precision noise (a target unrelated to the reference is at about 1/epsilon, 10^2..10^4);
--- KL in nats; kl_ratio and cosine_ratio multiply the reference's own KL and 1 - cosine, taken
--- as at least 1e-7 (a reference with less is warned about as switched off all the same);
--- 1 - cosine is at most 2; the rows' sign-test z is at most sqrt(rows), 10^4 at the size limits.
M.OFF = {
  r_p95 = 1e6, r_p50_precision = 1e6, r_p95_fp32 = 1e6, row_r_p50 = 1e6, r32_p95 = 1e6, kl_floor = 1e6, kl_ratio = 1e13,
  cosine_ratio = 1e8, cosine_floor = 2, tie_factor = 1e6, row_z = 1e6, top1 = 0, smoke_match = 0, r_over = 0,
}

--- How many times looser `given` is than `default` (math.huge at the end of a range: a rate of
--- 0, a cosine of -1).
---@param kind "ratio"|"r"|"rate"|"gap" a name in M.KINDS
---@param default number
---@param given number
---@return number
function M.looseness(kind, default, given)
  if kind == "ratio" then return default > 0 and given / default or (given > 0 and math.huge or 1) end
  if kind == "r" then return (given - 1) / (default - 1) end
  if kind == "rate" then return given <= 0 and math.huge or default / given end
  if kind == "gap" then return given <= -1 and math.huge or (1 - given) / (1 - default) end
  error("unknown threshold kind " .. tostring(kind))
end

--- "off" (at or past `off`, when given), "loosened" (past its kind's factor) or nil.
---@param kind "ratio"|"r"|"rate"|"gap" a name in M.KINDS
---@param default number
---@param given number
---@param off number|nil the value at (or past) which the criterion is switched off (M.OFF)
---@return "off"|"loosened"|nil
function M.judge(kind, default, given, off)
  local k = M.KINDS[kind]
  if off and (k.larger and given >= off or not k.larger and given <= off) then return "off" end
  if M.looseness(kind, default, given) > k.loosened then return "loosened" end
end

--- A warning line for each loosened threshold ({name, default, given, off, factor}).
---@param loosened parity.LoosenedThreshold[]
---@return string[]
function M.loosened_lines(loosened)
  local out = {}
  for _, l in ipairs(loosened) do
    out[#out + 1] = ("loosened threshold %s = %g (default %g; %s)"):format(l.name, l.given, l.default,
      l.off and "so loose it is switched off" or ("more than %gx looser"):format(l.factor))
  end
  return out
end

--- What resolved thresholds loosen: { loosened = { {name, default, given, off}... } (in name
--- order), switched_off = { criterion... }, criteria_can_fail = false when every criterion
--- they govern is switched off, warnings = { line... } }.
---@param th parity.Thresholds M.resolve's
---@return parity.ThresholdAudit
function M.audit(th)
  local names, loosened, off = validate.sorted_keys(M.DEFAULTS), {}, {}
  for _, name in ipairs(names) do
    local how = M.judge(M.KIND[name], M.DEFAULTS[name], th[name], M.OFF[name])
    if how then
      loosened[#loosened + 1] = { name = name, default = M.DEFAULTS[name], given = th[name], off = how == "off",
                                  factor = M.KINDS[M.KIND[name]].loosened }
      off[name] = how == "off"
    end
  end
  -- a class's own bounds loosen its components' criteria only (listed, never switching a gate off)
  for _, class in ipairs(criteria.CLASSES) do
    for _, name in ipairs(validate.sorted_keys((th.by_class or {})[class] or {})) do
      local given = th.by_class[class][name]
      local how = M.judge(M.KIND[name], M.DEFAULTS[name], given, M.OFF[name])
      if how then
        loosened[#loosened + 1] = { name = ("by_class.%s.%s"):format(class, name), default = M.DEFAULTS[name],
                                    given = given, off = how == "off", factor = M.KINDS[M.KIND[name]].loosened }
      end
    end
  end
  -- the criteria they govern (parity.criteria: a criterion is off when a threshold it reads is)
  local gates, switched = criteria.gates(off), {}
  for _, gate in ipairs(gates) do
    if gate.off then switched[#switched + 1] = gate.name end
  end
  local warnings = M.loosened_lines(loosened)
  local can_fail = #switched < #gates
  if not can_fail then
    table.insert(warnings, 1, ("THESE THRESHOLDS SWITCH OFF EVERY CRITERION THEY GOVERN (%s): only NaN/Inf and the"
      .. " static weight check can still fail, so this verdict says nothing about equivalence"):format(
      table.concat(switched, ", ")))
  end
  return { loosened = loosened, switched_off = switched, criteria_can_fail = can_fail, warnings = warnings }
end

--- The thresholds a component class may have of its own (`by_class = { norm = { r_p95 = 1.3 } }`,
--- from a recipe or a thresholds file): the component criteria's bounds (parity.criteria.for_component).
M.PER_CLASS = { r_p95 = true, r32_p95 = true }

local check_table

local function check_classes(t, origin)
  if type(t) ~= "table" then error(("%s: by_class must be a table of class -> thresholds, got %s"):format(origin,
    type(t)), 0) end
  local known = {}
  for _, c in ipairs(criteria.CLASSES) do known[c] = true end
  for class, values in pairs(t) do
    if not known[class] then
      error(("%s: by_class: unknown component class '%s' (known: %s)"):format(origin, tostring(class),
        table.concat(criteria.CLASSES, ", ")), 0)
    end
    if type(values) ~= "table" then error(("%s: by_class.%s must be a table, got %s"):format(origin, class,
      type(values)), 0) end
    for k in pairs(values) do
      if not M.PER_CLASS[k] then
        error(("%s: by_class.%s: '%s' is not a per-class threshold (those: %s)"):format(origin, class, tostring(k),
          table.concat(validate.sorted_keys(M.PER_CLASS), ", ")), 0)
      end
    end
    check_table(values, ("%s: by_class.%s"):format(origin, class))
  end
end

check_table = function(t, origin)
  if type(t) ~= "table" then error(("%s: thresholds must be a table, got %s"):format(origin, type(t)), 0) end
  for k, v in pairs(t) do
    if k == "by_class" then
      check_classes(v, origin)
    elseif M.DEFAULTS[k] == nil then
      error(("%s: unknown threshold '%s' (known: %s)"):format(origin, tostring(k),
        table.concat(validate.sorted_keys(M.DEFAULTS), ", ")), 0)
    else
      if type(v) ~= "number" then
        error(("%s: threshold '%s' must be a number, got %s"):format(origin, k,
          type(v) == "string" and ("the string %q"):format(v) or type(v)), 0)
      end
      validate.number(("%s: threshold '%s'"):format(origin, k), v, M.RANGES[k][1], M.RANGES[k][2])
    end
  end
  return t
end
M.check = check_table

--- Loads a thresholds file in a sandbox.
---@param path string
---@return table<string, number> overrides the file's thresholds, validated (M.resolve overlays them)
function M.load_file(path)
  return check_table((sandbox.run_file(path, "thresholds file")), "thresholds file " .. path)
end

--- The thresholds as they apply when the target is compared at `dtype` (the yardstick's
--- precision, Context.dtype): at fp32 (an fp32 check against the reference's reassociation
--- level) R's bound is r_p95_fp32; elsewhere `th` itself.
---@param th parity.Thresholds
---@param dtype string the yardstick's precision: "bf16", "fp16" or "fp32"
---@return parity.Thresholds
function M.at(th, dtype)
  if dtype ~= "fp32" then return th end
  -- (per-class bounds are low-precision R's: an fp32 check's components judge by r_p95_fp32)
  return setmetatable({ r_p95 = th.r_p95_fp32, by_class = false }, { __index = th })
end

--- Defaults overlaid with `base` (a recipe's thresholds, parity.recipe), then with `overrides`
--- (a thresholds file's, or a table); each may carry `by_class`, merged a class and a name at a time.
---@param overrides table|nil threshold name -> value (validated: names, types, M.RANGES)
---@param base table|nil the same, under the overrides
---@return parity.Thresholds
function M.resolve(overrides, base)
  local out, classes = {}, {}
  for k, v in pairs(M.DEFAULTS) do out[k] = v end
  for _, t in ipairs({ base or {}, check_table(overrides or {}, "thresholds") }) do
    for k, v in pairs(t) do
      if k == "by_class" then
        for class, values in pairs(v) do
          classes[class] = classes[class] or {}
          for name, value in pairs(values) do classes[class][name] = value end
        end
      else
        out[k] = v
      end
    end
  end
  if next(classes) then out.by_class = classes end
  return out
end

return M
