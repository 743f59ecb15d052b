// host/dispatch.hpp — call any registered operator (ATen, prim, custom) by name, picking the
// overload whose schema accepts the given values, the way torch.ops does in Python.
#pragma once
#include <ATen/core/function_schema.h>

#include <string>
#include <vector>

#include "host/value.hpp"

namespace parity {

/// Calls `name` ("aten::add", "aten::add.Tensor" for one overload, "myops::fused_rms").
/// A trailing non-empty Map in `args` is tried as keyword arguments first, then positionally.
/// A nil positional argument takes the schema default. Returns one Value per declared return.
/// Throws std::invalid_argument listing every candidate schema and why it was rejected when
/// none fits, and std::invalid_argument when no operator has that name.
std::vector<Value> call_op(const std::string& name, const std::vector<Value>& args);

/// Binds Lua-shaped values to `schema`'s arguments (positional, trailing keyword Map, nil or
/// absent for defaults). Throws std::invalid_argument naming the argument that does not fit.
std::vector<c10::IValue> bind_arguments(const c10::FunctionSchema& schema,
                                        const std::vector<Value>& args);

/// True when at least one operator is registered under `name` (without overload).
bool has_op(const std::string& name);

/// Every overload's schema as text, in registration order.
std::vector<std::string> op_schemas(const std::string& name);

}  // namespace parity
