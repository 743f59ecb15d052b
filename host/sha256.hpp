// host/sha256.hpp — SHA-256 (FIPS 180-4), streaming: the content hash keying on-disk caches.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace parity {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  /// The digest as 64 lowercase hex digits; ends this hash (update after it is an error).
  std::string hex_digest();

 private:
  void block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t used_ = 0;     // bytes in buf_
  uint64_t total_ = 0;  // bytes hashed
};

/// SHA-256 of a string, as 64 lowercase hex digits.
std::string sha256_hex(const std::string& data);

}  // namespace parity
