// host/logits_pass.cpp — every per-position figure of the e2e stage in one pass over the logits
// (NOTE [ One pass over the logits ] in logits_kernel.hpp): the SSE2 kernel, the choice of
// kernel, and the rows split over threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <vector>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "host/logits_kernel.hpp"
#include "host/metrics.hpp"
#include "host/metrics_checks.hpp"

namespace parity::metrics {
namespace {

/// Four floats: SSE2 where there is (every x86-64), plain arrays elsewhere. Explicit lanes make
/// the sums vectorise without letting the compiler reassociate float math (which would also
/// fold the NaN flags and the exp's rounding away).
struct V4 {
  static constexpr int kWidth = 4;
#ifdef __SSE2__
  __m128 v;
  static V4 load(const float* p) { return {_mm_loadu_ps(p)}; }
  static V4 all(float x) { return {_mm_set1_ps(x)}; }
  friend V4 operator+(V4 a, V4 b) { return {_mm_add_ps(a.v, b.v)}; }
  friend V4 operator-(V4 a, V4 b) { return {_mm_sub_ps(a.v, b.v)}; }
  friend V4 operator*(V4 a, V4 b) { return {_mm_mul_ps(a.v, b.v)}; }
  /// a * b + c, rounded twice (SSE2 has no fused multiply-add)
  friend V4 fma(V4 a, V4 b, V4 c) { return {_mm_add_ps(_mm_mul_ps(a.v, b.v), c.v)}; }
  friend V4 max(V4 a, V4 b) { return {_mm_max_ps(a.v, b.v)}; }
  friend V4 abs(V4 a) { return {_mm_andnot_ps(_mm_set1_ps(-0.0f), a.v)}; }
  /// Rounded to the nearest integer for x <= 0 (truncation of x - 1/2), and 2^n for integral n.
  friend V4 round_nonpositive(V4 a) { return {_mm_cvtepi32_ps(_mm_cvttps_epi32(_mm_sub_ps(a.v, _mm_set1_ps(0.5f))))}; }
  friend V4 pow2(V4 n) {
    return {_mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(_mm_cvttps_epi32(n.v), _mm_set1_epi32(127)), 23))};
  }
  void store(float* p) const { _mm_storeu_ps(p, v); }
  /// Bit l set where lane l > x.
  int greater(float x) const { return _mm_movemask_ps(_mm_cmpgt_ps(v, _mm_set1_ps(x))); }
#else
  float v[4];
  template <typename F>
  static V4 map(F f) { V4 r; for (int l = 0; l < 4; ++l) r.v[l] = f(l); return r; }
  static V4 load(const float* p) { return map([&](int l) { return p[l]; }); }
  static V4 all(float x) { return map([&](int) { return x; }); }
  friend V4 operator+(V4 a, V4 b) { return map([&](int l) { return a.v[l] + b.v[l]; }); }
  friend V4 operator-(V4 a, V4 b) { return map([&](int l) { return a.v[l] - b.v[l]; }); }
  friend V4 operator*(V4 a, V4 b) { return map([&](int l) { return a.v[l] * b.v[l]; }); }
  friend V4 fma(V4 a, V4 b, V4 c) { return map([&](int l) { return a.v[l] * b.v[l] + c.v[l]; }); }
  friend V4 max(V4 a, V4 b) { return map([&](int l) { return a.v[l] > b.v[l] ? a.v[l] : b.v[l]; }); }
  friend V4 abs(V4 a) { return map([&](int l) { return __builtin_fabsf(a.v[l]); }); }
  friend V4 round_nonpositive(V4 a) { return map([&](int l) { return static_cast<float>(static_cast<int32_t>(a.v[l] - 0.5f)); }); }
  friend V4 pow2(V4 n) { return map([&](int l) { return __builtin_ldexpf(1.0f, static_cast<int>(n.v[l])); }); }
  void store(float* p) const { for (int l = 0; l < 4; ++l) p[l] = v[l]; }
  int greater(float x) const { int m = 0; for (int l = 0; l < 4; ++l) m |= (v[l] > x) << l; return m; }
#endif
};

#include "host/logits_kernel.inl"

}  // namespace

LogitsKernel logits_kernel_sse2() { return rows_kernel<V4>; }

LogitsRows logits_rows(const at::Tensor& target, const at::Tensor& ref32, const at::Tensor& ref_low,
                       const at::Tensor& tokens, int64_t k, Simd simd) {
  checks::same_shape("logits_rows", target, ref32);
  checks::same_shape("logits_rows", ref_low, ref32);
  checks::has_last_dim("logits_rows", ref32);
  const at::Tensor tok = checks::token_ids("logits_rows", tokens, ref32);
  const int64_t v = ref32.size(-1);
  auto want = tokens.sizes().vec();
  if (k < 1 || k > v) throw std::invalid_argument(fmt::format("logits_rows: k = {} outside 1..{}", k, v));
  auto rows_of = [v](const at::Tensor& x) { return x.detach().to(at::kCPU, at::kFloat).reshape({-1, v}).contiguous(); };
  const at::Tensor t = rows_of(target), a = rows_of(ref32), b = rows_of(ref_low);
  const int64_t n = a.size(0);

  std::vector<at::Tensor> out(10);
  for (auto& o : out) o = at::empty({n}, at::kDouble);
  std::vector<double*> p;
  for (auto& o : out) p.push_back(o.data_ptr<double>());
  const float *tp = t.data_ptr<float>(), *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>();
  const int64_t* kp = tok.data_ptr<int64_t>();
  LogitsKernel kernel = simd == Simd::sse2 ? logits_kernel_sse2() : nullptr;
  if (!kernel) kernel = logits_kernel_avx2();
  if (!kernel) kernel = logits_kernel_sse2();
  // rows split over torch's thread count (at::parallel_for would run serially here: its OpenMP
  // pragma is compiled in this file, which is not built with -fopenmp)
  const int64_t kk = std::min<int64_t>(std::max<int64_t>(k, 2), v);
  auto work = [&](int64_t begin, int64_t end) {
    std::vector<float> top_val(2 * kk);
    std::vector<int64_t> top_idx(2 * kk);
    kernel(tp, ap, bp, v, kp, k, begin, end, p.data(), top_val.data(), top_idx.data());
  };
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  std::vector<std::thread> pool;
  struct Joiner {  // a failed thread start (or work's exception) must not leave threads joinable
    std::vector<std::thread>& pool;
    ~Joiner() { for (auto& th : pool) if (th.joinable()) th.join(); }
  } joiner{pool};
  for (int64_t w = 1; w < threads; ++w) pool.emplace_back(work, n * w / threads, n * (w + 1) / threads);
  work(0, n / threads);
  for (auto& o : out) o = o.reshape(want);
  return {out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7], out[8], out[9]};
}

}  // namespace parity::metrics
