// bindings/torch_lib.cpp — the global `torch` table: creation functions with seeded
// generators, torch.ops.NS.NAME for every registered operator, and torch.NAME as a shortcut
// for torch.ops.aten.NAME (torch.cat, torch.softmax, ...).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <ATen/Parallel.h>
#include <cmath>
#include <optional>

#include "bindings/lua_value.hpp"
#include "bindings/vm.hpp"
#include "host/dispatch.hpp"
#include "host/dtype.hpp"

namespace parity {
namespace {

constexpr double kExact = 9007199254740992.0;  // 2^53: the whole numbers a Lua number holds exactly

/// Sizes from either a table {2, 3} at idx or the numbers from idx up to the first non-number.
/// Returns the index of the first argument after the sizes.
int read_sizes(lua_State* L, int idx, std::vector<int64_t>& sizes) {
  if (lua_istable(L, idx)) {
    size_t n = lua_objlen(L, idx);
    bool keys = false;  // anything but the sizes 1..n
    for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1))
      keys = keys || lua_type(L, -2) != LUA_TNUMBER || lua_tonumber(L, -2) < 1 || lua_tonumber(L, -2) > n ||
             lua_tonumber(L, -2) != std::floor(lua_tonumber(L, -2));
    // A table of keys alone is the options table, not sizes (torch.zeros{} is a scalar).
    if (n == 0 && keys) return idx;
    if (keys)
      throw std::invalid_argument(
          "sizes and options go in tables of their own: torch.zeros({2, 3}, {dtype = \"bf16\"})");
    for (size_t i = 1; i <= n; ++i) {
      lua_rawgeti(L, idx, static_cast<int>(i));
      sizes.push_back(check_whole(L, -1, "a size", 0, kExact));
      lua_pop(L, 1);
    }
    return idx + 1;
  }
  while (lua_type(L, idx) == LUA_TNUMBER) sizes.push_back(check_whole(L, idx++, "a size", 0, kExact));
  return idx;
}

/// A seed: a whole number in 0..2^53 (a negative or fractional one was cast, undefined in C++).
uint64_t check_seed(lua_State* L, int idx) {
  return static_cast<uint64_t>(check_whole(L, idx, "a seed", 0, kExact));
}

/// Options table {dtype=, device=, seed=}: a seed makes a fresh generator, leaving the global
/// one (torch.manual_seed) untouched.
struct Options {
  at::TensorOptions tensor = at::TensorOptions().dtype(at::kFloat);
  c10::optional<at::Generator> gen;
};

Options read_options(lua_State* L, int idx, at::ScalarType default_dtype = at::kFloat) {
  Options o;
  o.tensor = o.tensor.dtype(default_dtype);
  if (!check_options(L, idx, "torch", {"dtype", "device", "seed"})) return o;
  if (auto dt = opt_string_field(L, idx, "dtype")) o.tensor = o.tensor.dtype(parse_dtype(*dt));
  if (auto dev = opt_string_field(L, idx, "device")) o.tensor = o.tensor.device(parse_device(*dev));
  lua_getfield(L, idx, "seed");
  if (!lua_isnil(L, -1)) o.gen = at::make_generator<at::CPUGeneratorImpl>(check_seed(L, lua_gettop(L)));
  lua_pop(L, 1);
  return o;
}

template <at::Tensor (*Make)(at::IntArrayRef, at::TensorOptions)>
int fill(lua_State* L) {
  std::vector<int64_t> sizes;
  int next = read_sizes(L, 1, sizes);
  push_tensor(L, Make(sizes, read_options(L, next).tensor));
  return 1;
}
at::Tensor make_zeros(at::IntArrayRef s, at::TensorOptions o) { return at::zeros(s, o); }
at::Tensor make_ones(at::IntArrayRef s, at::TensorOptions o) { return at::ones(s, o); }
at::Tensor make_empty(at::IntArrayRef s, at::TensorOptions o) { return at::empty(s, o); }

