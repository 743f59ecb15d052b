// host/files.hpp — whole-file reads and atomic writes (temp file in the same directory + rename).
#pragma once
#include <string>
#include <vector>

namespace parity {

/// "file", "dir", or "" when nothing is there.
std::string path_kind(const std::string& path);

/// A stable 64-bit content hash (FNV-1a) as 16 hex digits: of a file's bytes, or of a string.
/// Stable across builds and machines: it keys on-disk caches.
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
/// creates missing parent directories. A reader never sees a half-written file.
void write_file_atomic(const std::string& path, const std::string& data);

/// Removes the temporary files write_file_atomic left in `dir` when its process was killed
/// ("NAME.tmp.PID" whose PID no longer runs); returns how many. A missing dir is 0.
int remove_stale_temps(const std::string& dir);

}  // namespace parity
