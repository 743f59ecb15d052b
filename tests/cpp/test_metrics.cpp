// tests/cpp/test_metrics.cpp — host/metrics against hand-computed values.
#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "host/metrics.hpp"
#include <doctest/doctest.h>  // after torch: glog defines CHECK

namespace m = parity::metrics;
using doctest::Approx;

namespace {
at::Tensor t(std::vector<double> v) { return at::tensor(v, at::kDouble); }
at::Tensor t2(std::vector<double> v, int64_t rows) { return t(v).reshape({rows, -1}); }
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
}  // namespace

TEST_SUITE("metrics") {
  TEST_CASE("abs diffs") {
    CHECK(m::max_abs_diff(t({1, 2, 3}), t({1, 2.5, 2})) == Approx(1.0));
    CHECK(m::mean_abs_diff(t({1, 2, 3}), t({1, 2.5, 2})) == Approx(0.5));
  }

  TEST_CASE("max_gap: max |a - b| and max |b| in one pass, strided views as torch computes them") {
    auto a = at::randn({37, 53}), b = at::randn({37, 53});
    for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
      auto x = a.to(dtype), y = b.to(dtype);
      // contiguous, a transpose, a narrowed block, a transposed block: each as torch's a:float() - b:float()
      std::vector<std::pair<at::Tensor, at::Tensor>> views = {
          {x, y}, {x.t(), y.t()}, {x.narrow(0, 5, 20), y.narrow(0, 7, 20)},
          {x.narrow(1, 3, 11).t(), y.t().narrow(0, 3, 11)}, {x.t().contiguous(), y.t()}};
      for (auto& [p, q] : views) {
        auto g = m::max_gap(p, q);
        CHECK(g.diff == (p.to(at::kFloat) - q.to(at::kFloat)).abs().max().item<double>());
        CHECK(g.ref == q.to(at::kFloat).abs().max().item<double>());
      }
    }
    auto f = [](std::vector<double> v) { return t(v).to(at::kFloat); };
    auto g = m::max_gap(f({1, 2, -5}), f({1, 2.5, 3}));
    CHECK((g.diff == 8.0 && g.ref == 3.0));
    CHECK(std::isnan(m::max_gap(f({1, kNan}), f({1, 2})).diff));
    CHECK(std::isnan(m::max_gap(f({1, 2}), f({1, kNan})).ref));
    g = m::max_gap(f({1, 2}), f({kInf, 2}));  // as torch: |1 - inf| = inf, max |b| = inf
    CHECK((g.diff == kInf && g.ref == kInf));
    CHECK(m::max_gap(t({1.0, 2.5}), t({1.0, 2.0})).diff == 0.5);  // other dtypes: via float
    CHECK_THROWS(m::max_gap(t({1, 2}), t({1, 2, 3})));
  }

  TEST_CASE("row_sketch: each row against the fixed signs, any dtype and view alike") {
    // the first signs of Park-Miller's sequence from 1: 16807, 282475249, 1622650073, 984943658
    // (-, -, +, -), by hand
    auto s = m::row_sketch(t2({1, 10, 100, 1000, 2, 0, 0, 0}, 2));
    CHECK((s.scalar_type() == at::kDouble));
    CHECK((s.size(0) == 2 && s[0].item<double>() == -1 - 10 + 100 - 1000 && s[1].item<double>() == -2));
    auto a = at::randn({37, 4, 13});
    auto whole = m::row_sketch(a);
    for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
      auto x = a.to(dtype), ref = m::row_sketch(x.to(at::kDouble));
      CHECK(at::allclose(m::row_sketch(x), ref, 0, 1e-9));
      CHECK(at::allclose(m::row_sketch(x.narrow(0, 5, 20)), ref.narrow(0, 5, 20), 0, 1e-9));  // a block of rows
      CHECK(at::allclose(m::row_sketch(x.transpose(1, 2).contiguous().transpose(1, 2)), ref, 0, 1e-9));  // strided
    }
    CHECK(at::allclose(whole, m::row_sketch(a.reshape({37, 52})), 0, 1e-12));  // the other dims flattened
    CHECK(m::row_sketch(t({3, -4})).equal(t({3, -4})));  // 1-D: its values
    CHECK(m::row_sketch(t({7}).reshape({})).equal(t({7})));
  }

  TEST_CASE("relative L2") {
    CHECK(m::rel_l2(t({1, 2, 2}), t({1, 2, 3})) == Approx(1.0 / std::sqrt(14.0)));
    CHECK(m::rel_l2(t({0, 0}), t({0, 0})) == 0.0);
    CHECK(m::rel_l2(t({1, 0}), t({0, 0})) == kInf);
  }

  TEST_CASE("cosine, global and per row") {
    CHECK(m::cosine(t({1, 0}), t({0, 1})) == Approx(0.0));
    CHECK(m::cosine(t({1, 2}), t({2, 4})) == Approx(1.0));
    CHECK(m::cosine(t({1, 2}), t({-1, -2})) == Approx(-1.0));
    auto rows = m::cosine_rows(t2({1, 0, 1, 1, 0, 0}, 3), t2({1, 0, 1, -1, 0, 0}, 3));
    CHECK(rows.sizes().vec() == std::vector<int64_t>{3});
    CHECK(rows[0].item<double>() == Approx(1.0));
    CHECK(rows[1].item<double>() == Approx(0.0));
    CHECK(rows[2].item<double>() == Approx(1.0));  // both zero rows: equal
  }

  TEST_CASE("allclose reports the tolerances that would have passed and the worst element") {
    auto r = m::allclose(t2({1.0, 2.1, 3.0, 4.0}, 2), t2({1.0, 2.0, 3.0, 4.0}, 2), 0.0, 0.05);
    CHECK_FALSE(r.pass);
    CHECK(r.n_fail == 1);
    CHECK(r.max_abs_diff == Approx(0.1));
    CHECK(r.max_rel_diff == Approx(0.05));
    CHECK(r.min_atol == Approx(0.1));
    CHECK(r.min_rtol == Approx(0.025));  // (0.1 - 0.05) / 2
    CHECK(r.worst_index == std::vector<int64_t>{0, 1});
    CHECK(r.worst_target == Approx(2.1));
    CHECK(r.worst_reference == Approx(2.0));
    CHECK(m::allclose(t({1.0, 2.1}), t({1.0, 2.0}), 0.0, 0.1 + 1e-9).pass);
    CHECK(m::allclose(t({1.0, 2.1}), t({1.0, 2.0}), 0.05 + 1e-9, 0.0).pass);
  }

  TEST_CASE("allclose: a NaN or an Inf never passes, even a matched one") {
    auto nan = m::allclose(t({1, kNan}), t({1, 2}), 1e9, 1e9);
    CHECK_FALSE(nan.pass);
    CHECK(nan.target_non_finite.nan == 1);
    CHECK(nan.non_finite_mismatch == 1);
    CHECK(nan.worst_index == std::vector<int64_t>{1});
    CHECK_FALSE(m::allclose(t({kNan}), t({kNan}), 1e9, 1e9).pass);
    CHECK_FALSE(m::allclose(t({kInf, 1}), t({kInf, 1}), 1e9, 1e9).pass);
    CHECK_FALSE(m::allclose(t({1, 1}), t({kInf, 1}), 1e9, 1e9).pass);  // in the reference too
    auto inf = m::allclose(t({kInf, 1}), t({-kInf, 1}), 1e9, 1e9);
    CHECK_FALSE(inf.pass);
    CHECK(inf.non_finite_mismatch == 1);
    CHECK(m::allclose(t({1, 2}), t({0, 2}), 0, 0.5).min_rtol == kInf);  // r = 0: no rtol helps
  }

  TEST_CASE("parameters: NaN, negative or out-of-range tolerances, eps and k are refused") {
    CHECK_THROWS_WITH_AS(m::allclose(t({1}), t({2}), 0, kNan), "allclose: atol must be a finite number >= 0, got nan",
                         std::invalid_argument);
    CHECK_THROWS_AS(m::allclose(t({1}), t({2}), kNan, 0), std::invalid_argument);
    CHECK_THROWS_AS(m::allclose(t({1}), t({2}), -1e-3, 0), std::invalid_argument);
    CHECK_THROWS_AS(m::allclose(t({1}), t({2}), 0, kInf), std::invalid_argument);
    CHECK_THROWS_AS(m::r_ratio_rows(t2({1, 2}, 1), t2({1, 1}, 1), t2({1, 1}, 1), -1.0), std::invalid_argument);
    CHECK_THROWS_AS(m::r_ratio(t({1}), t({1}), t({1}), kNan), std::invalid_argument);
    CHECK_THROWS_AS(m::topk_agree(t2({1, 2}, 1), t2({1, 2}, 1), 0), std::invalid_argument);
  }

  TEST_CASE("a NaN or Inf in any input is a failure, the same way in every metric") {
    // scalar metrics: NaN, which fails <= and >= gates alike
    CHECK(std::isnan(m::max_abs_diff(t({1, kNan}), t({1, 2}))));
    CHECK(std::isnan(m::mean_abs_diff(t({1, 2}), t({kInf, 2}))));
    CHECK(std::isnan(m::rel_l2(t({kInf, 2}), t({kInf, 2}))));
    CHECK(std::isnan(m::cosine(t({kNan, 1}), t({1, 1}))));
    CHECK(std::isnan(m::sqnr_db(t({1, 1}), t({kNan, 1}))));
    CHECK(std::isnan(m::r_ratio(t({1, 1}), t({1, 1}), t({kInf, 1})).r));
    // row metrics: NaN in the rows holding one, the others untouched
    auto r = m::r_ratio_rows(t2({kNan, 0, 1, 0}, 2), t2({0, 0, 0, 0}, 2), t2({1, 0, 2, 0}, 2), 0.0);
    CHECK(std::isnan(r[0].item<double>()));
    CHECK(r[1].item<double>() == Approx(0.5));
    auto kl = m::kl_per_position(t2({-kInf, 0, 1, 2}, 2), t2({0, 0, 1, 2}, 2));
    CHECK(std::isnan(kl[0].item<double>()));
    CHECK(kl[1].item<double>() == Approx(0.0));
    CHECK(std::isnan(m::cosine_rows(t2({1, kNan}, 1), t2({1, 1}, 1))[0].item<double>()));
    // agreement: a row with a NaN never agrees (argmax of an all-NaN row would "match")
    auto nan_rows = t2({kNan, kNan, kNan, kNan}, 2);
    CHECK(m::top1_agree(nan_rows, t2({1, 0, 0, 1}, 2)).sum().item<double>() == 0.0);
    CHECK(m::top1_agree(t2({1, 0, 0, 1}, 2), nan_rows).sum().item<double>() == 0.0);
    CHECK(m::topk_agree(nan_rows, t2({1, 0, 0, 1}, 2), 1).sum().item<double>() == 0.0);
    CHECK(m::top1_agree(t2({1, 0}, 1), t2({1, 0}, 1))[0].item<double>() == 1.0);
  }

  TEST_CASE("R-ratio of three tensors, and its L2 distances") {
    auto r = m::r_ratio(t({6, 8}), t({0, 0}), t({3, 4}), 0.0);
    CHECK(r.r == Approx(2.0));
    CHECK(r.numerator == Approx(10.0));
    CHECK(r.denominator == Approx(5.0));
    CHECK(m::l2_distance(t({7, 9}), t({1, 1})) == Approx(10.0));
    CHECK(std::isnan(m::l2_distance(t({1, kInf}), t({1, 1}))));
    CHECK(std::isnan(m::r_ratio(t({1, 1}), t({1, 1}), t({kNan, 1})).denominator));
  }

  TEST_CASE("L2 figures in one float64 pass: torch's on float64 copies, any dtypes, views, sizes") {
    // 3 x 2^20 + 5 elements, a transposed view, mixed dtypes (a bf16 output against an fp32 one)
    auto a = at::randn({3, 1 << 20}) * 3 + 1, b = a + at::randn({3, 1 << 20}) * 1e-3;
    // (torch's sum is pairwise: accurate to ~1e-16 where its norm of 3M float64 values is not)
    auto whole = [](const at::Tensor& x) { return std::sqrt(x.to(at::kDouble).pow(2).sum().item<double>()); };
    for (auto& [p, q] : std::vector<std::pair<at::Tensor, at::Tensor>>{
             {a, b}, {a.t(), b.t()}, {a.to(at::kBFloat16), b}, {a.to(at::kDouble), b.to(at::kHalf)},
             {at::cat({a.flatten(), at::randn({5})}), at::cat({b.flatten(), at::randn({5})})}}) {
      auto d = p.to(at::kDouble) - q.to(at::kDouble);
      CHECK(m::l2_distance(p, q) == Approx(whole(d)).epsilon(1e-12));
      CHECK(m::rel_l2(p, q) == Approx(whole(d) / whole(q)).epsilon(1e-12));
      double dot = (p.to(at::kDouble) * q.to(at::kDouble)).sum().item<double>();
      CHECK(m::cosine(p, q) == Approx(dot / (whole(p) * whole(q))).epsilon(1e-12));
    }
    CHECK(m::l2_distance(a, a) == 0);
    CHECK(m::cosine(a, -a) == Approx(-1.0));
    CHECK(m::rel_l2(a, a * 0) == kInf);
    CHECK(std::isnan(m::l2_distance(a.index_fill(1, at::tensor({int64_t{7}}), kNan), b)));
    CHECK(std::isnan(m::cosine(a, b.index_fill(1, at::tensor({int64_t{9}}), kInf))));
  }

  TEST_CASE("L2 distance per row") {
    auto r = m::l2_distance_rows(t2({7, 9, 1, 1, 3, 4}, 3), t2({1, 1, 1, 1, 0, 0}, 3));
    CHECK(r.sizes().vec() == std::vector<int64_t>{3});
    CHECK(r[0].item<double>() == Approx(10.0));
    CHECK(r[1].item<double>() == 0);
    CHECK(r[2].item<double>() == Approx(5.0));
    auto big = at::randn({2, 3000, 1000}), other = at::randn({2, 3000, 1000}).to(at::kBFloat16);
    auto want = (big.to(at::kDouble) - other.to(at::kDouble)).norm(2, -1);
    auto got = m::l2_distance_rows(big.transpose(0, 1), other.transpose(0, 1));
    CHECK(got.sizes().vec() == std::vector<int64_t>{3000, 2});
    CHECK(at::allclose(got, want.transpose(0, 1), 1e-12, 0));
    auto odd = m::l2_distance_rows(t2({1, kNan, 1, kInf, 1, 1}, 3), t2({1, 1, 1, 1, 1, 1}, 3));
    CHECK(std::isnan(odd[0].item<double>()));
    CHECK(odd[1].item<double>() == kInf);
    CHECK(odd[2].item<double>() == 0);
    CHECK_THROWS_AS(m::l2_distance_rows(t2({1, 2}, 1), t2({1, 2}, 2)), std::invalid_argument);
  }

  TEST_CASE("R-ratio per row") {
    auto r = m::r_ratio_rows(t2({6, 8, 1, 0}, 2), t2({0, 0, 0, 0}, 2), t2({3, 4, 2, 0}, 2), 0.0);
    CHECK(r.sizes().vec() == std::vector<int64_t>{2});
    CHECK(r[0].item<double>() == Approx(2.0));  // 10 / 5
    CHECK(r[1].item<double>() == Approx(0.5));  // 1 / 2
  }

  TEST_CASE("KL(P_ref || P_target) per position, target first") {
    // ref P = (1/2, 1/2), target Q = (1/4, 3/4): KL(P||Q) = .5 ln 2 + .5 ln(2/3) = .5 ln(4/3);
    // the other direction, KL(Q||P) = .25 ln .5 + .75 ln 1.5, differs
    auto kl = m::kl_per_position(t2({0, std::log(3.0), 1, 2}, 2), t2({0, 0, 1, 2}, 2));
    CHECK(kl[0].item<double>() == Approx(0.5 * std::log(4.0 / 3.0)));
    CHECK(kl[1].item<double>() == Approx(0.0));
  }

  TEST_CASE("delta p: the reference's token probability under the reference minus under the target") {
    // row 0: ref (1/2, 1/2), target (1/4, 3/4), token 0: 1/2 - 1/4; row 1: token 1: 1/2 - 3/4
    auto dp = m::delta_p(t2({0, std::log(3.0), 0, std::log(3.0)}, 2), t2({0, 0, 0, 0}, 2),
                         at::tensor({0, 1}, at::kLong));
    CHECK(dp[0].item<double>() == Approx(0.25));
    CHECK(dp[1].item<double>() == Approx(-0.25));
    CHECK_THROWS_AS(m::delta_p(t2({0, 0}, 1), t2({0, 0}, 1), at::tensor({2}, at::kLong)), std::invalid_argument);
  }

  TEST_CASE("per-row top-2 gap and max |diff|") {
    auto gap = m::top2_gap(t2({1, 5, 3, 2, 2, 0}, 2));
    CHECK(gap[0].item<double>() == Approx(2.0));
    CHECK(gap[1].item<double>() == Approx(0.0));
    auto d = m::max_abs_diff_rows(t2({1, 5, 3, 2}, 2), t2({1, 4, 0, 2}, 2));
    CHECK(d[0].item<double>() == Approx(1.0));
    CHECK(d[1].item<double>() == Approx(3.0));
  }

  TEST_CASE("top-1 and top-k agreement") {
    auto top1 = m::top1_agree(t2({1, 2, 3, 1}, 2), t2({0, 5, 0, 1}, 2));
    CHECK(top1[0].item<double>() == 1.0);
    CHECK(top1[1].item<double>() == 0.0);
    auto topk = m::topk_agree(t({3, 2, 1}).reshape({1, 3}), t({1, 2, 3}).reshape({1, 3}), 2);
    CHECK(topk[0].item<double>() == Approx(0.5));  // {0,1} vs {2,1}
    CHECK_THROWS_WITH_AS(m::topk_agree(t({1, 2}), t({1, 2}), 3), "topk: k = 3 outside 1..2",
                         std::invalid_argument);
  }

  TEST_CASE("SQNR in dB") {
    CHECK(m::sqnr_db(t({1, 0}), t({1, 1})) == Approx(10 * std::log10(2.0)));
    CHECK(m::sqnr_db(t({1, 1}), t({1, 1})) == kInf);
  }

  TEST_CASE("percentiles interpolate linearly, like numpy") {
    auto p = m::percentiles(t({4, 1, 3, 2}), {0, 25, 50, 100});
    CHECK(p == std::vector<double>{1, 1.75, 2.5, 4});
    CHECK(std::isnan(m::percentiles(t({1, kNan}), {50})[0]));
    CHECK_THROWS_AS(m::percentiles(t({1}), {101}), std::invalid_argument);
  }

  TEST_CASE("metrics compute in float64 whatever the input dtype") {
    auto a = at::tensor({1.0f, 2.0f}).to(at::kBFloat16);
    CHECK(m::max_abs_diff(a, at::tensor({1.0, 2.5}, at::kDouble)) == Approx(0.5));
  }

  TEST_CASE("the fused logits pass gives what the metrics give one by one, NaN rules included") {
    for (int64_t v : {1, 2, 7, 1000, 32003}) {  // lane tails, a vocab of one
      auto gen = at::make_generator<at::CPUGeneratorImpl>(v);
      auto a = at::randn({3, 5, v}, gen, at::kFloat) * 4;
      auto tt = a + at::randn({3, 5, v}, gen, at::kFloat) * 0.05;
      auto b = a + at::randn({3, 5, v}, gen, at::kFloat) * 0.03;
      if (v > 2) {  // a NaN in one row of the target, an Inf in another of the low precision
        tt.index_put_({0, 1, 2}, kNan);
        b.index_put_({2, 3, v - 1}, kInf);
      }
      auto tok = at::randint(0, v, {3, 5}, gen, at::kLong);
      int64_t k = std::min<int64_t>(5, v);
      auto same = [](const at::Tensor& got, const at::Tensor& want, double tol) {
        CHECK(got.sizes().equals(want.sizes()));
        CHECK(got.isnan().equal(want.isnan()));
        auto ok = got.isnan().logical_not();
        CHECK((got - want).abs().masked_select(ok).max().item<double>() <= tol);
      };
      for (auto simd : {m::Simd::best, m::Simd::sse2}) {  // AVX2 + FMA where the CPU has them, and SSE2
      auto o = m::logits_rows(tt, a, b, tok, k, simd);
      same(o.r, m::r_ratio_rows(tt, a, b), 1e-5);
      same(o.cosine, m::cosine_rows(tt, a), 1e-6);
      same(o.own_cosine, m::cosine_rows(b, a), 1e-6);
      same(o.kl, m::kl_per_position(tt, a), 1e-5);  // float sums: ~1e-6 of cancellation at 32K
      same(o.own_kl, m::kl_per_position(b, a), 1e-5);
      same(o.delta_p, m::delta_p(tt, a, tok), 1e-6);
      same(o.top1, m::top1_agree(tt, a), 0);
      same(o.topk, m::topk_agree(tt, a, k), 0);
      same(o.top2_gap, m::top2_gap(a), 1e-6);
      same(o.noise, m::max_abs_diff_rows(b, a), 1e-6);
      }
    }
    CHECK_THROWS_AS(m::logits_rows(t2({1, 2}, 1), t2({1, 2}, 1), t2({1, 2}, 1), at::zeros({1}, at::kLong), 3),
                    std::invalid_argument);
  }

  TEST_CASE("shape mismatches are errors") {
    CHECK_THROWS_WITH_AS(m::rel_l2(t({1, 2}), t({1, 2, 3})), "rel_l2: shapes differ: [2] vs [3]",
                         std::invalid_argument);
    CHECK_THROWS_AS(m::allclose(t({1}), t2({1, 2}, 2), 0, 0), std::invalid_argument);
  }
}
