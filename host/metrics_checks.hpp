// host/metrics_checks.hpp — the argument checks the metrics share (metrics.cpp, logits_pass.cpp),
// so that each kind of bad input gets one message, "METRIC: ...", everywhere.
#pragma once
#include <ATen/core/Tensor.h>

namespace parity::metrics::checks {

/// Throws std::invalid_argument "METRIC: shapes differ: [a] vs [b]" unless a and b have one shape.
void same_shape(const char* metric, const at::Tensor& a, const at::Tensor& b);

/// Throws unless t has a non-empty last dim.
void has_last_dim(const char* metric, const at::Tensor& t);

/// The token ids that go with logits [.., V]: an integer tensor of the logits' shape without its
/// last dim, each in 0..V-1 (else std::invalid_argument), as a flat contiguous int64 CPU tensor.
at::Tensor token_ids(const char* metric, const at::Tensor& tokens, const at::Tensor& logits);

}  // namespace parity::metrics::checks
