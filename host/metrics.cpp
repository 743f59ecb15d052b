// host/metrics.cpp — comparison metrics, in float64.
#include "host/metrics.hpp"
#include "host/metrics_checks.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace parity::metrics {
namespace checks {

void same_shape(const char* metric, const at::Tensor& a, const at::Tensor& b) {
  if (!a.sizes().equals(b.sizes()))
    throw std::invalid_argument(fmt::format("{}: shapes differ: [{}] vs [{}]", metric,
                                            fmt::join(a.sizes(), ", "), fmt::join(b.sizes(), ", ")));
}

void has_last_dim(const char* metric, const at::Tensor& t) {
  if (t.dim() < 1 || t.size(-1) == 0)
    throw std::invalid_argument(fmt::format("{}: needs a non-empty last dim", metric));
}

at::Tensor token_ids(const char* metric, const at::Tensor& tokens, const at::Tensor& logits) {
  auto want = logits.sizes().vec();
  want.pop_back();
  if (!tokens.sizes().equals(want) || tokens.is_floating_point())
    throw std::invalid_argument(fmt::format("{}: tokens must be integer [{}], got [{}]", metric,
                                            fmt::join(want, ", "), fmt::join(tokens.sizes(), ", ")));
  int64_t v = logits.size(-1);
  auto tok = tokens.detach().reshape({-1}).to(at::kCPU, at::kLong).contiguous();
  if (tok.numel() && (tok.min().item<int64_t>() < 0 || tok.max().item<int64_t>() >= v))
    throw std::invalid_argument(fmt::format("{}: token ids outside 0..{}", metric, v - 1));
  return tok;
}

}  // namespace checks

namespace {

using checks::has_last_dim;
using checks::same_shape;

constexpr double kInf = std::numeric_limits<double>::infinity();

at::Tensor f64(const at::Tensor& t) { return t.detach().to(at::kCPU, at::kDouble); }

/// Rows of the last dim, processed in blocks of about kBlockElems elements so temporaries stay
/// small (reused by malloc, bounded for 128K-vocab logits) whatever the input's size.
constexpr int64_t kBlockElems = 1 << 21;

template <typename F>
void for_row_blocks(int64_t rows, int64_t row_len, F&& f) {
  int64_t step = std::max<int64_t>(1, kBlockElems / std::max<int64_t>(row_len, 1));
  for (int64_t r = 0; r < rows; r += step) f(r, std::min(rows, r + step));
}

/// Applies f to float64 row blocks of same-shaped tensors (the last dim is the row) and
/// assembles its per-row results into the inputs' shape without the last dim.
template <typename F>
at::Tensor per_row(std::initializer_list<at::Tensor> inputs, F&& f) {
  const at::Tensor& first = *inputs.begin();
  int64_t v = first.size(-1);
  std::vector<at::Tensor> rows;
  for (const auto& t : inputs) rows.push_back(t.detach().reshape({-1, v}));
  auto out = at::empty({rows[0].size(0)}, at::kDouble);
  for_row_blocks(rows[0].size(0), v, [&](int64_t a, int64_t b) {
    std::vector<at::Tensor> block;
    for (const auto& r : rows) block.push_back(r.slice(0, a, b).to(at::kCPU, at::kDouble));
    out.slice(0, a, b).copy_(f(block));
  });
  auto shape = first.sizes().vec();
  shape.pop_back();
  return out.reshape(shape);
}

double frob(const at::Tensor& t) { return t.numel() ? t.norm().item<double>() : 0.0; }

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();

bool all_finite(const at::Tensor& t) {
  return !t.is_floating_point() || t.numel() == 0 || t.isfinite().all().item<bool>();
}
bool all_finite(std::initializer_list<at::Tensor> ts) {
  for (const auto& t : ts)
    if (!all_finite(t)) return false;
  return true;
}

/// Per row of float64 blocks: true where every input is finite across the row.
at::Tensor finite_rows(const std::vector<at::Tensor>& x) {
  at::Tensor ok = x[0].isfinite().all(-1);
  for (size_t i = 1; i < x.size(); ++i) ok = ok.logical_and(x[i].isfinite().all(-1));
  return ok;
}

void check_parameter(const char* metric, const char* name, double v) {
  if (!std::isfinite(v) || v < 0)
    throw std::invalid_argument(fmt::format("{}: {} must be a finite number >= 0, got {}", metric, name, v));
}

}  // namespace

