// tests/fuzz/fuzz_json.cpp — libFuzzer targets for parity.core.json (bindings/json.cpp, built
// here with clang, ASan and UBSan, in a plain Lua state):
// - fuzz_json: any bytes through json.decode. It either refuses them with an error naming its
//   origin, or gives a value that encodes, and whose encoding decodes and encodes to itself.
// - fuzz_manifest (PARITY_FUZZ_MANIFEST): the bytes as a bundle's parity.json, read by
//   stdlib/parity/bundle.lua (loaded from the source tree) with a stand-in parity.core that has
//   the real json and no models. With bundle.read_manifest(text, origin) every error must name
//   the origin; without it, bundle.open and the manifest's readers run and only crashes count.
// A broken property aborts (a crash to libFuzzer, its input kept).
#include <lua.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "bindings/vm.hpp"

// ---- what bindings/json.cpp takes from bindings/vm.cpp, without the rest of the VM --------------
namespace parity {

bool run_guarded(lua_State* L, lua_CFunction f, int* nresults) {
  std::string msg;
  try {
    *nresults = f(L);
    return true;
  } catch (const std::exception& e) {
    msg = e.what();
  }
  luaL_where(L, 1);
  lua_pushlstring(L, msg.data(), msg.size());
  lua_concat(L, 2);
  return false;
}

void push_core_table(lua_State* L, const char* field, const luaL_Reg* fns) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_getfield(L, -1, "parity.core");  // [package, loaded, core]
  lua_replace(L, -3);
  lua_pop(L, 1);  // [core]
  if (field) {
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, field);  // core[field] = tbl
    lua_remove(L, -2);           // [tbl]
  }
  luaL_setfuncs(L, fns, 0);
}

}  // namespace parity

namespace {

#ifndef PARITY_FUZZ_MANIFEST
// Returns the function each input is given to.
const char* kDriver = R"lua(
local json = require("parity.core").json
return function(text)
  local ok, v = pcall(json.decode, text)
  if not ok then
    if type(v) ~= "string" or not v:find("json.decode: ", 1, true) then
      error("a decode error that does not name its origin: " .. tostring(v))
    end
    return
  end
  local ok1, e1 = pcall(json.encode, v)
  if not ok1 then error("a decoded value does not encode: " .. tostring(e1)) end
  local e2 = json.encode(json.decode(e1))
  if e1 ~= e2 then error("encode(decode(e)) ~= e for e = " .. e1:sub(1, 200)) end
end
)lua";
#else
const char* kDriver = R"lua(
local core = require("parity.core")
local text = ""  -- the current input, what "parity.json" holds
local files = { ["fuzz_bundle"] = "dir", ["fuzz_bundle/fp32.pt"] = "file", ["fuzz_bundle/parity.json"] = "file" }
core.path_kind = function(p) return files[p] end
core.load = function(p) error(p .. ": no models in the fuzz target", 0) end
local decode = core.json.decode
core.json.read = function(p)
  assert(p == "fuzz_bundle/parity.json", p)
  return decode(text, p)
end
local bundle = require("parity.bundle")
return function(bytes)
  text = bytes
  if bundle.read_manifest then  -- every refusal names the file
    local ok, err = pcall(bundle.read_manifest, text, "fuzz_bundle/parity.json")
    if not ok and (type(err) ~= "string" or not err:find("fuzz_bundle/parity.json", 1, true)) then
      error("a manifest error that does not name the file: " .. tostring(err))
    end
  end
  local ok, b = pcall(bundle.open, "fuzz_bundle")
  if not ok then return end
  pcall(b.max_positions, b)
  pcall(b.vocab_size, b)
  if b.manifest ~= nil then pcall(core.json.encode, b.manifest) end  -- what the cache key hashes
end
)lua";
#endif

lua_State* make_state() {
  lua_State* L = luaL_newstate();
  if (!L) std::abort();
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");  // [package, loaded]
  lua_newtable(L);
  lua_setfield(L, -2, "parity.core");
  lua_pop(L, 1);  // [package]
#ifdef PARITY_STDLIB_DIR
  lua_pushstring(L, PARITY_STDLIB_DIR "/?.lua");
  lua_setfield(L, -2, "path");
#endif
  lua_pop(L, 1);  // []
  parity::open_json(L);
  if (luaL_loadstring(L, kDriver) != 0 || lua_pcall(L, 0, 1, 0) != 0) {
    std::fprintf(stderr, "fuzz driver: %s\n", lua_tostring(L, -1));
    std::abort();
  }
  lua_setglobal(L, "fuzz_one");
  return L;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static lua_State* L = make_state();
  static int runs = 0;
  lua_getglobal(L, "fuzz_one");
  lua_pushlstring(L, reinterpret_cast<const char*>(data), size);
  if (lua_pcall(L, 1, 0, 0) != 0) {
    std::fprintf(stderr, "fuzz: %s\n", lua_tostring(L, -1));
    std::abort();
  }
  lua_settop(L, 0);
  if (++runs % 1000 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
