// tests/cpp/test_files.cpp — host/files: SHA-256 content hashes, atomic writes that never follow
// a planted link, stale temporary files, private directories.
#include <ATen/ATen.h>

#include <pwd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "bindings/vm.hpp"
#include "host/files.hpp"
#include "host/sha256.hpp"
#include <doctest/doctest.h>  // after torch: glog defines CHECK

using namespace parity;
namespace fs = std::filesystem;

namespace {

/// A fresh, empty directory of this process for one test case.
std::string fresh_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("parity_files_" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// A PID that no process has: past the kernel's pid_max.
std::string dead_pid() {
  long max = 4194304;
  if (std::ifstream f("/proc/sys/kernel/pid_max"); f) f >> max;
  return std::to_string(max + 1);
}

unsigned mode_of(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 ? st.st_mode & 07777 : 0;
}

/// Runs Lua `code` in a fresh Vm (`core` is require "parity.core"); what it returns, as a string.
std::string run_lua(const std::string& code) {
  Vm vm;
  lua_State* L = vm.L();
  std::string chunk = "local core = require('parity.core')\n" + code;
  if (luaL_loadbuffer(L, chunk.data(), chunk.size(), "=test") != 0) return lua_tostring(L, -1);
  std::string err;
  if (!call_traced(L, 0, 1, &err)) return err.substr(0, err.find('\n'));
  return lua_isstring(L, -1) ? lua_tostring(L, -1) : luaL_typename(L, -1);
}

#define CHECK_THAT_CONTAINS(text, needle) CHECK_MESSAGE((text).find(needle) != std::string::npos, text)

}  // namespace

TEST_SUITE("files") {
  TEST_CASE("content hashes are SHA-256, 64 lowercase hex digits (FIPS 180-4 vectors)") {
    CHECK(hash_string("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(hash_string("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(hash_string("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    CHECK(hash_string("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
                      "mnopqrstnopqrstu") == "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    CHECK(hash_string(std::string(1000000, 'a')) ==
          "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  }

  TEST_CASE("SHA-256 streams: any split of the input gives the same digest") {
    std::string text(1000, '\0');
    for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>(i * 31 + 7);
    std::string whole = sha256_hex(text);
    for (size_t step : {1, 3, 55, 56, 63, 64, 65, 127, 999}) {
      Sha256 h;
      for (size_t i = 0; i < text.size(); i += step) h.update(text.data() + i, std::min(step, text.size() - i));
      CHECK(h.hex_digest() == whole);
    }
    Sha256 million;  // the 1,000,000 'a' vector in uneven pieces
    std::string piece(4097, 'a');
    size_t left = 1000000;
    while (left > 0) {
      size_t n = std::min(left, piece.size());
      million.update(piece.data(), n);
      left -= n;
    }
    CHECK(million.hex_digest() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  }

  TEST_CASE("hash_file reads a multi-MB file in chunks and agrees with hash_string") {
    auto dir = fresh_dir("hash");
    std::string data(3 * 1024 * 1024 + 17, '\0');  // more than three of hash_file's 1 MiB reads
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 7 + i / 251) & 255);
    write_bytes(dir + "/big.bin", data);
    // python3 -c "import hashlib; print(hashlib.sha256(bytes((i*7+i//251)&255
    //                                     for i in range(3*1024*1024+17))).hexdigest())"
    CHECK(hash_file(dir + "/big.bin") == "8584f829d64341d188b979f0984ba5615cde6af240c53ff26b023037146d3afb");
    CHECK(hash_string(data) == "8584f829d64341d188b979f0984ba5615cde6af240c53ff26b023037146d3afb");
    write_bytes(dir + "/empty", "");
    CHECK(hash_file(dir + "/empty") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK_THROWS_WITH(hash_file(dir + "/nope.txt"), doctest::Contains("nope.txt: cannot read"));
    CHECK_THROWS_WITH(hash_file(dir), doctest::Contains("cannot read"));
  }

  TEST_CASE("write_file_atomic never writes through a link or file planted at its temporary name") {
    auto dir = fresh_dir("planted");
    auto outside = fresh_dir("outside") + "/victim.txt";
    write_bytes(outside, "precious");
    std::string target = dir + "/out.json";
    std::string tmp = target + ".tmp." + std::to_string(::getpid());
    fs::create_symlink(outside, tmp);
    write_file_atomic(target, "new contents");
    CHECK(slurp(outside) == "precious");
    CHECK(slurp(target) == "new contents");
    CHECK(fs::is_symlink(fs::symlink_status(tmp)));  // left alone, not replaced
    CHECK(fs::is_regular_file(fs::symlink_status(target)));

    // a dangling link (O_CREAT would create its target) and a plain file at the next names
    std::string created_through = dir + "/created_through_link";
    fs::create_symlink(created_through, tmp + ".1");
    write_bytes(tmp + ".2", "someone else's");
    write_file_atomic(target, "again");
    CHECK(slurp(target) == "again");
    CHECK_FALSE(fs::exists(created_through));
    CHECK(slurp(tmp + ".2") == "someone else's");
    for (const auto& e : fs::directory_iterator(dir))  // no temporary of ours is left behind
      CHECK_MESSAGE((e.path() == target || e.path().string().rfind(tmp, 0) == 0), e.path().string());
  }

  TEST_CASE("write_file_atomic fails with a clear message when every temporary name is taken") {
    auto dir = fresh_dir("taken");
    std::string target = dir + "/out.txt";
    std::string tmp = target + ".tmp." + std::to_string(::getpid());
    write_bytes(tmp, "x");
    for (int i = 1; i < 100; ++i) write_bytes(tmp + "." + std::to_string(i), "x");
    CHECK_THROWS_WITH(write_file_atomic(target, "data"), doctest::Contains("temporary"));
    CHECK_FALSE(fs::exists(target));
  }

  TEST_CASE("write_file_atomic replaces a link at the destination instead of writing through it") {
    auto dir = fresh_dir("dest_link");
    auto outside = fresh_dir("outside2") + "/victim.txt";
    write_bytes(outside, "precious");
    fs::create_symlink(outside, dir + "/out.txt");
    write_file_atomic(dir + "/out.txt", "mine");
    CHECK(slurp(outside) == "precious");
    CHECK(fs::is_regular_file(fs::symlink_status(dir + "/out.txt")));
    CHECK(slurp(dir + "/out.txt") == "mine");
  }

  TEST_CASE("remove_stale_temps removes only regular files named like write_file_atomic's of dead PIDs") {
    auto dir = fresh_dir("stale");
    auto outside = fresh_dir("outside3");
    std::string dead = dead_pid(), alive = std::to_string(::getpid());
    write_bytes(outside + "/target.txt", "keep");
    write_bytes(dir + "/a.json.tmp." + dead, "stale");         // removed
    write_bytes(dir + "/a.json.tmp." + dead + ".3", "stale");  // removed: a retry's name
    write_bytes(dir + "/a.json.tmp." + alive, "live");         // this process: kept
    write_bytes(dir + "/a.json.tmp." + dead + ".x", "other");  // not the family: kept
    write_bytes(dir + "/a.json.tmp." + dead + ".0", "other");  // retries count from 1: kept
    write_bytes(dir + "/a.json.tmp.0" + dead, "other");        // leading zero: kept
    write_bytes(dir + "/.tmp." + dead, "other");               // no name before .tmp: kept
    write_bytes(dir + "/b.tmp.", "other");
    fs::create_symlink(outside + "/target.txt", dir + "/link.tmp." + dead);  // a link: kept, target too
    fs::create_directory(dir + "/sub.tmp." + dead);                            // a directory: kept
    write_bytes(dir + "/sub.tmp." + dead + "/inner", "x");
    CHECK(remove_stale_temps(dir) == 2);
    CHECK_FALSE(fs::exists(dir + "/a.json.tmp." + dead));
    CHECK_FALSE(fs::exists(dir + "/a.json.tmp." + dead + ".3"));
    CHECK(fs::exists(dir + "/a.json.tmp." + alive));
    CHECK(fs::exists(dir + "/a.json.tmp." + dead + ".x"));
    CHECK(fs::exists(dir + "/a.json.tmp." + dead + ".0"));
    CHECK(fs::exists(dir + "/a.json.tmp.0" + dead));
    CHECK(fs::exists(dir + "/.tmp." + dead));
    CHECK(fs::is_symlink(fs::symlink_status(dir + "/link.tmp." + dead)));
    CHECK(slurp(outside + "/target.txt") == "keep");
    CHECK(fs::exists(dir + "/sub.tmp." + dead + "/inner"));
    CHECK(remove_stale_temps(dir + "/missing") == 0);
  }

  TEST_CASE("private_dir_problem: a real directory of the effective user that nobody else can write") {
    auto base = fresh_dir("private");
    ::mkdir((base + "/good").c_str(), 0700);
    ::chmod((base + "/good").c_str(), 0700);
    CHECK(private_dir_problem(base + "/good", false) == "");
    CHECK(private_dir_problem(base + "/good/", false) == "");
    ::mkdir((base + "/open").c_str(), 0700);
    ::chmod((base + "/open").c_str(), 0777);
    CHECK(private_dir_problem(base + "/open", false) == "writable by others (mode 0777)");
    CHECK(private_dir_problem(base + "/open", true) == "writable by others (mode 0777)");  // not repaired
    ::mkdir((base + "/group").c_str(), 0700);
    ::chmod((base + "/group").c_str(), 0770);
    CHECK(private_dir_problem(base + "/group", false) == "writable by group (mode 0770)");
    ::mkdir((base + "/readable").c_str(), 0700);
    ::chmod((base + "/readable").c_str(), 0755);  // readable by others is not writable by them
    CHECK(private_dir_problem(base + "/readable", false) == "");

    fs::create_directory_symlink(base + "/good", base + "/link");
    CHECK(private_dir_problem(base + "/link", false) == "is a symlink");
    CHECK(private_dir_problem(base + "/link/", false) == "is a symlink");  // a trailing slash follows no link
    CHECK(private_dir_problem(base + "/link", true) == "is a symlink");
    fs::create_directory_symlink(base + "/nowhere", base + "/dangling");
    CHECK(private_dir_problem(base + "/dangling", true) == "is a symlink");
    CHECK_FALSE(fs::exists(base + "/nowhere"));
    write_bytes(base + "/file", "x");
    CHECK(private_dir_problem(base + "/file", false) == "is not a directory");
    CHECK(private_dir_problem(base + "/missing", false) == "does not exist");
    CHECK_FALSE(fs::exists(base + "/missing"));
    CHECK(private_dir_problem(base + "/file/sub", true).find("cannot create") == 0);
  }

  TEST_CASE("private_dir_problem creates the directory and its missing parents 0700") {
    auto base = fresh_dir("private_create");
    std::string dir = base + "/a/b/cache";
    CHECK(private_dir_problem(dir, true) == "");
    CHECK(mode_of(base + "/a") == 0700);
    CHECK(mode_of(base + "/a/b") == 0700);
    CHECK(mode_of(dir) == 0700);
    CHECK(private_dir_problem(dir, true) == "");  // an existing one is fine
    if (::geteuid() != 0) {  // root creates anywhere, and owns what it creates
      ::mkdir((base + "/locked").c_str(), 0500);
      ::chmod((base + "/locked").c_str(), 0500);
      CHECK(private_dir_problem(base + "/locked/cache", true) == "cannot create: Permission denied");
      CHECK(private_dir_problem(base + "/locked/x/cache", true) ==
            "cannot create " + base + "/locked/x: Permission denied");
      ::chmod((base + "/locked").c_str(), 0700);
    } else {
      ::mkdir((base + "/theirs").c_str(), 0700);
      CHECK(::chown((base + "/theirs").c_str(), 1234, 1234) == 0);
      CHECK(private_dir_problem(base + "/theirs", false) == "owned by uid 1234, not you");
      // and as another user, in a child process: root's directories are not theirs, and they
      // cannot create inside them
      ::chmod(base.c_str(), 0755);
      ::chmod(fs::path(base).parent_path().c_str(), 0755);
      pid_t child = ::fork();
      if (child == 0) {
        int bad = 0;
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
        if (private_dir_problem(base, false) != "owned by uid 0, not you") bad |= 1;
        if (private_dir_problem(base + "/cache", true) != "cannot create: Permission denied") bad |= 2;
        if (private_dir_problem(base + "/x/cache", true) != "cannot create " + base + "/x: Permission denied") bad |= 4;
        ::_exit(bad);
      }
      int status = -1;
      ::waitpid(child, &status, 0);
      CHECK(WIFEXITED(status));
      CHECK(WEXITSTATUS(status) == 0);
    }
  }

  TEST_CASE("home_dir comes from the password database, not $HOME") {
    struct passwd* pw = ::getpwuid(::geteuid());
    REQUIRE(pw != nullptr);
    std::string expected = pw->pw_dir;
    const char* old = std::getenv("HOME");
    std::string saved = old ? old : "";
    ::unsetenv("HOME");
    CHECK(home_dir() == expected);
    ::setenv("HOME", "/nonexistent/elsewhere", 1);
    CHECK(home_dir() == expected);
    if (old) ::setenv("HOME", saved.c_str(), 1);
    else ::unsetenv("HOME");
  }

  TEST_CASE("core.private_dir and core.home_dir from Lua") {
    auto base = fresh_dir("private_lua");
    CHECK(run_lua("return tostring(core.private_dir('" + base + "/made', true))") == "nil");
    CHECK(mode_of(base + "/made") == 0700);
    ::chmod((base + "/made").c_str(), 0777);
    CHECK(run_lua("return core.private_dir('" + base + "/made', false)") == "writable by others (mode 0777)");
    CHECK(run_lua("return core.private_dir('" + base + "/absent')") == "does not exist");
    CHECK(run_lua("return core.private_dir()").find("bad argument #1") != std::string::npos);
    CHECK(run_lua("return core.home_dir()") == std::string(::getpwuid(::geteuid())->pw_dir));
    CHECK(run_lua("return #core.hash_string('x')") == "64");
  }
}