NonFinite non_finite(const at::Tensor& t) {
  if (!t.is_floating_point() && !t.is_complex()) return {};
  return {t.isnan().sum().item<int64_t>(), t.isinf().sum().item<int64_t>()};
}

double max_abs_diff(const at::Tensor& target, const at::Tensor& reference) {
  same_shape("max_abs_diff", target, reference);
  if (target.numel() == 0) return 0;
  if (!all_finite({target, reference})) return kNan;
  return (f64(target) - f64(reference)).abs().max().item<double>();
}

namespace {

/// Visits the elements of same-shaped CPU tensors `a` and `b` of one dtype in step: f(x, y) on
/// each pair as float, until stop() says so (asked every few thousand elements). Contiguous
/// ones in one loop; strided ones (a transpose, a narrowed block) dimension by dimension, the
/// last innermost.
template <typename T, typename F, typename S>
void each_pair(const at::Tensor& a, const at::Tensor& b, F&& f, S&& stop) {
  const T* pa = a.data_ptr<T>();
  const T* pb = b.data_ptr<T>();
  if (a.is_contiguous() && b.is_contiguous()) {
    constexpr int64_t kChunk = 4096;
    for (int64_t i = 0, n = a.numel(); i < n; i += kChunk) {
      for (int64_t j = i, end = std::min(n, i + kChunk); j < end; ++j)
        f(static_cast<float>(pa[j]), static_cast<float>(pb[j]));
      if (stop()) return;
    }
    return;
  }
  const int64_t dims = a.dim();
  auto size = a.sizes();
  auto sa = a.strides(), sb = b.strides();
  std::vector<int64_t> at_(dims, 0);
  const int64_t inner = dims ? size[dims - 1] : 1, ia = dims ? sa[dims - 1] : 0, ib = dims ? sb[dims - 1] : 0;
  for (;;) {
    for (int64_t j = 0; j < inner; ++j) f(static_cast<float>(pa[j * ia]), static_cast<float>(pb[j * ib]));
    if (stop()) return;
    int64_t d = dims - 2;  // the next index of the outer dimensions, odometer-wise
    for (; d >= 0; --d) {
      pa += sa[d], pb += sb[d];
      if (++at_[d] < size[d]) break;
      pa -= sa[d] * size[d], pb -= sb[d] * size[d];
      at_[d] = 0;
    }
    if (d < 0) return;
  }
}

}  // namespace

MaxGap max_gap(const at::Tensor& a, const at::Tensor& b, double limit) {
  same_shape("max_gap", a, b);
  MaxGap out;
  if (a.numel() == 0) return out;
  if (a.device().is_cpu() && b.device().is_cpu() && a.scalar_type() == b.scalar_type() &&
      (a.scalar_type() == at::kFloat || a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kHalf)) {
    float diff = 0, ref = 0;
    bool nan = false;
    auto visit = [&](float x, float y) {
      float d = std::fabs(x - y), r = std::fabs(y);
      nan |= std::isnan(d) || std::isnan(r);
      diff = d > diff ? d : diff;
      ref = r > ref ? r : ref;
    };
    auto stop = [&] { return nan || diff > limit; };
    switch (a.scalar_type()) {
      case at::kFloat: each_pair<float>(a, b, visit, stop); break;
      case at::kBFloat16: each_pair<at::BFloat16>(a, b, visit, stop); break;
      default: each_pair<at::Half>(a, b, visit, stop); break;
    }
    if (nan) return {kNan, kNan};
    return {diff, ref};
  }
  // other dtypes or devices: as a:float() - b:float() computes it
  auto x = a.detach().to(at::kCPU, at::kFloat), y = b.detach().to(at::kCPU, at::kFloat);
  return {(x - y).abs().max().item<double>(), y.abs().max().item<double>()};
}

