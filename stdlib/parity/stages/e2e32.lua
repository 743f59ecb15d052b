--- stage e2e32 — the fp32 leg. The seeds compare only at the low precision, where a bug smaller
--- than the bf16 noise hides (an RMSNorm eps x10, tanh-GELU for exact GELU). When the target
--- has an fp32 trace, its fp32 logits on the same teacher-forced sequences are compared with the
--- fp32 reference, judged against the same noise:
---   R32 = ||t32 - r32|| / ||r_low - r32||   per position.
--- A correct port differs in fp32 only by float reassociation, far below the low-precision noise.
local core = require("parity.core")
local figures = require("parity.figures")
local m = core.metrics

local M = { name = "e2e32" }

--- The fp32 leg's metrics: R32 per position, and the whole-tensor relative L2 and max |diff|.
---@param t32 parity.Tensor the target's fp32 logits at the judged positions [.., V]
---@param r32 parity.Tensor the reference's fp32 logits, same shape
---@param rlow parity.Tensor the reference's low-precision logits, same shape
---@return table result {positions, r32 (p5/p50/p95/max), rel_l2, max_abs_diff, per_position}
function M.compare(t32, r32, rlow)
  local r = m.r_ratio_rows(t32, r32, rlow)
  return {
    positions = r:numel(),
    r32 = figures.dist(r),
    rel_l2 = m.rel_l2(t32, r32),
    max_abs_diff = m.max_abs_diff(t32, r32),
    per_position = { r32 = r:tolist() },
  }
end

--- The target's fp32 logits against the reference's (M.compare), with their NaN/Inf anywhere;
--- skipped, saying why, without an fp32 trace or with the 2-tensor baseline.
---@param ctx parity.Context
---@return table result M.compare's, plus target_non_finite (and padded in an fp32 check); or {skipped}
function M.run(ctx)
  if ctx.baseline == "2-tensor" and ctx.dtype == "fp32" then
    return { skipped = ("an fp32 check against %s, which has no low-precision trace: e2e compares the target in"
      .. " fp32 with the reference's own fp32 reassociation level (the 2-tensor baseline), so no second fp32 leg"):format(
      ctx.reference.path) }
  elseif ctx.baseline == "2-tensor" then
    return { skipped = ("%s has no fp32 trace: judged with the 2-tensor baseline, at %s only"):format(
      ctx.reference.path, ctx.dtype) }
  end
  if not ctx.target:has("fp32") then
    return { skipped = ("%s has no fp32 trace, so bugs smaller than the %s noise cannot be seen; %s"):format(
      ctx.target.path, ctx.dtype, ctx.target.no_fp32 or ("export one (parity_export.py --dtypes fp32,%s)"):format(ctx.dtype)) }
  end
  local r = ctx:reference_outputs()
  local full = ctx:target_logits("fp32")
  local result = M.compare(ctx:judged(full), r.ref32, r.ref_low)
  result.target_non_finite = m.non_finite(full)
  -- in an fp32 check this leg is the comparison: a padded LM head's extra columns are judged here
  if not ctx:target_runs_low() then result.padded = ctx:padded_columns("fp32") end
  return result
end

--- What the verdict keeps of the result.
---@param e table the e2e32 stage's result
---@return table
function M.summary(e)
  return { positions = e.positions, r32 = e.r32, rel_l2 = e.rel_l2, max_abs_diff = e.max_abs_diff, padded = e.padded }
end

return M
