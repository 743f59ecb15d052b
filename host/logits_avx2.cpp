// host/logits_avx2.cpp — the fused logits pass's kernel on 8 lanes of AVX2 with FMA (NOTE [ One
// pass over the logits ] in logits_kernel.hpp). Built with -mavx2 -mfma; used only when the CPU
// has both (logits_kernel_avx2 says nullptr otherwise), so nothing compiled here may be shared
// with other files: the kernel lives in an anonymous namespace and uses no library inlines.
#include "host/logits_kernel.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace parity::metrics {
namespace {

struct V8 {
  static constexpr int kWidth = 8;
  __m256 v;
  static V8 load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static V8 all(float x) { return {_mm256_set1_ps(x)}; }
  friend V8 operator+(V8 a, V8 b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend V8 operator-(V8 a, V8 b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend V8 operator*(V8 a, V8 b) { return {_mm256_mul_ps(a.v, b.v)}; }
  /// a * b + c, rounded once
  friend V8 fma(V8 a, V8 b, V8 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  friend V8 max(V8 a, V8 b) { return {_mm256_max_ps(a.v, b.v)}; }
  friend V8 abs(V8 a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
  /// Rounded to the nearest integer for x <= 0 (truncation of x - 1/2), and 2^n for integral n.
  friend V8 round_nonpositive(V8 a) {
    return {_mm256_cvtepi32_ps(_mm256_cvttps_epi32(_mm256_sub_ps(a.v, _mm256_set1_ps(0.5f))))};
  }
  friend V8 pow2(V8 n) {
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n.v), _mm256_set1_epi32(127)), 23))};
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  /// Bit l set where lane l > x.
  int greater(float x) const { return _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(x), _CMP_GT_OQ)); }
};

#include "host/logits_kernel.inl"

}  // namespace

LogitsKernel logits_kernel_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has ? rows_kernel<V8> : nullptr;
}

}  // namespace parity::metrics

#else

namespace parity::metrics {
LogitsKernel logits_kernel_avx2() { return nullptr; }
}  // namespace parity::metrics

#endif
