// host/taps.hpp — forward hooks for TorchScript: a host operator, parity::tap, spliced into the
// forward graphs of chosen submodules so that every tensor they take and return passes through
// it. One mechanism, three uses so far: capture (record each call's inputs and outputs), inject
// (replace a call's inputs, e.g. with the reference's, to measure what a component adds itself)
// and last position (give a module only the last position of its input: an LM head during
// greedy decoding, which needs the next token's logits only).
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
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

/// Splices taps into the forward graphs of `paths` (dotted, "" is the root). The model must be
/// freshly loaded and not yet run: a run inlines the graphs as they are. Throws when a path is
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
/// device: Model::call).
Value run_tapped(const Model& model, const std::vector<Value>& args, const TapRequest& request, TapCalls* calls);

}  // namespace parity
