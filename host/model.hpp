// host/model.hpp — a loaded TorchScript module: its tree, its tensors, its methods.
// TorchScript headers stay in model.cpp; this header is cheap to include.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "host/value.hpp"

namespace torch::jit {
struct Module;
}

namespace parity {

struct TapState;  // host/taps.hpp: a model's taps and patches, shared with its children

/// One submodule: dotted path from the root ("" for the root), demangled class name, the
/// number of parameter elements it owns directly and with its children, and its depth.
struct ModuleInfo {
  std::string path;
  std::string type;
  int64_t own_params = 0;
  int64_t total_params = 0;
  int depth = 0;
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

/// What this process has run, by kind: whole-model forwards (a loaded model called, or run
/// tapped), component runs (a submodule called on its own) and model loads. A call from inside
/// a forward (a patch's, the original it calls) is part of that forward, not counted again.
struct ForwardCounts {
  int64_t whole = 0;
  int64_t component = 0;
  int64_t loads = 0;
};
/// This process's counts; host code that runs or loads a model counts here (Model, Program).
ForwardCounts& forward_counts();

class Model {
 public:
  /// Loads a TorchScript file, its tensors onto `device` ("cpu" when none). Throws
  /// std::runtime_error naming the file when it is missing or is not a TorchScript archive.
  static Model load(const std::string& path, std::optional<c10::Device> device = std::nullopt);

  /// The submodule at a dotted path ("model.layers.0.mlp"); throws naming the missing part.
  Model child(const std::string& path) const;

  /// Every submodule, root first, in the order `forward` first calls them (modules never called
  /// follow in definition order). Parents always come before their children.
  std::vector<ModuleInfo> modules() const;

  NamedTensors parameters() const;  ///< recursive, dotted names
  NamedTensors buffers() const;     ///< recursive, dotted names
  std::vector<std::string> method_names() const;
  std::string type_name() const;  ///< demangled class name ("LlamaRMSNorm")

  /// Calls a method ("forward" by default) with Lua-shaped arguments bound against its schema.
  /// A model off the CPU gets its tensor arguments moved to its device and gives its results
  /// back on the CPU, where Lua and the metrics work. With patches (host/taps.hpp), they apply.
  Value call(const std::string& method, const std::vector<Value>& args) const;
  /// Model::call as the graphs say, whatever its patches (what a tapped run calls); with
  /// `to_cpu` false the results stay on the model's device (a call inside a patch).
  Value call_plain(const std::string& method, const std::vector<Value>& args, bool to_cpu = true) const;

  /// The method's schema: {name, arguments = {{name, type, default?}...}, returns = {{type}}}.
  Value schema(const std::string& method) const;

  void to(c10::ScalarType dtype);  ///< casts parameters/buffers (scripted modules; traces bake dtypes)
  void to(c10::Device device);     ///< moves parameters/buffers
  /// Where its tensors are: its first parameter's (else first buffer's) device; cpu without any.
  c10::Device device() const;
  void set_training(bool on);

  /// The TorchScript module itself, for host code that works on graphs (host/taps.cpp).
  torch::jit::Module& jit() const { return *m_; }
  /// Its taps and patches (host/taps.hpp), the same object for a model and its children.
  TapState& taps() const { return *taps_; }
  /// A loaded model (not one of its submodules).
  bool is_root() const { return root_; }
  /// Counts a forward of it in forward_counts() (Model::call and run_tapped do).
  void count_forward() const;

 private:
  Model(std::shared_ptr<torch::jit::Module> m, std::shared_ptr<TapState> taps, bool root);
  std::shared_ptr<torch::jit::Module> m_;
  std::shared_ptr<TapState> taps_;
  bool root_ = false;
};

/// Reads a TorchScript archive's ZIP central directory (NOTE [ Archive sizes ] in model.cpp)
/// and throws std::runtime_error "PATH: reason" when loading it could exhaust memory: the
/// entries' declared sizes add up to more than `available` bytes (0: MemAvailable), or an entry
/// is compressed past 64 MiB or past a ratio of 1000. A malformed directory is an error too, and
/// so is a torch.save pickle (a state dict: "PATH: a torch.save pickle ..., not a TorchScript
/// model: export ..."); any other file without a ZIP end record is left to torch. Model::load
/// runs it first.
void check_torchscript_archive(const std::string& path, uint64_t available = 0);

/// Loads a shared library of custom operators (e.g. torch-neuronx's) into the process.
void load_library(const std::string& path);

/// "__torch__.pkg.___torch_mangle_3.LlamaRMSNorm" -> "LlamaRMSNorm".
std::string demangle_type(const std::string& qualified);

}  // namespace parity
