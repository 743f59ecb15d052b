// bindings/tensor_files.cpp — parity.core.tensors: load/save safetensors and .npy by extension.
#include <fmt/format.h>

#include <filesystem>
#include <optional>

#include "bindings/lua_value.hpp"
#include "bindings/vm.hpp"
#include "host/tensor_io.hpp"

namespace parity {
namespace {

bool ends_with(const std::string& s, const char* suffix) {
  std::string x(suffix);
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}

[[noreturn]] void unknown_format(const std::string& path) {
  throw std::invalid_argument(
      fmt::format("{}: unknown tensor file type (use .safetensors, .npy, or raw .bin with a .json sidecar)", path));
}

/// tensors.load(path[, {names = {...}}]) -> {name = Tensor}, metadata   (.npy, .bin: {stem = Tensor});
/// `names`: of a safetensors file, just those tensors (those it has)
int tensors_load(lua_State* L) {
  std::string path = luaL_checkstring(L, 1);
  std::optional<std::vector<std::string>> names;
  if (check_options(L, 2, "tensors.load", {"names"})) {
    lua_getfield(L, 2, "names");
    if (!lua_isnil(L, -1)) names = check_strings(L, lua_gettop(L));
    lua_pop(L, 1);
  }
  if (names && !ends_with(path, ".safetensors"))
    throw std::invalid_argument(fmt::format("{}: names choose tensors of a .safetensors file", path));
  if (ends_with(path, ".safetensors")) {
    auto file = read_safetensors(path, names ? &*names : nullptr);
    push_named_tensors(L, file.tensors);
    lua_newtable(L);
    for (const auto& [k, v] : file.metadata) {
      lua_pushstring(L, v.c_str());
      lua_setfield(L, -2, k.c_str());
    }
    return 2;
  }
  if (ends_with(path, ".npy") || ends_with(path, ".bin")) {
    lua_newtable(L);
    push_tensor(L, ends_with(path, ".npy") ? read_npy(path) : read_raw(path));
    lua_setfield(L, -2, std::filesystem::path(path).stem().c_str());
    return 1;
  }
  unknown_format(path);
}

/// tensors.save(path, {name = Tensor}[, metadata]) ; .npy takes a Tensor or a one-entry table
int tensors_save(lua_State* L) {
  std::string path = luaL_checkstring(L, 1);
  if (ends_with(path, ".npy")) {
    if (!lua_isnoneornil(L, 3))
      throw std::invalid_argument(fmt::format("{}: a .npy file holds no metadata (a .safetensors file does)", path));
    if (auto* t = test_tensor(L, 2)) {
      write_npy(path, *t);
      return 0;
    }
    auto v = to_value(L, 2);
    auto m = v.get<Map>();
    if (!m || m->size() != 1 || !(*m)[0].second.get<at::Tensor>())
      throw std::invalid_argument(fmt::format("{}: .npy holds one array: pass a Tensor", path));
    write_npy(path, *(*m)[0].second.get<at::Tensor>());
    return 0;
  }
  if (!ends_with(path, ".safetensors")) unknown_format(path);
  luaL_checktype(L, 2, LUA_TTABLE);
  NamedTensorList tensors;
  lua_pushnil(L);
  while (lua_next(L, 2)) {  // [key, value]
    if (lua_type(L, -2) != LUA_TSTRING)
      throw std::invalid_argument(fmt::format("{}: tensor names must be strings", path));
    auto* t = test_tensor(L, -1);
    if (!t)
      throw std::invalid_argument(
          fmt::format("{}: '{}' is a {}, not a Tensor", path, lua_tostring(L, -2), luaL_typename(L, -1)));
    tensors.emplace_back(lua_tostring(L, -2), *t);
    lua_pop(L, 1);
  }
  std::vector<std::pair<std::string, std::string>> meta;
  if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3))
    throw std::invalid_argument(
        fmt::format("{}: metadata must be a table of strings to strings, got a {}", path, luaL_typename(L, 3)));
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        throw std::invalid_argument(fmt::format("{}: metadata must map strings to strings", path));
      meta.emplace_back(lua_tostring(L, -2), lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  write_safetensors(path, tensors, meta);
  return 0;
}

const luaL_Reg kTensors[] = {
    {"load", guard<tensors_load>}, {"save", guard<tensors_save>}, {nullptr, nullptr}};

}  // namespace

void open_tensor_files(lua_State* L) {
  push_core_table(L, "tensors", kTensors);
  lua_pop(L, 1);
}

}  // namespace parity
