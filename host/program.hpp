// host/program.hpp — a torch.export program compiled ahead of time by AOTInductor: a .pt2
// package (torch._inductor.aoti_compile_and_package), run whole. TorchScript's successor in C++.
// PyPI's LibTorch has AOTInductor's package loader but not torch::nativert (its ModelRunner is a
// stub outside Meta's own builds), so this is how a LibTorch 2.x build reads .pt2 packages; a
// build against a LibTorch without the loader (Debian's 1.13) refuses them with one line.
// Torch headers stay in program.cpp; this header is cheap to include.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "host/model.hpp"

namespace parity {

class Program {
 public:
  /// Loads a .pt2 package onto `device` (cpu when none; a package compiled for the CPU runs
  /// there only). Throws std::runtime_error naming the file when it is missing, when its ZIP
  /// directory could exhaust memory (check_torchscript_archive), when it is not an AOTInductor
  /// package, or when this build cannot read one (Program::supported()).
  /// A package holds compiled native code, which loading runs: load only packages you trust.
  static Program load(const std::string& path, std::optional<c10::Device> device = std::nullopt);

  /// Whether this build reads .pt2 packages; `why_not` says which build does when it does not.
  static bool supported();
  static std::string why_not();

  /// The package's metadata (string -> string; what aot_inductor.metadata gave at compile time).
  std::map<std::string, std::string> metadata() const;
  /// Its constants (parameters, buffers, lifted tensors) by their names in the exported module.
  NamedTensors constants() const;
  /// Runs the program on flat tensor inputs; its flat outputs, on the CPU.
  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) const;
  const std::string& path() const;

 private:
  struct Impl;
  explicit Program(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace parity
