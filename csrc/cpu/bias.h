// The two optional biases of an LSTM (b_ih and b_hh) as one contiguous bias, for CPU and CUDA kernels alike.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>

#include <optional>

namespace rnnext::cpu {

inline std::optional<at::Tensor> sum_biases(const std::optional<at::Tensor>& a, const std::optional<at::Tensor>& b) {
  if (a.has_value() && b.has_value()) return at::add(*a, *b).contiguous();
  if (a.has_value()) return a->contiguous();
  if (b.has_value()) return b->contiguous();
  return std::nullopt;
}

}  // namespace rnnext::cpu
