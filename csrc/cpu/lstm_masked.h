// The masked LSTM layer on the CPU (csrc/cpu/lstm_masked.cpp): lstm_layer with per-entry `lengths`.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "common/layer_schedule.h"

namespace rnnext::cpu {

struct MaskedLayerShape {
  int64_t T, B, I, H, P;
  bool batch_first, reverse;
};

using common::check_masked_lengths;

// The buffers of a masked forward, on the input's device (the CPU and CUDA kernels share them): the output
// (zeros), the state (copies of hx and cx, updated per step), the gate workspace ((T B, 4H) when training, else
// one step's (B, 4H)), the cells ((T B, H) or empty), every input row's projection x W_ih^T (in the input's row
// order) and the summed bias (or undefined).
struct MaskedForwardBuffers {
  at::Tensor output, h_state, c_state, gates, cells, xproj, bias;
};
MaskedForwardBuffers masked_forward_buffers(const MaskedLayerShape& s, const at::Tensor& input, const at::Tensor& hx,
                                            const at::Tensor& cx, const at::Tensor& w_ih,
                                            const std::optional<at::Tensor>& b_ih,
                                            const std::optional<at::Tensor>& b_hh, bool train);

// The buffers of a masked backward: the state gradients (from grad_hy, grad_cy; carried per step), the gate
// gradients (T B, 4H), the h each step read (T B, P), with a projection the gradient reaching the projected h
// (T B, P); all rows time-major, zero until a step writes them.
struct MaskedBackwardBuffers {
  at::Tensor dh_state, dc_state, dgates, h_prev, dh_proj;
};
MaskedBackwardBuffers masked_backward_buffers(const MaskedLayerShape& s, const at::Tensor& grad_hy,
                                              const at::Tensor& grad_cy, bool projected);

// After the step loop: the input and weight gradients as GEMMs over all (t, b) rows. Returns lstm_layer_backward's
// (grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias or [0], grad_w_hr or [0]).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_backward_gradients(
    const MaskedLayerShape& s, const MaskedBackwardBuffers& bb, const at::Tensor& input, const at::Tensor& w_ih,
    const at::Tensor& gates, const at::Tensor& cells, bool has_bias);

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
