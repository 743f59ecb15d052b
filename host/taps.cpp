// host/taps.cpp — parity::tap: the operator, the graph splicing, tapped runs.
#include "host/taps.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/library.h>
#include <torch/script.h>

#include <atomic>
#include <set>
#include <stdexcept>

namespace parity {
namespace {

// NOTE [ Tap keys ]
// A tap node carries constants: key "TAG|PATH" (TAG tells apart two tapped models with the same
// paths, e.g. a reference and a target), slot (input i: i; output j: -1 - j) and the number of
// tapped inputs (a call starts at input 0, or at output 0 for a module without tensor inputs).
struct TapRun {
  std::string tag;
  bool capture_all = false;
  std::set<std::string> capture;
  const TapRequest* request = nullptr;
  TapCalls* calls = nullptr;
  std::map<std::string, int64_t> call_index;  // path -> index of the current call
};
TapRun* active = nullptr;  // set for the duration of run_tapped (the interpreter runs on one thread)

at::Tensor tap_kernel(const at::Tensor& x, std::string key, int64_t slot, int64_t n_inputs) {
  TapRun* run = active;
  auto bar = key.find('|');
  if (!run || key.compare(0, bar, run->tag) != 0) return x;
  std::string path = key.substr(bar + 1);
  bool starts = n_inputs > 0 ? slot == 0 : slot == -1;
  auto it = run->call_index.find(path);
  if (it == run->call_index.end()) it = run->call_index.emplace(path, -1).first;
  if (starts) ++it->second;
  int64_t call = std::max<int64_t>(it->second, 0);
  at::Tensor out = x;
  const TapRequest& request = *run->request;
  if (slot >= 0 && !request.inject.empty()) {
    auto p = request.inject.find(path);
    if (p != request.inject.end()) {
      auto c = p->second.find(call);
      if (c != p->second.end()) {
        auto s = c->second.find(slot);
        if (s != c->second.end()) {
          if (!s->second.sizes().equals(x.sizes()))
            throw std::invalid_argument(fmt::format("inject {} call {} input {}: shape [{}] where the model has [{}]",
                                                    path, call, slot, fmt::join(s->second.sizes(), ", "),
                                                    fmt::join(x.sizes(), ", ")));
          out = s->second.to(x.options());
        }
      }
    }
  }
  auto cut = request.last_position.find(path);
  if (cut != request.last_position.end() && cut->second == slot) {
    if (out.dim() < 2 || out.size(1) == 0)
      throw std::invalid_argument(fmt::format("last position of {}: its input {} is [{}], not [batch, seq, ...]", path,
                                              slot, fmt::join(out.sizes(), ", ")));
    out = out.narrow(1, out.size(1) - 1, 1);
  }
  if (run->calls && (run->capture_all || run->capture.count(path))) {
    auto& list = (*run->calls)[path];
    if (starts || list.empty()) list.emplace_back();
    // a copy: the graph may modify the tensor in place after the tap
    (slot >= 0 ? list.back().inputs : list.back().outputs).push_back(out.clone());
  }
  return out;
}

TORCH_LIBRARY(parity, m) {
  m.def(torch::schema("parity::tap(Tensor x, str key, int slot, int n_inputs) -> Tensor",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        tap_kernel);
}

using torch::jit::Graph;
using JitValue = torch::jit::Value;

bool is_tensor(const c10::TypePtr& t) { return t->kind() == c10::TypeKind::TensorType; }

/// Tensors a value holds: 1 for a tensor, n for a tuple of n tensors, 0 for anything else.
int tensors_in(const c10::TypePtr& t) {
  if (is_tensor(t)) return 1;
  if (auto tup = t->cast<c10::TupleType>()) {
    for (const auto& e : tup->elements())
      if (!is_tensor(e)) return 0;
    return static_cast<int>(tup->elements().size());
  }
  return 0;
}

/// Passes v through taps at the graph's insert point: a tensor through one, a tuple of tensors
/// element by element (unpacked and rebuilt). Other values come back unchanged.
JitValue* tap_value(Graph& g, JitValue* v, const std::string& key, bool input, int& slot, int n_inputs) {
  static const auto tap = c10::Symbol::fromQualString("parity::tap");
  if (is_tensor(v->type())) {
    int64_t code = input ? slot : -1 - slot;
    ++slot;
    return g.insert(tap, {v, key, code, static_cast<int64_t>(n_inputs)});
  }
  auto* unpack = g.insertNode(g.createTupleUnpack(v));
  std::vector<JitValue*> elems;
  for (auto* e : unpack->outputs()) elems.push_back(tap_value(g, e, key, input, slot, n_inputs));
  return g.insertNode(g.createTuple(elems))->output();
}

/// Taps one method's graph: its inputs after the first (self) and its output.
void splice_graph(Graph& g, const std::string& key, TapSite& site) {
  int n_inputs = 0;
  for (size_t i = 1; i < g.inputs().size(); ++i) n_inputs += tensors_in(g.inputs()[i]->type());
  std::vector<std::string> untapped;
  {
    torch::jit::WithInsertPoint guard(*g.block()->nodes().begin());
    int slot = 0;
    for (size_t i = 1; i < g.inputs().size(); ++i) {
      JitValue* in = g.inputs()[i];
      if (!tensors_in(in->type())) {
        untapped.push_back(fmt::format("input {} ({})", i - 1, in->type()->annotation_str()));
        continue;
      }
      JitValue* tapped = tap_value(g, in, key, true, slot, n_inputs);
      in->replaceAllUsesAfterNodeWith(tapped->node(), tapped);
    }
    site.inputs = slot;
  }
  torch::jit::WithInsertPoint guard(g.return_node());
  JitValue* out = g.outputs()[0];
  if (tensors_in(out->type())) {
    int slot = 0;
    g.return_node()->replaceInput(0, tap_value(g, out, key, false, slot, n_inputs));
    site.outputs = slot;
  } else {
    untapped.push_back(fmt::format("output ({})", out->type()->annotation_str()));
  }
  site.untapped = untapped;  // the same for every method of one module
  g.lint();
}

/// Taps `forward` and, for a traced module called more than once, its `forward1`, `forward2`,
/// ... (the tracer records each further call as a method of its own).
void splice(torch::jit::Module& m, const std::string& key, TapSite& site) {
  bool any = false;
  for (const auto& method : m.get_methods()) {
    const std::string& name = method.name();
    if (name.rfind("forward", 0) != 0 || name.find_first_not_of("0123456789", 7) != std::string::npos) continue;
    splice_graph(*method.graph(), key, site);
    any = true;
  }
  if (!any) site.untapped.push_back("no forward method (never called: a container such as a ModuleList)");
}

std::atomic<int> next_tag{0};

}  // namespace

std::vector<TapSite> install_taps(Model& model, const std::vector<std::string>& paths, bool skip_shared) {
  auto& root = model.jit();
  std::string tag = fmt::format("m{}", next_tag++);
  std::map<std::string, torch::jit::Module> by_path;
  std::map<const c10::Type*, std::vector<std::string>> by_type;
  for (const auto& nm : root.named_modules()) {
    by_path.emplace(nm.name, nm.value);
    by_type[nm.value.type().get()].push_back(nm.name);
  }
  std::vector<TapSite> sites;
  for (const auto& path : paths) {
    auto it = by_path.find(path);
    if (it == by_path.end()) throw std::invalid_argument(fmt::format("tap: no submodule '{}'", path));
    const auto& same = by_type[it->second.type().get()];
    TapSite site;
    site.path = path;
    if (same.size() > 1 && it->second.find_method("forward")) {
      site.refused = fmt::format(
          "tap: '{}' shares its module type (and so its graph) with '{}': taps could not tell their calls"
          " apart (a scripted model?); trace the model instead", path, same[0] == path ? same[1] : same[0]);
      if (!skip_shared) throw std::invalid_argument(site.refused);
      sites.push_back(std::move(site));
      continue;
    }
    splice(it->second, tag + "|" + path, site);
    sites.push_back(std::move(site));
  }
  model.set_tap_tag(tag);
  return sites;
}

Value run_tapped(const Model& model, const std::vector<Value>& args, const TapRequest& request, TapCalls* calls) {
  if (model.tap_tag().empty()) throw std::invalid_argument("run_tapped: the model has no taps (install_taps first)");
  if (active) throw std::logic_error("run_tapped: already inside a tapped run");
  TapRun run;
  run.tag = model.tap_tag();
  run.capture_all = request.capture.empty();
  run.capture.insert(request.capture.begin(), request.capture.end());
  run.request = &request;
  run.calls = calls;
  active = &run;
  struct Reset {
    ~Reset() { active = nullptr; }
  } reset;
  Value out = model.call("forward", args);
  if (calls && !model.device().is_cpu()) {  // captures come back on the CPU too, as the output does
    for (auto& [path, list] : *calls)
      for (auto& call : list)
        for (auto* tensors : {&call.inputs, &call.outputs})
          for (auto& t : *tensors) t = t.to(at::kCPU);
  }
  return out;
}

}  // namespace parity
