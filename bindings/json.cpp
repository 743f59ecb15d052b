// bindings/json.cpp — parity.core.json: Lua tables <-> JSON (nlohmann), atomic file writes.
// Objects are written with sorted keys, so the same table always gives the same bytes. Both
// directions stop at kMaxDepth levels below the root. Free of torch headers (the JSON fuzz
// target in tests/fuzz/ builds this file with clang).
#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "bindings/vm.hpp"
#include "host/files.hpp"

namespace parity {
namespace {

using json = nlohmann::json;
char kArrayMeta;  // registry key: metatable marking a table as a JSON array (for empty ones)
constexpr int kMaxDepth = 100;  // values at depth 0 (the root) .. kMaxDepth, both directions
constexpr const char* kTensorMetaName = "parity.Tensor";  // kTensorMeta of bindings/lua_value.hpp

bool is_array_marked(lua_State* L, int idx) {
  if (!lua_getmetatable(L, idx)) return false;
  lua_pushlightuserdata(L, &kArrayMeta);
  lua_rawget(L, LUA_REGISTRYINDEX);
  bool marked = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return marked;
}

std::string lua_string(lua_State* L, int idx) {  // embedded NULs kept
  size_t n = 0;
  const char* s = lua_tolstring(L, idx, &n);
  return std::string(s, n);
}

json encode(lua_State* L, int idx, const std::string& where, int depth) {
  if (depth > kMaxDepth) throw std::invalid_argument(fmt::format("json: {} nests too deeply (a cycle?)", where));
  idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: return nullptr;
    case LUA_TBOOLEAN: return static_cast<bool>(lua_toboolean(L, idx));
    case LUA_TNUMBER: {
      double d = lua_tonumber(L, idx);
      if (std::isnan(d)) return "NaN";
      if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
      if (std::floor(d) == d && std::fabs(d) < 9007199254740992.0) return static_cast<int64_t>(d);
      return d;
    }
    case LUA_TSTRING: return lua_string(L, idx);
    case LUA_TLIGHTUSERDATA:
      if (!lua_touserdata(L, idx)) return nullptr;  // json.null
      break;
    case LUA_TTABLE: {
      if (!lua_checkstack(L, 4)) throw std::runtime_error(fmt::format("json: {}: out of Lua stack", where));
      size_t n = lua_objlen(L, idx), count = 0;
      lua_pushnil(L);
      while (lua_next(L, idx)) ++count, lua_pop(L, 1);
      if ((count > 0 && count == n) || (count == 0 && is_array_marked(L, idx))) {
        json a = json::array();
        for (size_t i = 1; i <= n; ++i) {
          lua_rawgeti(L, idx, static_cast<int>(i));
          a.push_back(encode(L, -1, fmt::format("{}[{}]", where, i), depth + 1));
          lua_pop(L, 1);
        }
        return a;
      }
      json o = json::object();
      lua_pushnil(L);
      while (lua_next(L, idx)) {  // [key, value]
        std::string key;
        if (lua_type(L, -2) == LUA_TSTRING) key = lua_string(L, -2);
        else if (lua_type(L, -2) == LUA_TNUMBER) key = fmt::format("{}", lua_tonumber(L, -2));
        else throw std::invalid_argument(fmt::format("json: {} has a {} key", where, luaL_typename(L, -2)));
        o[key] = encode(L, -1, where + "." + key, depth + 1);
        lua_pop(L, 1);
      }
      return o;
    }
    default: break;
  }
  if (luaL_testudata(L, idx, kTensorMetaName))
    throw std::invalid_argument(fmt::format("json: {} is a Tensor (convert it with :tolist())", where));
  throw std::invalid_argument(fmt::format("json: {} is a {}, which JSON cannot hold", where, luaL_typename(L, idx)));
}

// NOTE [ Decoding ]
// Text becomes Lua values in one pass: nlohmann's SAX parser (iterative, no recursion) calls
// back for each token and the values are built directly on the Lua stack, without a JSON tree
// in between. A value deeper than kMaxDepth stops the parse where it starts, so a file of a
// million '[' costs nothing, and the Lua stack is grown (lua_checkstack) at every level.
// nlohmann's DOM parser with a callback would see depths too, but it is quadratic in the input
// (3.11.2: 1.7 s for 40,000 small objects, 30 s for 160,000).
class LuaSax {
 public:
  LuaSax(lua_State* L, const std::string& origin) : L_(L), origin_(origin) {}

