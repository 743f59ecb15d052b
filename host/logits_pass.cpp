// host/logits_pass.cpp — every per-position figure of the e2e stage in one pass over the logits.
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
// and, in pass 1, the top-k of t and a (a small sorted array; four values are compared with its
// k-th at once, and most fail) for top-1, top-k and a's top-2 gap.
// Sums run in four float lanes (SSE2) over blocks of kBlock elements and in double across
// blocks; exp is a polynomial on those lanes (relative error < 2e-7 for the x <= 0 it gets).
// Rows run in parallel, on torch's thread count. Nothing of the logits' size is allocated.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <thread>
#include <vector>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "host/metrics.hpp"
#include "host/metrics_checks.hpp"

namespace parity::metrics {
namespace {

constexpr int64_t kBlock = 1024;
constexpr double kNan = std::numeric_limits<double>::quiet_NaN();

/// Four floats: SSE2 where there is (every x86-64), plain arrays elsewhere. Explicit lanes make
/// the sums vectorise without letting the compiler reassociate float math (which would also
/// fold the NaN flags and the exp's rounding away).
struct V4 {
#ifdef __SSE2__
  __m128 v;
  static V4 load(const float* p) { return {_mm_loadu_ps(p)}; }
  static V4 all(float x) { return {_mm_set1_ps(x)}; }
  friend V4 operator+(V4 a, V4 b) { return {_mm_add_ps(a.v, b.v)}; }
  friend V4 operator-(V4 a, V4 b) { return {_mm_sub_ps(a.v, b.v)}; }
  friend V4 operator*(V4 a, V4 b) { return {_mm_mul_ps(a.v, b.v)}; }
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
  friend V4 max(V4 a, V4 b) { return map([&](int l) { return a.v[l] > b.v[l] ? a.v[l] : b.v[l]; }); }
  friend V4 abs(V4 a) { return map([&](int l) { return std::fabs(a.v[l]); }); }
  friend V4 round_nonpositive(V4 a) { return map([&](int l) { return static_cast<float>(static_cast<int32_t>(a.v[l] - 0.5f)); }); }
  friend V4 pow2(V4 n) { return map([&](int l) { return std::ldexp(1.0f, static_cast<int>(n.v[l])); }); }
  void store(float* p) const { for (int l = 0; l < 4; ++l) p[l] = v[l]; }
  int greater(float x) const { int m = 0; for (int l = 0; l < 4; ++l) m |= (v[l] > x) << l; return m; }
#endif
  double sum() const {
    float x[4];
    store(x);
    return static_cast<double>(x[0]) + x[1] + x[2] + x[3];
  }
  float maximum() const {
    float x[4];
    store(x);
    return std::max(std::max(x[0], x[1]), std::max(x[2], x[3]));
  }
};

/// exp(x) for x <= 0 (and -inf): x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its degree-6
/// Taylor polynomial (relative error < 2e-7), times 2^n.
inline V4 exp_nonpositive(V4 x) {
  x = max(x, V4::all(-87.0f));  // below, exp underflows to 0 within the relative error anyway
  V4 n = round_nonpositive(x * V4::all(1.44269504088896341f));
  V4 r = x - n * V4::all(0.693145751953125f) - n * V4::all(1.42860682030941723e-6f);
  V4 p = V4::all(1.0f / 720) * r + V4::all(1.0f / 120);
  p = p * r + V4::all(1.0f / 24);
  p = p * r + V4::all(1.0f / 6);
  p = p * r + V4::all(0.5f);
  p = p * r + V4::all(1.0f);
  p = p * r + V4::all(1.0f);
  return p * pow2(n);
}

inline float exp_nonpositive(float x) {
  float in[4] = {x, 0, 0, 0}, out[4];
  exp_nonpositive(V4::load(in)).store(out);
  return out[0];
}

/// The k largest values seen and their indices, largest first (ties: the lower index first).
/// Most values fail the first comparison against the k-th largest so far.
struct TopK {
  int64_t k = 0, filled = 0;
  std::vector<int64_t> idx;
  std::vector<float> val;
  void reset(int64_t k_) {
    k = k_, filled = 0;
    idx.assign(k, -1);
    val.assign(k, -INFINITY);
  }
  float threshold() const { return filled < k ? -INFINITY : val[k - 1]; }
  void push(float x, int64_t j) {
    if (filled == k && !(x > val[k - 1])) return;
    int64_t pos = std::min(filled, k - 1);
    while (pos > 0 && x > val[pos - 1]) val[pos] = val[pos - 1], idx[pos] = idx[pos - 1], --pos;
    val[pos] = x, idx[pos] = j;
    filled = std::min(filled + 1, k);
  }
  /// Four values at j..j+3: the common case is one comparison for all four.
  void push4(V4 x, int64_t j) {
    if (int m = x.greater(threshold())) {
      float lanes[4];
      x.store(lanes);
      for (int l = 0; l < 4; ++l)
        if (m & (1 << l)) push(lanes[l], j + l);
    }
  }
};

struct RowOut {
  double r, cos, own_cos, kl, own_kl, dp, top1, topk, gap, noise;
};

RowOut one_row(const float* t, const float* a, const float* b, int64_t v, int64_t token, int64_t k, TopK& top_t,
               TopK& top_a) {
  // pass 1: maxima, sums of squares and products, max |b - a|, non-finite flags (x * 0 is NaN
  // exactly when x is not finite), the top-k of t and a (a's top 2 at least, for its gap);
  // float lanes over a block, double across blocks
  const int64_t kk = std::min<int64_t>(std::max<int64_t>(k, 2), v);
  top_t.reset(kk), top_a.reset(kk);
  double dt2 = 0, db2 = 0, ta = 0, tt = 0, aa = 0, ba = 0, bb = 0, ft = 0, fa = 0, fb = 0;
  V4 mt4 = V4::all(-INFINITY), ma4 = mt4, mb4 = mt4, noise4 = V4::all(0);
  const V4 zero = V4::all(0);
  const int64_t whole = v - v % 4;
  for (int64_t j0 = 0; j0 < whole; j0 += kBlock) {
    int64_t j1 = std::min(whole, j0 + kBlock);
    V4 s_dt2 = zero, s_db2 = zero, s_ta = zero, s_tt = zero, s_aa = zero, s_ba = zero, s_bb = zero, s_ft = zero,
       s_fa = zero, s_fb = zero;
    for (int64_t j = j0; j < j1; j += 4) {
      V4 x = V4::load(t + j), y = V4::load(a + j), z = V4::load(b + j);
      V4 d = x - y, e = z - y;
      s_dt2 = s_dt2 + d * d, s_db2 = s_db2 + e * e;
      s_ta = s_ta + x * y, s_tt = s_tt + x * x, s_aa = s_aa + y * y, s_ba = s_ba + z * y, s_bb = s_bb + z * z;
      s_ft = s_ft + x * zero, s_fa = s_fa + y * zero, s_fb = s_fb + z * zero;
      mt4 = max(mt4, x), ma4 = max(ma4, y), mb4 = max(mb4, z), noise4 = max(noise4, abs(e));
      top_t.push4(x, j), top_a.push4(y, j);
    }
    dt2 += s_dt2.sum(), db2 += s_db2.sum(), ta += s_ta.sum(), tt += s_tt.sum(), aa += s_aa.sum(), ba += s_ba.sum();
    bb += s_bb.sum(), ft += s_ft.sum(), fa += s_fa.sum(), fb += s_fb.sum();
  }
  float mt = mt4.maximum(), ma = ma4.maximum(), mb = mb4.maximum(), noise = noise4.maximum();
  for (int64_t j = whole; j < v; ++j) {  // the last v % 4
    double x = t[j], y = a[j], z = b[j];
    dt2 += (x - y) * (x - y), db2 += (z - y) * (z - y), ta += x * y, tt += x * x, aa += y * y, ba += z * y, bb += z * z;
    ft += x * 0, fa += y * 0, fb += z * 0;
    mt = std::max(mt, t[j]), ma = std::max(ma, a[j]), mb = std::max(mb, b[j]);
    noise = std::max(noise, std::fabs(b[j] - a[j]));
    top_t.push(t[j], j), top_a.push(a[j], j);
  }
  const bool ok_t = ft == 0, ok_a = fa == 0, ok_b = fb == 0;  // NaN (and so != 0) if any is not finite
  // pass 2: the softmax sums, and the KL numerators
  double zt = 0, za = 0, zb = 0, eat = 0, eab = 0;
  if (ok_a) {  // sums over a non-finite t or b are not read below
    const V4 mt_ = V4::all(mt), ma_ = V4::all(ma), mb_ = V4::all(mb);
    for (int64_t j0 = 0; j0 < whole; j0 += kBlock) {
      int64_t j1 = std::min(whole, j0 + kBlock);
      V4 s_zt = zero, s_za = zero, s_zb = zero, s_eat = zero, s_eab = zero;
      for (int64_t j = j0; j < j1; j += 4) {
        V4 x = V4::load(t + j), y = V4::load(a + j), z = V4::load(b + j);
        V4 pa = exp_nonpositive(y - ma_);
        s_za = s_za + pa;
        s_zt = s_zt + exp_nonpositive(x - mt_);
        s_zb = s_zb + exp_nonpositive(z - mb_);
        s_eat = s_eat + pa * (y - x);
        s_eab = s_eab + pa * (y - z);
      }
      zt += s_zt.sum(), za += s_za.sum(), zb += s_zb.sum(), eat += s_eat.sum(), eab += s_eab.sum();
    }
    for (int64_t j = whole; j < v; ++j) {
      double pa = exp_nonpositive(a[j] - ma);
      za += pa, zt += exp_nonpositive(t[j] - mt), zb += exp_nonpositive(b[j] - mb);
      eat += pa * (a[j] - t[j]), eab += pa * (a[j] - b[j]);
    }
  }
  const double lse_t = mt + std::log(zt), lse_a = ma + std::log(za), lse_b = mb + std::log(zb);
  auto cosine = [](double xy, double xx, double yy) {
    if (xx == 0 && yy == 0) return 1.0;
    if (xx == 0 || yy == 0) return 0.0;
    return xy / std::sqrt(xx * yy);
  };
  int64_t common = 0;
  for (int64_t x = 0; x < std::min(k, v); ++x)
    for (int64_t y = 0; y < std::min(k, v); ++y) common += top_t.idx[x] == top_a.idx[y];

  RowOut o;
  const bool ta_ok = ok_t && ok_a, ba_ok = ok_b && ok_a;
  o.r = ta_ok && ok_b ? std::sqrt(dt2) / (std::sqrt(db2) + 1e-12) : kNan;
  o.cos = ta_ok ? cosine(ta, tt, aa) : kNan;
  o.own_cos = ba_ok ? cosine(ba, bb, aa) : kNan;
  o.kl = ta_ok ? std::max(0.0, eat / za - lse_a + lse_t) : kNan;
  o.own_kl = ba_ok ? std::max(0.0, eab / za - lse_a + lse_b) : kNan;
  o.dp = ta_ok ? std::exp(a[token] - lse_a) - std::exp(t[token] - lse_t) : kNan;
  o.top1 = ta_ok && top_t.idx[0] == top_a.idx[0] ? 1.0 : 0.0;
  o.topk = ta_ok ? static_cast<double>(common) / static_cast<double>(std::min(k, v)) : 0.0;
  o.gap = ok_a ? (v < 2 ? 0.0 : static_cast<double>(top_a.val[0]) - top_a.val[1]) : kNan;
  o.noise = ba_ok ? noise : kNan;
  return o;
}

}  // namespace

LogitsRows logits_rows(const at::Tensor& target, const at::Tensor& ref32, const at::Tensor& ref_low,
                       const at::Tensor& tokens, int64_t k) {
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
  // rows split over torch's thread count (at::parallel_for would run serially here: its OpenMP
  // pragma is compiled in this file, which is not built with -fopenmp)
  auto work = [&](int64_t begin, int64_t end) {
    TopK top_t, top_a;
    for (int64_t i = begin; i < end; ++i) {
      RowOut o = one_row(tp + i * v, ap + i * v, bp + i * v, v, kp[i], k, top_t, top_a);
      double vals[10] = {o.r, o.cos, o.own_cos, o.kl, o.own_kl, o.dp, o.top1, o.topk, o.gap, o.noise};
      for (int c = 0; c < 10; ++c) p[c][i] = vals[c];
    }
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
