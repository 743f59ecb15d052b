// tests/cpp/test_json.cpp — parity.core.json through a Vm: nesting limits on decode (a deeply
// nested file is an error naming it, never a stack overflow).
#include <c10/util/Exception.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "bindings/vm.hpp"
#include <doctest/doctest.h>  // after torch: glog defines CHECK

using namespace parity;

namespace {

/// Runs `code` (which may use `json` and `path`) in a fresh Vm; returns the error's first line,
/// or what the chunk returned as a string.
std::string run(const std::string& code, const std::string& path = "") {
  Vm vm;
  lua_State* L = vm.L();
  std::string chunk = "local json = require('parity.core').json\nlocal path = ...\n" + code;
  if (luaL_loadbuffer(L, chunk.data(), chunk.size(), "=test") != 0) return lua_tostring(L, -1);
  lua_pushstring(L, path.c_str());
  std::string err;
  if (!call_traced(L, 1, 1, &err)) return err.substr(0, err.find('\n'));
  return lua_isstring(L, -1) ? lua_tostring(L, -1) : "ok";
}

#define CHECK_THAT_CONTAINS(text, needle) CHECK_MESSAGE((text).find(needle) != std::string::npos, text)

std::string nested(int depth, const char* open = "[", const char* close = "]") {
  std::string s;
  for (int i = 0; i < depth; ++i) s += open;
  for (int i = 0; i < depth; ++i) s += close;
  return s;
}

}  // namespace

TEST_SUITE("json") {
  TEST_CASE("decode refuses nesting past the limit, naming json.decode") {
    std::string err = run("return json.decode(string.rep('[', 100000) .. string.rep(']', 100000))");
    CHECK_MESSAGE(err.find("json.decode: JSON nests deeper than 100 levels") != std::string::npos, err);
    err = run("return json.decode(string.rep('{\"a\":', 5000) .. '1' .. string.rep('}', 5000))");
    CHECK_MESSAGE(err.find("json.decode: JSON nests deeper than 100 levels") != std::string::npos, err);
    // the parser stops where the limit is passed, before the end of the text
    err = run("return json.decode(string.rep('[', 10000000))");
    CHECK_MESSAGE(err.find("json.decode: JSON nests deeper than 100 levels") != std::string::npos, err);
    err = run("return json.decode(string.rep('[', 50))");  // unterminated within the limit: the parser's own error
    CHECK_MESSAGE(err.find("json.decode: invalid JSON") != std::string::npos, err);
  }

  TEST_CASE("a number JSON cannot hold in a double is invalid JSON, named like any other (found by fuzz_json)") {
    std::string err = run("return json.decode('[1e370]')");
    CHECK_MESSAGE(err.find("json.decode: invalid JSON") != std::string::npos, err);
    err = run("return json.decode('{\"a\": -1e999}', 'x/parity.json')");
    CHECK_MESSAGE(err.find("x/parity.json: invalid JSON") != std::string::npos, err);
  }

  TEST_CASE("strings and keys keep embedded NULs both ways") {
    CHECK(run("local v = json.decode('{\"k\\\\u0000x\": \"a\\\\u0000b\"}') local k = next(v) "
              "return #k .. ',' .. #v[k] .. ',' .. json.encode(v)") == "3,3,{\"k\\u0000x\":\"a\\u0000b\"}");
  }

  TEST_CASE("json.read names the file of a too deeply nested document") {
    auto path = std::filesystem::temp_directory_path() / ("parity_json_" + std::to_string(::getpid()) + ".json");
    std::ofstream(path) << nested(100000);
    std::string err = run("return json.read(path)", path.string());
    CHECK_MESSAGE(err.find(path.string() + ": JSON nests deeper than 100 levels") != std::string::npos, err);
    std::filesystem::remove(path);
  }

  TEST_CASE("whatever encode writes, decode reads: 100 levels below the root") {
    // encode allows values down to depth 100 (the root is depth 0), so decode does too
    CHECK(run("local t = json.array() for i = 1, 100 do t = {t} end return json.encode(json.decode(json.encode(t)))") ==
          nested(101));
    CHECK(run("local t = json.array() for i = 1, 100 do t = {t} end return tostring(pcall(json.encode, {t}))") ==
          "false");
    CHECK(run("return json.encode(json.decode('" + nested(101) + "'))") == nested(101));
    CHECK_MESSAGE(run("return json.decode('" + nested(102) + "')").find("nests deeper than 100 levels") !=
                      std::string::npos,
                  "102 levels");
    // the same rule for a scalar: 100 objects around a number decode, 101 do not
    std::string objects = nested(100, "{\"k\":", "}").insert(100 * 5, "1");
    CHECK(run("return json.encode(json.decode('" + objects + "'))") == objects);
    CHECK_MESSAGE(run("return json.decode('{\"k\":" + objects + "}')").find("nests deeper than 100 levels") !=
                      std::string::npos,
                  "101 objects around a number");
  }

  TEST_CASE("every kept fuzz regression input decodes, or fails naming its origin") {
    int files = 0;
    for (const char* format : {"json", "manifest"})
      for (const auto& entry :
           std::filesystem::directory_iterator(std::string(PARITY_FUZZ_REGRESSIONS) + "/" + format)) {
        ++files;
        std::string path = entry.path().string();
        std::string out =
            run("local ok, v = pcall(json.read, path) if ok then json.encode(v) return 'ok' end return v", path);
        CHECK_MESSAGE((out == "ok" || out.find(path + ": ") != std::string::npos), out);
      }
    CHECK(files >= 2);
  }
}
