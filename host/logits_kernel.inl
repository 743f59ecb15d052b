// host/logits_kernel.inl — the row kernel of the fused logits pass (NOTE [ One pass over the
// logits ] in logits_kernel.hpp), generic over a vector of float lanes V. Included inside an
// anonymous namespace by each file that instantiates it (logits_pass.cpp with SSE2,
// logits_avx2.cpp with AVX2 + FMA), so that no function compiled for one instruction set is
// shared with the other: nothing here may use an inline function with external linkage that
// could be compiled differently in the two files (hence no std::vector, std::min or std::max).
//
// V provides: kWidth; load, all, store; + - *; fma(a, b, c) = a * b + c; max; abs;
// round_nonpositive (nearest integer for x <= 0); pow2 (2^n for integral n); greater(x) (bit l
// set where lane l > x).

constexpr int64_t kBlock = 1024;
constexpr double kNan = __builtin_nan("");

inline int64_t min_i(int64_t x, int64_t y) { return x < y ? x : y; }
inline int64_t max_i(int64_t x, int64_t y) { return x > y ? x : y; }
inline float max_f(float x, float y) { return x > y ? x : y; }  // NaN in y is dropped, as std::max

/// The lanes' sum, in double.
template <class V>
inline double sum(V x) {
  float l[V::kWidth];
  x.store(l);
  double s = 0;
  for (float y : l) s += y;
  return s;
}

/// The lanes' maximum.
template <class V>
inline float maximum(V x) {
  float l[V::kWidth];
  x.store(l);
  float m = l[0];
  for (float y : l) m = y > m ? y : m;
  return m;
}

/// exp(x) for x <= 0 (and -inf): x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its degree-6
/// Taylor polynomial (relative error < 2e-7), times 2^n.
template <class V>
inline V exp_nonpositive(V x) {
  x = max(x, V::all(-87.0f));  // below, exp underflows to 0 within the relative error anyway
  V n = round_nonpositive(x * V::all(1.44269504088896341f));
  V r = fma(n, V::all(-1.42860682030941723e-6f), fma(n, V::all(-0.693145751953125f), x));
  V p = fma(V::all(1.0f / 720), r, V::all(1.0f / 120));
  p = fma(p, r, V::all(1.0f / 24));
  p = fma(p, r, V::all(1.0f / 6));
  p = fma(p, r, V::all(0.5f));
  p = fma(p, r, V::all(1.0f));
  p = fma(p, r, V::all(1.0f));
  return p * pow2(n);
}

template <class V>
inline float exp_nonpositive1(float x) {
  float in[V::kWidth] = {x}, out[V::kWidth];
  exp_nonpositive(V::load(in)).store(out);
  return out[0];
}

/// The k largest values seen and their indices, largest first (ties: the lower index first), in
/// storage the caller owns. Most values fail the first comparison against the k-th largest.
struct TopK {
  int64_t k = 0, filled = 0;
  int64_t* idx = nullptr;
  float* val = nullptr;
  void reset(int64_t k_, float* v, int64_t* i) {
    k = k_, filled = 0, val = v, idx = i;
    for (int64_t j = 0; j < k; ++j) idx[j] = -1, val[j] = -__builtin_inff();
  }
  float threshold() const { return filled < k ? -__builtin_inff() : val[k - 1]; }
  void push(float x, int64_t j) {
    if (filled == k && !(x > val[k - 1])) return;
    int64_t pos = min_i(filled, k - 1);
    while (pos > 0 && x > val[pos - 1]) val[pos] = val[pos - 1], idx[pos] = idx[pos - 1], --pos;
    val[pos] = x, idx[pos] = j;
    filled = min_i(filled + 1, k);
  }
  /// A vector of values at j..j+W-1: the common case is one comparison for all of them.
  template <class V>
  void push_lanes(V x, int64_t j) {
    if (int m = x.greater(threshold())) {
      float lanes[V::kWidth];
      x.store(lanes);
      for (int l = 0; l < V::kWidth; ++l)
        if (m & (1 << l)) push(lanes[l], j + l);
    }
  }
};

