// host/dtype.cpp — the one table of dtype names.
#include "host/dtype.hpp"

#include <fmt/format.h>

#include <stdexcept>
#include <utility>

namespace parity {
namespace {

struct DtypeName {
  const char* name;
  c10::ScalarType type;
};

// The first entry for a type is its canonical name.
constexpr DtypeName kDtypes[] = {
    {"float32", c10::kFloat},    {"bfloat16", c10::kBFloat16}, {"float16", c10::kHalf},
    {"float64", c10::kDouble},   {"int64", c10::kLong},        {"int32", c10::kInt},
    {"int16", c10::kShort},      {"int8", c10::kChar},         {"uint8", c10::kByte},
    {"bool", c10::kBool},        {"complex64", c10::kComplexFloat},
    {"complex128", c10::kComplexDouble},
    {"fp32", c10::kFloat},       {"float", c10::kFloat},       {"f32", c10::kFloat},
    {"bf16", c10::kBFloat16},    {"fp16", c10::kHalf},         {"half", c10::kHalf},
    {"f16", c10::kHalf},         {"fp64", c10::kDouble},       {"double", c10::kDouble},
    {"long", c10::kLong},        {"int", c10::kInt},
};

}  // namespace

c10::ScalarType parse_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.type;
  throw std::invalid_argument(fmt::format(
      "unknown dtype '{}' (use float32/fp32, bfloat16/bf16, float16/fp16, float64, int64, int32, "
      "int16, int8, uint8, bool)",
      name));
}

std::string dtype_name(c10::ScalarType t) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  return c10::toString(t);
}

bool is_device_name(const std::string& name) {
  return name == "cpu" || name == "meta" || name.rfind("cuda", 0) == 0;
}

c10::Device parse_device(const std::string& name) {
  try {
    return c10::Device(name);
  } catch (const std::exception&) {
    throw std::invalid_argument(
        fmt::format("unknown device '{}' (use \"cpu\", \"cuda\" or \"cuda:N\")", name));
  }
}

}  // namespace parity
