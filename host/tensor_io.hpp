// host/tensor_io.hpp — safetensors and .npy files: reading, writing, and the format's rules.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace parity {

using NamedTensorList = std::vector<std::pair<std::string, at::Tensor>>;

/// Reads a safetensors file: every tensor, in file order, plus the "__metadata__" strings.
/// All format dtypes are read. Types LibTorch 1.13 lacks are widened without loss: U16 -> int32,
/// U32 -> int64, U64 -> int64 (error if a value exceeds int64), F8_E4M3/F8_E5M2 -> float32.
/// Enforced: header length bounded (100 MB) and inside the file, valid JSON object, known
/// dtypes, byte size = numel * itemsize, offsets inside the data, no overlaps or gaps.
/// Throws std::runtime_error "PATH: problem". With `only`, just the tensors of those names
/// (the file is mapped: the others' bytes are never read; every span is still checked).
struct SafetensorsFile {
  NamedTensorList tensors;
  std::vector<std::pair<std::string, std::string>> metadata;
};
SafetensorsFile read_safetensors(const std::string& path, const std::vector<std::string>* only = nullptr);

/// Writes tensors (names sorted, header padded to 8 bytes) atomically.
void write_safetensors(const std::string& path, const NamedTensorList& tensors,
                       const std::vector<std::pair<std::string, std::string>>& metadata = {});

/// Reads a .npy array (v1-v3; little/big endian; C or Fortran order; b1 i1-i8 u1-u8 f2 f4 f8).
at::Tensor read_npy(const std::string& path);

/// Reads a raw little-endian C-order array NAME.bin described by the JSON sidecar NAME.json
/// beside it: {"dtype": "float32", "shape": [7, 64]} (PyTorch or short dtype names, as
/// parse_dtype takes them). The file's size must be exactly numel x element size.
/// Throws std::runtime_error "PATH: problem".
at::Tensor read_raw(const std::string& path);

/// Writes a .npy (v1) array atomically. bfloat16 has no numpy type: throws, suggest float32.
void write_npy(const std::string& path, const at::Tensor& t);

}  // namespace parity
