// bindings/main.cpp — the `parity` executable: global flags, then the Lua CLI
// (stdlib/parity/cli.lua) does the rest. Exit codes: 0 ok, 1 a check failed, 2 error.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "bindings/vm.hpp"
#include "host/runtime.hpp"

int main(int argc, char** argv) {
  parity::VmOptions options;
  if (const char* dir = std::getenv("PARITY_STDLIB_DIR")) options.stdlib_dir = dir;
  int first = 1;
  while (first < argc && std::strcmp(argv[first], "--stdlib-dir") == 0) {
    if (first + 1 >= argc) {
      std::fprintf(stderr, "parity: --stdlib-dir needs a directory\n");
      return 2;
    }
    options.stdlib_dir = argv[first + 1];
    first += 2;
  }
  // the parity processes this one starts (a matrix's {parity} commands) use the same stdlib
  if (!options.stdlib_dir.empty()) {
    std::error_code ec;
    auto dir = std::filesystem::absolute(options.stdlib_dir, ec);
    ::setenv("PARITY_STDLIB_DIR", (ec ? options.stdlib_dir : dir.string()).c_str(), 1);
  }
  try {
    options.gc_threshold_mb = static_cast<size_t>(parity::env_integer("PARITY_GC_MB", 256, 1, 1 << 20));
    parity::init_runtime();
    parity::Vm vm(options);
    lua_State* L = vm.L();
    std::string error;
    lua_getglobal(L, "require");
    lua_pushstring(L, "parity.cli");
    if (parity::call_traced(L, 1, 1, &error)) {
      lua_getfield(L, -1, "main");  // [cli, main]
      lua_createtable(L, argc - first, 0);
      for (int i = first; i < argc; ++i) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - first + 1);
      }
      if (parity::call_traced(L, 1, 1, &error)) {
        std::fflush(stdout);
        // an exit code is a whole number 0..125; anything else is a bug of the command: never 0
        if (lua_type(L, -1) == LUA_TNUMBER) {
          lua_Number n = lua_tonumber(L, -1);
          if (n >= 0 && n <= 125 && n == static_cast<lua_Number>(static_cast<int>(n))) return static_cast<int>(n);
        }
        std::fprintf(stderr, "parity: internal error: the command returned %s, not an exit code\n",
                     luaL_typename(L, -1));
        return 2;
      }
    }
    std::fprintf(stderr, "parity: %s\n", error.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parity: %s\n", e.what());
    return 2;
  }
}
