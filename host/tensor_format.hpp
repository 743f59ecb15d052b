// host/tensor_format.hpp — a readable one-line-ish rendering of a tensor (for __tostring).
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

namespace parity {

/// Small tensors (<= 64 elements) print their values: tensor([[1.5, 2], ...], dtype=float32).
/// Larger ones print a summary: tensor(shape=[2, 1024], dtype=bfloat16, min=.., max=.., mean=..).
std::string format_tensor(const at::Tensor& t);

}  // namespace parity
