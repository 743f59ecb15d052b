// bindings/lua_value.cpp — Lua values <-> parity::Value, and the operator-calling closure.
#include "bindings/lua_value.hpp"

#include "bindings/vm.hpp"
#include "host/dispatch.hpp"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

namespace parity {
namespace {

constexpr int kMaxDepth = 64;

Value to_value_at(lua_State* L, int idx, int depth) {
  if (depth > kMaxDepth) throw std::invalid_argument("table nested too deeply (a cycle?)");
  idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
    case LUA_TNONE: return {};
    case LUA_TBOOLEAN: return static_cast<bool>(lua_toboolean(L, idx));
    case LUA_TNUMBER: {
      double d = lua_tonumber(L, idx);
      if (std::floor(d) == d && std::fabs(d) < 9.2e18) return static_cast<int64_t>(d);
      return d;
    }
    case LUA_TSTRING: {
      size_t n;
      const char* s = lua_tolstring(L, idx, &n);
      return std::string(s, n);
    }
    case LUA_TUSERDATA:
      if (auto* t = test_tensor(L, idx)) return *t;
      break;
    case LUA_TTABLE: {
      size_t n = lua_objlen(L, idx);
      size_t count = 0;
      bool strings = true;
      lua_pushnil(L);
      while (lua_next(L, idx)) {  // [key, value]
        ++count;
        strings = strings && lua_type(L, -2) == LUA_TSTRING;
        lua_pop(L, 1);
      }
      if (count > 0 && count == n) {
        Array a;
        a.reserve(n);
        for (size_t i = 1; i <= n; ++i) {
          lua_rawgeti(L, idx, static_cast<int>(i));
          a.push_back(to_value_at(L, -1, depth + 1));
          lua_pop(L, 1);
        }
        return a;
      }
      if (!strings) throw std::invalid_argument("table mixes array items and keys");
      Map m;
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        m.emplace_back(lua_tostring(L, -2), to_value_at(L, -1, depth + 1));
        lua_pop(L, 1);
      }
      return m;
    }
    default: break;
  }
  throw std::invalid_argument(fmt::format("a Lua {} has no torch form", luaL_typename(L, idx)));
}

}  // namespace

Value to_value(lua_State* L, int idx) { return to_value_at(L, idx, 0); }

void push_value(lua_State* L, const Value& v) {
  struct Visitor {
    lua_State* L;
    void operator()(std::monostate) const { lua_pushnil(L); }
    void operator()(bool b) const { lua_pushboolean(L, b); }
    void operator()(int64_t i) const { lua_pushnumber(L, static_cast<lua_Number>(i)); }
    void operator()(double d) const { lua_pushnumber(L, d); }
    void operator()(const std::string& s) const { lua_pushlstring(L, s.data(), s.size()); }
    void operator()(const at::Tensor& t) const { push_tensor(L, t); }
    void operator()(const Array& a) const {
      lua_createtable(L, static_cast<int>(a.size()), 0);
      for (size_t i = 0; i < a.size(); ++i) {
        push_value(L, a[i]);
        lua_rawseti(L, -2, static_cast<int>(i + 1));
      }
    }
    void operator()(const Map& m) const {
      lua_createtable(L, 0, static_cast<int>(m.size()));
      for (const auto& [k, x] : m) {
        push_value(L, x);
        lua_setfield(L, -2, k.c_str());
      }
    }
  };
  std::visit(Visitor{L}, v.v);
}

namespace {
/// upvalue 1: the qualified operator name; every Lua argument is an op argument.
int call_named_op(lua_State* L) {
  std::vector<Value> args;
  for (int i = 1, n = lua_gettop(L); i <= n; ++i) args.push_back(to_value(L, i));
  auto out = call_op(lua_tostring(L, lua_upvalueindex(1)), args);
  for (const auto& v : out) push_value(L, v);
  return static_cast<int>(out.size());
}
}  // namespace

