--- stage components — stage 2 of the seeds: the mapped components on the same real inputs
--- (every one by default, sweep "full"; with "adaptive", those no clean container vouches for: M.clean).
--- (With the 2-tensor baseline, "fp32" below is the reference at the low precision and "the
--- low precision" that reference with its inputs perturbed by machine epsilon; no fp32 leg.)
--- One tapped forward of the fp32 reference on the check's sequences captures each component's
--- inputs (and its fp32 outputs on them); then, per component and call, the reference's component
--- at the low precision and the target's at the low precision (and fp32 when it has it) run on
--- those inputs:
---   R = ||t - r32|| / ||r_low - r32||, R32 = ||t32 - r32|| / ||r_low - r32||
--- measure what each component adds itself, whatever it would have inherited. Tapped forwards of
--- the reference at the low precision and of the target give the accumulated view: the same
--- ratios on the outputs of whole-model runs (whether an error persists or is absorbed), and on
--- each component's input (what it inherits: its role, source, amplifier or carrier).
---
--- The runs happen while each model is loaded for its passes (a check holds one model at a time):
--- parity.sweep runs them and puts the figures together; this stage writes them.
---
--- Mapping: identical trees map by identity; otherwise the mapping given (--mapping) or one
--- proposed from the weights (parity.weights.auto). A target component that takes the leading
--- inputs of its reference gets those; one whose inputs differ otherwise has only the
--- accumulated view (isolated = false).
local core = require("parity.core")

local M = { name = "components", runs_target = "its components run one by one", needs = { "scaffold" } }
--- One row of the result's `components`: a mapped component's figures (its worst call's).
---@class parity.ComponentRow
---@field reference string the reference paths, joined by "+"
---@field target string
---@field type string the reference module's type
---@field depth integer
---@field transform string
---@field calls integer how often the reference's forward calls it
---@field interleave integer|nil the head size of an interleaved RoPE layout
---@field skipped string|nil why it has no figures ("never called", cannot re-run)
---@field never_called_by_target boolean|nil the target has it (with weights) but its forward never calls it
---@field isolated boolean|nil whether the target's component ran on the reference's inputs
---@field r number|nil its own R at the low precision (isolated)
---@field r32 number|nil its own R32 (isolated, fp32)
---@field acc_r number|nil R of its output in the whole-model runs
---@field acc_r32 number|nil R32 of the same
---@field inherited_r number|nil R of its first input in the whole-model runs
---@field inherited_r32 number|nil R32 of the same
---@field worst_call integer
---@field rel_l2_32 number|nil
---@field cosine_32 number|nil
---@field rows_r parity.RowRatios|nil the per-row view (parity.judge.row_ratios)
---@field role "source"|"amplifier"|"carrier"|nil parity.judge.role
---@field unpatched {r: number|nil, r32: number|nil}|nil a patched component's R and R32 as the port computes it
--- What localize's signatures fit a failing component on (kept in memory, never written): its
--- isolated outputs and inputs and a way to re-run it, or the whole-model outputs (isolated = false).
---@class parity.Evidence
---@field isolated boolean
---@field call integer the call the figures are of
---@field inputs parity.Tensor[]|nil the reference's captured inputs (isolated)
---@field input parity.Tensor|nil the first of them
---@field target_inputs parity.Tensor[]|nil those the target's component took
---@field r32 parity.Tensor|nil the reference's output (the anchor precision)
---@field t32 parity.Tensor|nil the target's in fp32 (or in an fp32 check's low precision, fp32)
---@field tlow parity.Tensor|nil the target's at the low precision
---@field params table<string, parity.Tensor> the reference component's parameters
---@field run_reference nil|fun(inputs: parity.Tensor[]): parity.Tensor|nil re-runs the reference's component
---@field run_target nil|fun(inputs: parity.Tensor[]): parity.Tensor|nil re-runs the target's component
---@field reference_low fun(): parity.Tensor|nil the reference's own low-precision output at that call (re-run; nil: none)
--- The whole-model captures inside the failing components, for signatures that look inside.
---@class parity.Inside
---@field reference table<string, parity.TapCall[]> path -> its calls in the reference's run
---@field target table<string, parity.TapCall[]> path -> its calls in the target's run
---@field pairs parity.MappingPair[]
---@field bundles {reference: parity.Bundle, target: parity.Bundle, reference_low: parity.Bundle}
---@field dtypes {reference: string, target: string, reference_low: string}

--- Returns the result and, kept for the localize stage (in memory only), the evidence of the
--- failing components (`evidence[reference path]`: their outputs and a way to re-run them),
--- the whole-model captures inside them (`inside`) and the first component whose input in the
--- whole fp32 runs is off (`first_inherited`).
---@param ctx parity.Context
---@param got table the scaffold stage's result and pairs (got.scaffold, got.kept.scaffold: parity.workflow)
---@return table result {mapping, components: parity.ComponentRow[], has_fp32, ...}, or {skipped}
---@return {evidence: table<string, parity.Evidence>, inside: parity.Inside, first_inherited: table|nil}|nil kept
function M.run(ctx, got)
  local scaffold, paired = got.scaffold, got.kept.scaffold  -- its pairs
  if not paired or not ctx.components_sweep then return { skipped = scaffold.skipped or scaffold.unmapped_reason } end
  -- the sweep the pairs started: each model's part ran while it was loaded (parity.sweep)
  local result, kept = ctx.components_sweep.finish()
  ctx.components_sweep = nil  -- (its runs are done: what it held goes)
  if result.skipped then return result end
  local absent_list = core.json.array()
  for _, a in ipairs(paired.absent or {}) do absent_list[#absent_list + 1] = a end
  return { mapping = scaffold.mapping, components = result.components, sweep = result.sweep, untested = result.untested,
           has_fp32 = result.has_fp32, accumulated_only = result.accumulated_only,
           unmapped_target = core.json.array(paired.unmapped or {}), no_counterpart = absent_list,
           no_counterpart_reference = core.json.array(paired.lacking or {}) }, kept
end

--- Clean enough to vouch for the components inside it (parity.sweep.clean).
M.clean = require("parity.sweep").clean

return M
