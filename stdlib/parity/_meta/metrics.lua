---@meta _
-- stdlib/parity/_meta/metrics.lua — LuaCATS stubs for parity.core.metrics
-- (parity.metrics; bindings/metrics.cpp over host/metrics.hpp). Types only: never embedded,
-- never run.

--- Counts of non-finite elements.
---@class parity.NonFinite
---@field nan number
---@field inf number

--- metrics.allclose's result.
---@class parity.AllcloseResult
---@field pass boolean |t − r| <= atol + rtol·|r| everywhere, and no NaN or Inf on either side
---@field rtol number the tolerances used
---@field atol number
---@field numel number
---@field n_fail number elements over tolerance (finite ones)
---@field max_abs_diff number over elements finite on both sides
---@field max_rel_diff number max |t − r| / |r| over finite elements with r ≠ 0
---@field min_atol number smallest atol that passes at this rtol
---@field min_rtol number smallest rtol that passes at this atol (inf: none)
---@field worst_index number[] 0-based index of the element with the largest excess over tolerance
---@field worst_target number
---@field worst_reference number
---@field target_non_finite parity.NonFinite
---@field reference_non_finite parity.NonFinite
---@field non_finite_mismatch number positions where NaN/Inf do not match the other side

--- metrics.logits_rows's result: float64 tensors shaped like `tokens`.
---@class parity.LogitsRows
---@field r parity.Tensor R-ratio per position
---@field cosine parity.Tensor target vs r32
---@field own_cosine parity.Tensor r_low vs r32
---@field kl parity.Tensor KL(P_r32 ‖ P_t)
---@field own_kl parity.Tensor KL(P_r32 ‖ P_r_low)
---@field delta_p parity.Tensor P_r32(token) − P_t(token)
---@field top1 parity.Tensor 1 where the argmaxes agree
---@field topk parity.Tensor top-k overlap / k
---@field top2_gap parity.Tensor of r32
---@field noise parity.Tensor max |r_low − r32|

--- Comparison metrics, computed in float64 whatever the inputs' dtype; `t` is the target, `r`
--- the reference, rows are over the last dim. Every function raises (std::invalid_argument) on
--- a shape mismatch or a NaN, negative or out-of-range parameter; a non-Tensor argument is an
--- argument error. A NaN or Inf in the inputs is a failure: NaN results, disagreeing rows.
---@class parity.core.metrics
local metrics = {}

--- max |t − r|.
---@param t parity.Tensor
---@param r parity.Tensor
---@return number
function metrics.max_abs_diff(t, r) end

--- mean |t − r|.
---@param t parity.Tensor
---@param r parity.Tensor
---@return number
function metrics.mean_abs_diff(t, r) end

--- ‖t − r‖ / ‖r‖ (Frobenius): 0 when both are zero, inf when only r is.
---@param t parity.Tensor
---@param r parity.Tensor
---@return number
function metrics.rel_l2(t, r) end

--- Cosine similarity of the flattened tensors: 1 when both are zero, 0 when only one is.
---@param a parity.Tensor
---@param b parity.Tensor
---@return number
function metrics.cosine(a, b) end

--- max |a − b| and max |b| of same-shaped tensors in one pass, without copying either (strided
--- views too); the difference in float32, as a:float() − b:float() takes it; NaN, NaN when
--- either holds a NaN.
---@param a parity.Tensor
---@param b parity.Tensor
---@return number diff
---@return number ref
function metrics.max_gap(a, b) end

--- ‖a − b‖ (Frobenius).
---@param a parity.Tensor
---@param b parity.Tensor
---@return number
function metrics.l2_distance(a, b) end

--- 10·log10(Σr² / Σ(r − t)²) in dB; inf when equal.
---@param t parity.Tensor
---@param r parity.Tensor
---@return number
function metrics.sqnr(t, r) end

--- Cosine per row over the last dim: a float64 tensor of the shape without it.
---@param a parity.Tensor
---@param b parity.Tensor
---@return parity.Tensor
function metrics.cosine_rows(a, b) end

