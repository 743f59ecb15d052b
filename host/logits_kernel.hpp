// host/logits_kernel.hpp — the fused logits pass's row kernel, one per instruction set.
//
// NOTE [ One pass over the logits ]
// The e2e stage compares three [rows, V] logits tensors (target t, fp32 reference a, the
// reference at the low precision b). Computed metric by metric (r_ratio_rows, kl, cosine_rows,
// delta_p, top1, topk, top2_gap, max_abs_diff_rows) each reads them again and makes float64
// copies and softmaxes of the logits' size. Here each row is read twice while it is in cache:
//   pass 1 (loads only):  maxima, the sums of squares and products (R, both cosines), max|b - a|,
//                         a NaN/Inf flag per tensor (x * 0 is NaN exactly when x is not finite)
//   pass 2 (3 exps/elem): Z_x = sum exp(x - max_x) for t, a, b, and sum exp(a - max_a) (a - t),
//                         sum exp(a - max_a) (a - b), which give
//                         KL(P_a || P_t) = sum p_a (a - t) - lse_a + lse_t (and the same for b)
// and, in pass 1, the top-k of t and a (a small sorted array; a vector of values is compared
// with its k-th at once, and most fail) for top-1, top-k and a's top-2 gap.
// Sums run in float lanes over blocks of 1024 elements and in double across blocks; exp is a
// polynomial on those lanes (relative error < 2e-7 for the x <= 0 it gets). The kernel is one
// template (logits_kernel.inl) compiled twice: 4 lanes of SSE2 (logits_pass.cpp, every x86-64)
// and 8 lanes of AVX2 with FMA (logits_avx2.cpp, built with -mavx2 -mfma, chosen at run time
// when the CPU has both). Nothing of the logits' size is allocated.
#pragma once
#include <cstdint>

namespace parity::metrics {

/// The ten figures of rows [begin, end), in LogitsRows' order: out[c][row]. `top_val` and
/// `top_idx` are scratch of 2 * max(k, 2) entries, one set per calling thread.
using LogitsKernel = void (*)(const float* t, const float* a, const float* b, int64_t v, const int64_t* tokens,
                              int64_t k, int64_t begin, int64_t end, double* const* out, float* top_val,
                              int64_t* top_idx);

/// The SSE2 kernel (4 lanes; plain arrays where there is no SSE2).
LogitsKernel logits_kernel_sse2();
/// The AVX2 + FMA kernel (8 lanes), or nullptr when this build or this CPU lacks them.
LogitsKernel logits_kernel_avx2();

}  // namespace parity::metrics
