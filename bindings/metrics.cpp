// bindings/metrics.cpp — parity.core.metrics: the host metrics (host/metrics.hpp) for Lua.
#include <fmt/format.h>

#include "bindings/lua_value.hpp"
#include "bindings/vm.hpp"
#include "host/metrics.hpp"

namespace parity {
namespace {

namespace m = parity::metrics;

template <double (*F)(const at::Tensor&, const at::Tensor&)>
int scalar_metric(lua_State* L) {
  lua_pushnumber(L, F(check_tensor(L, 1), check_tensor(L, 2)));
  return 1;
}

Value non_finite_value(const m::NonFinite& n) { return Map{{"nan", n.nan}, {"inf", n.inf}}; }

int non_finite(lua_State* L) {
  push_value(L, non_finite_value(m::non_finite(check_tensor(L, 1))));
  return 1;
}

/// f(a, b) -> a float64 tensor of per-row figures (cosine_rows, l2_distance_rows)
template <at::Tensor (*F)(const at::Tensor&, const at::Tensor&)>
int rows_metric(lua_State* L) {
  push_tensor(L, F(check_tensor(L, 1), check_tensor(L, 2)));
  return 1;
}

/// row_sketch(t) -> float64 [rows]: each row's dot product with a fixed +-1 vector (host/metrics.hpp)
int row_sketch(lua_State* L) {
  push_tensor(L, m::row_sketch(check_tensor(L, 1)));
  return 1;
}

/// max_gap(a, b[, limit]) -> max |a - b|, max |b| (one pass, no copies; it may stop once the
/// difference passes limit: host/metrics.hpp)
int max_gap(lua_State* L) {
  auto g = m::max_gap(check_tensor(L, 1), check_tensor(L, 2), luaL_optnumber(L, 3, HUGE_VAL));
  lua_pushnumber(L, g.diff);
  lua_pushnumber(L, g.ref);
  return 2;
}

/// allclose(target, reference[, {rtol=1e-5, atol=1e-8}]) -> result table (see docs/lua-api.md)
int allclose(lua_State* L) {
  check_options(L, 3, "allclose", {"rtol", "atol"});
  double rtol = opt_number_field(L, 3, "rtol").value_or(1e-5);
  double atol = opt_number_field(L, 3, "atol").value_or(1e-8);
  auto r = m::allclose(check_tensor(L, 1), check_tensor(L, 2), rtol, atol);
  Array worst;
  for (auto i : r.worst_index) worst.emplace_back(i);
  push_value(L, Map{{"pass", r.pass},
                    {"rtol", r.rtol},
                    {"atol", r.atol},
                    {"numel", r.numel},
                    {"n_fail", r.n_fail},
                    {"max_abs_diff", r.max_abs_diff},
                    {"max_rel_diff", r.max_rel_diff},
                    {"min_atol", r.min_atol},
                    {"min_rtol", r.min_rtol},
                    {"worst_index", worst},
                    {"worst_target", r.worst_target},
                    {"worst_reference", r.worst_reference},
                    {"target_non_finite", non_finite_value(r.target_non_finite)},
                    {"reference_non_finite", non_finite_value(r.reference_non_finite)},
                    {"non_finite_mismatch", r.non_finite_mismatch}});
  return 1;
}

/// r_ratio(target, ref32, ref_low[, eps]) -> r, numerator, denominator
int r_ratio(lua_State* L) {
  auto r = m::r_ratio(check_tensor(L, 1), check_tensor(L, 2), check_tensor(L, 3),
                      luaL_optnumber(L, 4, 1e-12));
  lua_pushnumber(L, r.r);
  lua_pushnumber(L, r.numerator);
  lua_pushnumber(L, r.denominator);
  return 3;
}

/// r_ratio_rows(target, ref32, ref_low[, eps]) -> per-row R tensor
int r_ratio_rows(lua_State* L) {
  push_tensor(L, m::r_ratio_rows(check_tensor(L, 1), check_tensor(L, 2), check_tensor(L, 3),
                                 luaL_optnumber(L, 4, 1e-12)));
  return 1;
}

/// kl(target_logits, ref_logits) -> per-position KL(P_ref || P_target) tensor
int kl(lua_State* L) {
  push_tensor(L, m::kl_per_position(check_tensor(L, 1), check_tensor(L, 2)));
  return 1;
}

/// delta_p(target_logits, ref_logits, tokens) -> per-position P_ref(tok) - P_target(tok)
int delta_p(lua_State* L) {
  push_tensor(L, m::delta_p(check_tensor(L, 1), check_tensor(L, 2), check_tensor(L, 3)));
  return 1;
}

/// top2_gap(x) -> per-row largest minus second largest
int top2_gap(lua_State* L) {
  push_tensor(L, m::top2_gap(check_tensor(L, 1)));
  return 1;
}

/// max_abs_diff_rows(a, b) -> per-row max |a - b|
int max_abs_diff_rows(lua_State* L) {
  push_tensor(L, m::max_abs_diff_rows(check_tensor(L, 1), check_tensor(L, 2)));
  return 1;
}

/// logits_rows(target, ref32, ref_low, tokens, k[, {simd = "sse2"}]) -> {r, cosine, own_cosine, kl,
/// own_kl, delta_p, top1, topk, top2_gap, noise}: per-position tensors from one pass (NOTE [ One
/// pass over the logits ]); simd "sse2" forces the 4-lane kernel (benchmarks), "best" the default
int logits_rows(lua_State* L) {
  m::Simd simd = m::Simd::best;
  if (check_options(L, 6, "logits_rows", {"simd"})) {
    lua_getfield(L, 6, "simd");
    std::string s = lua_isnil(L, -1) ? "best" : luaL_checkstring(L, -1);
    lua_pop(L, 1);
    if (s != "best" && s != "sse2")
      throw std::invalid_argument(fmt::format("logits_rows: simd must be \"best\" or \"sse2\", got \"{}\"", s));
    simd = s == "sse2" ? m::Simd::sse2 : m::Simd::best;
  }
  auto o = m::logits_rows(check_tensor(L, 1), check_tensor(L, 2), check_tensor(L, 3), check_tensor(L, 4),
                          luaL_checkinteger(L, 5), simd);
  lua_createtable(L, 0, 10);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"r", &o.r}, {"cosine", &o.cosine},
                                {"own_cosine", &o.own_cosine}, {"kl", &o.kl}, {"own_kl", &o.own_kl},
                                {"delta_p", &o.delta_p}, {"top1", &o.top1}, {"topk", &o.topk},
                                {"top2_gap", &o.top2_gap}, {"noise", &o.noise}}) {
    push_tensor(L, *t);
    lua_setfield(L, -2, name);
  }
  return 1;
}

