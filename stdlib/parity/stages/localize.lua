--- stage localize — stage 3 of the seeds: from the components' figures, the primary fault and
--- what kind of bug it looks like.
--- A component fails when its own added error does (R >= r_p95 at the low precision, or
--- R32 >= r32_p95 in fp32), or when it is consistently less precise than the reference (its rows,
--- judge.less_precise). A parent contains its children, so the faults are the failing components
--- none of whose descendants fail; the earliest in execution order is the primary fault, the
--- others are suspects ranked by how far off they are. In the accumulated view (whole-model
--- runs), the error either persists (a step) or an enclosing component that adds none itself is
--- back within the noise (a spike: reported as absorbed, not as a fault of the model's output;
--- never for a precision fault); a top-level fault is followed to the next component.
--- The cause comes from signatures, in this order, on the fault's outputs (fp32 when the target
--- has it) and re-runs of it (parity.signatures: those re-running both models in fp32):
---   precision   less precise at its rows, or fails only at the low precision (exact in fp32)
---   missing     a reference module with weights inside the fault has no counterpart, or the
---               target has it and never calls it (then reported at that module)
---   scale, residual  the fault's own code between clean children: at a child's input (glue)
---   mask        a position sees one the reference's cannot (or not one it can)
---   routing     experts get other tokens than the reference's, or other combination weights
---   epsilon     a norm whose output is the reference's with another eps: reports both eps
---   scale       t = c x r: reports c
---   residual    t = r + alpha x, x the component's input: a residual dropped (-1) or scaled
---   layout      a gated MLP's gate and up swapped (the activation fit's operand)
---   activation  another nonlinearity between its children (or of itself)
---   layout      kv heads repeated as a tile (the reference re-run with its q heads re-ordered)
---   scale       the attention scores' temperature (the reference re-run with q/k scaled)
---   position    no error at position 0, growing with position (RoPE theta or layout), or
---               full-sized from position 1 where no temperature fits (RoPE's layout)
---   formula     anything else
--- With no fault but a failing fp32 leg, a component whose input is off is the first divergence
--- (at its input). A static-check finding on the fault overrides them; components markedly more
--- precise than the reference are listed as over-precision (a warning).
local core = require("parity.core")

local M = { name = "localize", needs = { "scaffold", "e2e", "e2e32", "components" } }

local causes = require("parity.causes")
local criteria = require("parity.criteria")
local descends = require("parity.mapping").descends
local fits = require("parity.fits")
local judge = require("parity.judge")
local signatures = require("parity.signatures")
local thresholds = require("parity.thresholds")

--- The faults among the components' figures, the primary one with its cause (the signatures
--- above), suspects, over-precise, amplifying and less precise components.
---@param ctx parity.Context
---@param got table the results of its needs and the components stage's evidence (got.kept.components)
---@return table result {faults, failing, first_divergence, suspects, over_precision, amplifiers, less_precise}
function M.run(ctx, got)
  local comp = got.components
  local kept = got.kept.components or {}  -- the failing components' evidence
  if not comp or comp.skipped then
    return { skipped = "no component figures" .. (comp and comp.skipped and (": " .. comp.skipped) or "") }
  end
  local th, rows = thresholds.at(ctx.thresholds, ctx.dtype), comp.components
  local failing = {}
  for _, row in ipairs(rows) do
    if judge.fails(row, th) then failing[#failing + 1] = row end
  end
  local faults = {}
  for _, row in ipairs(failing) do
    local inner = false
    for _, other in ipairs(failing) do
      if descends(other.reference, row.reference) then inner = true end
    end
    if not inner then faults[#faults + 1] = row end
  end
  -- over-precision: innermost components markedly closer to fp32 than the reference's own low
  -- precision (R < r_over, exact in fp32): an upcast the reference does not do; not a fault
  -- (not with the 2-tensor baseline: R < 1 there says closer than a perturbation, nothing about precision)
  local function precise(row) return judge.over_precise(row, th) end
  local over = core.json.array()
  for _, row in ipairs(ctx.baseline == "2-tensor" and {} or rows) do
    local inner = false
    for _, other in ipairs(rows) do
      if precise(other) and descends(other.reference, row.reference) then inner = true end
    end
    if precise(row) and row.isolated and (row.r32 or 0) < criteria.for_component(th, row).r32_p95 and not inner then
      over[#over + 1] = { reference = row.reference, target = row.target, r = row.r,
        cause = { class = "over_precision", detail = ("R %.3g: more precise than the reference at the low precision"
          .. " (an extra upcast, or a fused kernel that rounds once)"):format(row.r) } }
    end
  end
  -- components that add no error themselves but enlarge what they inherit (components.role)
  local amplifiers = core.json.array()
  for _, row in ipairs(rows) do
    if row.role == "amplifier" then
      amplifiers[#amplifiers + 1] = { reference = row.reference, target = row.target,
        inherited = row.inherited_r32 or row.inherited_r, accumulated = row.acc_r32 or row.acc_r }
    end
  end
  -- modules with weights that the target has but never calls (components): no fault by themselves
  -- (a tied head computed from the embedding's weight), where a fault containing one parts
  local never_called = {}
  for _, row in ipairs(rows) do
    if row.never_called_by_target then never_called[#never_called + 1] = row end
  end
  -- the innermost components consistently less precise than the reference (e2e grants the
  -- precision-ordering exception only when there are none)
  local less = core.json.array()
  for _, row in ipairs(faults) do
    if judge.less_precise(row, th) then
      less[#less + 1] = { reference = row.reference, target = row.target, rows = row.rows_r.rows, p50 = row.rows_r.p50,
                          above = row.rows_r.above, z = row.rows_r.z }
    end
  end
  -- no component adds an error itself, yet one's input in the whole fp32 runs is off: the forward
  -- code between components (outside every mapped one) differs before it
  -- (only when the fp32 leg fails: a long model's reassociation may build up past r32_p95; in
  -- an fp32 check against the reassociation level, e2e is that leg)
  local e32, e = got.e2e32, got.e2e
  local fp32_fails = (e32 and not e32.skipped and e32.r32.p95 >= th.r32_p95)
    or (ctx.dtype == "fp32" and e and not e.skipped and e.r_ratio.p95 >= th.r_p95)
  local between = #faults == 0 and fp32_fails and kept.first_inherited
  local skipped_module = between and never_called[1]  -- a module the target has and never calls, before it
  if skipped_module then
    between = nil
    faults[1] = skipped_module
  end
  if between then
    local c, resid = nil, nil
    if between.t and between.r then c, resid = fits.fit_scale(between.t:double(), between.r:double()) end
    local cause = (c and resid < thresholds.CUTOFFS.fits) and { class = "scale", detail = ("the input of %s is %.4g x the reference's, while"
        .. " no component before it adds an error of its own: a factor the forward code between components applies (or"
        .. " misses)"):format(between.reference, c), parameter = { name = "scale", value = c, at = between.reference } }
      or { class = "formula", detail = ("the input of %s differs from the reference's (%s %.3g), while no component"
        .. " before it adds an error of its own: the forward code between components"):format(between.reference,
          between.figure, between.ratio) }
    return { faults = 1, failing = #failing, suspects = {}, over_precision = over, amplifiers = amplifiers, less_precise = less,
      first_divergence = { reference = between.reference, target = between.target, type = between.type,
        r = core.json.null, r32 = core.json.null, pattern = "step", absorbed = false, at_input = true, cause = cause,
        evidence = { [between.figure == "R" and "inherited_r" or "inherited_r32"] = between.ratio, calls = between.call } } }
  end
  if #faults == 0 then
    return { faults = 0, failing = #failing, first_divergence = core.json.null, suspects = {}, over_precision = over,
             amplifiers = amplifiers, less_precise = less }
  end
  local primary = faults[1]
  -- step or spike, in the accumulated view: an error seen only at the low precision is followed
  -- at the low precision, others in fp32. Where the fault lies inside components, the innermost
  -- one whose output is back within the noise absorbed it (Gemma's post-feedforward norm inside
  -- the layer); an expert's sibling does not take its output, the MoE block does. A top-level
  -- fault is followed to the next component.
  local low_only = (primary.r32 == nil or primary.r32 < criteria.for_component(th, primary).r32_p95)
    and primary.isolated ~= false
  local function carried(row)
    local v, cth = low_only and row.acc_r or (row.acc_r32 or row.acc_r), criteria.for_component(th, row)
    return v, (low_only or not row.acc_r32) and cth.r_p95 or cth.r32_p95
  end
  local enclosing = {}
  for _, row in ipairs(rows) do
    if descends(primary.reference, row.reference) and not row.skipped and carried(row) then enclosing[#enclosing + 1] = row end
  end
  table.sort(enclosing, function(a, b) return a.depth > b.depth end)
  local after, absorbed
  if #enclosing > 0 then
    for _, row in ipairs(enclosing) do  -- one that adds an error, run on the reference's inputs, does not absorb it
      local v, limit = carried(row)
      if v < limit and row.isolated and not judge.fails(row, th) then after, absorbed = row, true break end
    end
    after = after or enclosing[#enclosing]  -- none absorbs it: carried to the outermost
  else
    for i, row in ipairs(rows) do
      if row == primary then
        for j = i + 1, #rows do
          if rows[j].depth <= primary.depth and not rows[j].skipped then after = rows[j] break end
        end
      end
    end
  end
  local value, limit = nil, nil
  if after then value, limit = carried(after) end
  if #enclosing == 0 then absorbed = value and value < limit end
  -- rounding error is noise, which no later operation undoes (a norm absorbs a scale, not noise):
  -- a component consistently less precise than the reference is a step wherever it is diluted
  if judge.less_precise(primary, th) then absorbed = false end
  local pattern = absorbed and "spike" or "step"
  local evidence = kept.evidence or {}
  -- a module the target lacks: one a given mapping declares so (target = false), or, mapped from
  -- the weights, one that nothing maps (a given mapping that leaves a module out says nothing)
  local lacks = comp.no_counterpart_reference
  if comp.mapping == "given" then
    lacks = {}
    for _, a in ipairs(comp.no_counterpart or {}) do
      for _, p in ipairs(a.reference) do lacks[#lacks + 1] = p end
    end
  end
  -- a module inside the fault that the target has and never calls is where it parts
  for _, row in ipairs(never_called) do
    if descends(row.reference, primary.reference) then primary = row break end
  end
  local cause = causes.cause(primary, evidence[primary.reference], th,
    { inside = kept.inside, no_counterpart = lacks, unmapped_target = comp.unmapped_target, never_called = never_called })
  -- a weight the static check found transposed, reordered or scaled explains the fault best
  local scaffold = got.scaffold
  for _, f in ipairs(scaffold and scaffold.static or {}) do
    if f.class and (f.target == primary.target or descends(f.target, primary.target)) then
      cause = { class = f.class, detail = f.detail .. " (static weight check)",
                parameter = f.value and { name = "scale", value = f.value } or nil }
    end
  end
  local suspects = {}
  for _, row in ipairs(faults) do suspects[#suspects + 1] = row end
  table.sort(suspects, function(a, b)
    local ka, kb = a.r32 or a.r or 0, b.r32 or b.r or 0
    if ka ~= kb then return ka > kb end
    return a.reference < b.reference
  end)
  local list = {}
  for i, row in ipairs(suspects) do
    list[i] = { reference = row.reference, target = row.target, r = row.r or core.json.null, r32 = row.r32 or core.json.null }
  end
  return {
    faults = #faults, failing = #failing,
    error_distribution = M.errors(evidence[primary.reference], primary) or core.json.null,
    first_divergence = {
      reference = primary.reference, target = primary.target, type = primary.type,
      r = primary.r or core.json.null, r32 = primary.r32 or core.json.null,
      pattern = pattern, absorbed = pattern == "spike",
      cause = cause,
      evidence = { followed_to = after and after.reference or core.json.null,
                   accumulated_after = value or core.json.null, calls = primary.calls,
                   rel_l2_32 = primary.rel_l2_32 or core.json.null },
    },
    suspects = list,
    over_precision = over,
    amplifiers = amplifiers,
    less_precise = less,
  }
end

--- The fault's error distributions (parity.distribution): its target output's error at the low
--- precision (and in fp32) against the reference's own low-precision error, at the call its
--- figures are of; nil without evidence (a fault found by other means) or a matching output.
---@param ev parity.Evidence|nil
---@param row parity.ComponentRow
---@return table|nil
function M.errors(ev, row)
  if not (ev and ev.r32) then return nil end
  local ok, own, why = pcall(ev.reference_low)  -- (a report's plot: the check goes on without it, saying why)
  local sketch = require("parity.distribution").sketch(ev.r32,
    { reference = ok and own or nil, target = ev.tlow, target_fp32 = ev.t32 ~= ev.tlow and ev.t32 or nil },
    { "reference", "target", "target_fp32" }, { reference = true, target = true })
  if not sketch then return nil end
  sketch.component, sketch.call = row.reference, ev.call
  if not (ok and own) then
    sketch.reference_missing = not ok and ("the reference's low-precision component did not re-run: "
      .. require("parity.errors").clean(own)) or tostring(why or "the reference's low-precision output is not at hand")
  end
  sketch.view = ev.isolated and "isolated: both components on the reference's inputs"
    or "accumulated: the outputs in the whole-model runs (its inputs differ)"
  return sketch
end

--- What the verdict keeps of the result.
---@param l table the localize stage's result
---@return table
function M.summary(l)
  return { faults = l.faults, first_divergence = l.first_divergence, suspects = l.suspects, over_precision = l.over_precision }
end

return M
