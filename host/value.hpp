// host/value.hpp — a Lua-shaped value the host can read without knowing Lua, and its
// conversion to and from TorchScript IValues (driven by the schema type when there is one).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <ATen/core/jit_type.h>

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace parity {

struct Value;
using Array = std::vector<Value>;                       ///< a Lua sequence {a, b, c}
using Map = std::vector<std::pair<std::string, Value>>;  ///< a Lua table with string keys

/// What crosses the Lua boundary: nil, bool, integer, double, string, Tensor, array or map.
/// Lua numbers arrive as Int when they are integral, Double otherwise.
struct Value {
  std::variant<std::monostate, bool, int64_t, double, std::string, at::Tensor, Array, Map> v;

  Value() = default;
  template <typename T>
  Value(T x) : v(std::move(x)) {}  // NOLINT: implicit by design

  bool is_nil() const { return v.index() == 0; }
  template <typename T>
  const T* get() const { return std::get_if<T>(&v); }
  /// "nil", "boolean", "integer", "number", "string", "Tensor", "array", "table".
  const char* kind() const;
};

/// Converts `v` to an IValue of `type`: a schema argument's real_type(), so dtype names are
/// accepted where it wants a ScalarType. Throws std::invalid_argument
/// saying what was expected and what was given when `v` does not fit.
c10::IValue to_ivalue(const Value& v, const c10::TypePtr& type);

/// Converts without a target type: numbers, strings, tensors, arrays as lists or tuples.
c10::IValue to_ivalue(const Value& v);

/// Converts an IValue back: tuples and lists become arrays, dicts become maps (keys as strings),
/// ScalarType/Device-like ints stay ints. Throws on types with no Lua shape (objects, futures).
Value from_ivalue(const c10::IValue& iv);

/// `v` with every tensor in it moved to `device` (arrays and maps walked).
Value on_device(const Value& v, c10::Device device);

}  // namespace parity
