// host/taps.cpp — parity::tap: the operator, the graph splicing, tapped runs.
#include "host/taps.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/library.h>
#include <torch/script.h>

#include <atomic>
#include <set>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

namespace parity {
namespace {

// NOTE [ Tap keys ]
// A tap node carries constants: key "TAG|PATH@METHOD" (TAG tells apart two tapped models with
// the same paths, e.g. a reference and a target; METHOD is the graph's: a traced module called
// from two places has forward and forward1), slot (input i: i; output j: -1 - j) and the number
// of tapped inputs (a call starts at input 0, or at output 0 for a module without tensor inputs).
// NOTE [ Captures shared ]
// A captured tensor is a copy (the graph may modify it in place after the tap), but one copy
// per tensor while it is unmodified: a layer's output is the next layer's input, a norm's output
// the q, k and v projections' input, and each of those captures is the same copy (a third of
// a Llama layer's captures). The same tensor is the same TensorImpl (the weak reference keeps
// its address from being reused) at the same version (an in-place op bumps it).
struct Copy {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> of;
  int64_t version = 0;
  at::Tensor copy;
};

struct TapRun {
  const TapState* state = nullptr;
  bool capture_all = false;
  std::set<std::string> capture;
  const TapRequest* request = nullptr;
  TapCalls* calls = nullptr;
  std::map<std::string, int64_t> call_index;  // path -> index of the current call
  std::map<std::string, PatchCall> patch_in;   // patched path -> its current call's inputs
  std::map<std::string, std::vector<at::Tensor>> patch_out;  // ... and the patch's outputs
  std::string patch_error;  // a patch's error: what the run ends with, without TorchScript's traceback
  std::unordered_map<const c10::TensorImpl*, Copy> copies;  // NOTE [ Captures shared ]
};
TapRun* active = nullptr;  // set for the duration of a tapped run (the interpreter runs on one thread)
int inert = 0;             // > 0 inside a patch's call of the original: every tap passes its value on

std::string describe(const at::Tensor& t) {
  return fmt::format("[{}] {}", fmt::join(t.sizes(), ", "), c10::toString(t.scalar_type()));
}

/// The patch's output for tap slot `j` of `path`'s current call (calling the patch at the first).
at::Tensor patched_output(TapRun& run, const Patch& patch, const std::string& path, int64_t j, const at::Tensor& x) {
  PatchCall& call = run.patch_in[path];
  auto& outs = run.patch_out[path];
  if (j == 0) {
    try {
      outs = patch.fn(call);
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("patch of {} (call {}): {}", path, call.call + 1, e.what()));
    }
    int want = run.state->sites.at(path).second;
    if (outs.empty() || static_cast<int>(outs.size()) > want)
      throw std::invalid_argument(fmt::format("patch of {} (call {}): returns {} tensor{} where the component returns {}",
                                              path, call.call + 1, outs.size(), outs.size() == 1 ? "" : "s", want));
  }
  if (j >= static_cast<int64_t>(outs.size())) return x;  // one it leaves out: the component's own
  const at::Tensor& t = outs.at(static_cast<size_t>(j));
  if (!t.defined() || !t.sizes().equals(x.sizes()) || t.scalar_type() != x.scalar_type() || t.device() != x.device())
    throw std::invalid_argument(fmt::format("patch of {} (call {}): output {} is {} where the component's is {}{}", path,
                                            call.call + 1, j + 1, t.defined() ? describe(t) : "undefined", describe(x),
                                            t.defined() && t.device() != x.device() ? " on " + x.device().str() : ""));
  return t;
}

/// The captured copy of x (NOTE [ Captures shared ]).
at::Tensor captured(TapRun& run, const at::Tensor& x) {
  // contiguous: a copy is what a file of captures gives back (parity.captures), bit for bit in
  // every figure computed from it (a float64 sum runs in memory order)
  if (x.is_inference()) return x.clone(at::MemoryFormat::Contiguous);  // (no version counter)
  const c10::TensorImpl* impl = x.unsafeGetTensorImpl();
  auto it = run.copies.find(impl);
  if (it != run.copies.end() && !it->second.of.expired() && it->second.version == x._version()) return it->second.copy;
  Copy c{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(x.getIntrusivePtr()), x._version(),
         x.clone(at::MemoryFormat::Contiguous)};
  return run.copies.insert_or_assign(impl, std::move(c)).first->second.copy;
}

at::Tensor tap_kernel(const at::Tensor& x, std::string key, int64_t slot, int64_t n_inputs) {
  TapRun* run = active;
  if (!run || inert > 0) return x;
  auto bar = key.find('|'), at_ = key.rfind('@');
  if (key.compare(0, bar, run->state->tag) != 0) return x;
  std::string path = key.substr(bar + 1, at_ - bar - 1);
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
          out = s->second.to(x.options(), /*non_blocking=*/false, /*copy=*/true);  // (the graph may write it in place)
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
  auto found = run->state->patches.find(path);
  if (found != run->state->patches.end()) {
    const Patch patch = found->second;  // a copy: the patch may replace or remove itself while it runs
    if (slot >= 0) {
      PatchCall& pc = run->patch_in[path];
      if (starts) pc = PatchCall{path, key.substr(at_ + 1), call, {}, run->state->sites.at(path).second};
      pc.inputs.push_back(out);
    } else {
      try {
        out = patched_output(*run, patch, path, -1 - slot, out);
      } catch (const std::exception& e) {
        const std::string& origin = patch.origin;
        run->patch_error = origin.empty() ? e.what() : origin + ": " + e.what();
        throw;
      }
    }
  }
  if (run->calls && (run->capture_all || run->capture.count(path))) {
    auto& list = (*run->calls)[path];
    if (starts || list.empty()) list.emplace_back();
    (slot >= 0 ? list.back().inputs : list.back().outputs).push_back(captured(*run, out));
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
    splice_graph(*method.graph(), key + "@" + name, site);
    any = true;
  }
  if (!any) site.untapped.push_back("no forward method (never called: a container such as a ModuleList)");
}

std::atomic<int> next_tag{0};

}  // namespace

