--- parity.criteria — the verdict's criteria as data, and the one place they are judged.
---
--- A criterion is a row of M.TABLE:
---   name       what verdict.json calls it
---   stage      whose result it reads ("component": one component's figures, which parity.judge
---              asks about; the localize stage's `components` criterion sums them up)
---   reads      the figure: a dotted path into the result, or a function(result, facts) for a
---              derived one; a figure that is absent passes (nothing to judge)
---   rule       how the figure meets its bound: a name in M.RULES, or a function(value, bound,
---              result, facts) for a rule of its own
---   threshold  the bound: a threshold's name (parity.thresholds.DEFAULTS, which a --thresholds
---              file overrides) or a number; none for the `zero` rule
---   own        the reference's own figure, when the bound is relative: max(threshold x own, floor)
---   floor      a threshold's name: the relative bound's least value (the near-zero case)
---   applies_to a component class (M.class) or "all" (the default); component rows only
---   on         "isolated" or "accumulated": which view of a component it judges (component rows:
---              a component run on the reference's inputs, or one judged from the whole-model runs)
---   when       function(result, facts, th) -> false where the criterion does not apply
---   excused    function(result, facts, th) -> true where a failing figure is no failure (said why)
---   warn       a warning, never a failure
---   governed   the thresholds that switch it off (default: threshold and floor), for the audit;
---              "components" for the localize criterion that sums the component rows
---   says       the rule in words: a format of (threshold, own, floor), or function(result, facts)
---   interval   function(result, facts) -> {conclusive = false, says} where the figure cannot decide
---              the criterion (stage downstream's); the e2e criteria's come from parity.confidence
--- A stage of one's own may carry rows of the same shape as its `criteria` (docs/workflow.md).
local core = require("parity.core")

local M = {}
--- A row of M.TABLE (or of a stage's own `criteria`): the header says what each field is.
---@class parity.Criterion
---@field name string
---@field stage string a stage's name, or "component"
---@field reads string|fun(result: table, facts: parity.Facts|nil): number|nil a dotted path, or the figure derived
---@field rule string|fun(value: number, bound: number, result: table, facts: parity.Facts|nil): boolean
---@field threshold string|number|nil a threshold's name, or the bound itself
---@field own string|fun(result: table, facts: parity.Facts|nil): number|nil the reference's own figure
---@field floor string|nil a threshold's name
---@field applies_to string|nil a component class (M.class), or "all"
---@field on "isolated"|"accumulated"|nil
---@field when fun(result: table, facts: parity.Facts|nil, th: parity.Thresholds): boolean|nil
---@field excused fun(result: table, facts: parity.Facts|nil, th: parity.Thresholds): boolean|nil
---@field warn boolean|nil
---@field governed string[]|"components"|nil
---@field says string|fun(result: table, facts: parity.Facts|nil): string|nil
---@field interval fun(result: table, facts: parity.Facts|nil): table|nil
--- One criterion judged (M.judge), as verdict.json lists it.
---@class parity.CriterionResult
---@field name string
---@field value number the figure
---@field threshold number the bound it met or missed
---@field rule string the rule in words
---@field pass boolean
---@field warn boolean|nil a warning, never a failure
---@field stage string|nil whose result it read (set by parity.verdict.decide)
---@field why string|nil why a failure is only a warning (parity.verdict.precision_ordering)

--- The rules: whether a figure `v` meets its bound `b`.
---@type table<string, fun(v: number, b: number): boolean>
M.RULES = {
  zero = function(v) return v == 0 end,
  below = function(v, b) return v < b end,
  above = function(v, b) return v > b end,
  at_most = function(v, b) return v <= b end,
  at_least = function(v, b) return v >= b end,
}

local function non_finite(key)
  return function(r) return r[key] and r[key].nan + r[key].inf end
end

--- The static check's findings, split: those that are a bug (a class, not absorbed by the next
--- operation, not in a component a patch computes: facts.absorbed and facts.patched, parity.verdict's)
--- and the other differences.
local function static_split(s, facts)
  local bugs, other = {}, {}
  for _, f in ipairs(s.static) do
    local absorbed = f.class and facts and facts.absorbed(f.target)
    local patched = f.class and facts and facts.patched and facts.patched(f.target)
    if f.class and not absorbed and not patched then bugs[#bugs + 1] = f.detail
    else
      other[#other + 1] = f.detail .. (absorbed and " (absorbed by the next operation)" or "")
        .. (patched and not absorbed and " (a patch computes it: the port's file still holds it)" or "")
    end
  end
  return bugs, other
end

--- The reference's mean entropy over log V at or above which its distributions are near uniform
--- (the `signal` warning): random-init references reach 0.998, the fixtures' 0.06-0.32.
local NEAR_UNIFORM = 0.95

local function padded_says(r) return ("no padded vocabulary column (the target's %d past the vocabulary) wins the argmax")
  :format(r.padded.columns) end
local function has_padded(r) return r.padded ~= nil end

--- Every criterion parity judges, in the order each stage's are listed. The thresholds' values
--- and where each comes from: parity.thresholds.DEFAULTS and docs/thresholds.md.
---@type parity.Criterion[]
M.TABLE = {
  -- scaffold: the static weight check (a transposed, reordered or scaled weight, a bias dropped
  -- or added fails, unless the fault there is absorbed by the next operation: a constant factor
  -- before Gemma's post-feedforward norm; then, like other differences, it is a warning)
  { name = "static", stage = "scaffold", rule = "zero",
    reads = function(s, facts) return #(static_split(s, facts)) end,
    says = function(s, facts)
      local bugs = static_split(s, facts)
      return "no mapped weight transposed, reordered, scaled or missing" .. (#bugs > 0 and (": " .. bugs[1]) or "")
    end },
  { name = "static_other", stage = "scaffold", rule = "zero", warn = true,
    reads = function(s, facts) return #select(2, static_split(s, facts)) end,
    says = function(s, facts)
      local other = select(2, static_split(s, facts))
      return "mapped weights equal the reference's" .. (#other > 0 and (": " .. other[1]) or "")
    end },
  -- smoke: not a verdict criterion (the seeds call it a liveness check, 30%)
  { name = "smoke_live", stage = "smoke", reads = "match_rate", rule = "at_least", threshold = "smoke_match",
    own = "own_match_rate", warn = true, says = "greedy match >= %g x the reference's own %.3g" },
  -- e2e: the low-precision comparison (at fp32 in an fp32 check: thresholds.at)
  { name = "finite", stage = "e2e", reads = non_finite("target_non_finite"), rule = "zero",
    says = "no NaN/Inf in the target's logits" },
  -- (a failing R p95 may still be a warning: parity.verdict's precision-ordering rule)
  { name = "r_p95", stage = "e2e", reads = "r_ratio.p95", rule = "below", threshold = "r_p95",
    governed = { "r_p95", "r_p50_precision" }, says = "R p95 < %g" },
  { name = "kl", stage = "e2e", reads = "kl.p95", rule = "at_most", threshold = "kl_ratio", own = "own_kl.p95",
    floor = "kl_floor", says = "KL p95 <= max(%g x own %.3g, %g)" },
  { name = "cosine", stage = "e2e", reads = function(e) return e.cosine and 1 - e.cosine.p5 end, rule = "at_most",
    threshold = "cosine_ratio", own = function(e) return e.own_cosine and 1 - e.own_cosine.p5 end, floor = "cosine_floor",
    says = "1 - cosine p5 <= max(%g x own %.3g, %g)" },
  -- (every flip a near-tie switches it off too)
  { name = "top1", stage = "e2e", reads = "top1_ties_excluded.rate", rule = "above", threshold = "top1",
    governed = { "top1", "tie_factor" }, says = "top-1 agreement (near-ties excluded) > %g" },
  { name = "padded", stage = "e2e", reads = "padded.wins", rule = "zero", when = has_padded, says = padded_says },
  -- a reference whose next-token distributions are near uniform (random weights) leaves KL,
  -- cosine and top-1 little to see: said, not failed (R and R32 still judge)
  { name = "signal", stage = "e2e", reads = "reference_entropy", rule = "below", threshold = NEAR_UNIFORM, warn = true,
    says = function(e)
      return ("reference's distributions not near uniform (entropy / log V < %g)"):format(NEAR_UNIFORM)
        .. (e.reference_entropy < NEAR_UNIFORM and ""
          or ": they are, as a random-init model's: KL, cosine and top-1 have little signal here, R and R32 judge")
    end },
  -- e2e32: the fp32 leg (in an fp32 check against the reference's own bf16 noise, the comparison)
  { name = "finite32", stage = "e2e32", reads = non_finite("target_non_finite"), rule = "zero",
    says = "no NaN/Inf in the target's fp32 logits" },
  { name = "r32_p95", stage = "e2e32", reads = "r32.p95", rule = "below", threshold = "r32_p95",
    says = "R32 p95 < %g (fp32 leg)" },
  { name = "padded", stage = "e2e32", reads = "padded.wins", rule = "zero", when = has_padded, says = padded_says },
  -- localize: the component rows below, summed up (a fault the next operation absorbs, a spike,
  -- is reported, not failed)
  { name = "components", stage = "localize", reads = "faults", governed = "components",
    rule = function(_, _, l) return l.first_divergence == core.json.null or l.first_divergence.absorbed == true end,
    says = "no component adds an error of its own (R < r_p95, R32 < r32_p95)" },
  { name = "over_precision", stage = "localize", reads = function(l) return #(l.over_precision or {}) end,
    rule = "zero", warn = true,
    says = function(l)
      local o = (l.over_precision or {})[1]
      return "no component markedly more precise than the reference (R >= r_over)"
        .. (o and (": " .. o.target .. ", R " .. ("%.3g"):format(o.r)) or "")
    end },

  -- one component, run on the reference's inputs: its own error against the reference's own noise
  { name = "component_r", stage = "component", on = "isolated", reads = "r", rule = "below", threshold = "r_p95",
    applies_to = "all" },
  { name = "component_r32", stage = "component", on = "isolated", reads = "r32", rule = "below",
    threshold = "r32_p95", applies_to = "all" },
  -- consistently less precise than the reference (parity.judge.row_ratios): above the noise at
  -- more rows than chance allows (z >= row_z), by a margin (the rows' R p50 >= row_r_p50)
  { name = "component_rows", stage = "component", on = "isolated", reads = "rows_r.z", rule = "below",
    threshold = "row_z", applies_to = "all", governed = { "row_z", "row_r_p50" },
    excused = function(row, _, th) return row.rows_r.p50 < th.row_r_p50 end },
  -- one whose inputs differ, from the whole-model runs (fp32 when the target has it): its output
  -- is off and what it inherits is not (a component whose input is already off did not start it)
  { name = "component_acc_r32", stage = "component", on = "accumulated", reads = "acc_r32", rule = "below",
    threshold = "r32_p95", applies_to = "all",
    excused = function(row, _, th) return (row.inherited_r32 or 0) >= th.r32_p95 end },
  { name = "component_acc_r", stage = "component", on = "accumulated", reads = "acc_r", rule = "below",
    threshold = "r_p95", applies_to = "all", when = function(row) return row.acc_r32 == nil end,
    excused = function(row, _, th) return (row.inherited_r or 0) >= th.r_p95 end },
  -- markedly more precise than the reference at the low precision (seeds: over-precision, an
  -- extra upcast): a warning
  { name = "component_over", stage = "component", reads = "r", rule = "at_least", threshold = "r_over",
    applies_to = "all", warn = true, when = function(row) return row.r ~= nil and row.r > 0 end },
}

--- A component's class, from its module's type (and the LM head's place): norm, attention,
--- experts, mlp, embedding, lm_head, layer, model (the decoder stack: LlamaModel) or other. What
--- `applies_to` names.
---@param row parity.ComponentRow a components row ({reference, type})
---@return string class
function M.class(row)
  local t, path = row.type or "", row.reference or ""
  if path == "lm_head" or path:match("%.lm_head$") then return "lm_head" end
  for _, c in ipairs({ { "Norm", "norm" }, { "Attention", "attention" }, { "Attn", "attention" },
                       { "Expert", "experts" }, { "Moe", "experts" }, { "MoE", "experts" }, { "MLP", "mlp" },
                       { "Mlp", "mlp" }, { "FeedForward", "mlp" }, { "Embedding", "embedding" },
                       { "Layer$", "layer" }, { "Block$", "layer" }, { "Model$", "model" } }) do
    if t:find(c[1]) then return c[2] end
  end
  return "other"
end

--- The component classes M.class gives, in the order a summary lists them.
M.CLASSES = { "norm", "attention", "experts", "mlp", "embedding", "lm_head", "layer", "model", "other" }

--- The thresholds as they apply to one component: a recipe's (or a thresholds file's) bounds of
--- its class, `th.by_class[class]` (r_p95, r32_p95), over `th`'s own; `th` itself without them.
---@param th parity.Thresholds the thresholds as they apply (parity.thresholds.at)
---@param row parity.ComponentRow a components row ({reference, type})
---@return parity.Thresholds
function M.for_component(th, row)
  local own = th.by_class and th.by_class[M.class(row)]
  if not own then return th end
  local view = { by_class = false }
  for k, v in pairs(own) do view[k] = v end
  return setmetatable(view, { __index = th })
end

--- The value at a dotted path of `t` (nil when any step is missing).
local function at_path(t, path)
  for key in path:gmatch("[^%.]+") do
    if type(t) ~= "table" then return nil end
    t = t[key]
  end
  return t
end

local function figure(how, result, facts)
  if type(how) == "function" then return how(result, facts) end
  return at_path(result, how)
end

local function value_of(th, name)
  if type(name) == "number" then return name end
  local v = th[name]
  if v == nil then error(("criterion threshold '%s' is not a threshold (parity.thresholds.DEFAULTS)"):format(
    tostring(name)), 0) end
  return v
end

--- Whether criterion `c` applies to `result` at all (its class, its view, its `when`).
local function applies(c, result, facts, th)
  if c.stage == "component" then
    if c.applies_to and c.applies_to ~= "all" and c.applies_to ~= M.class(result) then return false end
    if c.on == "isolated" and result.isolated == false then return false end
    if c.on == "accumulated" and result.isolated ~= false then return false end
  end
  return not c.when or c.when(result, facts, th) ~= false
end

--- Judges one criterion on `result`: {name, value, threshold (the bound), rule (in words), pass,
--- warn}, or nil when it does not apply or its figure is absent.
---@param c parity.Criterion a criterion row
---@param result table the stage's result (a components row for a component criterion)
---@param th parity.Thresholds the thresholds as they apply
---@param facts parity.Facts|nil parity.verdict.facts
---@return parity.CriterionResult|nil
function M.judge(c, result, th, facts)
  if c.stage == "component" then th = M.for_component(th, result) end
  if not applies(c, result, facts, th) then return nil end
  local v = figure(c.reads, result, facts)
  if v == nil then return nil end
  local rule = type(c.rule) == "function" and c.rule or M.RULES[c.rule]
    or error(("criterion %s: unknown rule '%s'"):format(c.name, tostring(c.rule)), 0)
  local t = c.threshold and value_of(th, c.threshold)
  local own = c.own and figure(c.own, result, facts)
  local floor = c.floor and value_of(th, c.floor)
  local bound = (c.rule == "zero" or not t) and 0 or own and math.max(t * own, floor or -math.huge) or t
  local pass = rule(v, bound, result, facts) or (c.excused ~= nil and c.excused(result, facts, th) == true)
  local says = type(c.says) == "function" and c.says(result, facts) or c.says and c.says:format(t, own, floor) or c.name
  -- (a row may say itself how sure its figure is: {conclusive, says}, as the e2e figures' intervals)
  return { name = c.name, value = v, threshold = bound, rule = says, pass = pass, warn = c.warn or nil,
           interval = c.interval and c.interval(result, facts) or nil }
end

--- The criteria of stage `name` judged on its result, in table order, then `extra` (the rows a
--- stage of one's own carries).
---@param name string the stage's name
---@param result table its result
---@param th parity.Thresholds the thresholds as they apply (parity.thresholds.at)
---@param facts parity.Facts|nil parity.verdict.facts
---@param extra parity.Criterion[]|nil rows of the same shape
---@return parity.CriterionResult[]
function M.evaluate(name, result, th, facts, extra)
  local out = {}
  for _, list in ipairs({ M.TABLE, extra or {} }) do
    for _, c in ipairs(list) do
      if list == extra or c.stage == name then out[#out + 1] = M.judge(c, result, th, facts) end
    end
  end
  return out
end

--- Whether component criterion `name` passes on `row` (true where it does not apply).
---@param name string a component criterion's name ("component_r", "component_rows", ...)
---@param row parity.ComponentRow a components row
---@param th parity.Thresholds the thresholds as they apply
---@return boolean
function M.component_passes(name, row, th)
  for _, c in ipairs(M.TABLE) do
    if c.stage == "component" and c.name == name then
      local j = M.judge(c, row, th)
      return j == nil or j.pass
    end
  end
  error("no component criterion " .. tostring(name), 2)
end

--- Whether a component fails on its own figures: any of its failing (not warning) criteria.
---@param row parity.ComponentRow a components row
---@param th parity.Thresholds the thresholds as they apply
---@return boolean
function M.component_fails(row, th)
  if row.skipped then return false end
  for _, c in ipairs(M.TABLE) do
    if c.stage == "component" and not c.warn then
      local j = M.judge(c, row, th)
      if j and not j.pass then return true end
    end
  end
  return false
end

--- The thresholds that switch criterion `c` off (the audit's view, parity.thresholds.audit).
---@return string[]
local function governing(c)
  if type(c.governed) == "table" then return c.governed end
  return { c.threshold, c.floor }
end

--- The failing criteria (not warnings) that thresholds govern, each with whether `off` (the
--- names of the thresholds switched off) switches it off: {name, off}... A criterion is off when
--- any threshold governing it is; the localize stage's `components` when every component
--- criterion is.
---@param off table<string, boolean> threshold name -> switched off
---@return {name: string, off: boolean}[]
function M.gates(off)
  local function is_off(c)
    for _, n in ipairs(governing(c)) do
      if type(n) == "string" and off[n] then return true end
    end
    return false
  end
  local out = {}
  for _, c in ipairs(M.TABLE) do
    if c.stage ~= "component" and not c.warn and (c.threshold or c.governed) then
      local gone = true
      if c.governed == "components" then
        for _, k in ipairs(M.TABLE) do
          if k.stage == "component" and not k.warn then gone = gone and is_off(k) end
        end
      else
        gone = is_off(c)
      end
      out[#out + 1] = { name = c.name, off = gone }
    end
  end
  return out
end

return M
