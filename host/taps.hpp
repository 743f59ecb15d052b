// host/taps.hpp — forward hooks for TorchScript: a host operator, parity::tap, spliced into the
// forward graphs of chosen submodules so that every tensor they take and return passes through
// it. One mechanism, three uses so far: capture (record each call's inputs and outputs), inject
// (replace a call's inputs, e.g. with the reference's, to measure what a component adds itself)
// and last position (give a module only the last position of its input: an LM head during
// greedy decoding, which needs the next token's logits only). And patches: a component's
// outputs computed by a callback from its inputs, inside the model's own forward.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "host/model.hpp"

namespace parity {

/// One call of a tapped submodule: its tensor inputs and outputs in order (tuples flattened).
struct TapCall {
  std::vector<at::Tensor> inputs, outputs;
};
using TapCalls = std::map<std::string, std::vector<TapCall>>;  ///< path -> calls, in call order

/// What a splice did for one path: how many tensors it taps, and what it could not tap.
struct TapSite {
  std::string path;
  int inputs = 0, outputs = 0;
  std::vector<std::string> untapped;  ///< "input 2 (int)", ... : values that are not tensors
  std::string refused;                ///< why the path has no taps (skip_shared), empty when it has
};

/// One call of a patched component, as its patch sees it.
struct PatchCall {
  std::string path;    ///< the component's dotted path from the root
  std::string method;  ///< the method that ran ("forward"; "forward1" for a traced module's second call site)
  int64_t call = 0;    ///< 0-based, per forward of the whole model
  std::vector<at::Tensor> inputs;  ///< its tensor inputs in order (tuples flattened)
  int outputs = 0;                 ///< how many tensor outputs the component returns
};
/// A patch: the component's tensor outputs for one call (tuples flattened), each of its
/// original's shape, dtype and device; the first k of them, the others then the component's own
/// (a traced HF RMSNorm returns (out, input): a patch returns out). It may throw; the error goes
/// to the model's caller.
using PatchFn = std::function<std::vector<at::Tensor>(const PatchCall&)>;
struct Patch {
  PatchFn fn;
  std::string origin;  ///< where it comes from (a patch file), the start of its error messages
};

/// A model's taps and patches, shared by the model and its children (Model::child), so that a
/// child run alone has its patches too.
struct TapState {
  std::string tag;                                   ///< install_taps's; "" without taps
  std::map<std::string, std::pair<int, int>> sites;  ///< tapped path -> (tensor inputs, tensor outputs)
  std::map<std::string, Patch> patches;              ///< patched path -> its patch
  bool ran = false;                                  ///< a method of the tree has run
  std::weak_ptr<torch::jit::Module> root;            ///< the tree's root, where the paths start
};

/// Splices taps into the forward graphs of `paths` (dotted, "" is the root). The model must be
/// freshly loaded and not yet run: a run inlines the graphs as they are (a path tapped already
/// is left as it is; a new one after a run is an error). Throws when a path is
/// missing, or when a path shares its module type with another module (a scripted model's
/// layers share their graph, so a tap could not tell them apart); with `skip_shared`, such a
/// path is left untapped instead and its site says why (`refused`).
std::vector<TapSite> install_taps(Model& model, const std::vector<std::string>& paths, bool skip_shared = false);

/// Replacements for inject: path -> call index (0-based) -> input index -> tensor.
using TapInjections = std::map<std::string, std::map<int64_t, std::map<int64_t, at::Tensor>>>;

/// What a tapped run does at its taps.
struct TapRequest {
  std::vector<std::string> capture;  ///< paths whose calls are recorded; empty: every tapped path
  TapInjections inject;              ///< input tensors replaced (cast to the tapped input's dtype and device)
  /// path -> which tensor input (0-based), [batch, seq, ...], is cut to its last position (seq 1)
  /// before the module sees it (and before it is captured)
  std::map<std::string, int64_t> last_position;
};

/// Runs the model's forward with its taps active, as `request` says. Returns the forward's
/// output; `calls` receives the records (on the CPU, as the output is, for a model on another
/// device: Model::call). Inside another model's tapped run (a patch running a reference's
/// model) it nests; inside its own it throws.
Value run_tapped(const Model& model, const std::vector<Value>& args, const TapRequest& request, TapCalls* calls);

/// Routes the calls of the component at `path` (tapped) to `patch`, in every run of the model
/// and its children from now on; a second patch of the path replaces the first. Throws when the
/// path has no taps, or no tensor inputs or outputs to patch. A patch's error, or outputs of
/// another count, shape, dtype or device, end the run with one message: "ORIGIN: patch of PATH
/// (call N): why" (the TorchScript traceback around it dropped).
void set_patch(Model& model, const std::string& path, PatchFn patch, std::string origin = "");
/// Removes the path's patch (the original outputs again, bit for bit); false when it had none.
bool remove_patch(Model& model, const std::string& path);
/// The patched paths, sorted.
std::vector<std::string> patched_paths(const Model& model);

/// The component of `call` computed as it is (its own patch, and every tap, inert) on other
/// tensor inputs: what a patch calls to wrap the original. Throws when the component takes
/// values other than tensors (which a patch cannot pass on).
std::vector<at::Tensor> call_original(const Model& model, const PatchCall& call, const std::vector<at::Tensor>& inputs);

/// Whether a tapped run is going on (a patch is running, or a tap's record): a model called now
/// is called from a patch.
bool in_tapped_run();

/// Model::call of a model with patches: a tapped run that captures nothing, or, inside a patch
/// or a tapped run already, a plain call (patches and taps inert there).
Value call_patched(const Model& model, const std::string& method, const std::vector<Value>& args);

/// `method` of `model` as the port computes it: no patch in it applies (every tap passes its value
/// on), on the model's device when called from inside a patch or a tapped run, else as Model::call.
Value call_unpatched(const Model& model, const std::string& method, const std::vector<Value>& args);

}  // namespace parity
