// host/tensor_parse.hpp — safetensors and .npy headers, parsed and checked without torch. Every
// name, element type, shape and byte range a file claims is validated against the file's size
// (with overflow-checked arithmetic) before any tensor exists, and decoding runs on plain
// buffers. host/tensor_io.cpp builds tensors on top; tests/fuzz/ drives this layer directly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace parity {

/// The element types tensors are held in after reading (torch 1.13 has no unsigned 16/32/64
/// or fp8 types: those are widened on read).
enum class Held { Bool, U8, I8, I16, I32, I64, F16, BF16, F32, F64, C64, C128 };
size_t held_size(Held h);

/// An on-disk element type: its safetensors name (nullptr: .npy only), its .npy kind and size
/// (kind 0: safetensors only), its size on disk, what it is held as and how it is decoded.
struct ElemType {
  enum class Decode { Copy, U16, U32, U64, E4M3, E5M2, E8M0 };
  const char* safetensors;
  char npy_kind;
  size_t stored;
  Held held;
  Decode decode;
};
/// The type a tensor held as `h` is written as in a format (stored as is), or nullptr.
enum class Format { Safetensors, Npy };
const ElemType* stored_type_for(Held h, Format f);

/// One tensor inside a file: where its bytes lie, counted from the start of the file.
struct TensorSpan {
  std::string name;
  const ElemType* type = nullptr;
  std::vector<int64_t> shape;
  uint64_t count = 0;  ///< elements
  uint64_t offset = 0, bytes = 0;
};

struct SafetensorsLayout {
  std::vector<TensorSpan> tensors;  ///< in file order
  std::vector<std::pair<std::string, std::string>> metadata;
};
/// Parses and checks a whole safetensors file image: header bound, JSON, dtypes, shapes,
/// offsets that tile the data exactly. Throws std::runtime_error "PATH: what is wrong".
SafetensorsLayout parse_safetensors(const uint8_t* data, size_t size, const std::string& path);

struct NpyLayout {
  TensorSpan tensor;  ///< named "array"; shape as written (Fortran order: the caller transposes)
  bool big_endian = false;
  bool fortran = false;
};
/// Parses and checks a .npy file image (versions 1-3): the header dict with a bounded,
/// non-recursive scanner; no negative or overflowing dimension; data present in full.
NpyLayout parse_npy(const uint8_t* data, size_t size, const std::string& path);

/// Decodes a span's elements from the file image into `out`, which holds
/// span.count * held_size(span.type->held) bytes. Throws for values the held type cannot
/// represent (a U64 above INT64_MAX), naming the file and the tensor.
void decode_span(const uint8_t* file, const TensorSpan& span, bool big_endian, void* out,
                 const std::string& path);

}  // namespace parity
