// tests/cpp/test_guard.cpp — guard<> translates C++ errors into Lua errors and lets Lua's own
// errors through untouched.
#include <c10/util/Exception.h>

#include <cstring>
#include <stdexcept>
#include <string>

#include "bindings/vm.hpp"
#include <doctest/doctest.h>  // after torch: glog defines CHECK

using namespace parity;

namespace {

int throws_c10(lua_State*) { TORCH_CHECK(false, "shape is wrong"); }
int throws_std(lua_State*) { throw std::runtime_error("file is corrupt"); }
int raises_lua(lua_State* L) { return luaL_error(L, "plain Lua error"); }
int calls_back(lua_State* L) {  // calls a Lua function that errors: must propagate as is
  lua_pushvalue(L, 1);
  lua_call(L, 0, 0);
  return 0;
}
int returns_two(lua_State* L) {
  lua_pushnumber(L, 1);
  lua_pushnumber(L, 2);
  return 2;
}

/// Runs `code` with the guarded functions as globals; returns the pcall message or "ok".
std::string run(const std::string& code) {
  Vm vm;
  lua_State* L = vm.L();
  lua_register(L, "throws_c10", guard<throws_c10>);
  lua_register(L, "throws_std", guard<throws_std>);
  lua_register(L, "raises_lua", guard<raises_lua>);
  lua_register(L, "calls_back", guard<calls_back>);
  lua_register(L, "returns_two", guard<returns_two>);
  if (luaL_loadbuffer(L, code.data(), code.size(), "=test") != 0) return lua_tostring(L, -1);
  std::string err;
  if (!call_traced(L, 0, 1, &err)) return err.substr(0, err.find('\n'));
  return lua_isstring(L, -1) ? lua_tostring(L, -1) : "ok";
}

}  // namespace

TEST_SUITE("guard") {
  TEST_CASE("c10::Error arrives without its C++ backtrace, with the Lua position") {
    std::string msg = run("local ok, e = pcall(function() throws_c10() end) return e");
    CHECK(msg.find("test:1: ") == 0);
    CHECK(msg.find("shape is wrong") != std::string::npos);
    CHECK(msg.find("Exception raised from") == std::string::npos);
  }

  TEST_CASE("std::exception becomes a Lua error") {
    CHECK(run("local ok, e = pcall(function() throws_std() end) return e") == "test:1: file is corrupt");
  }

  TEST_CASE("Lua errors pass through guard<> untouched") {
    CHECK(run("local ok, e = pcall(function() raises_lua() end) return e") == "test:1: plain Lua error");
    CHECK(run("local ok, e = pcall(calls_back, function() error('from Lua', 0) end) return e") == "from Lua");
    CHECK(run("local ok, e = pcall(calls_back, function() error({code = 7}) end) return e.code") == "7");
  }

  TEST_CASE("results and the state survive errors") {
    CHECK(run("local a, b = returns_two() return a + b") == "3");
    CHECK(run("for i = 1, 100 do pcall(throws_std) end local a, b = returns_two() return b") == "2");
  }

  TEST_CASE("call_traced adds a traceback") {
    Vm vm;
    lua_State* L = vm.L();
    const char* code = "local function f() error('deep') end f()";
    REQUIRE(luaL_loadbuffer(L, code, std::strlen(code), "=chunk") == 0);
    std::string err;
    CHECK_FALSE(call_traced(L, 0, 0, &err));
    CHECK(err.find("chunk:1: deep") == 0);
    CHECK(err.find("stack traceback:") != std::string::npos);
    CHECK(lua_gettop(L) == 0);
  }
}
