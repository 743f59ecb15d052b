// host/tensor_format.cpp — tensor rendering for humans.
#include "host/tensor_format.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "host/dtype.hpp"

namespace parity {
namespace {

constexpr int64_t kMaxShown = 64;

void values(const at::Tensor& t, std::string& out) {
  if (t.dim() == 0) {
    if (t.scalar_type() == at::kBool) out += t.item<bool>() ? "true" : "false";
    else if (t.is_floating_point()) out += fmt::format("{:.6g}", t.item<double>());
    else if (t.is_complex()) out += fmt::format("{}", t.item<c10::complex<double>>().real());
    else out += std::to_string(t.item<int64_t>());
    return;
  }
  out += '[';
  for (int64_t i = 0; i < t.size(0); ++i) {
    if (i) out += ", ";
    values(t[i], out);
  }
  out += ']';
}

}  // namespace

std::string format_tensor(const at::Tensor& t) {
  if (!t.defined()) return "tensor(undefined)";
  std::string tail = fmt::format("dtype={}", dtype_name(t.scalar_type()));
  if (!t.device().is_cpu()) tail += fmt::format(", device={}", t.device().str());
  if (t.numel() <= kMaxShown) {
    std::string v;
    values(t.detach().cpu(), v);
    if (t.numel() == 0) tail = fmt::format("shape=[{}], ", fmt::join(t.sizes(), ", ")) + tail;
    return fmt::format("tensor({}, {})", v, tail);
  }
  std::string stats;
  if (t.is_floating_point()) {
    auto d = t.detach().to(at::kCPU, at::kDouble);
    stats = fmt::format(", min={:.6g}, max={:.6g}, mean={:.6g}", d.min().item<double>(),
                        d.max().item<double>(), d.mean().item<double>());
  }
  return fmt::format("tensor(shape=[{}], {}{})", fmt::join(t.sizes(), ", "), tail, stats);
}

}  // namespace parity
