// tests/cpp/custom_op.cpp — a real custom-operator library, for parity.load_library tests
// (the way a torch-neuronx model brings its own ops). Defines parity_test::scale(x, s) = x * s.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace {
at::Tensor scale(const at::Tensor& x, double s) { return at::mul(x, s); }
}  // namespace

TORCH_LIBRARY(parity_test, m) { m.def("scale(Tensor x, float s) -> Tensor", scale); }
