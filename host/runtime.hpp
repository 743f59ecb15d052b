// host/runtime.hpp — process-wide set-up of LibTorch (threads) and version facts.
#pragma once
#include <string>

namespace parity {

/// Sets torch's intra-op threads to PARITY_THREADS, else the number of cores (torch's default
/// here is 1), turns autograd off and makes malloc keep freed blocks of up to 32 MB for reuse. Call once at start-up, on the main thread.
void init_runtime();

/// An integer environment variable: `fallback` when unset or empty, else a whole number in
/// lo..hi; anything else throws std::runtime_error naming the variable and what it held.
long long env_integer(const char* name, long long fallback, long long lo, long long hi);

/// "parity 0.1.0 (LibTorch 1.13.1, 2 threads)".
std::string version_string();

}  // namespace parity