std::vector<TapSite> install_taps(Model& model, const std::vector<std::string>& paths, bool skip_shared) {
  auto& root = model.jit();
  TapState& state = model.taps();
  if (state.tag.empty()) state.tag = fmt::format("m{}", next_tag++);
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
    TapSite site;
    site.path = path;
    if (auto done = state.sites.find(path); done != state.sites.end()) {  // tapped already: as it is
      site.inputs = done->second.first, site.outputs = done->second.second;
      sites.push_back(std::move(site));
      continue;
    }
    if (state.ran)
      throw std::invalid_argument(fmt::format(
          "tap: '{}': the model has run, and a run inlines its graphs as they are: tap it before its first run", path));
    const auto& same = by_type[it->second.type().get()];
    if (same.size() > 1 && it->second.find_method("forward")) {
      site.refused = fmt::format(
          "tap: '{}' shares its module type (and so its graph) with '{}': taps could not tell their calls"
          " apart (a scripted model?); trace the model instead", path, same[0] == path ? same[1] : same[0]);
      if (!skip_shared) throw std::invalid_argument(site.refused);
      sites.push_back(std::move(site));
      continue;
    }
    splice(it->second, state.tag + "|" + path, site);
    state.sites[path] = {site.inputs, site.outputs};
    sites.push_back(std::move(site));
  }
  return sites;
}

namespace {
/// Runs `fn` as a tapped run of `model` (active set, reset however it ends).
template <typename F>
Value with_run(const Model& model, const TapRequest& request, TapCalls* calls, F fn) {
  TapRun run;
  run.state = &model.taps();
  run.capture_all = request.capture.empty();
  run.capture.insert(request.capture.begin(), request.capture.end());
  run.request = &request;
  run.calls = calls;
  active = &run;
  struct Reset {
    ~Reset() { active = nullptr; }
  } reset;
  try {
    return fn();
  } catch (const std::exception&) {
    if (!run.patch_error.empty()) throw std::invalid_argument(run.patch_error);
    throw;
  }
}
}  // namespace

Value run_tapped(const Model& model, const std::vector<Value>& args, const TapRequest& request, TapCalls* calls) {
  if (model.taps().tag.empty()) throw std::invalid_argument("run_tapped: the model has no taps (install_taps first)");
  // another model's tapped run may nest (a patch running a reference): its taps are its own
  if (active && active->state == &model.taps()) throw std::logic_error("run_tapped: already inside a tapped run of it");
  model.count_forward();  // (nested in another model's forward: part of that one)
  struct Restore {
    TapRun* run;
    int inert_was;
    ~Restore() { active = run, inert = inert_was; }
  } restore{active, inert};
  inert = 0;
  Value out = with_run(model, request, calls, [&] { return model.call_plain("forward", args); });
  if (calls && !model.device().is_cpu()) {  // captures come back on the CPU too, as the output does
    for (auto& [path, list] : *calls)
      for (auto& call : list)
        for (auto* tensors : {&call.inputs, &call.outputs})
          for (auto& t : *tensors) t = t.to(at::kCPU);
  }
  return out;
}

