// host/dispatch.cpp — boxed operator calls with overload resolution over the JIT registry.
#include "host/dispatch.hpp"

#include <ATen/core/function_schema.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/csrc/jit/runtime/operator.h>

#include <optional>
#include <sstream>
#include <stdexcept>

namespace parity {
namespace {

struct Target {
  c10::Symbol symbol;
  std::string overload;  // empty: any
};

Target parse_name(const std::string& name) {
  if (name.find("::") == std::string::npos)
    throw std::invalid_argument(fmt::format("operator name '{}' needs a namespace, like aten::{}",
                                            name, name));
  auto dot = name.find('.', name.find("::"));
  if (dot == std::string::npos) return {c10::Symbol::fromQualString(name), ""};
  return {c10::Symbol::fromQualString(name.substr(0, dot)), name.substr(dot + 1)};
}

/// Operators that reach files, every overload: never called from Lua (scripts read tensors with
/// parity.tensors, and a patch file from elsewhere must not read or write any file).
bool reaches_files(const c10::Symbol& op) { return op.toQualString() == std::string("aten::from_file"); }

std::string schema_text(const c10::FunctionSchema& s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

/// Binds values to one schema's arguments; on failure returns why.
std::optional<std::string> bind_schema(const c10::FunctionSchema& schema, const std::vector<Value>& pos,
                                const Map* kwargs, torch::jit::Stack& stack) {
  size_t next = 0, used_kwargs = 0;
  for (const auto& arg : schema.arguments()) {
    const Value* v = nullptr;
    if (!arg.kwarg_only() && next < pos.size()) {
      v = &pos[next++];
    } else if (kwargs) {
      for (const auto& [k, x] : *kwargs)
        if (k == arg.name()) v = &x, ++used_kwargs;
    }
    if (!v || (v->is_nil() && arg.default_value())) {
      if (!arg.default_value()) return fmt::format("missing argument '{}'", arg.name());
      stack.push_back(*arg.default_value());
      continue;
    }
    try {
      stack.push_back(to_ivalue(*v, arg.real_type()));
    } catch (const std::exception& e) {
      return fmt::format("argument '{}': {}", arg.name(), e.what());
    }
  }
  if (next < pos.size())
    return fmt::format("takes {} positional arguments, got {}", next, pos.size());
  if (kwargs && used_kwargs < kwargs->size()) {
    for (const auto& [k, x] : *kwargs) {
      bool known = false;
      for (const auto& arg : schema.arguments()) known |= arg.name() == k;
      if (!known) return fmt::format("unexpected keyword argument '{}'", k);
    }
  }
  return std::nullopt;
}

const std::vector<std::shared_ptr<torch::jit::Operator>>& operators_for(const Target& t,
                                                                       const std::string& name) {
  const auto& ops = torch::jit::getAllOperatorsFor(t.symbol);
  if (ops.empty()) throw std::invalid_argument(fmt::format("no operator named {}", name));
  return ops;
}

}  // namespace

std::vector<Value> call_op(const std::string& name, const std::vector<Value>& args) {
  Target target = parse_name(name);
  if (reaches_files(target.symbol))
    throw std::invalid_argument(fmt::format("{} reads a file: not available from Lua (parity.tensors.load reads tensor"
                                            " files)", name));
  const auto& ops = operators_for(target, name);

  // A trailing string-keyed table may be keyword arguments.
  const Map* kwargs = nullptr;
  std::vector<Value> positional = args;
  if (!args.empty()) {
    auto m = args.back().get<Map>();
    if (m && !m->empty()) kwargs = m, positional.pop_back();
  }

  std::vector<std::string> rejected;
  for (const auto& op : ops) {
    const auto& schema = op->schema();
    if (!target.overload.empty() && schema.overload_name() != target.overload) continue;
    torch::jit::Stack stack;
    auto why = bind_schema(schema, positional, kwargs, stack);
    if (why && kwargs) {  // maybe the table was a positional argument after all
      stack.clear();
      if (!bind_schema(schema, args, nullptr, stack)) why.reset();
    }
    if (why) {
      rejected.push_back(fmt::format("    {}\n      {}", schema_text(schema), *why));
      continue;
    }
    op->getOperation()(stack);
    std::vector<Value> out;
    out.reserve(stack.size());
    for (const auto& iv : stack) out.push_back(from_ivalue(iv));
    return out;
  }
  std::vector<std::string> kinds;
  for (const auto& a : args) kinds.emplace_back(a.kind());
  if (rejected.empty())
    throw std::invalid_argument(fmt::format("{}: no overload named '{}'; overloads:\n    {}", name,
                                            target.overload, fmt::join(op_schemas(name), "\n    ")));
  throw std::invalid_argument(fmt::format("{}: no overload matches ({}); candidates:\n{}", name,
                                          fmt::join(kinds, ", "), fmt::join(rejected, "\n")));
}

std::vector<c10::IValue> bind_arguments(const c10::FunctionSchema& schema,
                                        const std::vector<Value>& args) {
  const Map* kwargs = nullptr;
  std::vector<Value> positional = args;
  if (!args.empty()) {
    auto m = args.back().get<Map>();
    if (m && !m->empty()) kwargs = m, positional.pop_back();
  }
  torch::jit::Stack stack;
  auto why = bind_schema(schema, positional, kwargs, stack);
  if (why && kwargs) {
    torch::jit::Stack retry;
    if (!bind_schema(schema, args, nullptr, retry)) return retry;
  }
  if (why) throw std::invalid_argument(fmt::format("{}: {}", schema_text(schema), *why));
  return stack;
}

bool has_op(const std::string& name) {
  if (name.find("::") == std::string::npos) return false;
  return !torch::jit::getAllOperatorsFor(c10::Symbol::fromQualString(name)).empty();
}

std::vector<std::string> op_schemas(const std::string& name) {
  Target target = parse_name(name);
  std::vector<std::string> out;
  for (const auto& op : operators_for(target, name)) out.push_back(schema_text(op->schema()));
  return out;
}

}  // namespace parity
