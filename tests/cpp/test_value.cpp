// tests/cpp/test_value.cpp — Value <-> IValue conversion and operator dispatch.
#include <ATen/ATen.h>
#include <ATen/core/jit_type.h>

#include "host/dispatch.hpp"
#include "host/value.hpp"
#include <doctest/doctest.h>  // after torch: glog defines CHECK

using namespace parity;

TEST_SUITE("value") {
  TEST_CASE("schema types decide how Lua-shaped values convert") {
    CHECK(to_ivalue(Value(int64_t{3}), c10::IntType::get()).toInt() == 3);
    CHECK(to_ivalue(Value(int64_t{3}), c10::FloatType::get()).toDouble() == 3.0);
    CHECK_THROWS_WITH_AS(to_ivalue(Value(2.5), c10::IntType::get()), "expected int, got number",
                         std::invalid_argument);
    CHECK(to_ivalue(Value(), c10::OptionalType::create(c10::IntType::get())).isNone());
    CHECK(to_ivalue(Value("bf16"), c10::ScalarTypeType::get()).toInt() ==
          static_cast<int64_t>(at::kBFloat16));
    CHECK_THROWS_WITH(to_ivalue(Value("bogus"), c10::ScalarTypeType::get()),
                      doctest::Contains("unknown dtype 'bogus'"));
    auto list = to_ivalue(Value(Array{int64_t{1}, int64_t{2}}), c10::ListType::ofInts());
    CHECK(list.toIntVector() == std::vector<int64_t>{1, 2});
    // a single int stands for int[N], as in x.sum(1)
    CHECK(to_ivalue(Value(int64_t{1}), c10::ListType::ofInts()).toIntVector() == std::vector<int64_t>{1});
    CHECK_THROWS_WITH(to_ivalue(Value("x"), c10::TensorType::get()), "expected Tensor, got string");
    auto dict = to_ivalue(Value(Map{{"a", int64_t{1}}}),
                          c10::DictType::create(c10::StringType::get(), c10::IntType::get()));
    CHECK(dict.toGenericDict().at("a").toInt() == 1);
  }

  TEST_CASE("IValues come back as Lua shapes") {
    auto tuple = c10::ivalue::Tuple::create({c10::IValue(at::ones({2})), c10::IValue(int64_t{7})});
    Value v = from_ivalue(tuple);
    REQUIRE(v.get<Array>());
    CHECK(v.get<Array>()->size() == 2);
    CHECK(v.get<Array>()->at(0).get<at::Tensor>());
    CHECK(*v.get<Array>()->at(1).get<int64_t>() == 7);
    c10::Dict<std::string, double> d;
    d.insert("x", 1.5);
    Value m = from_ivalue(d);
    REQUIRE(m.get<Map>());
    CHECK(m.get<Map>()->at(0).first == "x");
    CHECK(*m.get<Map>()->at(0).second.get<double>() == 1.5);
    CHECK(from_ivalue(c10::IValue()).is_nil());
  }

  TEST_CASE("call_op resolves overloads against operator schemas") {
    auto x = at::ones({2, 2});
    auto r = call_op("aten::add", {x, x, Map{{"alpha", int64_t{2}}}});  // add.Tensor + kwarg
    CHECK(at::equal(*r.at(0).get<at::Tensor>(), at::full({2, 2}, 3.0)));
    r = call_op("aten::add", {x, int64_t{1}});  // add.Scalar
    CHECK(at::equal(*r.at(0).get<at::Tensor>(), at::full({2, 2}, 2.0)));
    r = call_op("aten::max", {at::tensor({1.0, 5.0, 2.0}), int64_t{0}});  // max.dim: two returns
    REQUIRE(r.size() == 2);
    CHECK(r[1].get<at::Tensor>()->item<int64_t>() == 1);
    r = call_op("aten::sum", {x, Value(), true});  // nil takes the default of an optional
    CHECK(r.at(0).get<at::Tensor>()->sizes().vec() == std::vector<int64_t>{1, 1});
    r = call_op("aten::to.dtype", {x, "bf16"});
    CHECK((r.at(0).get<at::Tensor>()->scalar_type() == at::kBFloat16));
    r = call_op("aten::view", {x, Array{int64_t{4}}});  // SymInt[]
    CHECK(r.at(0).get<at::Tensor>()->sizes().vec() == std::vector<int64_t>{4});
  }

  TEST_CASE("call_op explains what did not match") {
    CHECK_THROWS_WITH(call_op("aten::add", {at::ones({1}), "a"}),
                      doctest::Contains("no overload matches (Tensor, string); candidates:"));
    CHECK_THROWS_WITH(call_op("aten::add", {at::ones({1}), "a"}),
                      doctest::Contains("aten::add.Tensor(Tensor self, Tensor other, *, Scalar alpha=1) -> Tensor\n"
                                        "      argument 'other': expected Tensor, got string"));
    CHECK_THROWS_WITH(call_op("aten::definitely_not_an_op", {}), "no operator named aten::definitely_not_an_op");
    CHECK_THROWS_WITH(call_op("add", {}), doctest::Contains("needs a namespace"));
    CHECK_THROWS_WITH(call_op("aten::add.Nope", {at::ones({1})}), doctest::Contains("no overload named 'Nope'"));
    CHECK(has_op("aten::rsqrt"));
    CHECK_FALSE(has_op("aten::nope_nope"));
  }
}
