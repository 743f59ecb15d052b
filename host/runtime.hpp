// host/runtime.hpp — process-wide set-up of LibTorch (threads), version and device facts.
#pragma once
#include <c10/core/Device.h>

#include <string>

namespace parity {

/// Sets torch's intra-op threads to PARITY_THREADS, else the number of cores (torch's default
/// here is 1), turns autograd off, makes malloc keep freed blocks of up to 32 MB for reuse and
/// sets the TorchScript executor (PARITY_EXECUTOR, default "off"). Call once at start-up, on
/// the main thread.
void init_runtime();

/// TorchScript's graph executor: "off" (graphs run as traced: no profiling runs and no
/// optimisation passes, what suits parity's few forwards a model), "legacy" (optimised once)
/// or "profiling" (torch's default: two profiling runs, then optimised). Throws on another name.
void set_executor(const std::string& mode);

/// An integer environment variable: `fallback` when unset or empty, else a whole number in
/// lo..hi; anything else throws std::runtime_error naming the variable and what it held.
long long env_integer(const char* name, long long fallback, long long lo, long long hi);

/// "parity 0.1.0 (LibTorch 1.13.1, 2 threads, 0 CUDA devices)".
std::string version_string();

/// A device models can run on here: "cpu", or "cuda[:N]" with that GPU present. Throws
/// std::invalid_argument saying why not (no GPU, a LibTorch built without CUDA, no such index).
c10::Device usable_device(const std::string& name);

}  // namespace parity
