// host/files.cpp — file reads, SHA-256 content hashes, atomic writes through exclusively created
// temporary files, private directories.
#include "host/files.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "host/sha256.hpp"

namespace parity {

std::string path_kind(const std::string& path) {
  std::error_code ec;
  auto st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st)) return "";
  return std::filesystem::is_directory(st) ? "dir" : "file";
}

std::vector<std::string> list_dir(const std::string& path) {
  std::error_code ec;
  std::vector<std::string> names;
  for (auto it = std::filesystem::directory_iterator(path, ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec))
    names.push_back(it->path().filename().string());
  if (ec) throw std::runtime_error(fmt::format("{}: {}", path, ec.message()));
  std::sort(names.begin(), names.end());
  return names;
}

std::string hash_string(const std::string& data) { return sha256_hex(data); }

std::string hash_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in || std::filesystem::is_directory(path))
    throw std::runtime_error(fmt::format("{}: cannot read ({})", path, std::strerror(errno)));
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h.update(buf.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) throw std::runtime_error(fmt::format("{}: read error", path));
  return h.hex_digest();
}

std::string file_identity(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw std::runtime_error(fmt::format("{}: {}", path, std::strerror(errno)));
  return fmt::format("{}-{}-{}-{}", static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                     static_cast<int64_t>(st.st_size),
                     static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec);
}

std::string read_file(const std::string& path) {
  if (std::filesystem::is_directory(path))
    throw std::runtime_error(fmt::format("{}: is a directory", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("{}: {}", path, std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// NOTE [ Temporary files ]
// write_file_atomic writes PATH.tmp.PID, or when that name is taken PATH.tmp.PID.1 up to
// PATH.tmp.PID.15 (kTempTries names in all), then renames it over PATH. Each is created with
// O_CREAT|O_EXCL|O_NOFOLLOW: whatever already has the name (a link planted there, a file of a
// dead process whose PID came back, another thread's temporary) is never opened, let alone
// written through. rename() replaces a link at PATH itself rather than following it.
// remove_stale_temps recognises exactly these names and nothing looser.
namespace {
constexpr int kTempTries = 16;

std::string temp_name(const std::string& path, int attempt) {
  if (attempt == 0) return fmt::format("{}.tmp.{}", path, ::getpid());
  return fmt::format("{}.tmp.{}.{}", path, ::getpid(), attempt);
}

bool all_digits(const std::string& s, size_t from, size_t to) {
  if (from >= to) return false;
  for (size_t i = from; i < to; ++i)
    if (s[i] < '0' || s[i] > '9') return false;
  return true;
}

/// The PID in a name write_file_atomic gives its temporaries ("NAME.tmp.PID" or
/// "NAME.tmp.PID.N", N in 1..kTempTries-1, no leading zeros), else 0.
pid_t temp_pid(const std::string& name) {
  auto dot = name.rfind(".tmp.");
  if (dot == std::string::npos || dot == 0) return 0;
  size_t start = dot + 5, end = name.find('.', start);
  if (end == std::string::npos) end = name.size();
  if (!all_digits(name, start, end) || name[start] == '0' || end - start > 9) return 0;
  if (end != name.size()) {  // the attempt number
    if (!all_digits(name, end + 1, name.size()) || name[end + 1] == '0' || name.size() - end - 1 > 2) return 0;
    if (std::stoi(name.substr(end + 1)) >= kTempTries) return 0;
  }
  return static_cast<pid_t>(std::stol(name.substr(start, end - start)));
}
}  // namespace

void write_file_atomic(const std::string& path, const std::string& data) {
  write_file_atomic(path, std::vector<std::string_view>{data});
}

void write_file_atomic(const std::string& path, const std::vector<std::string_view>& pieces) {
  namespace fs = std::filesystem;
  fs::path target(path);
  if (target.has_parent_path()) fs::create_directories(target.parent_path());
  std::string tmp;
  int fd = -1, err = 0;
  for (int attempt = 0; attempt < kTempTries && fd < 0; ++attempt) {
    tmp = temp_name(path, attempt);
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    err = errno;
    if (fd < 0 && err != EEXIST && err != ELOOP)
      throw std::runtime_error(fmt::format("{}: {}", tmp, std::strerror(err)));
  }
  if (fd < 0)
    throw std::runtime_error(fmt::format("{}: cannot create a temporary file beside it: {} and the {} names after it "
                                         "exist already (remove them if no parity process is running)",
                                         path, temp_name(path, 0), kTempTries - 1));
  auto fail = [&](int e) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw std::runtime_error(fmt::format("{}: {}", path, std::strerror(e)));
  };
  for (std::string_view data : pieces) {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::write(fd, data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail(errno);
      done += static_cast<size_t>(n);
    }
  }
  if (::fsync(fd) != 0 && errno != EINVAL) fail(errno);
  if (::close(fd) != 0) {
    err = errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error(fmt::format("{}: {}", path, std::strerror(err)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error(fmt::format("{}: {}", path, std::strerror(err)));
  }
}

int remove_stale_temps(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  int removed = 0;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::string name = it->path().filename().string();
    pid_t pid = temp_pid(name);
    if (pid <= 0) continue;
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;  // never a link or a directory
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;                            // still running (or not ours)
    if (::unlink(it->path().c_str()) == 0) ++removed;  // unlink removes a name, never follows one
  }
  return removed;
}

std::string private_dir_problem(const std::string& dir, bool create) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();  // "x/" would follow a link at x
  if (d.empty()) return "is an empty path";
  if (create) {
    // every missing component, parents included, made 0700 (the umask can only remove bits)
    for (size_t at = d.find('/', 1);; at = d.find('/', at + 1)) {
      std::string part = at == std::string::npos ? d : d.substr(0, at);
      struct stat st {};
      if (::stat(part.c_str(), &st) != 0 && ::mkdir(part.c_str(), 0700) != 0 && errno != EEXIST)
        return fmt::format("cannot create{}: {}", part == d ? "" : " " + part, std::strerror(errno));
      if (at == std::string::npos) break;
    }
  }
  struct stat st {};
  if (::lstat(d.c_str(), &st) != 0) return errno == ENOENT ? "does not exist" : std::strerror(errno);
  if (S_ISLNK(st.st_mode)) return "is a symlink";
  if (!S_ISDIR(st.st_mode)) return "is not a directory";
  if (st.st_uid != ::geteuid()) return fmt::format("owned by uid {}, not you", static_cast<unsigned>(st.st_uid));
  unsigned mode = st.st_mode & 07777;
  if (mode & S_IWOTH) return fmt::format("writable by others (mode {:04o})", mode);
  if (mode & S_IWGRP) return fmt::format("writable by group (mode {:04o})", mode);
  return "";
}

std::string home_dir() {
  long size = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(size > 0 ? static_cast<size_t>(size) : 16384);
  struct passwd pw {}, *found = nullptr;
  int rc;
  while ((rc = ::getpwuid_r(::geteuid(), &pw, buf.data(), buf.size(), &found)) == ERANGE && buf.size() < (1u << 20))
    buf.resize(buf.size() * 2);
  if (rc != 0 || !found || !pw.pw_dir || pw.pw_dir[0] != '/') return "";
  return pw.pw_dir;
}

}  // namespace parity