int torch_full(lua_State* L) {
  std::vector<int64_t> sizes;
  int next = read_sizes(L, 1, sizes);
  // torch.full(2, 3, 7): the sizes as numbers took the fill value too, which is the last of them
  if (lua_type(L, 1) == LUA_TNUMBER && lua_type(L, next) != LUA_TNUMBER) {
    if (sizes.empty()) throw std::invalid_argument("torch.full: expects sizes, then the fill value");
    sizes.pop_back();
    --next;
  }
  double v = luaL_checknumber(L, next);
  push_tensor(L, at::full(sizes, v, read_options(L, next + 1).tensor));
  return 1;
}

template <bool Normal>
int random_fill(lua_State* L) {
  std::vector<int64_t> sizes;
  int next = read_sizes(L, 1, sizes);
  auto o = read_options(L, next);
  push_tensor(L, Normal ? at::randn(sizes, o.gen, o.tensor) : at::rand(sizes, o.gen, o.tensor));
  return 1;
}

/// torch.randint(low, high, sizes, opts) or torch.randint(high, sizes, opts); int64 default.
int torch_randint(lua_State* L) {
  int64_t low = 0, high;
  int idx = 2;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    low = check_whole(L, 1, "randint: low", -kExact, kExact);
    high = check_whole(L, 2, "randint: high", -kExact, kExact);
    idx = 3;
  } else {
    high = check_whole(L, 1, "randint: high", -kExact, kExact);
  }
  if (high <= low) throw std::invalid_argument(fmt::format("randint: high ({}) must be above low ({})", high, low));
  std::vector<int64_t> sizes;
  int next = read_sizes(L, idx, sizes);
  auto o = read_options(L, next, at::kLong);
  push_tensor(L, at::randint(low, high, sizes, o.gen, o.tensor));
  return 1;
}

/// torch.arange(end), torch.arange(start, end[, step]) and an options table; int64 when all
/// bounds are integers, float32 otherwise (like PyTorch).
int torch_arange(lua_State* L) {
  double a[3] = {0, 0, 1};
  int n = 0;
  while (n < 3 && lua_type(L, n + 1) == LUA_TNUMBER) a[n] = lua_tonumber(L, n + 1), ++n;
  if (n == 0) return luaL_argerror(L, 1, "expected arange(end) or arange(start, end[, step])");
  double start = n == 1 ? 0 : a[0], end = n == 1 ? a[0] : a[1], step = n == 3 ? a[2] : 1;
  bool integral = std::floor(start) == start && std::floor(end) == end && std::floor(step) == step;
  auto o = read_options(L, n + 1, integral ? at::kLong : at::kFloat);
  push_tensor(L, at::arange(start, end, step, o.tensor));
  return 1;
}

void flatten_nested(lua_State* L, int idx, int depth, std::vector<int64_t>& shape,
                    std::vector<double>& values, bool& booleans) {
  if (lua_istable(L, idx)) {
    auto n = static_cast<int64_t>(lua_objlen(L, idx));
    if (static_cast<int>(shape.size()) == depth) shape.push_back(n);
    else if (shape[depth] != n)
      throw std::invalid_argument(fmt::format(
          "torch.tensor: ragged nested table (dim {} has lengths {} and {})", depth, shape[depth], n));
    for (int64_t i = 1; i <= n; ++i) {
      lua_rawgeti(L, idx, static_cast<int>(i));
      flatten_nested(L, lua_gettop(L), depth + 1, shape, values, booleans);
      lua_pop(L, 1);
    }
    return;
  }
  if (static_cast<int>(shape.size()) > depth)
    throw std::invalid_argument("torch.tensor: ragged nested table (a number where a table was)");
  if (lua_type(L, idx) == LUA_TBOOLEAN) {
    booleans = true;
    values.push_back(lua_toboolean(L, idx));
  } else if (lua_type(L, idx) == LUA_TNUMBER) {
    values.push_back(lua_tonumber(L, idx));
  } else {
    throw std::invalid_argument(fmt::format("torch.tensor: a {} is not a number", luaL_typename(L, idx)));
  }
}