void push_op_closure(lua_State* L, const std::string& qualified) {
  lua_pushstring(L, qualified.c_str());
  lua_pushcclosure(L, guard<call_named_op>, 1);
}

bool check_options(lua_State* L, int idx, const char* what, std::initializer_list<const char*> known) {
  if (lua_isnoneornil(L, idx)) return false;
  std::string names;
  for (const char* k : known) names += (names.empty() ? "" : ", ") + std::string(k);
  if (!lua_istable(L, idx))
    throw std::invalid_argument(
        fmt::format("{}: options must be a table {{{}}}, got a {}", what, names, luaL_typename(L, idx)));
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1)) {
    bool ok = false;
    if (lua_type(L, -2) == LUA_TSTRING)
      for (const char* k : known) ok = ok || std::string(k) == lua_tostring(L, -2);
    if (!ok) {
      std::string key = lua_type(L, -2) == LUA_TSTRING ? fmt::format("'{}'", lua_tostring(L, -2))
                                                      : std::string(luaL_typename(L, -2)) + " key";
      lua_pop(L, 2);
      throw std::invalid_argument(fmt::format("{}: unknown option {} (known: {})", what, key, names));
    }
  }
  return true;
}

std::vector<std::string> check_strings(lua_State* L, int idx) {
  luaL_checktype(L, idx, LUA_TTABLE);
  std::vector<std::string> out;
  for (int i = 1, n = static_cast<int>(lua_objlen(L, idx)); i <= n; ++i) {
    lua_rawgeti(L, idx, i);
    out.emplace_back(luaL_checkstring(L, -1));
    lua_pop(L, 1);
  }
  return out;
}

int64_t check_whole(lua_State* L, int idx, const char* what, double lo, double hi) {
  double v = lua_tonumber(L, idx);
  if (lua_type(L, idx) != LUA_TNUMBER || v != std::floor(v) || v < lo || v > hi)
    throw std::invalid_argument(fmt::format("{} must be a whole number in {}..{}, got {}", what, lo, hi,
                                            lua_type(L, idx) == LUA_TNUMBER ? fmt::format("{}", v)
                                                                            : std::string(luaL_typename(L, idx))));
  return static_cast<int64_t>(v);
}

std::optional<std::string> opt_string_field(lua_State* L, int idx, const char* key) {
  if (!lua_istable(L, idx)) return std::nullopt;
  lua_getfield(L, idx, key);
  std::optional<std::string> out;
  if (lua_type(L, -1) == LUA_TSTRING) out = lua_tostring(L, -1);
  else if (!lua_isnil(L, -1))
    throw std::invalid_argument(fmt::format("option '{}' must be a string", key));
  lua_pop(L, 1);
  return out;
}

ToTarget check_to_target(lua_State* L, int idx) {
  ToTarget out;
  if (lua_type(L, idx) == LUA_TSTRING) {
    std::string s = lua_tostring(L, idx);
    if (is_device_name(s)) out.device = parse_device(s);
    else out.dtype = parse_dtype(s);
  } else if (lua_istable(L, idx)) {
    if (auto dev = opt_string_field(L, idx, "device")) out.device = parse_device(*dev);
    if (auto dt = opt_string_field(L, idx, "dtype")) out.dtype = parse_dtype(*dt);
  } else {
    luaL_argerror(L, idx, "expected a dtype, a device or {dtype=, device=}");
  }
  return out;
}

std::optional<double> opt_number_field(lua_State* L, int idx, const char* key) {
  if (!lua_istable(L, idx)) return std::nullopt;
  lua_getfield(L, idx, key);
  std::optional<double> out;
  if (lua_type(L, -1) == LUA_TNUMBER) out = lua_tonumber(L, -1);
  else if (!lua_isnil(L, -1))
    throw std::invalid_argument(fmt::format("option '{}' must be a number", key));
  lua_pop(L, 1);
  return out;
}

}  // namespace parity
