// host/model.cpp — TorchScript modules: loading, execution-ordered tree, schema-bound calls.
#include "host/model.hpp"

#include <dlfcn.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/script.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>

#include "host/dispatch.hpp"

namespace parity {
namespace {

std::string class_name(const torch::jit::Module& m) {
  auto t = m.type();
  return t->name() ? demangle_type(t->name()->qualifiedName()) : "Module";
}

/// Resolves the module a prim::CallMethod node calls, as a path relative to `self` (the
/// method's first graph input), by walking its prim::GetAttr chain. Empty when it is not one.
std::optional<std::string> callee_path(torch::jit::Value* v, torch::jit::Value* self) {
  std::vector<std::string> parts;
  while (v != self) {
    auto* n = v->node();
    if (n->kind() != c10::prim::GetAttr) return std::nullopt;
    parts.push_back(n->s(c10::attr::name));
    v = n->input(0);
  }
  std::string path;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) path += (path.empty() ? "" : ".") + *it;
  return path;
}

/// Appends, in call order, every submodule `method` of module `m` (at `prefix`) calls.
void walk_calls(const torch::jit::Module& m, const std::string& prefix, const std::string& method,
                std::vector<std::string>& order, std::set<std::string>& seen) {
  auto fn = m.find_method(method);
  if (!fn) return;
  auto graph = fn->graph();
  auto* self = graph->inputs().at(0);
  std::function<void(torch::jit::Block*)> visit = [&](torch::jit::Block* b) {
    for (auto* n : b->nodes()) {
      for (auto* sub : n->blocks()) visit(sub);
      if (n->kind() != c10::prim::CallMethod) continue;
      auto rel = callee_path(n->input(0), self);
      if (!rel || rel->empty()) continue;
      std::string path = prefix.empty() ? *rel : prefix + "." + *rel;
      torch::jit::Module callee = m;
      std::stringstream ss(*rel);
      for (std::string part; std::getline(ss, part, '.');) callee = callee.attr(part).toModule();
      if (seen.insert(path).second) order.push_back(path);
      walk_calls(callee, path, n->s(c10::attr::name), order, seen);
    }
  };
  visit(graph->block());
}

int64_t numel_of(const torch::jit::Module& m, bool recurse) {
  int64_t n = 0;
  for (const auto& p : m.parameters(recurse)) n += p.numel();
  return n;
}

NamedTensors named(const torch::jit::named_parameter_list& list) {
  NamedTensors out;
  for (const auto& p : list) out.emplace_back(p.name, p.value);
  return out;
}

}  // namespace

std::string demangle_type(const std::string& qualified) {
  auto dot = qualified.rfind('.');
  return dot == std::string::npos ? qualified : qualified.substr(dot + 1);
}

Model Model::load(const std::string& path, std::optional<c10::Device> device) {
  if (!std::filesystem::exists(path))
    throw std::runtime_error(fmt::format("{}: no such file", path));
  try {
    auto m = device ? torch::jit::load(path, *device) : torch::jit::load(path);
    return Model(std::make_shared<torch::jit::Module>(std::move(m)));
  } catch (const c10::Error& e) {
    std::string why = e.what_without_backtrace();
    throw std::runtime_error(
        fmt::format("{}: not a loadable TorchScript file ({})", path, why.substr(0, why.find('\n'))));
  }
}

Model Model::child(const std::string& path) const {
  torch::jit::Module cur = *m_;
  std::string walked;
  std::stringstream ss(path);
  for (std::string part; std::getline(ss, part, '.');) {
    std::string here = walked.empty() ? part : walked + "." + part;
    if (!cur.hasattr(part) || !cur.attr(part).isModule()) {
      std::vector<std::string> children;
      for (const auto& c : cur.named_children()) children.push_back(c.name);
      throw std::invalid_argument(fmt::format("no submodule '{}' (children of '{}': {})", here,
                                              walked, fmt::join(children, ", ")));
    }
    cur = cur.attr(part).toModule();
    walked = here;
  }
  return Model(std::make_shared<torch::jit::Module>(cur));
}