bool in_tapped_run() { return active != nullptr || inert > 0; }

Value call_patched(const Model& model, const std::string& method, const std::vector<Value>& args) {
  if (active || inert > 0) {  // inside a patch, or a tapped run: as the graphs say, on its device
    ++inert;
    struct Reset {
      ~Reset() { --inert; }
    } reset;
    return model.call_plain(method, args, false);
  }
  static const TapRequest none;
  return with_run(model, none, nullptr, [&] { return model.call_plain(method, args); });
}

Value call_unpatched(const Model& model, const std::string& method, const std::vector<Value>& args) {
  bool inside = in_tapped_run();
  ++inert;
  struct Reset {
    ~Reset() { --inert; }
  } reset;
  return model.call_plain(method, args, !inside);
}

void set_patch(Model& model, const std::string& path, PatchFn patch, std::string origin) {
  TapState& state = model.taps();
  auto site = state.sites.find(path);
  if (site == state.sites.end())
    throw std::invalid_argument(fmt::format("patch: '{}' has no taps: patch a bundle's model (tapped everywhere), or tap"
                                            " the path before the model's first run (m:tap)", path));
  if (site->second.first == 0 || site->second.second == 0)
    throw std::invalid_argument(fmt::format("patch: '{}' has no tensor {} to patch", path,
                                            site->second.first == 0 ? "inputs" : "outputs"));
  state.patches[path] = Patch{std::move(patch), std::move(origin)};
}

bool remove_patch(Model& model, const std::string& path) { return model.taps().patches.erase(path) > 0; }

std::vector<std::string> patched_paths(const Model& model) {
  std::vector<std::string> out;
  for (const auto& [path, fn] : model.taps().patches) out.push_back(path);
  return out;
}

std::vector<at::Tensor> call_original(const Model& model, const PatchCall& call, const std::vector<at::Tensor>& inputs) {
  auto root = model.taps().root.lock();  // paths are the root's, whichever model of the tree set the patch
  torch::jit::Module m = root ? *root : model.jit();
  std::stringstream ss(call.path);
  for (std::string part; std::getline(ss, part, '.');) m = m.attr(part).toModule();
  auto method = m.get_method(call.method);
  const auto& args = method.function().getSchema().arguments();
  std::vector<c10::IValue> stack;  // Method adds self
  size_t next = 0;
  auto take = [&]() -> at::Tensor {
    if (next >= inputs.size())
      throw std::invalid_argument(fmt::format("original of {}: {} tensor input{} where it takes more", call.path,
                                              inputs.size(), inputs.size() == 1 ? "" : "s"));
    return inputs[next++];
  };
  for (size_t i = 1; i < args.size(); ++i) {
    const auto& t = args[i].type();
    if (is_tensor(t)) {
      stack.emplace_back(take());
    } else if (auto tup = t->cast<c10::TupleType>(); tup && tensors_in(t) > 0) {
      std::vector<c10::IValue> elems;
      for (size_t e = 0; e < tup->elements().size(); ++e) elems.emplace_back(take());
      stack.emplace_back(c10::ivalue::Tuple::create(std::move(elems)));
    } else {
      throw std::invalid_argument(fmt::format("original of {}: it takes {} ({}), which a patch cannot pass on", call.path,
                                              args[i].name(), t->annotation_str()));
    }
  }
  if (next != inputs.size())
    throw std::invalid_argument(fmt::format("original of {}: {} tensor inputs where it takes {}", call.path,
                                            inputs.size(), next));
  ++inert;
  struct Reset {
    ~Reset() { --inert; }
  } reset;
  c10::IValue out = method(std::move(stack));
  std::vector<at::Tensor> outs;
  if (out.isTensor()) outs.push_back(out.toTensor());
  else if (out.isTuple())
    for (const auto& e : out.toTuple()->elements())
      if (e.isTensor()) outs.push_back(e.toTensor());
  return outs;
}

}  // namespace parity
