// host/files.hpp — whole-file reads and atomic writes (temp file in the same directory + rename).
#pragma once
#include <string>

namespace parity {

/// "file", "dir", or "" when nothing is there.
std::string path_kind(const std::string& path);

/// Reads a whole file; throws std::runtime_error "PATH: reason".
std::string read_file(const std::string& path);

/// Writes `data` to a temporary file beside `path`, flushes it and renames it over `path`;
/// creates missing parent directories. A reader never sees a half-written file.
void write_file_atomic(const std::string& path, const std::string& data);

}  // namespace parity