struct RowOut {
  double r, cos, own_cos, kl, own_kl, dp, top1, topk, gap, noise;
};

template <class V>
RowOut one_row(const float* t, const float* a, const float* b, int64_t v, int64_t token, int64_t k, TopK& top_t,
               TopK& top_a) {
  constexpr int W = V::kWidth;
  // pass 1: maxima, sums of squares and products, max |b - a|, non-finite flags (x * 0 is NaN
  // exactly when x is not finite), the top-k of t and a (a's top 2 at least, for its gap);
  // float lanes over a block, double across blocks
  double dt2 = 0, db2 = 0, ta = 0, tt = 0, aa = 0, ba = 0, bb = 0, ft = 0, fa = 0, fb = 0;
  V mt4 = V::all(-__builtin_inff()), ma4 = mt4, mb4 = mt4, noise4 = V::all(0);
  const V zero = V::all(0);
  const int64_t whole = v - v % W;
  for (int64_t j0 = 0; j0 < whole; j0 += kBlock) {
    int64_t j1 = min_i(whole, j0 + kBlock);
    V s_dt2 = zero, s_db2 = zero, s_ta = zero, s_tt = zero, s_aa = zero, s_ba = zero, s_bb = zero, s_ft = zero,
      s_fa = zero, s_fb = zero;
    for (int64_t j = j0; j < j1; j += W) {
      V x = V::load(t + j), y = V::load(a + j), z = V::load(b + j);
      V d = x - y, e = z - y;
      s_dt2 = fma(d, d, s_dt2), s_db2 = fma(e, e, s_db2);
      s_ta = fma(x, y, s_ta), s_tt = fma(x, x, s_tt), s_aa = fma(y, y, s_aa), s_ba = fma(z, y, s_ba);
      s_bb = fma(z, z, s_bb);
      s_ft = s_ft + x * zero, s_fa = s_fa + y * zero, s_fb = s_fb + z * zero;
      mt4 = max(mt4, x), ma4 = max(ma4, y), mb4 = max(mb4, z), noise4 = max(noise4, abs(e));
      top_t.push_lanes(x, j), top_a.push_lanes(y, j);
    }
    dt2 += sum(s_dt2), db2 += sum(s_db2), ta += sum(s_ta), tt += sum(s_tt), aa += sum(s_aa), ba += sum(s_ba);
    bb += sum(s_bb), ft += sum(s_ft), fa += sum(s_fa), fb += sum(s_fb);
  }
  float mt = maximum(mt4), ma = maximum(ma4), mb = maximum(mb4), noise = maximum(noise4);
  for (int64_t j = whole; j < v; ++j) {  // the last v % W
    double x = t[j], y = a[j], z = b[j];
    dt2 += (x - y) * (x - y), db2 += (z - y) * (z - y), ta += x * y, tt += x * x, aa += y * y, ba += z * y, bb += z * z;
    ft += x * 0, fa += y * 0, fb += z * 0;
    mt = max_f(mt, t[j]), ma = max_f(ma, a[j]), mb = max_f(mb, b[j]);
    noise = max_f(noise, __builtin_fabsf(b[j] - a[j]));
    top_t.push(t[j], j), top_a.push(a[j], j);
  }
  const bool ok_t = ft == 0, ok_a = fa == 0, ok_b = fb == 0;  // NaN (and so != 0) if any is not finite
  // pass 2: the softmax sums, and the KL numerators
  double zt = 0, za = 0, zb = 0, eat = 0, eab = 0;
  if (ok_a) {  // sums over a non-finite t or b are not read below
    const V mt_ = V::all(mt), ma_ = V::all(ma), mb_ = V::all(mb);
    for (int64_t j0 = 0; j0 < whole; j0 += kBlock) {
      int64_t j1 = min_i(whole, j0 + kBlock);
      V s_zt = zero, s_za = zero, s_zb = zero, s_eat = zero, s_eab = zero;
      for (int64_t j = j0; j < j1; j += W) {
        V x = V::load(t + j), y = V::load(a + j), z = V::load(b + j);
        V pa = exp_nonpositive(y - ma_);
        s_za = s_za + pa;
        s_zt = s_zt + exp_nonpositive(x - mt_);
        s_zb = s_zb + exp_nonpositive(z - mb_);
        s_eat = fma(pa, y - x, s_eat);
        s_eab = fma(pa, y - z, s_eab);
      }
      zt += sum(s_zt), za += sum(s_za), zb += sum(s_zb), eat += sum(s_eat), eab += sum(s_eab);
    }
    for (int64_t j = whole; j < v; ++j) {
      double pa = exp_nonpositive1<V>(a[j] - ma);
      za += pa, zt += exp_nonpositive1<V>(t[j] - mt), zb += exp_nonpositive1<V>(b[j] - mb);
      eat += pa * (a[j] - t[j]), eab += pa * (a[j] - b[j]);
    }
  }
  const double lse_t = mt + __builtin_log(zt), lse_a = ma + __builtin_log(za), lse_b = mb + __builtin_log(zb);
  auto cosine = [](double xy, double xx, double yy) {
    if (xx == 0 && yy == 0) return 1.0;
    if (xx == 0 || yy == 0) return 0.0;
    return xy / __builtin_sqrt(xx * yy);
  };
  const int64_t kv = min_i(k, v);
  int64_t common = 0;
  for (int64_t x = 0; x < kv; ++x)
    for (int64_t y = 0; y < kv; ++y) common += top_t.idx[x] == top_a.idx[y];

  RowOut o;
  const bool ta_ok = ok_t && ok_a, ba_ok = ok_b && ok_a;
  o.r = ta_ok && ok_b ? __builtin_sqrt(dt2) / (__builtin_sqrt(db2) + 1e-12) : kNan;
  o.cos = ta_ok ? cosine(ta, tt, aa) : kNan;
  o.own_cos = ba_ok ? cosine(ba, bb, aa) : kNan;
  o.kl = ta_ok ? (eat / za - lse_a + lse_t > 0 ? eat / za - lse_a + lse_t : 0.0) : kNan;
  o.own_kl = ba_ok ? (eab / za - lse_a + lse_b > 0 ? eab / za - lse_a + lse_b : 0.0) : kNan;
  o.dp = ta_ok ? __builtin_exp(a[token] - lse_a) - __builtin_exp(t[token] - lse_t) : kNan;
  o.top1 = ta_ok && top_t.idx[0] == top_a.idx[0] ? 1.0 : 0.0;
  o.topk = ta_ok ? static_cast<double>(common) / static_cast<double>(kv) : 0.0;
  o.gap = ok_a ? (v < 2 ? 0.0 : static_cast<double>(top_a.val[0]) - top_a.val[1]) : kNan;
  o.noise = ba_ok ? noise : kNan;
  return o;
}

/// The LogitsKernel for V: rows [begin, end).
template <class V>
void rows_kernel(const float* t, const float* a, const float* b, int64_t v, const int64_t* tokens, int64_t k,
                 int64_t begin, int64_t end, double* const* out, float* top_val, int64_t* top_idx) {
  const int64_t kk = min_i(max_i(k, 2), v);
  TopK top_t, top_a;
  for (int64_t i = begin; i < end; ++i) {
    top_t.reset(kk, top_val, top_idx), top_a.reset(kk, top_val + kk, top_idx + kk);
    RowOut o = one_row<V>(t + i * v, a + i * v, b + i * v, v, tokens[i], k, top_t, top_a);
    const double vals[10] = {o.r, o.cos, o.own_cos, o.kl, o.own_kl, o.dp, o.top1, o.topk, o.gap, o.noise};
    for (int c = 0; c < 10; ++c) out[c][i] = vals[c];
  }
}
