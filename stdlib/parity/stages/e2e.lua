--- stage e2e — teacher-forced 3-tensor comparison at the low precision. Every model sees the same
--- sequences: the fp32 reference's greedy continuation of the prompts. At each generated
--- position the target (low precision) is compared with the reference at fp32, and the reference
--- at the low precision is the baseline of what precision alone costs:
---   R = ||t - r32|| / ||r_low - r32||, cosine(t, r32), KL(P_r32 || P_t), top-1 and top-k
---   agreement with r32, Δp = P_r32(tok) - P_t(tok) of the reference's token,
--- next to the reference's own cosine(r_low, r32) and KL(P_r32 || P_r_low): the distributional
--- criteria are judged relative to those. A top-1 flip where the reference's own top-2 gap is
--- within tie_factor x its precision noise (max |r_low - r32| at that position) is a near-tie.
local core = require("parity.core")
local figures = require("parity.figures")
local m = core.metrics
local dist, rate = figures.dist, figures.rate

local M = { name = "e2e" }

--- The metrics of target logits against the reference's, at the judged positions.
---@param t parity.Tensor target logits [.., V]
---@param r32 parity.Tensor reference fp32 logits, same shape
---@param rlow parity.Tensor reference low-precision logits, same shape
---@param tokens parity.Tensor the reference's tokens at those positions [..]
---@param opts {topk: integer, tie_factor: number, dtype: string}
---@return table result positions, shape, the figures' p5/p50/p95/max, top1, topk, ties, per_position
function M.compare(t, r32, rlow, tokens, opts)
  local n = tokens:numel()
  -- every per-position figure in one pass over the three tensors (host/logits_pass.cpp)
  local rows = m.logits_rows(t, r32, rlow, tokens, opts.topk)
  local r, cos, own_cos, kl, own_kl, dp, top1 = rows.r, rows.cosine, rows.own_cosine, rows.kl, rows.own_kl,
    rows.delta_p, rows.top1
  local topk_rate = n > 0 and rows.topk:mean():item() or 0

  -- near-ties: a flip within the reference's own precision noise
  local tie = top1:eq(0):logical_and(rows.top2_gap:le(rows.noise * opts.tie_factor))
  local n_ties = tie:sum():item()
  local agree = top1:sum():item()
  return {
    positions = n,
    shape = tokens:size(),
    r_ratio = dist(r),
    cosine = dist(cos), own_cosine = dist(own_cos),
    kl = dist(kl), own_kl = dist(own_kl),
    delta_p = dist(dp),
    top1 = rate(agree, n),
    top1_ties_excluded = rate(agree, n - n_ties),
    topk = { k = opts.topk, rate = topk_rate, stderr = n > 0 and math.sqrt(topk_rate * (1 - topk_rate) / n) or 0 },
    ties = {
      count = n_ties,
      rule = ("a top-1 disagreement counts as a near-tie when the fp32 reference's top-2 logit gap"
        .. " <= %g x max|ref_%s - ref_fp32| at that position; near-ties are left out of"
        .. " top1_ties_excluded"):format(opts.tie_factor, opts.dtype),
    },
    -- (the reference's own figures too: the verdict's intervals resample both, parity.confidence)
    per_position = { r_ratio = r:tolist(), cosine = cos:tolist(), own_cosine = own_cos:tolist(), kl = kl:tolist(),
                     own_kl = own_kl:tolist(), delta_p = dp:tolist(), top1 = top1:tolist(), near_tie = tie:tolist() },
  }
end

--- How near uniform the reference's next-token distributions are: their mean entropy over
--- log V (1: uniform, a random-init model's; a trained model's is far below). Near 1 the
--- distributional criteria (KL, cosine, top-1) have little signal: flips are near-ties, KL tiny.
---@param logits parity.Tensor the reference's fp32 logits at the judged positions [.., V]
---@return number
function M.entropy(logits)
  local v = logits:size(logits:dim() - 1)
  if logits:numel() == 0 or v < 2 then return 0 end
  local lp = logits:double():log_softmax(-1)
  return (lp:exp() * lp):sum(-1):neg():mean():item() / math.log(v)
end

--- The target's logits at the low precision against the reference's (M.compare), with their
--- NaN/Inf anywhere and a padded LM head's columns; skipped in an fp32 check whose leg is e2e32.
---@param ctx parity.Context
---@return table result M.compare's, plus target_non_finite, dtype, baseline, padded; or {skipped}
function M.run(ctx)
  if not ctx:target_runs_low() then
    return { skipped = ("an fp32 check (--dtype fp32): the target runs in fp32 only, so the %s comparison (R, KL,"
      .. " cosine, top-1 at %s) does not apply; the fp32 leg (e2e32) judges it against the reference's own %s noise")
      :format(ctx.dtype, ctx.dtype, ctx.dtype) }
  end
  local r = ctx:reference_outputs()
  local full = ctx:target_logits(ctx.dtype)
  local judged = ctx:judged(full)
  local result = M.compare(judged, r.ref32, r.ref_low, r.tokens,
    { topk = ctx.settings.topk, tie_factor = ctx.thresholds.tie_factor, dtype = ctx.dtype })
  result.target_non_finite = m.non_finite(full)  -- anywhere, not only at the judged positions
  result.dtype = ctx.dtype  -- fp32 in an fp32 check against the reference's reassociation level
  result.baseline = ctx.baseline  -- "2-tensor": ref32 is the reference at the low precision, ref_low it perturbed
  result.padded = ctx:padded_columns(ctx.dtype)  -- a padded LM head's extra columns
  result.reference_entropy = M.entropy(r.ref32)
  -- the logits' errors, the target's against the reference's own (a report's QQ plot and histograms)
  result.error_distribution = require("parity.distribution").sketch(r.ref32, { reference = r.ref_low,
    target = judged }, { "reference", "target" }, { reference = true, target = true }) or core.json.null
  return result
end

--- What the verdict keeps of the result.
---@param e table the e2e stage's result
---@return table
function M.summary(e)
  return { padded = e.padded, positions = e.positions, r_ratio = e.r_ratio, cosine = e.cosine, own_cosine = e.own_cosine, kl = e.kl,
           own_kl = e.own_kl, delta_p = e.delta_p, top1 = e.top1, top1_ties_excluded = e.top1_ties_excluded,
           topk = e.topk, ties = e.ties.count, target_non_finite = e.target_non_finite,
           reference_entropy = e.reference_entropy }
end

return M
