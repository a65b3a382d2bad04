// CUDA kernels of the fused LSTM cell. GEMMs run through ATen (cuBLAS) on the current stream; the per-element
// math is the shared csrc/kernels/lstm.h, evaluated in float for half types. The LSTM layer is the engine's
// (common/rnn_engine.h, csrc/cuda/rnn_layer.cu).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/layer_schedule.h"
#include "cpu/bias.h"
#include "cpu/checks.h"
#include "cuda/common.cuh"
#include "cuda/lstm.cuh"

namespace rnnext::cuda {
namespace {

using at::Tensor;

// ---------------------------------------------------------------------------------------------------------
// Cell

std::tuple<Tensor, Tensor, Tensor> lstm_cell_cuda(const Tensor& input, const Tensor& hx, const Tensor& cx,
                                                  const Tensor& w_ih, const Tensor& w_hh,
                                                  const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  const char* op = "rnnext::lstm_cell";
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"hx", &hx}, {"cx", &cx}, {"w_ih", &w_ih},
                                {"w_hh", &w_hh}})
    check_cuda(op, name, *t, input);
  TORCH_CHECK(input.dim() == 2 && w_ih.dim() == 2 && w_hh.dim() == 2 && w_ih.size(0) % 4 == 0, op,
              ": expected input (batch, input_size), w_ih (4H, input_size), w_hh (4H, H)");
  const int64_t B = input.size(0), H = w_hh.size(1);
  TORCH_CHECK(w_ih.sizes() == at::IntArrayRef({4 * H, input.size(1)}) && w_hh.size(0) == 4 * H &&
                  hx.sizes() == at::IntArrayRef({B, H}) && cx.sizes() == at::IntArrayRef({B, H}),
              op, ": shapes disagree: input ", input.sizes(), ", hx ", hx.sizes(), ", cx ", cx.sizes(), ", w_ih ",
              w_ih.sizes(), ", w_hh ", w_hh.sizes());
  for (const auto& [name, b] : {std::pair<const char*, const std::optional<Tensor>*>{"b_ih", &b_ih}, {"b_hh", &b_hh}})
    if (b->has_value()) {
      check_cuda(op, name, **b, input);
      cpu::check_shape(op, name, **b, {4 * H});
    }
  const c10::cuda::CUDAGuard guard(input.device());
  Tensor gates = at::mm(input, w_ih.t());
  gates.addmm_(hx, w_hh.t());
  const Tensor bias = cpu::sum_biases(b_ih, b_hh).value_or(Tensor());
  Tensor cxc = cx.contiguous(), hy = at::empty({B, H}, input.options()), cy = at::empty({B, H}, input.options());
  if (B * H > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lstm_cell_cuda", [&] {
      lstm_forward_kernel<scalar_t><<<blocks_for(B * H), kThreads, 0, stream()>>>(
          B, H, gates.data_ptr<scalar_t>(), bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
          cxc.const_data_ptr<scalar_t>(), cy.data_ptr<scalar_t>(), nullptr, hy.data_ptr<scalar_t>(), H, nullptr,
          nullptr, 0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {hy, cy, gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cell_backward_cuda(
    const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx, const Tensor& cx,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& gates, const Tensor& cy, bool has_bias) {
  const char* op = "rnnext::lstm_cell_backward";
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_hy", &grad_hy}, {"grad_cy", &grad_cy},
                                {"hx", &hx}, {"cx", &cx}, {"gates", &gates}, {"cy", &cy}})
    check_cuda(op, name, *t, input);
  check_cuda(op, "w_ih", w_ih, input);
  check_cuda(op, "w_hh", w_hh, input);
  // The CPU kernel's checks, before any pointer is read.
  cpu::check_dim(op, "input", input, 2, "(batch, input_size)");
  cpu::check_dim(op, "w_hh", w_hh, 2, "(4 * hidden_size, hidden_size)");
  const int64_t B = input.size(0), H = w_hh.size(1);
  cpu::check_shape(op, "w_ih", w_ih, {4 * H, input.size(1)});
  cpu::check_shape(op, "w_hh", w_hh, {4 * H, H});
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_hy", &grad_hy}, {"grad_cy", &grad_cy},
                                {"hx", &hx}, {"cx", &cx}, {"cy", &cy}})
    cpu::check_shape(op, name, *t, {B, H});
  cpu::check_shape(op, "gates", gates, {B, 4 * H});
  const c10::cuda::CUDAGuard guard(input.device());
  Tensor acts = gates.contiguous(), c1 = cy.contiguous(), c0 = cx.contiguous(), dh = grad_hy.contiguous();
  Tensor dc = grad_cy.contiguous().clone();
  Tensor dgates = at::empty({B, 4 * H}, input.options());
  if (B * H > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lstm_cell_backward_cuda", [&] {
      lstm_backward_kernel<scalar_t><<<blocks_for(B * H), kThreads, 0, stream()>>>(
          B, H, acts.const_data_ptr<scalar_t>(), c1.const_data_ptr<scalar_t>(), c0.const_data_ptr<scalar_t>(), B,
          nullptr, dh.const_data_ptr<scalar_t>(), H, nullptr, nullptr, 0, dc.data_ptr<scalar_t>(),
          dgates.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  Tensor grad_bias = has_bias ? at::sum(dgates, {0}) : at::empty({0}, input.options());
  return {at::mm(dgates, w_ih), at::mm(dgates, w_hh), dc, at::mm(dgates.t(), input), at::mm(dgates.t(), hx),
          grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CUDA, m) {
  m.impl("lstm_cell", &lstm_cell_cuda);
  m.impl("lstm_cell_backward", &lstm_cell_backward_cuda);
}

}  // namespace rnnext::cuda
