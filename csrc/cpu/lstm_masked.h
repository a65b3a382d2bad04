// The masked LSTM layer on the CPU (csrc/cpu/lstm_masked.cpp): lstm_layer with per-entry `lengths`.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace rnnext::cpu {

struct MaskedLayerShape {
  int64_t T, B, I, H, P;
  bool batch_first, reverse;
};

// Checks `lengths` for a padded (T, B, I) input ((B, T, I) with batch_first): 1-D int64 of B entries on the
// input's device, and no batch_sizes or sorted_indices beside it.
void check_masked_lengths(const char* op, const at::Tensor& input, const at::Tensor& lengths, bool batch_first,
                          const std::optional<at::Tensor>& batch_sizes,
                          const std::optional<at::Tensor>& sorted_indices);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_masked_forward(
    const MaskedLayerShape& s, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr, const at::Tensor& lengths,
    bool train);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_masked_backward(const MaskedLayerShape& s, const at::Tensor& grad_output, const at::Tensor& grad_hy,
                           const at::Tensor& grad_cy, const at::Tensor& input, const at::Tensor& hx,
                           const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                           const std::optional<at::Tensor>& w_hr, const at::Tensor& lengths,
                           const at::Tensor& output, const at::Tensor& gates, const at::Tensor& cells,
                           bool has_bias);

}  // namespace rnnext::cpu
