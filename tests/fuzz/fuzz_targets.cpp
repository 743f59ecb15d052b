// tests/fuzz/fuzz_targets.cpp — libFuzzer targets for the tensor file readers: any bytes go
// through host/tensor_parse (header checks, then decoding of every tensor it accepted).
// Built twice, with PARITY_FUZZ_NPY defined or not. Errors are expected; crashes, sanitizer
// reports and leaks are what the fuzzer looks for.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "host/tensor_parse.hpp"

namespace {

void decode(const uint8_t* data, const parity::TensorSpan& span, bool big_endian) {
  std::vector<uint8_t> out(span.count * parity::held_size(span.type->held));
  parity::decode_span(data, span, big_endian, out.data(), "fuzz");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
#ifdef PARITY_FUZZ_NPY
    auto layout = parity::parse_npy(data, size, "fuzz.npy");
    decode(data, layout.tensor, layout.big_endian);
#else
    for (const auto& span : parity::parse_safetensors(data, size, "fuzz.safetensors").tensors)
      decode(data, span, false);
#endif
  } catch (const std::runtime_error&) {
    // a clean rejection
  }
  return 0;
}
