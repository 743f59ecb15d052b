// host/program.cpp — .pt2 packages through AOTInductor's package loader, where the LibTorch has it.
#include "host/program.hpp"

#include <fmt/format.h>
#include <torch/version.h>

#include <algorithm>
#include <filesystem>
#include <stdexcept>

#if __has_include(<torch/csrc/inductor/aoti_package/model_package_loader.h>)
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#define PARITY_HAVE_AOTI 1
#else
#define PARITY_HAVE_AOTI 0
#endif

namespace parity {

bool Program::supported() { return PARITY_HAVE_AOTI != 0; }

std::string Program::why_not() {
  return fmt::format(
      "this parity is built against LibTorch {}, which has no AOTInductor package loader; a parity built against a "
      "pip torch 2.x with that loader reads them (tested: torch 2.15; make test-modern builds one: docs/build.md)",
      TORCH_VERSION);
}

#if PARITY_HAVE_AOTI

struct Program::Impl {
  std::string path;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
};

Program Program::load(const std::string& path, std::optional<c10::Device> device) {
  if (!std::filesystem::exists(path)) throw std::runtime_error(fmt::format("{}: no such file", path));
  check_torchscript_archive(path);  // a .pt2 is a ZIP archive too (NOTE [ Archive sizes ] in model.cpp)
  auto impl = std::make_shared<Impl>();
  impl->path = path;
  c10::DeviceIndex index = device && device->is_cuda() ? device->index() : -1;
  try {
    impl->loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", false, 1, index);
  } catch (const std::exception& e) {
    std::string why = e.what();
    throw std::runtime_error(fmt::format("{}: not a loadable AOTInductor package ({})", path,
                                         why.substr(0, why.find('\n'))));
  }
  ++forward_counts().loads;
  return Program(std::move(impl));
}

std::map<std::string, std::string> Program::metadata() const {
  auto m = impl_->loader->get_metadata();
  return {m.begin(), m.end()};
}

NamedTensors Program::constants() const {
  auto* runner = impl_->loader->get_runner();
  auto names = runner->getConstantNamesToOriginalFQNs();  // internal name -> name in the exported module
  NamedTensors out;
  for (auto& [name, tensor] : runner->extract_constants_map(false)) {
    auto fqn = names.find(name);
    out.emplace_back(fqn == names.end() ? name : fqn->second, tensor);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

std::vector<at::Tensor> Program::run(const std::vector<at::Tensor>& inputs) const {
  std::vector<at::Tensor> out;
  ++forward_counts().whole;  // a program runs whole
  try {
    out = impl_->loader->run(inputs);
  } catch (const c10::Error& e) {
    std::string why = e.what_without_backtrace();
    throw std::runtime_error(fmt::format("{}: {}", impl_->path, why.substr(0, why.find('\n'))));
  }
  for (auto& t : out) t = t.cpu();
  return out;
}

#else  // a LibTorch without AOTInductor's loader (Debian's 1.13): every call says which build reads it

struct Program::Impl {
  std::string path;
};

Program Program::load(const std::string& path, std::optional<c10::Device>) {
  throw std::runtime_error(fmt::format("{}: a torch.export program (.pt2); {}", path, why_not()));
}
std::map<std::string, std::string> Program::metadata() const { return {}; }
NamedTensors Program::constants() const { return {}; }
std::vector<at::Tensor> Program::run(const std::vector<at::Tensor>&) const { return {}; }

#endif

const std::string& Program::path() const { return impl_->path; }

}  // namespace parity
