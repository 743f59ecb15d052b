// bindings/vm.cpp — Lua state set-up, stdlib preloading, traced calls, guard<>, GC accounting.
#include "bindings/vm.hpp"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <exception>
#include <string>

#include "host/files.hpp"
#include "host/runtime.hpp"

namespace parity {
namespace {

// Registry key for the per-state accounting block (a full userdata, freed with the state).
char kGcKey;

struct GcState {
  size_t since_collect = 0;
  size_t threshold = 256u << 20;
  size_t live = 0;
  size_t collections = 0;
};

GcState& gc_state(lua_State* L) {
  lua_pushlightuserdata(L, &kGcKey);
  lua_rawget(L, LUA_REGISTRYINDEX);  // [gc]
  auto* s = static_cast<GcState*>(lua_touserdata(L, -1));
  lua_pop(L, 1);  // []
  return *s;
}

int traceback(lua_State* L) {
  const char* msg = lua_tostring(L, 1);
  if (!msg) msg = luaL_typename(L, 1);  // an error object that is not a string
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int embedded_loader(lua_State* L) {
  auto* chunk = static_cast<const EmbeddedChunk*>(lua_touserdata(L, lua_upvalueindex(1)));
  if (luaL_loadbuffer(L, chunk->data, chunk->size, chunk->chunkname) != 0) return lua_error(L);
  lua_pushstring(L, chunk->module);
  lua_call(L, 1, 1);
  return 1;
}

void preload_stdlib(lua_State* L, const VmOptions& options) {
  if (!options.stdlib_dir.empty()) {  // from disk: put DIR first on package.path
    lua_getglobal(L, "package");  // [package]
    lua_getfield(L, -1, "path");  // [package, path]
    std::string path = options.stdlib_dir + "/?.lua;" + options.stdlib_dir + "/?/init.lua;" +
                       lua_tostring(L, -1);
    lua_pop(L, 1);
    lua_pushstring(L, path.c_str());
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);  // []
    return;
  }
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");  // [package, preload]
  for (const EmbeddedChunk* c = kEmbeddedStdlib; c->module; ++c) {
    lua_pushlightuserdata(L, const_cast<EmbeddedChunk*>(c));
    lua_pushcclosure(L, embedded_loader, 1);
    lua_setfield(L, -2, c->module);
  }
  lua_pop(L, 2);  // []
}

int core_version(lua_State* L) {
  std::string v = version_string();
  v.insert(v.find('(') + 1, std::string(LUAJIT_VERSION) + ", ");
  lua_pushstring(L, v.c_str());
  return 1;
}

int push_gc_stats(lua_State* L) {
  auto s = gc_stats(L);
  lua_createtable(L, 0, 2);
  lua_pushnumber(L, static_cast<lua_Number>(s.live_bytes));
  lua_setfield(L, -2, "live_bytes");
  lua_pushnumber(L, static_cast<lua_Number>(s.collections));
  lua_setfield(L, -2, "collections");
  return 1;
}

/// core.collect(): a full collection (stage boundaries), then the accounting figures
int core_collect(lua_State* L) {
  lua_gc(L, LUA_GCCOLLECT, 0);
  return push_gc_stats(L);
}

/// core.path_kind(path) -> "file" | "dir" | nil
int core_path_kind(lua_State* L) {
  std::string kind = path_kind(luaL_checkstring(L, 1));
  if (kind.empty()) lua_pushnil(L);
  else lua_pushstring(L, kind.c_str());
  return 1;
}

/// core.hash_file(path), core.hash_string(s) -> 16 hex digits (FNV-1a 64)
int core_hash_file(lua_State* L) {
  lua_pushstring(L, hash_file(luaL_checkstring(L, 1)).c_str());
  return 1;
}
int core_hash_string(lua_State* L) {
  size_t n;
  const char* s = luaL_checklstring(L, 1, &n);
  lua_pushstring(L, hash_string(std::string(s, n)).c_str());
  return 1;
}

const luaL_Reg kCore[] = {{"path_kind", guard<core_path_kind>},
                          {"hash_file", guard<core_hash_file>},
                          {"hash_string", guard<core_hash_string>},
                          {"version", guard<core_version>},
                          {"gc_stats", push_gc_stats},
                          {"collect", core_collect},
                          {nullptr, nullptr}};

}  // namespace

Vm::Vm(const VmOptions& options) : L_(luaL_newstate()) {
  if (!L_) throw std::runtime_error("cannot create a Lua state (out of memory)");
  luaL_openlibs(L_);
  auto* gc = new (lua_newuserdata(L_, sizeof(GcState))) GcState();
  if (const char* mb = std::getenv("PARITY_GC_MB")) gc->threshold = std::strtoull(mb, nullptr, 10) << 20;
  lua_pushlightuserdata(L_, &kGcKey);
  lua_insert(L_, -2);
  lua_rawset(L_, LUA_REGISTRYINDEX);  // registry[&kGcKey] = gc

  lua_newtable(L_);  // [core]: require "parity.core"
  luaL_setfuncs(L_, kCore, 0);
  lua_getglobal(L_, "package");
  lua_getfield(L_, -1, "loaded");  // [core, package, loaded]
  lua_pushvalue(L_, -3);
  lua_setfield(L_, -2, "parity.core");
  lua_pop(L_, 3);  // []
  open_tensor(L_);
  open_torch(L_);
  open_module(L_);
  open_tensor_files(L_);
  open_metrics(L_);
  open_json(L_);
  preload_stdlib(L_, options);
}

Vm::~Vm() { lua_close(L_); }

bool call_traced(lua_State* L, int nargs, int nresults, std::string* error) {
  int base = lua_gettop(L) - nargs;  // the function's index
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  int rc = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (rc == 0) return true;
  if (error) error->assign(lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error object)");
  lua_pop(L, 1);
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

void note_native_bytes(lua_State* L, size_t bytes) {
  auto& s = gc_state(L);
  s.live += bytes;
  s.since_collect += bytes;
  if (s.since_collect > s.threshold) {
    s.since_collect = 0;
    ++s.collections;
    lua_gc(L, LUA_GCCOLLECT, 0);
  }
}

void release_native_bytes(lua_State* L, size_t bytes) {
  auto& s = gc_state(L);
  s.live -= std::min(bytes, s.live);
}

GcStats gc_stats(lua_State* L) {
  const auto& s = gc_state(L);
  return {s.live, s.collections};
}

bool run_guarded(lua_State* L, lua_CFunction f, int* nresults) {
  std::string msg;
  try {
    *nresults = f(L);
    return true;
  } catch (const c10::Error& e) {
    msg = e.what_without_backtrace();
  } catch (const std::exception& e) {
    msg = e.what();
  }
  luaL_where(L, 1);
  lua_pushlstring(L, msg.data(), msg.size());
  lua_concat(L, 2);
  return false;
}

}  // namespace parity
