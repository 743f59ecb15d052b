--- parity.judge — how a component's figures are judged, by the components stage (its role) and
--- the localize stage (the faults) alike: whether it fails on its own figures, whether it is
--- consistently less precise than the reference (the per-row sign test), and what it does with
--- an error it inherits. `th` is the thresholds as they apply (parity.thresholds.at).
local criteria = require("parity.criteria")
local CUT = require("parity.thresholds").CUTOFFS
local m = require("parity.core").metrics

local M = {}
--- M.row_ratios's figures: a component's own error row by row against the reference's noise.
---@class parity.RowRatios
---@field rows integer rows with reference noise
---@field p50 number the rows' R_i p50
---@field ties number the share of rows with R_i = 1
---@field above number the share of the other rows with R_i > 1
---@field z number the sign test's z over those rows

--- The per-row view of a component's own error over all its calls: R_i = ||t_i - r32_i|| /
--- ||r_low_i - r32_i|| of every row whose reference noise is not zero. A component that computes
--- at a lower precision than the reference's adds its error on top of the reference's rounding
--- at every row: R_i > 1 at nearly every row. One that rounds in another order has an error of
--- the same size, independent of the reference's: R_i > 1 at about half of the rows. Rows the
--- target computes exactly as the reference does (R_i = 1: a tie) say neither. Returns {rows,
--- p50, ties (their share), above (the share of the other rows with R_i > 1), z (the sign test's
--- over those: (above - n/2) / sqrt(n/4), about normal when the target is not less precise)}.
---@param list {error: parity.Tensor, noise: parity.Tensor}[] per call: ||t_i - r32_i|| and ||r_low_i - r32_i|| by row
---@return parity.RowRatios|nil ratios nil when no row has reference noise
function M.row_ratios(list)
  local ratios = {}
  for _, v in ipairs(list) do
    local keep = v.noise:gt(0)
    if keep:sum():item() > 0 then ratios[#ratios + 1] = v.error:masked_select(keep) / v.noise:masked_select(keep) end
  end
  if #ratios == 0 then return nil end
  local q = #ratios == 1 and ratios[1] or torch.cat(ratios, 0)
  local n, ties = q:numel(), q:eq(1):sum():item()
  local above, judged = q:gt(1):sum():item(), n - ties
  return { rows = n, p50 = m.percentiles(q, { 50 })[1], ties = ties / n, above = judged > 0 and above / judged or 0,
           z = judged > 0 and (above - judged / 2) / math.sqrt(judged / 4) or 0 }
end

--- What a component does with divergence, from its own error (added: the isolated run on the
--- reference's inputs) and what it inherits (its input in the whole-model runs) against its
--- output there: "source" (adds an error itself), "amplifier" (adds none itself, but its output
--- is off by at least CUTOFFS.amplifies (twice) as much as its input, relative to the reference's own noise at each),
--- "carrier" (passes an inherited error on); nil when nothing reaches it. In fp32 when the target
--- has it (the error alone), else at the low precision.
---@param row parity.ComponentRow a components row
---@param th parity.Thresholds the thresholds as they apply (parity.thresholds.at)
---@return "source"|"amplifier"|"carrier"|nil
function M.role(row, th)
  if row.skipped then return nil end
  if M.fails(row, th) then return "source" end
  th = criteria.for_component(th, row)
  local fp32 = row.acc_r32 ~= nil and row.inherited_r32 ~= nil
  local out, inh = fp32 and row.acc_r32 or row.acc_r, fp32 and row.inherited_r32 or row.inherited_r
  local limit = fp32 and th.r32_p95 or th.r_p95
  if not out or out < limit then return nil end
  if inh and out >= CUT.amplifies * math.max(inh, limit) then return "amplifier" end
  return "carrier"
end

--- A component fails on its own figures (the component rows of parity.criteria): one run on
--- the reference's inputs by its R, R32 or rows; one whose inputs differ (isolated = false) on
--- the accumulated view, its output in the whole-model runs (fp32 when the target has it) off
--- while what it inherits is not.
---@param row parity.ComponentRow a components row
---@param th parity.Thresholds the thresholds as they apply (parity.thresholds.at)
---@return boolean
function M.fails(row, th) return criteria.component_fails(row, th) end

--- Consistently less precise than the reference (M.row_ratios; parity.criteria's
--- component_rows): its own error is above the reference's own noise at more rows than chance
--- allows, by a margin. A single Frobenius R hides this: a norm whose variance is computed in
--- bf16 adds its error at every row, but its R over all rows stays near 1.2. Only where the fp32
--- leg has nothing to say against it (exact in fp32, or no fp32 leg): a component that computes
--- something else (a scale) is above the noise at every row too.
---@param row parity.ComponentRow a components row
---@param th parity.Thresholds the thresholds as they apply
---@return boolean
function M.less_precise(row, th)
  return not criteria.component_passes("component_rows", row, th) and criteria.component_passes("component_r32", row, th)
end

--- Markedly more precise than the reference at the low precision (R < r_over: parity.criteria's
--- component_over).
---@param row parity.ComponentRow a components row
---@param th parity.Thresholds the thresholds as they apply
---@return boolean
function M.over_precise(row, th) return not criteria.component_passes("component_over", row, th) end

return M
