// bindings/vm.cpp — Lua state set-up, stdlib preloading, traced calls, guard<>, GC accounting.
#include "bindings/vm.hpp"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <luajit.h>
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
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

}  // namespace

// ---- sandbox limits: NOTE [ Sandbox limits ] in vm.hpp -----------------------------------

struct Limits {
  lua_Alloc inner;  // the allocator LuaJIT created the state with
  void* inner_ud;
  int64_t used = 0;  // bytes, relative to when the wrapper was installed
  int64_t cap = INT64_MAX;
  int64_t steps = 0, max_steps = 0;
  const char* tripped = nullptr;  // "instructions" or "memory" once a limit was hit
  bool active = false;
};

namespace {

constexpr int kHookEvery = 1000;  // instructions between two count-hook calls

void* limited_alloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  auto* s = static_cast<Limits*>(ud);
  if (nsize > osize && s->used + static_cast<int64_t>(nsize - osize) > s->cap) {
    s->tripped = "memory";
    return nullptr;  // Lua raises "not enough memory"
  }
  void* p = s->inner(s->inner_ud, ptr, osize, nsize);
  if (p || nsize == 0) s->used += static_cast<int64_t>(nsize) - static_cast<int64_t>(osize);
  return p;
}

Limits& limits_of(lua_State* L) {
  void* ud = nullptr;
  lua_getallocf(L, &ud);
  return *static_cast<Limits*>(ud);
}

void count_hook(lua_State* L, lua_Debug*) {
  auto& s = limits_of(L);
  s.steps += kHookEvery;
  if (s.steps > s.max_steps) {
    s.tripped = "instructions";
    luaL_error(L, "instruction budget of %d exceeded", static_cast<int>(s.max_steps));
  }
}

char alarm_message[512];
void on_alarm(int) {
  ssize_t n = ::write(STDERR_FILENO, alarm_message, std::strlen(alarm_message));
  (void)n;
  ::_exit(2);
}

void arm_alarm(double seconds) {
  struct itimerval t {};
  t.it_value.tv_sec = static_cast<time_t>(seconds);
  t.it_value.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(t.it_value.tv_sec)) * 1e6);
  ::signal(SIGALRM, seconds > 0 ? on_alarm : SIG_DFL);
  ::setitimer(ITIMER_REAL, &t, nullptr);  // zero disarms
}

double checked_limit(lua_State* L, const char* key, double lo, double hi) {
  lua_getfield(L, 2, key);
  double v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(v >= lo && v <= hi)) luaL_error(L, "run_limited: %s must be in %f..%f", key, lo, hi);
  return v;
}

/// core.run_limited(fn, {instructions, memory (bytes), seconds, what}, ...) -> true, results...
/// | false, message, "instructions"|"memory"|nil. Turning the JIT off is the caller's job.
int core_run_limited(lua_State* L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TTABLE);
  auto& s = limits_of(L);
  if (s.active) return luaL_error(L, "run_limited: already inside a limited call");
  double steps = checked_limit(L, "instructions", 1e3, 1e15);
  double bytes = checked_limit(L, "memory", 1 << 20, 1e15);
  double seconds = checked_limit(L, "seconds", 0.01, 1e6);
  lua_getfield(L, 2, "what");
  std::string what = lua_isstring(L, -1) ? lua_tostring(L, -1) : "sandboxed Lua";
  lua_pop(L, 1);
  fmt::format_to_n(alarm_message, sizeof(alarm_message) - 1,
                   "parity: {} ran over its {} s wall-clock limit (stuck inside a library call, "
                   "e.g. a pathological string pattern); aborted (PARITY_SANDBOX_SECONDS raises it)\n{}",
                   what, seconds, '\0');
  lua_remove(L, 2);  // [fn, args...]
  int nargs = lua_gettop(L) - 1;
  lua_gc(L, LUA_GCCOLLECT, 0);
  s.active = true;
  s.tripped = nullptr;
  s.steps = 0;
  s.max_steps = static_cast<int64_t>(steps);
  s.cap = s.used + static_cast<int64_t>(bytes);
  lua_sethook(L, count_hook, LUA_MASKCOUNT, kHookEvery);
  arm_alarm(seconds);
  int rc = lua_pcall(L, nargs, LUA_MULTRET, 0);
  arm_alarm(0);
  lua_sethook(L, nullptr, 0, 0);
  s.cap = INT64_MAX;
  s.active = false;
  if (rc == 0) {
    lua_pushboolean(L, 1);
    lua_insert(L, 1);
    return lua_gettop(L);
  }
  lua_pushboolean(L, 0);
  lua_insert(L, -2);  // [false, msg]
  if (s.tripped) lua_pushstring(L, s.tripped);
  else lua_pushnil(L);
  lua_gc(L, LUA_GCCOLLECT, 0);  // free what the failed call left behind
  return 3;
}

