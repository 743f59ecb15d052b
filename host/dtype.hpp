// host/dtype.hpp — dtype and device names as strings ("bf16", "float32", "cpu").
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace parity {

/// Parses a dtype name: PyTorch names ("float32", "bfloat16", "int64", "bool") and the short
/// aliases ("fp32", "bf16", "fp16", "half", "float", "double", "long", "int"). Throws on others.
c10::ScalarType parse_dtype(const std::string& name);

/// Canonical PyTorch name of a dtype: "float32", "bfloat16", "int64", ...
std::string dtype_name(c10::ScalarType t);

/// Parses "cpu", "cuda", "cuda:1"; throws with the accepted forms on anything else.
c10::Device parse_device(const std::string& name);
/// Whether a name is a device's rather than a dtype's: "cpu", "meta", "cuda", "cuda:N".
bool is_device_name(const std::string& name);

}  // namespace parity