namespace {

template <typename T>
void sketch_rows(const T* p, int64_t rows, int64_t cols, const std::vector<double>& signs, double* out) {
  for (int64_t r = 0; r < rows; ++r, p += cols) {
    double sum = 0;
    for (int64_t j = 0; j < cols; ++j) sum += signs[j] * static_cast<double>(static_cast<float>(p[j]));
    out[r] = sum;
  }
}

}  // namespace

at::Tensor row_sketch(const at::Tensor& t) {
  auto opts = at::TensorOptions().dtype(at::kDouble);
  if (t.dim() <= 1) return t.detach().to(at::kCPU, at::kDouble).reshape({-1}).clone();
  const auto st = t.scalar_type();
  const bool native = t.device().is_cpu() && (st == at::kFloat || st == at::kBFloat16 || st == at::kHalf);
  // strided views and other dtypes or devices: a contiguous copy (the weights themselves are not)
  auto x = native ? t.detach().contiguous() : t.detach().to(at::kCPU, at::kDouble).contiguous();
  const int64_t rows = x.size(0), cols = rows ? x.numel() / rows : 0;
  std::vector<double> signs(static_cast<size_t>(cols));
  int64_t s = 1;
  for (auto& v : signs) {
    s = (s * 16807) % 2147483647;
    v = s > 1073741823 ? 1.0 : -1.0;
  }
  auto out = at::empty({rows}, opts);
  double* o = out.data_ptr<double>();
  switch (x.scalar_type()) {
    case at::kFloat: sketch_rows(x.data_ptr<float>(), rows, cols, signs, o); break;
    case at::kBFloat16: sketch_rows(x.data_ptr<at::BFloat16>(), rows, cols, signs, o); break;
    case at::kHalf: sketch_rows(x.data_ptr<at::Half>(), rows, cols, signs, o); break;
    default: {  // float64
      const double* p = x.data_ptr<double>();
      for (int64_t r = 0; r < rows; ++r, p += cols) {
        double sum = 0;
        for (int64_t j = 0; j < cols; ++j) sum += signs[j] * p[j];
        o[r] = sum;
      }
    }
  }
  return out;
}

double mean_abs_diff(const at::Tensor& target, const at::Tensor& reference) {
  same_shape("mean_abs_diff", target, reference);
  if (target.numel() == 0) return 0;
  if (!all_finite({target, reference})) return kNan;
  return (f64(target) - f64(reference)).abs().mean().item<double>();
}

namespace {

/// The sums the L2 figures of two same-shaped tensors are made of, in float64: sum (a-b)^2,
/// a^2, b^2 and a*b. Any NaN or Inf makes a2 or b2 non-finite (a finite float squared is finite
/// in float64).
struct PairSums {
  double diff2 = 0, a2 = 0, b2 = 0, ab = 0;
  bool finite() const { return std::isfinite(a2) && std::isfinite(b2); }
};

template <typename T>
double as_double(T v) { return static_cast<double>(static_cast<float>(v)); }  // bfloat16, half: through float
double as_double(double v) { return v; }

template <typename T, typename U>
void add_sums(const T* a, const U* b, int64_t n, PairSums& s) {
  constexpr int64_t kChunk = 1024;  // summed per chunk, then chunk by chunk: accurate at any size
  for (int64_t i = 0; i < n; i += kChunk) {
    double d2 = 0, a2 = 0, b2 = 0, ab = 0;
    for (int64_t j = i, end = std::min(n, i + kChunk); j < end; ++j) {
      double x = as_double(a[j]), y = as_double(b[j]);
      d2 += (x - y) * (x - y), a2 += x * x, b2 += y * y, ab += x * y;
    }
    s.diff2 += d2, s.a2 += a2, s.b2 += b2, s.ab += ab;
  }
}

/// f(pointer) on a CPU tensor's data as its own type (float, bfloat16, half, double); other
/// dtypes and devices are a float64 copy first.
template <typename F>
void with_data(const at::Tensor& t, F&& f) {
  auto x = t.detach();
  const auto st = x.scalar_type();
  if (!x.device().is_cpu() || !(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf || st == at::kDouble))
    x = x.to(at::kCPU, at::kDouble);
  x = x.contiguous();
  switch (x.scalar_type()) {
    case at::kFloat: f(x.data_ptr<float>()); break;
    case at::kBFloat16: f(x.data_ptr<at::BFloat16>()); break;
    case at::kHalf: f(x.data_ptr<at::Half>()); break;
    default: f(x.data_ptr<double>());
  }
}

/// One pass over same-shaped tensors a and b (each in its own dtype, no float64 copies): a
/// logits-sized comparison makes no temporaries, where three float64 copies of 4 x 32 x 32K
/// logits were 100 MB.
PairSums pair_sums(const at::Tensor& a, const at::Tensor& b) {
  PairSums s;
  with_data(a, [&](const auto* pa) { with_data(b, [&](const auto* pb) { add_sums(pa, pb, a.numel(), s); }); });
  return s;
}

}  // namespace

