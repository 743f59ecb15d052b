// bindings/program.cpp — Lua view of a .pt2 package (host/program.hpp): core.load_program and
// what stdlib/parity/program.lua builds a Module-like object from.
#include "bindings/lua_value.hpp"
#include "bindings/vm.hpp"
#include "host/program.hpp"

namespace parity {
namespace {

constexpr const char* kProgramMeta = "parity.Program";

Program& check_program(lua_State* L, int idx) {
  return *static_cast<Program*>(luaL_checkudata(L, idx, kProgramMeta));
}

/// core.load_program(path[, device]) -> Program
int load_program(lua_State* L) {
  std::optional<c10::Device> device;
  if (!lua_isnoneornil(L, 2)) device = parse_device(luaL_checkstring(L, 2));
  Program p = Program::load(luaL_checkstring(L, 1), device);
  new (lua_newuserdata(L, sizeof(Program))) Program(std::move(p));
  luaL_setmetatable(L, kProgramMeta);
  return 1;
}

/// core.programs_supported() -> true, or false and which build reads .pt2 packages
int programs_supported(lua_State* L) {
  lua_pushboolean(L, Program::supported());
  if (Program::supported()) return 1;
  lua_pushstring(L, Program::why_not().c_str());
  return 2;
}

/// p:metadata() -> { key = "value", ... }
int program_metadata(lua_State* L) {
  Map m;
  for (auto& [k, v] : check_program(L, 1).metadata()) m.emplace_back(k, v);
  push_value(L, m);
  return 1;
}

/// p:constants() -> { name = Tensor, ... }
int program_constants(lua_State* L) {
  push_named_tensors(L, check_program(L, 1).constants());
  return 1;
}

/// p:run(Tensor...) -> { Tensor, ... }: the flat outputs
int program_run(lua_State* L) {
  auto& p = check_program(L, 1);
  std::vector<at::Tensor> inputs;
  for (int i = 2, n = lua_gettop(L); i <= n; ++i) inputs.push_back(check_tensor(L, i));
  auto out = p.run(inputs);
  lua_createtable(L, static_cast<int>(out.size()), 0);
  for (size_t i = 0; i < out.size(); ++i) {
    push_tensor(L, std::move(out[i]));
    lua_rawseti(L, -2, static_cast<int>(i + 1));
  }
  return 1;
}

int program_path(lua_State* L) {
  lua_pushstring(L, check_program(L, 1).path().c_str());
  return 1;
}

int program_gc(lua_State* L) {
  if (auto* p = static_cast<Program*>(luaL_testudata(L, 1, kProgramMeta))) {
    p->~Program();
    lua_pushnil(L);
    lua_setmetatable(L, 1);
  }
  return 0;
}

const luaL_Reg kMethods[] = {{"metadata", guard<program_metadata>},
                             {"constants", guard<program_constants>},
                             {"run", guard<program_run>},
                             {"path", guard<program_path>},
                             {nullptr, nullptr}};

const luaL_Reg kCore[] = {{"load_program", guard<load_program>},
                          {"programs_supported", guard<programs_supported>},
                          {nullptr, nullptr}};

}  // namespace

void open_program(lua_State* L) {
  luaL_newmetatable(L, kProgramMeta);  // [meta]
  lua_pushcfunction(L, program_gc);
  lua_setfield(L, -2, "__gc");
  lua_newtable(L);  // [meta, methods]
  luaL_setfuncs(L, kMethods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);  // []
  push_core_table(L, nullptr, kCore);
  lua_pop(L, 1);
}

}  // namespace parity
