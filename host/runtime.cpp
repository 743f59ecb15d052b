// host/runtime.cpp — torch threads and version string.
#include "host/runtime.hpp"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <fmt/format.h>
#include <torch/csrc/api/include/torch/version.h>

#include <malloc.h>

#include <cstdlib>
#include <thread>

namespace parity {

void init_runtime() {
  // Keep freed blocks for reuse instead of unmapping them: metric temporaries of a few MB are
  // otherwise re-faulted page by page on every call (measured: 2/3 of a KL's time in page faults).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  int n = static_cast<int>(std::thread::hardware_concurrency());
  if (const char* env = std::getenv("PARITY_THREADS")) n = std::atoi(env);
  if (n > 0) at::set_num_threads(n);
  c10::GradMode::set_enabled(false);  // parity only runs forward passes
}

std::string version_string() {
  return fmt::format("parity {} (LibTorch {}.{}.{}, {} threads)", PARITY_VERSION,
                     TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH,
                     at::get_num_threads());
}

}  // namespace parity
