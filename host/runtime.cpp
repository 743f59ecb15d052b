// host/runtime.cpp — torch threads, the version string, the devices there are.
#include "host/runtime.hpp"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <fmt/format.h>
#include <torch/csrc/api/include/torch/cuda.h>
#include <torch/csrc/api/include/torch/version.h>
#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <malloc.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#include "host/dtype.hpp"

namespace parity {

long long env_integer(const char* name, long long fallback, long long lo, long long hi) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(text, &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi)
    throw std::runtime_error(fmt::format("{} must be a whole number in {}..{}, got '{}'", name, lo, hi, text));
  return v;
}

void init_runtime() {
  // Keep freed blocks for reuse instead of unmapping them: metric temporaries of a few MB are
  // otherwise re-faulted page by page on every call (measured: 2/3 of a KL's time in page faults).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  long long cores = std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(static_cast<int>(env_integer("PARITY_THREADS", cores, 1, 4096)));
  c10::GradMode::set_enabled(false);  // parity only runs forward passes
  const char* executor = std::getenv("PARITY_EXECUTOR");
  set_executor(executor && *executor ? executor : "off");  // empty is unset, like the other variables
}

void set_executor(const std::string& mode) {
  if (mode == "profiling") {  // torch's default: profile twice, then optimise for what it saw
    torch::jit::getExecutorMode() = true, torch::jit::getProfilingMode() = true;
    torch::jit::setGraphExecutorOptimize(true);
  } else if (mode == "legacy") {  // optimise once, without profiling runs
    torch::jit::getExecutorMode() = true, torch::jit::getProfilingMode() = false;
    torch::jit::setGraphExecutorOptimize(true);
  } else if (mode == "off") {  // run the graphs as traced: no optimisation passes
    torch::jit::setGraphExecutorOptimize(false);
  } else {
    throw std::runtime_error(fmt::format("PARITY_EXECUTOR must be off, legacy or profiling, got '{}'", mode));
  }
}

std::string version_string() {
  auto gpus = torch::cuda::device_count();
  return fmt::format("parity {} (LibTorch {}.{}.{}, {} threads, {} CUDA device{})", PARITY_VERSION,
                     TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH,
                     at::get_num_threads(), gpus, gpus == 1 ? "" : "s");
}

c10::Device usable_device(const std::string& name) {
  auto d = parse_device(name);
  if (d.is_cpu()) return d;
  if (!d.is_cuda())
    throw std::invalid_argument(fmt::format("device '{}': models run on \"cpu\" or \"cuda[:N]\"", name));
  auto n = static_cast<int64_t>(torch::cuda::device_count());
  if (n == 0)
    throw std::invalid_argument(fmt::format(
        "device '{}': no CUDA device here ({}); run on a machine with a GPU, with parity built against a"
        " CUDA LibTorch (docs/build.md)", name,
        at::hasCUDA() ? "this LibTorch has CUDA but sees no GPU"
                      : fmt::format("LibTorch {}.{}.{} is built without CUDA", TORCH_VERSION_MAJOR,
                                    TORCH_VERSION_MINOR, TORCH_VERSION_PATCH)));
  if (d.has_index() && d.index() >= n)
    throw std::invalid_argument(fmt::format("device '{}': {} CUDA device{} here (cuda:0 to cuda:{})", name, n,
                                            n == 1 ? "" : "s", n - 1));
  return d;
}

}  // namespace parity