double rel_l2(const at::Tensor& target, const at::Tensor& reference) {
  same_shape("rel_l2", target, reference);
  auto s = pair_sums(target, reference);
  if (!s.finite()) return kNan;
  double num = std::sqrt(s.diff2), den = std::sqrt(s.b2);
  if (den == 0) return num == 0 ? 0 : kInf;
  return num / den;
}

double l2_distance(const at::Tensor& a, const at::Tensor& b) {
  same_shape("l2_distance", a, b);
  auto s = pair_sums(a, b);
  return s.finite() ? std::sqrt(s.diff2) : kNan;
}

double cosine(const at::Tensor& a, const at::Tensor& b) {
  same_shape("cosine", a, b);
  auto s = pair_sums(a, b);
  if (!s.finite()) return kNan;
  double nx = std::sqrt(s.a2), ny = std::sqrt(s.b2);
  if (nx == 0 || ny == 0) return nx == ny ? 1.0 : 0.0;
  return s.ab / (nx * ny);
}

at::Tensor l2_distance_rows(const at::Tensor& a, const at::Tensor& b) {
  same_shape("l2_distance_rows", a, b);
  has_last_dim("l2_distance_rows", a);
  const int64_t v = a.size(-1), rows = a.numel() / v;
  auto out = at::empty({rows}, at::kDouble);
  double* o = out.data_ptr<double>();
  with_data(a, [&](const auto* pa) {
    with_data(b, [&](const auto* pb) {
      for (int64_t r = 0; r < rows; ++r) {
        PairSums s;
        add_sums(pa + r * v, pb + r * v, v, s);
        o[r] = std::sqrt(s.diff2);  // NaN where a NaN is, Inf where an Inf meets a finite value
      }
    });
  });
  auto shape = a.sizes().vec();
  shape.pop_back();
  return out.reshape(shape);
}

at::Tensor cosine_rows(const at::Tensor& a, const at::Tensor& b) {
  same_shape("cosine_rows", a, b);
  has_last_dim("cosine_rows", a);
  return per_row({a, b}, [](const std::vector<at::Tensor>& x) {
    auto nx = x[0].norm(2, -1), ny = x[1].norm(2, -1);
    auto c = (x[0] * x[1]).sum(-1) / (nx * ny);
    // zero rows: 1 when both are zero, 0 when one is
    auto both = (nx == 0).logical_and(ny == 0), one = (nx == 0).logical_xor(ny == 0);
    return c.masked_fill(both, 1.0).masked_fill(one, 0.0).masked_fill(finite_rows(x).logical_not(), kNan);
  });
}