std::vector<ModuleInfo> Model::modules() const {
  std::vector<std::string> order{""};
  std::set<std::string> seen{""};
  walk_calls(*m_, "", "forward", order, seen);
  std::map<std::string, torch::jit::Module> by_path;
  for (const auto& nm : m_->named_modules()) {
    by_path.emplace(nm.name, nm.value);
    if (seen.insert(nm.name).second) order.push_back(nm.name);
  }
  // Parents before children: a parent first reached after its child (it was never called)
  // moves to just before that child.
  std::vector<std::string> sorted;
  std::set<std::string> placed;
  std::function<void(const std::string&)> place = [&](const std::string& p) {
    if (placed.count(p)) return;
    auto dot = p.rfind('.');
    if (!p.empty()) place(dot == std::string::npos ? "" : p.substr(0, dot));
    placed.insert(p);
    sorted.push_back(p);
  };
  for (const auto& p : order)
    if (by_path.count(p)) place(p);

  std::vector<ModuleInfo> out;
  for (const auto& p : sorted) {
    const auto& m = by_path.at(p);
    int depth = p.empty() ? 0 : 1 + static_cast<int>(std::count(p.begin(), p.end(), '.'));
    out.push_back({p, class_name(m), numel_of(m, false), numel_of(m, true), depth});
  }
  return out;
}

NamedTensors Model::parameters() const { return named(m_->named_parameters(true)); }
NamedTensors Model::buffers() const {
  NamedTensors out;
  for (const auto& b : m_->named_buffers(true)) out.emplace_back(b.name, b.value);
  return out;
}

std::vector<std::string> Model::method_names() const {
  std::vector<std::string> out;
  for (const auto& m : m_->get_methods()) out.push_back(m.name());
  return out;
}

std::string Model::type_name() const { return class_name(*m_); }

namespace {
const c10::FunctionSchema& method_schema(const torch::jit::Module& m, const std::string& name) {
  auto fn = m.find_method(name);
  if (!fn) {
    std::vector<std::string> names;
    for (const auto& x : m.get_methods()) names.push_back(x.name());
    throw std::invalid_argument(fmt::format("module {} has no method '{}' (methods: {})",
                                            class_name(m), name, fmt::join(names, ", ")));
  }
  return fn->function().getSchema();
}
}  // namespace

Value Model::call(const std::string& method, const std::vector<Value>& args) const {
  const auto& schema = method_schema(*m_, method);
  const auto& all = schema.arguments();
  auto without_self = schema.cloneWithArguments({all.begin() + 1, all.end()});
  auto dev = device();
  std::vector<Value> moved;
  if (!dev.is_cpu())
    for (const auto& a : args) moved.push_back(on_device(a, dev));
  auto inputs = bind_arguments(without_self, dev.is_cpu() ? args : moved);
  inputs.insert(inputs.begin(), m_->_ivalue());
  auto out = from_ivalue(m_->get_method(method).function()(std::move(inputs)));
  return dev.is_cpu() ? out : on_device(out, c10::Device(c10::kCPU));
}

Value Model::schema(const std::string& method) const {
  const auto& s = method_schema(*m_, method);
  Array args, rets;
  for (size_t i = 1; i < s.arguments().size(); ++i) {
    const auto& a = s.arguments()[i];
    Map arg{{"name", a.name()}, {"type", a.type()->annotation_str()}};
    if (a.default_value()) {
      std::ostringstream os;
      os << *a.default_value();
      arg.emplace_back("default", os.str());
    }
    args.emplace_back(std::move(arg));
  }
  for (const auto& r : s.returns()) rets.emplace_back(Map{{"type", r.type()->annotation_str()}});
  return Map{{"name", s.name()}, {"arguments", std::move(args)}, {"returns", std::move(rets)}};
}

void Model::to(c10::ScalarType dtype) { m_->to(dtype); }
void Model::to(c10::Device device) { m_->to(device); }

c10::Device Model::device() const {
  for (const auto& p : m_->parameters()) return p.device();
  for (const auto& b : m_->buffers()) return b.device();
  return c10::Device(c10::kCPU);
}
void Model::set_training(bool on) { on ? m_->train() : m_->eval(); }

void load_library(const std::string& path) {
  if (!dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL))
    throw std::runtime_error(fmt::format("cannot load library {}: {}", path, dlerror()));
}

}  // namespace parity
