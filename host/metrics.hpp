// host/metrics.hpp — comparison metrics between a target tensor and a reference tensor.
// Every metric computes in float64 on CPU, whatever the inputs' dtype, and throws
// std::invalid_argument when shapes differ or a parameter (tolerance, eps, k) is NaN, negative
// or out of range. Dims are 0-based, like PyTorch.
//
// NOTE [ Non-finite inputs ]
// A NaN or Inf anywhere in a metric's inputs is a failure, the same way everywhere: scalar
// metrics return NaN (which fails every comparison, <= and >= alike); row metrics return NaN
// for each row holding one; top-1/top-k count such a row as a disagreement; allclose fails.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace parity::metrics {

struct NonFinite {
  int64_t nan = 0;
  int64_t inf = 0;
};
NonFinite non_finite(const at::Tensor& t);

double max_abs_diff(const at::Tensor& target, const at::Tensor& reference);
/// max |a - b| and max |b| of same-shaped tensors in one pass, the difference taken in float32
/// as a:float() - b:float() takes it (NaN when either holds one), without copying either: the
/// weight check's test of equality (strided views too: a transpose, a block of rows). It may
/// stop early once |a - b| passes `limit`: then diff > limit, and both figures are partial.
struct MaxGap {
  double diff = 0, ref = 0;
};
MaxGap max_gap(const at::Tensor& a, const at::Tensor& b,
               double limit = std::numeric_limits<double>::infinity());
/// The weight check's fingerprint of a weight (parity.weights): each row's dot product with a
/// fixed +-1 vector over its columns (rows along dim 0, columns its other dims flattened), in
/// float64, in one pass without a float64 copy: float64 [size(0)]. A 0-D or 1-D tensor gives its
/// values in float64. The signs are Park-Miller's sequence from 1 (s <- 16807 s mod 2^31 - 1,
/// +1 when s > 2^30 - 1): the same on every machine.
at::Tensor row_sketch(const at::Tensor& t);
double mean_abs_diff(const at::Tensor& target, const at::Tensor& reference);
/// ||target - reference|| / ||reference|| (Frobenius); 0 when both are zero, inf when only the
/// reference is.
double rel_l2(const at::Tensor& target, const at::Tensor& reference);
/// ||a - b|| (Frobenius): the R-ratio's numerator and denominator.
double l2_distance(const at::Tensor& a, const at::Tensor& b);
/// Cosine similarity of the flattened tensors; 1 when both are zero, 0 when only one is.
double cosine(const at::Tensor& a, const at::Tensor& b);
/// ||a_i - b_i|| per row over the last dim (a position's hidden state, a head's vector): shape =
/// input shape without its last dim, float64.
at::Tensor l2_distance_rows(const at::Tensor& a, const at::Tensor& b);
/// Cosine per row over the last dim: shape = input shape without its last dim, float64.
at::Tensor cosine_rows(const at::Tensor& a, const at::Tensor& b);

/// allclose(target, reference): |t - r| <= atol + rtol * |r| everywhere, and no NaN or Inf on
/// either side (even a matched one). rtol and atol must be finite and >= 0.
struct Allclose {
  bool pass = false;
  double rtol = 0, atol = 0;
  int64_t numel = 0, n_fail = 0;     ///< n_fail counts elements over tolerance (finite ones)
  double max_abs_diff = 0;           ///< over elements finite on both sides
  double max_rel_diff = 0;           ///< max |t - r| / |r| over finite elements with r != 0
  double min_atol = 0;               ///< smallest atol that passes at this rtol
  double min_rtol = 0;               ///< smallest rtol that passes at this atol (inf: none)
  std::vector<int64_t> worst_index;  ///< element with the largest excess over tolerance
  double worst_target = 0, worst_reference = 0;
  NonFinite target_non_finite, reference_non_finite;
  int64_t non_finite_mismatch = 0;  ///< positions where NaN/Inf do not match the other side
};
Allclose allclose(const at::Tensor& target, const at::Tensor& reference, double rtol, double atol);

/// The 3-tensor R-ratio: ||t - r32|| / (||r_low - r32|| + eps).
struct RRatio {
  double r = 0, numerator = 0, denominator = 0;
};
RRatio r_ratio(const at::Tensor& target, const at::Tensor& ref32, const at::Tensor& ref_low,
               double eps = 1e-12);

/// R-ratio per row over the last dim: shape without the last dim, float64.
at::Tensor r_ratio_rows(const at::Tensor& target, const at::Tensor& ref32, const at::Tensor& ref_low,
                        double eps = 1e-12);

/// KL(P_ref || P_target) per position from logits over the last dim: shape without last dim.
/// Target first, like every metric here.
at::Tensor kl_per_position(const at::Tensor& target_logits, const at::Tensor& ref_logits);

/// Δp per position: P_ref(token) - P_target(token), softmax over the last dim; `tokens` has the
/// logits' shape without the last dim (int64). Positive: the target gives the token less mass.
at::Tensor delta_p(const at::Tensor& target_logits, const at::Tensor& ref_logits, const at::Tensor& tokens);

/// Per row over the last dim: the largest minus the second largest value (0 for one column).
at::Tensor top2_gap(const at::Tensor& x);

/// Per row over the last dim: max |a - b|.
at::Tensor max_abs_diff_rows(const at::Tensor& a, const at::Tensor& b);

/// Every per-position figure of the e2e stage from one pass over three logits tensors [.., V]
/// (target, the reference, the reference's noise sample), in float32 arithmetic, summed in float32
/// within blocks of 1024 and in float64 across them (NOTE [ One pass over the logits ] in
/// logits_pass.cpp): the same values as r_ratio_rows,
/// cosine_rows (t vs ref, low vs ref), kl_per_position (t, low), delta_p, top1_agree,
/// topk_agree, top2_gap (ref) and max_abs_diff_rows (low vs ref), to float32 rounding, with
/// the same non-finite rules. Each is float64, shaped like `tokens`.
/// The kernel runs on 8 lanes of AVX2 with FMA where the CPU has them, else on 4 of SSE2;
/// `simd` = Simd::sse2 forces the latter (for tests and benchmarks).
struct LogitsRows {
  at::Tensor r, cosine, own_cosine, kl, own_kl, delta_p, top1, topk, top2_gap, noise;
};
enum class Simd { best, sse2 };
LogitsRows logits_rows(const at::Tensor& target, const at::Tensor& ref32, const at::Tensor& ref_low,
                       const at::Tensor& tokens, int64_t k, Simd simd = Simd::best);

/// Top-1 agreement: per position 1 where argmax over the last dim is equal (float64 tensor).
at::Tensor top1_agree(const at::Tensor& a, const at::Tensor& b);
/// Top-k agreement: per position |topk(a) ∩ topk(b)| / k over the last dim (float64 tensor).
at::Tensor topk_agree(const at::Tensor& a, const at::Tensor& b, int64_t k);

/// Signal-to-quantisation-noise ratio in dB: 10 log10(sum r^2 / sum (r - t)^2); inf if equal.
double sqnr_db(const at::Tensor& target, const at::Tensor& reference);

/// Percentiles (0..100) with linear interpolation, as numpy's default; NaN if any value is NaN.
std::vector<double> percentiles(const at::Tensor& t, const std::vector<double>& qs);

}  // namespace parity::metrics