Allclose allclose(const at::Tensor& target, const at::Tensor& reference, double rtol, double atol) {
  same_shape("allclose", target, reference);
  check_parameter("allclose", "rtol", rtol);
  check_parameter("allclose", "atol", atol);
  Allclose out;
  out.rtol = rtol;
  out.atol = atol;
  out.numel = target.numel();
  out.target_non_finite = non_finite(target);
  out.reference_non_finite = non_finite(reference);
  auto t = f64(target).flatten(), r = f64(reference).flatten();
  auto finite = t.isfinite().logical_and(r.isfinite());
  // Inf matched by the same Inf counts as equal (like torch.allclose); NaN never does.
  auto matched_inf = t.isinf().logical_and(t == r);
  out.non_finite_mismatch =
      finite.logical_not().logical_and(matched_inf.logical_not()).sum().item<int64_t>();
  auto tf = t.where(finite, at::zeros_like(t)), rf = r.where(finite, at::zeros_like(r));
  auto diff = (tf - rf).abs(), rabs = rf.abs();
  auto excess = diff - (atol + rtol * rabs);
  out.n_fail = (excess > 0).sum().item<int64_t>();
  const auto& nt = out.target_non_finite;
  const auto& nr = out.reference_non_finite;
  out.pass = out.n_fail == 0 && nt.nan + nt.inf + nr.nan + nr.inf == 0;
  if (out.numel == 0) return out;
  out.max_abs_diff = diff.max().item<double>();
  auto nonzero = rabs > 0;
  out.max_rel_diff = (diff / rabs).where(nonzero, at::zeros_like(diff)).max().item<double>();
  out.min_atol = std::max(0.0, (diff - rtol * rabs).max().item<double>());
  auto over = diff > atol;
  if (over.logical_and(nonzero.logical_not()).any().item<bool>()) {
    out.min_rtol = kInf;
  } else {
    auto need = ((diff - atol) / rabs).where(over, at::zeros_like(diff));
    out.min_rtol = need.max().item<double>();
  }
  // worst: the largest excess; a non-finite mismatch outranks any finite excess
  auto score = excess.where(finite.logical_or(matched_inf), at::full_like(excess, kInf));
  int64_t flat = score.argmax().item<int64_t>();
  out.worst_target = t[flat].item<double>();
  out.worst_reference = r[flat].item<double>();
  for (int64_t d = target.dim() - 1, rem = flat; d >= 0; --d) {
    out.worst_index.insert(out.worst_index.begin(), rem % target.size(d));
    rem /= target.size(d);
  }
  return out;
}

RRatio r_ratio(const at::Tensor& target, const at::Tensor& ref32, const at::Tensor& ref_low,
               double eps) {
  same_shape("r_ratio (target vs ref32)", target, ref32);
  same_shape("r_ratio (ref_low vs ref32)", ref_low, ref32);
  check_parameter("r_ratio", "eps", eps);
  RRatio out;
  out.numerator = l2_distance(target, ref32);
  out.denominator = l2_distance(ref_low, ref32);
  out.r = out.numerator / (out.denominator + eps);
  return out;
}

at::Tensor r_ratio_rows(const at::Tensor& target, const at::Tensor& ref32, const at::Tensor& ref_low,
                        double eps) {
  same_shape("r_ratio_rows (target vs ref32)", target, ref32);
  same_shape("r_ratio_rows (ref_low vs ref32)", ref_low, ref32);
  has_last_dim("r_ratio_rows", ref32);
  check_parameter("r_ratio_rows", "eps", eps);
  return per_row({target, ref32, ref_low}, [eps](const std::vector<at::Tensor>& x) {
    auto r = (x[0] - x[1]).norm(2, -1) / ((x[2] - x[1]).norm(2, -1) + eps);
    return r.masked_fill(finite_rows(x).logical_not(), kNan);
  });
}

at::Tensor kl_per_position(const at::Tensor& target_logits, const at::Tensor& ref_logits) {
  same_shape("kl", target_logits, ref_logits);
  has_last_dim("kl", ref_logits);
  return per_row({ref_logits, target_logits}, [](const std::vector<at::Tensor>& x) {
    auto lp = at::log_softmax(x[0], -1), lq = at::log_softmax(x[1], -1);  // P = ref, Q = target
    auto p = lp.exp();
    // 0 * log 0 = 0: where P is 0 the term is 0 (lp - lq may be -inf - x or nan there)
    auto kl = (p * (lp - lq)).masked_fill_(p == 0, 0.0).sum(-1);
    return kl.masked_fill(finite_rows(x).logical_not(), kNan);
  });
}

