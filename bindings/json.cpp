// bindings/json.cpp — parity.core.json: Lua tables <-> JSON (nlohmann), atomic file writes.
// Objects are written with sorted keys, so the same table always gives the same bytes.
#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "bindings/lua_value.hpp"
#include "bindings/vm.hpp"
#include "host/files.hpp"

namespace parity {
namespace {

using json = nlohmann::json;
char kArrayMeta;  // registry key: metatable marking a table as a JSON array (for empty ones)
constexpr int kMaxDepth = 100;

bool is_array_marked(lua_State* L, int idx) {
  if (!lua_getmetatable(L, idx)) return false;
  lua_pushlightuserdata(L, &kArrayMeta);
  lua_rawget(L, LUA_REGISTRYINDEX);
  bool marked = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return marked;
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
    case LUA_TSTRING: return lua_tostring(L, idx);
    case LUA_TLIGHTUSERDATA:
      if (!lua_touserdata(L, idx)) return nullptr;  // json.null
      break;
    case LUA_TTABLE: {
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
        if (lua_type(L, -2) == LUA_TSTRING) key = lua_tostring(L, -2);
        else if (lua_type(L, -2) == LUA_TNUMBER) key = fmt::format("{}", lua_tonumber(L, -2));
        else throw std::invalid_argument(fmt::format("json: {} has a {} key", where, luaL_typename(L, -2)));
        o[key] = encode(L, -1, where + "." + key, depth + 1);
        lua_pop(L, 1);
      }
      return o;
    }
    default: break;
  }
  if (test_tensor(L, idx))
    throw std::invalid_argument(fmt::format("json: {} is a Tensor (convert it with :tolist())", where));
  throw std::invalid_argument(fmt::format("json: {} is a {}, which JSON cannot hold", where, luaL_typename(L, idx)));
}

void decode(lua_State* L, const json& j) {
  switch (j.type()) {
    case json::value_t::null: lua_pushlightuserdata(L, nullptr); return;
    case json::value_t::boolean: lua_pushboolean(L, j.get<bool>()); return;
    case json::value_t::number_integer: lua_pushnumber(L, static_cast<double>(j.get<int64_t>())); return;
    case json::value_t::number_unsigned: lua_pushnumber(L, static_cast<double>(j.get<uint64_t>())); return;
    case json::value_t::number_float: lua_pushnumber(L, j.get<double>()); return;
    case json::value_t::string: lua_pushstring(L, j.get_ref<const std::string&>().c_str()); return;
    case json::value_t::array: {
      lua_createtable(L, static_cast<int>(j.size()), 0);
      int i = 0;
      for (const auto& x : j) decode(L, x), lua_rawseti(L, -2, ++i);
      lua_pushlightuserdata(L, &kArrayMeta);
      lua_rawget(L, LUA_REGISTRYINDEX);
      lua_setmetatable(L, -2);
      return;
    }
    default: {
      lua_createtable(L, 0, static_cast<int>(j.size()));
      for (const auto& [k, x] : j.items()) decode(L, x), lua_setfield(L, -2, k.c_str());
      return;
    }
  }
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

json parse(const std::string& text, const std::string& origin) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(fmt::format("{}: invalid JSON ({})", origin, e.what()));
  }
}

int json_decode(lua_State* L) {
  decode(L, parse(luaL_checkstring(L, 1), "json.decode"));
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
  decode(L, parse(read_file(path), path));
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
