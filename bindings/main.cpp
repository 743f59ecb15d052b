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
        int code = lua_isnumber(L, -1) ? static_cast<int>(lua_tointeger(L, -1)) : 0;
        std::fflush(stdout);
        return code;
      }
    }
    std::fprintf(stderr, "parity: %s\n", error.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parity: %s\n", e.what());
    return 2;
  }
}
