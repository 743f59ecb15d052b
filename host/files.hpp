// host/files.hpp — whole-file reads, SHA-256 content hashes, atomic writes (an exclusively
// created temporary file in the same directory + rename), private directories.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace parity {

/// "file", "dir", or "" when nothing is there.
std::string path_kind(const std::string& path);

/// A content hash, SHA-256 as 64 lowercase hex digits: of a file's bytes (read in 1 MiB
/// chunks), or of a string. Stable across builds and machines and collision-resistant: it keys
/// on-disk caches. hash_file throws std::runtime_error "PATH: cannot read (...)".
std::string hash_file(const std::string& path);
std::string hash_string(const std::string& data);

/// What identifies one version of a file without reading it: "device-inode-size-mtime_ns".
/// Throws std::runtime_error "PATH: reason" when it cannot be stat'ed.
std::string file_identity(const std::string& path);

/// The names of a directory's entries, sorted; throws std::runtime_error "PATH: reason".
std::vector<std::string> list_dir(const std::string& path);

/// Reads a whole file; throws std::runtime_error "PATH: reason".
std::string read_file(const std::string& path);

/// Writes `data` to a temporary file beside `path`, flushes it and renames it over `path`;
/// creates missing parent directories. A reader never sees a half-written file. The temporary
/// is "PATH.tmp.PID" (or "PATH.tmp.PID.N", N = 1..15, when that name is taken), created
/// exclusively and never through a link: NOTE [ Temporary files ] in files.cpp.
void write_file_atomic(const std::string& path, const std::string& data);
/// The same for data in pieces, written one after another (no copy of them joined).
void write_file_atomic(const std::string& path, const std::vector<std::string_view>& pieces);

/// Removes the temporary files write_file_atomic left in `dir` when its process was killed:
/// regular files (never a link, never a directory) named exactly as it names them, whose PID
/// no longer runs; returns how many. A missing dir is 0.
int remove_stale_temps(const std::string& dir);

/// Why `dir` is no place for private data, or "" when it is: a real directory (not a symlink),
/// owned by the effective uid, writable by neither group nor others. With `create`, the
/// directory and its missing parents are first created with mode 0700. Reasons read after the
/// path: "is a symlink", "owned by uid 1234, not you", "writable by others (mode 0777)",
/// "cannot create: Permission denied", "does not exist".
std::string private_dir_problem(const std::string& dir, bool create);

/// The effective user's home directory from the password database (not $HOME); "" if unknown.
std::string home_dir();

}  // namespace parity
