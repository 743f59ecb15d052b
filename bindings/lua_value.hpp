// bindings/lua_value.hpp — check_/push_ helpers shared by the binding files.
#pragma once
#include <lua.hpp>

#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "host/dtype.hpp"
#include "host/value.hpp"

namespace parity {

constexpr const char* kTensorMeta = "parity.Tensor";

/// The tensor at `idx`, or a Lua argument error.
at::Tensor& check_tensor(lua_State* L, int idx);
/// The tensor at `idx`, or nullptr.
at::Tensor* test_tensor(lua_State* L, int idx);
/// Pushes a tensor userdata (notes its bytes for GC accounting).
void push_tensor(lua_State* L, at::Tensor t);

/// Reads any Lua value as a Value: integral numbers become Int; a table with keys 1..n an
/// Array; a table with string keys a Map (an empty table is an empty Map).
Value to_value(lua_State* L, int idx);
void push_value(lua_State* L, const Value& v);

/// Pushes a function calling operator `qualified` ("aten::rsqrt") with all its Lua arguments,
/// returning one value per op result. No existence check: callers check has_op. [-0, +1]
void push_op_closure(lua_State* L, const std::string& qualified);

/// Whether an options table is at `idx`: false when it is none or nil; throws naming `what`
/// when it is not a table or holds a key outside `known` (a misspelt option is never ignored).
bool check_options(lua_State* L, int idx, const char* what, std::initializer_list<const char*> known);

/// The strings of the Lua array at `idx` (an error for another type).
std::vector<std::string> check_strings(lua_State* L, int idx);

/// A whole number in lo..hi at `idx`, or an error naming `what` (sizes, seeds: never truncated).
int64_t check_whole(lua_State* L, int idx, const char* what, double lo, double hi);

/// Reads an optional field of the table at `idx` (absent or nil: nullopt).
std::optional<std::string> opt_string_field(lua_State* L, int idx, const char* key);
std::optional<double> opt_number_field(lua_State* L, int idx, const char* key);

/// What `x:to(...)` and `m:to(...)` take at `idx`: a dtype name, a device name, or
/// {dtype =, device =}; a Lua argument error otherwise.
struct ToTarget {
  std::optional<c10::Device> device;
  std::optional<c10::ScalarType> dtype;
};
ToTarget check_to_target(lua_State* L, int idx);

/// Pushes a Map-like list of (name, tensor) pairs as a Lua table name -> Tensor.
template <typename Pairs>
void push_named_tensors(lua_State* L, const Pairs& pairs) {
  lua_createtable(L, 0, static_cast<int>(pairs.size()));
  for (const auto& [name, t] : pairs) {
    push_tensor(L, t);
    lua_setfield(L, -2, name.c_str());
  }
}

}  // namespace parity