void push_agreement(lua_State* L, const at::Tensor& per_position) {
  lua_pushnumber(L, per_position.numel() ? per_position.mean().item<double>() : 0.0);
  push_tensor(L, per_position);
}

/// top1(a, b) -> rate, per-position tensor
int top1(lua_State* L) {
  push_agreement(L, m::top1_agree(check_tensor(L, 1), check_tensor(L, 2)));
  return 2;
}

/// topk(a, b, k) -> rate, per-position tensor
int topk(lua_State* L) {
  push_agreement(L, m::topk_agree(check_tensor(L, 1), check_tensor(L, 2), luaL_checkinteger(L, 3)));
  return 2;
}

/// percentiles(t, {5, 50, 95}) -> {p5, p50, p95}
int percentiles(lua_State* L) {
  luaL_checktype(L, 2, LUA_TTABLE);
  std::vector<double> qs;
  for (size_t i = 1, n = lua_objlen(L, 2); i <= n; ++i) {
    lua_rawgeti(L, 2, static_cast<int>(i));
    qs.push_back(luaL_checknumber(L, -1));
    lua_pop(L, 1);
  }
  Array out;
  for (double v : m::percentiles(check_tensor(L, 1), qs)) out.emplace_back(v);
  push_value(L, out);
  return 1;
}

const luaL_Reg kMetrics[] = {
    {"max_abs_diff", guard<scalar_metric<m::max_abs_diff>>},
    {"mean_abs_diff", guard<scalar_metric<m::mean_abs_diff>>},
    {"max_gap", guard<max_gap>},
    {"rel_l2", guard<scalar_metric<m::rel_l2>>},
    {"cosine", guard<scalar_metric<m::cosine>>},
    {"l2_distance", guard<scalar_metric<m::l2_distance>>},
    {"sqnr", guard<scalar_metric<m::sqnr_db>>},
    {"cosine_rows", guard<rows_metric<m::cosine_rows>>},
    {"l2_distance_rows", guard<rows_metric<m::l2_distance_rows>>},
    {"row_sketch", guard<row_sketch>},
    {"non_finite", guard<non_finite>},
    {"allclose", guard<allclose>},
    {"r_ratio", guard<r_ratio>},
    {"r_ratio_rows", guard<r_ratio_rows>},
    {"kl", guard<kl>},
    {"delta_p", guard<delta_p>},
    {"top2_gap", guard<top2_gap>},
    {"max_abs_diff_rows", guard<max_abs_diff_rows>},
    {"top1", guard<top1>},
    {"topk", guard<topk>},
    {"logits_rows", guard<logits_rows>},
    {"percentiles", guard<percentiles>},
    {nullptr, nullptr}};

}  // namespace

void open_metrics(lua_State* L) {
  push_core_table(L, "metrics", kMetrics);
  lua_pop(L, 1);
}

}  // namespace parity