at::Tensor delta_p(const at::Tensor& target_logits, const at::Tensor& ref_logits, const at::Tensor& tokens) {
  same_shape("delta_p", target_logits, ref_logits);
  has_last_dim("delta_p", ref_logits);
  auto tok = checks::token_ids("delta_p", tokens, ref_logits);
  int64_t v = ref_logits.size(-1);
  auto want = tokens.sizes().vec();
  auto t = target_logits.detach().reshape({-1, v}), r = ref_logits.detach().reshape({-1, v});
  auto out = at::empty({tok.numel()}, at::kDouble);
  for_row_blocks(tok.numel(), v, [&](int64_t a, int64_t b) {
    std::vector<at::Tensor> x{t.slice(0, a, b).to(at::kCPU, at::kDouble), r.slice(0, a, b).to(at::kCPU, at::kDouble)};
    auto idx = tok.slice(0, a, b).unsqueeze(-1);
    auto pt = at::log_softmax(x[0], -1).gather(-1, idx).squeeze(-1).exp();
    auto pr = at::log_softmax(x[1], -1).gather(-1, idx).squeeze(-1).exp();
    out.slice(0, a, b).copy_((pr - pt).masked_fill(finite_rows(x).logical_not(), kNan));
  });
  return out.reshape(want);
}

at::Tensor top2_gap(const at::Tensor& x) {
  has_last_dim("top2_gap", x);
  return per_row({x}, [](const std::vector<at::Tensor>& b) {
    if (b[0].size(-1) < 2) return at::zeros({b[0].size(0)}, at::kDouble);
    auto top = std::get<0>(b[0].topk(2, -1));
    return (top.select(-1, 0) - top.select(-1, 1)).masked_fill(finite_rows(b).logical_not(), kNan);
  });
}

at::Tensor max_abs_diff_rows(const at::Tensor& a, const at::Tensor& b) {
  same_shape("max_abs_diff_rows", a, b);
  has_last_dim("max_abs_diff_rows", a);
  return per_row({a, b}, [](const std::vector<at::Tensor>& x) {
    return (x[0] - x[1]).abs().amax(-1).masked_fill(finite_rows(x).logical_not(), kNan);
  });
}

at::Tensor top1_agree(const at::Tensor& a, const at::Tensor& b) {
  same_shape("top1", a, b);
  has_last_dim("top1", a);
  auto x = a.detach().cpu(), y = b.detach().cpu();
  auto agree = (x.argmax(-1) == y.argmax(-1)).logical_and(finite_rows({x, y}));
  return agree.to(at::kDouble);
}

at::Tensor topk_agree(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  same_shape("topk", a, b);
  has_last_dim("topk", a);
  if (k < 1 || k > a.size(-1))
    throw std::invalid_argument(fmt::format("topk: k = {} outside 1..{}", k, a.size(-1)));
  auto x = a.detach().cpu(), y = b.detach().cpu();
  auto ia = std::get<1>(x.topk(k, -1)), ib = std::get<1>(y.topk(k, -1));
  auto hits = (ia.unsqueeze(-1) == ib.unsqueeze(-2)).any(-1).sum(-1);
  return (hits.to(at::kDouble) / static_cast<double>(k)).masked_fill(finite_rows({x, y}).logical_not(), 0.0);
}

double sqnr_db(const at::Tensor& target, const at::Tensor& reference) {
  same_shape("sqnr", target, reference);
  if (!all_finite({target, reference})) return kNan;
  auto r = f64(reference);
  double signal = r.pow(2).sum().item<double>();
  double noise = (r - f64(target)).pow(2).sum().item<double>();
  if (noise == 0) return kInf;
  return 10 * std::log10(signal / noise);
}

std::vector<double> percentiles(const at::Tensor& t, const std::vector<double>& qs) {
  if (t.numel() == 0) throw std::invalid_argument("percentiles: empty tensor");
  auto x = f64(t).flatten();
  std::vector<double> out;
  if (x.isnan().any().item<bool>()) return std::vector<double>(qs.size(), std::nan(""));
  auto sorted = std::get<0>(x.sort());
  const double* v = sorted.data_ptr<double>();
  int64_t n = sorted.numel();
  for (double q : qs) {
    if (!(q >= 0 && q <= 100))
      throw std::invalid_argument(fmt::format("percentiles: q = {} outside 0..100", q));
    double pos = q / 100.0 * static_cast<double>(n - 1);
    auto lo = static_cast<int64_t>(std::floor(pos));
    int64_t hi = std::min(lo + 1, n - 1);
    out.push_back(v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo)));
  }
  return out;
}

}  // namespace parity::metrics
