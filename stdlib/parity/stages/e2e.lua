--- stage e2e — teacher-forced 3-tensor comparison. Every model sees the same sequences: the
--- fp32 reference's greedy continuation of the prompts. At each generated position compare the
--- target (low precision) with the reference at fp32, using the reference at the low precision
--- as the baseline of what precision alone costs:
---   R = ||t - r32|| / ||r_low - r32||, cosine(t, r32), KL(P_r32 || P_t), top-1 and top-k
---   agreement with r32, and Δp = p_r32(tok) - p_t(tok) of the reference's token.
--- A top-1 flip where the reference's own top-2 gap is within tie_factor x its precision noise
--- (max |r_low - r32| at that position) is a near-tie, not a divergence.
local core = require("parity.core")
local m = core.metrics

local M = {}

local QS = { 5, 50, 95, 100 }

local function dist(t)
  local p = m.percentiles(t, QS)
  return { p5 = p[1], p50 = p[2], p95 = p[3], max = p[4] }
end

local function rate(hits, n)
  local r = n > 0 and hits / n or 0
  return { rate = r, stderr = n > 0 and math.sqrt(r * (1 - r) / n) or 0, count = hits, of = n }
end

---@param ctx table {ref32, ref_low, target: logits [K, N, V]; tokens [K, N]: the reference's
---                   tokens at those positions; topk; thresholds}
---@return table
function M.run(ctx)
  local r32, rlow, t = ctx.ref32, ctx.ref_low, ctx.target
  local n = r32:size(0) * r32:size(1)

  local r = m.r_ratio_rows(t, r32, rlow)
  local cos = m.cosine_rows(t, r32)
  local kl = m.kl(r32, t)
  local baseline_kl = m.kl(r32, rlow)
  local _, top1 = m.top1(t, r32)
  local topk_rate, topk = m.topk(t, r32, ctx.topk)

  local idx = ctx.tokens:unsqueeze(-1)
  local p_ref = torch.softmax(r32:double(), -1):gather(-1, idx):squeeze(-1)
  local p_t = torch.softmax(t:double(), -1):gather(-1, idx):squeeze(-1)
  local dp = p_ref - p_t

  -- near-ties: a flip within the reference's own precision noise
  local top2 = r32:topk(2, -1)
  local gap = top2:select(-1, 0) - top2:select(-1, 1)
  local noise = (rlow - r32):abs():amax(-1)
  local flips = top1:eq(0)
  local tie = flips:logical_and(gap:le(noise * ctx.thresholds.tie_factor))
  local n_ties = tie:sum():item()
  local agree = top1:sum():item()

  return {
    stage = "e2e",
    positions = n,
    shape = { r32:size(0), r32:size(1) },
    r_ratio = dist(r),
    cosine = dist(cos),
    kl = dist(kl),
    kl_baseline = dist(baseline_kl),
    delta_p = dist(dp),
    top1 = rate(agree, n),
    top1_ties_excluded = rate(agree, n - n_ties),
    topk = { k = ctx.topk, rate = topk_rate, stderr = math.sqrt(topk_rate * (1 - topk_rate) / n) },
    ties = {
      count = n_ties,
      rule = ("a top-1 disagreement counts as a near-tie when the fp32 reference's top-2 logit gap"
        .. " <= %g x max|ref_%s - ref_fp32| at that position; near-ties are left out of"
        .. " top1_ties_excluded"):format(ctx.thresholds.tie_factor, ctx.dtype),
    },
    per_position = { r_ratio = r:tolist(), cosine = cos:tolist(), kl = kl:tolist(), top1 = top1:tolist() },
  }
end

return M