  bool null() { return open(), lua_pushlightuserdata(L_, nullptr), placed(); }
  bool boolean(bool b) { return open(), lua_pushboolean(L_, b), placed(); }
  bool number_integer(json::number_integer_t v) { return number(static_cast<double>(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return number(static_cast<double>(v)); }
  bool number_float(json::number_float_t v, const json::string_t&) { return number(v); }
  bool string(json::string_t& s) { return open(), lua_pushlstring(L_, s.data(), s.size()), placed(); }
  bool binary(json::binary_t&) { throw std::invalid_argument(fmt::format("{}: invalid JSON (binary data)", origin_)); }
  bool start_object(std::size_t) { return open(), lua_newtable(L_), next_.push_back(0), true; }
  bool key(json::string_t& k) { return lua_pushlstring(L_, k.data(), k.size()), true; }  // [.., tbl, key]
  bool end_object() { return next_.pop_back(), placed(); }
  bool start_array(std::size_t) { return open(), lua_newtable(L_), next_.push_back(1), true; }
  bool end_array() {
    lua_pushlightuserdata(L_, &kArrayMeta);
    lua_rawget(L_, LUA_REGISTRYINDEX);
    lua_setmetatable(L_, -2);
    return next_.pop_back(), placed();
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    throw std::invalid_argument(fmt::format("{}: invalid JSON ({})", origin_, e.what()));
  }

 private:
  /// Before a value is pushed at depth next_.size() (the root is depth 0).
  void open() {
    if (next_.size() > static_cast<size_t>(kMaxDepth))
      throw std::invalid_argument(fmt::format("{}: JSON nests deeper than {} levels", origin_, kMaxDepth));
    if (!lua_checkstack(L_, 4)) throw std::runtime_error(fmt::format("{}: JSON: out of Lua stack", origin_));
  }
  bool number(double v) { return open(), lua_pushnumber(L_, v), placed(); }
  /// The value on top goes into the container below it: [.., array, v] or [.., object, key, v].
  bool placed() {
    if (next_.empty()) return true;  // the root stays on the stack
    if (next_.back() > 0) lua_rawseti(L_, -2, next_.back()++);
    else lua_rawset(L_, -3);
    return true;
  }

  lua_State* L_;
  const std::string& origin_;
  std::vector<int> next_;  // per open container: the next array index, or 0 for an object
};

/// Pushes the value `text` holds; errors start "ORIGIN: ". [-0, +1]
void push_decoded(lua_State* L, const std::string& text, const std::string& origin) {
  int top = lua_gettop(L);
  LuaSax sax(L, origin);
  json::sax_parse(text, &sax);  // strict: anything after the value is an error too
  if (lua_gettop(L) != top + 1)
    throw std::logic_error(fmt::format("{}: JSON: decoding left the stack unbalanced", origin));
}

std::optional<double> opt_number_field(lua_State* L, int idx, const char* key) {
  if (!lua_istable(L, idx)) return std::nullopt;
  lua_getfield(L, idx, key);
  std::optional<double> out;
  if (lua_type(L, -1) == LUA_TNUMBER) out = lua_tonumber(L, -1);
  bool bad = !out && !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (bad) throw std::invalid_argument(fmt::format("option '{}' must be a number", key));
  return out;
}

int indent_option(lua_State* L, int idx, int fallback) {
  auto v = opt_number_field(L, idx, "indent");
  return v ? static_cast<int>(*v) : fallback;
}

/// json.encode(value[, {indent = 2}]) -> string (compact by default)
int json_encode(lua_State* L) {
  std::string out = encode(L, 1, "value", 0).dump(indent_option(L, 2, -1));
  lua_pushlstring(L, out.data(), out.size());
  return 1;
}

/// json.decode(text[, origin]) -> value; errors start "ORIGIN: " (default "json.decode")
int json_decode(lua_State* L) {
  size_t n = 0;
  const char* s = luaL_checklstring(L, 1, &n);
  std::string origin = luaL_optstring(L, 2, "json.decode");
  push_decoded(L, std::string(s, n), origin);
  return 1;
}

/// json.write(path, value[, {indent = 2}]): pretty by default, atomic (temp file + rename)
int json_write(lua_State* L) {
  std::string path = luaL_checkstring(L, 1);
  write_file_atomic(path, encode(L, 2, "value", 0).dump(indent_option(L, 3, 2)) + "\n");
  return 0;
}

int json_read(lua_State* L) {
  std::string path = luaL_checkstring(L, 1);
  push_decoded(L, read_file(path), path);
  return 1;
}

/// json.array(t) marks t as an array, so an empty one encodes as [] rather than {}
int json_array(lua_State* L) {
  if (lua_isnoneornil(L, 1)) lua_settop(L, 0), lua_newtable(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushlightuserdata(L, &kArrayMeta);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_setmetatable(L, 1);
  lua_settop(L, 1);
  return 1;
}

const luaL_Reg kJson[] = {{"encode", guard<json_encode>}, {"decode", guard<json_decode>},
                          {"write", guard<json_write>},   {"read", guard<json_read>},
                          {"array", guard<json_array>},   {nullptr, nullptr}};

}  // namespace

void open_json(lua_State* L) {
  lua_pushlightuserdata(L, &kArrayMeta);
  lua_newtable(L);
  lua_pushstring(L, "array");
  lua_setfield(L, -2, "__jsontype");
  lua_rawset(L, LUA_REGISTRYINDEX);
  push_core_table(L, "json", kJson);  // [json]
  lua_pushlightuserdata(L, nullptr);
  lua_setfield(L, -2, "null");
  lua_pop(L, 1);  // []
}

}  // namespace parity