/// torch.tensor({{1, 2}, {3, 4}}, {dtype = "int64"}): float32 by default (Lua numbers carry no
/// integer type), bool for booleans.
int torch_tensor(lua_State* L) {
  std::vector<int64_t> shape;
  std::vector<double> values;
  bool booleans = false;
  flatten_nested(L, 1, 0, shape, values, booleans);
  auto o = read_options(L, 2, booleans ? at::kBool : at::kFloat);
  auto t = at::tensor(values, at::kDouble).reshape(shape);
  push_tensor(L, t.to(o.tensor));
  return 1;
}

int torch_manual_seed(lua_State* L) {
  auto seed = check_seed(L, 1);
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(seed);
  return 0;
}

int torch_is_tensor(lua_State* L) {
  lua_pushboolean(L, test_tensor(L, 1) != nullptr);
  return 1;
}

int torch_set_num_threads(lua_State* L) {
  at::set_num_threads(static_cast<int>(luaL_checkinteger(L, 1)));
  return 0;
}

int torch_get_num_threads(lua_State* L) {
  lua_pushnumber(L, at::get_num_threads());
  return 1;
}

/// torch.schemas("aten::add") -> { "aten::add.Tensor(Tensor self, ...) -> Tensor", ... }
int torch_schemas(lua_State* L) {
  push_strings(L, op_schemas(luaL_checkstring(L, 1)));
  return 1;
}

/// Pushes a cached function for operator `qualified` or raises a clear error. [-0, +1]
void push_op_function(lua_State* L, const std::string& qualified) {
  std::string base = qualified.substr(0, qualified.find('.', qualified.find("::")));
  if (!has_op(base)) luaL_error(L, "no operator named %s", qualified.c_str());
  push_op_closure(L, qualified);
}

/// torch.ops.NS: __index(ns_table, name) -> op function, cached. upvalue 1: namespace.
int ns_index(lua_State* L) {
  std::string q = std::string(lua_tostring(L, lua_upvalueindex(1))) + "::" + luaL_checkstring(L, 2);
  push_op_function(L, q);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, 1);
  return 1;
}

/// torch.ops: __index(ops, ns) -> a namespace table, cached.
int ops_index(lua_State* L) {
  lua_newtable(L);  // [ns]
  lua_newtable(L);  // [ns, meta]
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, ns_index, 1);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);  // [ns]
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, 1);
  return 1;
}

/// torch.NAME -> torch.ops.aten.NAME (not cached: keeps `torch` listing just its own API).
int torch_index(lua_State* L) {
  push_op_function(L, std::string("aten::") + luaL_checkstring(L, 2));
  return 1;
}

const luaL_Reg kTorch[] = {
    {"zeros", guard<fill<make_zeros>>},
    {"ones", guard<fill<make_ones>>},
    {"empty", guard<fill<make_empty>>},
    {"full", guard<torch_full>},
    {"randn", guard<random_fill<true>>},
    {"rand", guard<random_fill<false>>},
    {"randint", guard<torch_randint>},
    {"arange", guard<torch_arange>},
    {"tensor", guard<torch_tensor>},
    {"manual_seed", guard<torch_manual_seed>},
    {"is_tensor", torch_is_tensor},
    {"set_num_threads", guard<torch_set_num_threads>},
    {"get_num_threads", torch_get_num_threads},
    {"schemas", guard<torch_schemas>},
    {nullptr, nullptr}};

}  // namespace

void open_torch(lua_State* L) {
  lua_newtable(L);  // [torch]
  luaL_setfuncs(L, kTorch, 0);
  lua_newtable(L);  // [torch, ops]
  lua_newtable(L);  // [torch, ops, meta]
  lua_pushcfunction(L, ops_index);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  lua_setfield(L, -2, "ops");  // [torch]
  luaL_getmetatable(L, kTensorMeta);
  lua_getfield(L, -1, "methods");
  lua_setfield(L, -3, "Tensor");  // torch.Tensor: the method table, for Lua extensions
  lua_pop(L, 1);
  lua_newtable(L);  // [torch, meta]
  lua_pushcfunction(L, torch_index);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_setglobal(L, "torch");
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");  // [torch, package, loaded]
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "torch");  // require "torch" works too
  lua_pop(L, 3);  // []
}

}  // namespace parity