--- ||a_i - b_i|| per row over the last dim, in one float64 pass (NaN where a NaN is): a float64
--- tensor of the shape without it.
---@param a parity.Tensor
---@param b parity.Tensor
---@return parity.Tensor
function metrics.l2_distance_rows(a, b) end

--- A weight's fingerprint: each row's dot product (rows along dim 0, the other dims flattened)
--- with a fixed ±1 vector, in float64, in one pass (a 0-D or 1-D tensor: its values in float64).
--- The signs are the same on every machine (host/metrics.hpp says how they are made).
---@param t parity.Tensor
---@return parity.Tensor float64 [rows]
function metrics.row_sketch(t) end

--- NaN and Inf counts.
---@param x parity.Tensor
---@return parity.NonFinite
function metrics.non_finite(x) end

--- |t − r| <= atol + rtol·|r| everywhere (defaults rtol 1e-5, atol 1e-8, both finite and >= 0).
--- A third argument that is not a table, or a key other than rtol and atol, raises; so does a non-number field.
---@param t parity.Tensor
---@param r parity.Tensor
---@param opts? {rtol?: number, atol?: number}
---@return parity.AllcloseResult
function metrics.allclose(t, r, opts) end

--- R = ‖t − r32‖ / (‖r_low − r32‖ + eps), eps 1e-12 by default.
---@param t parity.Tensor
---@param r32 parity.Tensor
---@param r_low parity.Tensor
---@param eps? number
---@return number r
---@return number numerator
---@return number denominator
function metrics.r_ratio(t, r32, r_low, eps) end

--- R per row over the last dim (eps 1e-12 by default): a float64 tensor.
---@param t parity.Tensor
---@param r32 parity.Tensor
---@param r_low parity.Tensor
---@param eps? number
---@return parity.Tensor
function metrics.r_ratio_rows(t, r32, r_low, eps) end

--- KL(P_r ‖ P_t) per position from logits over the last dim (target first in the call).
---@param t parity.Tensor
---@param r parity.Tensor
---@return parity.Tensor
function metrics.kl(t, r) end

--- P_r(token) − P_t(token) per position (softmax over the last dim); `tokens` is int64 of the
--- logits' shape without the last dim.
---@param t parity.Tensor
---@param r parity.Tensor
---@param tokens parity.Tensor
---@return parity.Tensor
function metrics.delta_p(t, r, tokens) end

--- Per row: the largest minus the second largest value (0 for one column).
---@param x parity.Tensor
---@return parity.Tensor
function metrics.top2_gap(x) end

--- Per row: max |a − b|.
---@param a parity.Tensor
---@param b parity.Tensor
---@return parity.Tensor
function metrics.max_abs_diff_rows(a, b) end

--- Top-1 agreement: the rate and per position 1 where the argmaxes agree (float64).
---@param a parity.Tensor
---@param b parity.Tensor
---@return number rate the mean (0 for no positions)
---@return parity.Tensor per_position
function metrics.top1(a, b) end

--- Top-k agreement: the rate and per position |topk(a) ∩ topk(b)| / k.
---@param a parity.Tensor
---@param b parity.Tensor
---@param k integer
---@return number rate the mean (0 for no positions)
---@return parity.Tensor per_position
function metrics.topk(a, b, k) end

--- The e2e stage's per-position figures in one pass over three [.., V] logits tensors, the
--- same values as the metrics one by one to float32 rounding. opts.simd "sse2" forces the 4-lane
--- kernel, "best" (the default) uses AVX2+FMA where the CPU has it; another value, another key
--- or a sixth argument that is not a table raises.
---@param t parity.Tensor
---@param r32 parity.Tensor
---@param r_low parity.Tensor
---@param tokens parity.Tensor
---@param k integer
---@param opts? {simd?: "best"|"sse2"}
---@return parity.LogitsRows
function metrics.logits_rows(t, r32, r_low, tokens, k, opts) end

--- Percentiles (each 0..100) with linear interpolation, as numpy's default; NaN if any value is
--- NaN; raises for an empty tensor or a q out of range.
---@param x parity.Tensor
---@param qs number[]
---@return number[]
function metrics.percentiles(x, qs) end