/// core.limit_tripped() -> "instructions" | "memory" | nil, for the current limited call
int core_limit_tripped(lua_State* L) {
  auto& s = limits_of(L);
  if (s.active && s.tripped) lua_pushstring(L, s.tripped);
  else lua_pushnil(L);
  return 1;
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

/// A full collection, and the heap pages it freed given back (NOTE [ GC accounting ])
void full_collection(lua_State* L) {
  lua_gc(L, LUA_GCCOLLECT, 0);
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

/// core.collect(): a full collection (stage boundaries), then the accounting figures
int core_collect(lua_State* L) {
  full_collection(L);
  return push_gc_stats(L);
}

/// core.clock() -> seconds of a monotonic wall clock (for durations)
int core_clock(lua_State* L) {
  lua_pushnumber(L, std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count());
  return 1;
}

/// core.peak_rss() -> the process's peak resident set so far, in bytes (getrusage's ru_maxrss)
int core_peak_rss(lua_State* L) {
  struct rusage u {};
  ::getrusage(RUSAGE_SELF, &u);
  lua_pushnumber(L, static_cast<lua_Number>(u.ru_maxrss) * 1024);
  return 1;
}

/// core.stderr_is_tty() -> boolean
int core_stderr_is_tty(lua_State* L) {
  lua_pushboolean(L, ::isatty(STDERR_FILENO));
  return 1;
}

/// core.stdout_is_tty() -> boolean
int core_stdout_is_tty(lua_State* L) {
  lua_pushboolean(L, ::isatty(STDOUT_FILENO));
  return 1;
}

/// core.path_kind(path) -> "file" | "dir" | nil
int core_path_kind(lua_State* L) {
  std::string kind = path_kind(luaL_checkstring(L, 1));
  if (kind.empty()) lua_pushnil(L);
  else lua_pushstring(L, kind.c_str());
  return 1;
}

/// core.list_dir(path) -> { name... } sorted
int core_list_dir(lua_State* L) {
  push_strings(L, list_dir(luaL_checkstring(L, 1)));
  return 1;
}

/// core.file_identity(path) -> "device-inode-size-mtime_ns"
int core_file_identity(lua_State* L) {
  lua_pushstring(L, file_identity(luaL_checkstring(L, 1)).c_str());
  return 1;
}

/// core.hash_file(path), core.hash_string(s) -> 64 hex digits (SHA-256)
int core_hash_file(lua_State* L) {
  lua_pushstring(L, hash_file(luaL_checkstring(L, 1)).c_str());
  return 1;
}
/// core.write_text(path, text): written atomically, missing parent directories created
int core_write_text(lua_State* L) {
  size_t n;
  const char* text = luaL_checklstring(L, 2, &n);
  write_file_atomic(luaL_checkstring(L, 1), std::string(text, n));
  return 0;
}

/// core.remove_stale_temps(dir) -> count of removed "NAME.tmp.PID[.N]" files of dead processes
int core_remove_stale_temps(lua_State* L) {
  lua_pushinteger(L, remove_stale_temps(luaL_checkstring(L, 1)));
  return 1;
}

int core_hash_string(lua_State* L) {
  size_t n;
  const char* s = luaL_checklstring(L, 1, &n);
  lua_pushstring(L, hash_string(std::string(s, n)).c_str());
  return 1;
}

/// core.private_dir(path, create) -> nil when path is a directory of the effective user's that
/// nobody else can write (created 0700 with missing parents when `create`), else the reason
int core_private_dir(lua_State* L) {
  std::string problem = private_dir_problem(luaL_checkstring(L, 1), lua_toboolean(L, 2));
  if (problem.empty()) lua_pushnil(L);
  else lua_pushstring(L, problem.c_str());
  return 1;
}

/// core.home_dir() -> the effective user's home directory from the password database, or nil
int core_home_dir(lua_State* L) {
  std::string home = home_dir();
  if (home.empty()) lua_pushnil(L);
  else lua_pushstring(L, home.c_str());
  return 1;
}

const luaL_Reg kCore[] = {{"path_kind", guard<core_path_kind>},
                          {"hash_file", guard<core_hash_file>},
                          {"file_identity", guard<core_file_identity>},
                          {"list_dir", guard<core_list_dir>},
                          {"hash_string", guard<core_hash_string>},
                          {"remove_stale_temps", guard<core_remove_stale_temps>},
                          {"write_text", guard<core_write_text>},
                          {"private_dir", guard<core_private_dir>},
                          {"home_dir", guard<core_home_dir>},
                          {"version", guard<core_version>},
                          {"gc_stats", push_gc_stats},
                          {"collect", core_collect},
                          {"run_limited", core_run_limited},
                          {"clock", core_clock},
                          {"peak_rss", core_peak_rss},
                          {"stderr_is_tty", core_stderr_is_tty},
                          {"stdout_is_tty", core_stdout_is_tty},
                          {"limit_tripped", core_limit_tripped},
                          {nullptr, nullptr}};

}  // namespace

Vm::Vm(const VmOptions& options) : limits_(new Limits()), L_(luaL_newstate()) {
  if (!L_) {
    delete limits_;
    throw std::runtime_error("cannot create a Lua state (out of memory)");
  }
  limits_->inner = lua_getallocf(L_, &limits_->inner_ud);
  lua_setallocf(L_, limited_alloc, limits_);
  luaL_openlibs(L_);
  auto* gc = new (lua_newuserdata(L_, sizeof(GcState))) GcState();
  gc->threshold = options.gc_threshold_mb << 20;
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
  open_program(L_);
  open_tensor_files(L_);
  open_metrics(L_);
  open_json(L_);
  preload_stdlib(L_, options);
}

Vm::~Vm() {
  // LuaJIT frees its own allocator's arena only when the state still uses that allocator
  lua_setallocf(L_, limits_->inner, limits_->inner_ud);
  lua_close(L_);
  delete limits_;
}

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

void push_strings(lua_State* L, const std::vector<std::string>& list) {
  lua_createtable(L, static_cast<int>(list.size()), 0);
  for (size_t i = 0; i < list.size(); ++i) {
    lua_pushstring(L, list[i].c_str());
    lua_rawseti(L, -2, static_cast<int>(i + 1));
  }
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
    full_collection(L);
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
