// CPU kernels of the fused LSTM cell (one step: both GEMMs and the pointwise step) and its backward.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/bias.h"
#include "cpu/checks.h"
#include "cpu/pointwise.h"

namespace rnnext::cpu {
namespace {

using at::Tensor;

// Below this much work, threads cost more than they give.
constexpr int64_t kParallelStepWork = 1 << 15;

int64_t grain_for(int64_t items, int64_t work) { return work < kParallelStepWork ? items : 1; }

// ---------------------------------------------------------------------------------------------------------
// LSTM cell: gates = input W_ih^T + b_ih + hx W_hh^T + b_hh, then the pointwise step, in standard gate layout.

void check_cell_args(const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                     const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  const char* op = "rnnext::lstm_cell";
  check_float_cpu(op, "input", input);
  check_same(op, "input", input, "hx", hx);
  check_same(op, "input", input, "cx", cx);
  check_same(op, "input", input, "w_ih", w_ih);
  check_same(op, "input", input, "w_hh", w_hh);
  check_dim(op, "input", input, 2, "(batch, input_size)");
  check_dim(op, "w_ih", w_ih, 2, "(4 * hidden_size, input_size)");
  check_dim(op, "w_hh", w_hh, 2, "(4 * hidden_size, hidden_size)");
  const int64_t B = input.size(0), I = input.size(1), G = w_ih.size(0);
  TORCH_CHECK(G % 4 == 0, op, ": expected w_ih.size(0) to be 4 * hidden_size, got ", G);
  const int64_t H = G / 4;
  check_shape(op, "w_ih", w_ih, {G, I});
  check_shape(op, "w_hh", w_hh, {G, H});
  check_shape(op, "hx", hx, {B, H});
  check_shape(op, "cx", cx, {B, H});
  if (b_ih.has_value()) {
    check_same(op, "input", input, "b_ih", *b_ih);
    check_shape(op, "b_ih", *b_ih, {G});
  }
  if (b_hh.has_value()) {
    check_same(op, "input", input, "b_hh", *b_hh);
    check_shape(op, "b_hh", *b_hh, {G});
  }
}

std::tuple<Tensor, Tensor, Tensor> lstm_cell_cpu(const Tensor& input, const Tensor& hx, const Tensor& cx,
                                                 const Tensor& w_ih, const Tensor& w_hh,
                                                 const std::optional<Tensor>& b_ih,
                                                 const std::optional<Tensor>& b_hh) {
  check_cell_args(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  const int64_t B = input.size(0), H = w_hh.size(1), I = input.size(1), G = 4 * H;
  // The two GEMMs through ATen's mm (BLAS), as torch.nn.LSTMCell runs them: the JIT micro-kernels of the layer
  // would compile and keep one kernel per batch size, and a server with dynamic batching sees thousands.
  // (Contiguous operands: the same values give the same bits whatever their layout.)
  Tensor gates = at::mm(input.contiguous(), w_ih.contiguous().t());
  gates.addmm_(hx.contiguous(), w_hh.contiguous().t());
  const Tensor bias = sum_biases(b_ih, b_hh).value_or(Tensor());
  Tensor cxc = cx.contiguous();
  Tensor hy = at::empty({B, H}, input.options());
  Tensor cy = at::empty({B, H}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_cell", [&] {
    scalar_t* g = gates.data_ptr<scalar_t>();
    const scalar_t* bi = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* c0 = cxc.const_data_ptr<scalar_t>();
    scalar_t* h1 = hy.data_ptr<scalar_t>();
    scalar_t* c1 = cy.data_ptr<scalar_t>();
    const GateLayout layout{H, false};
    at::parallel_for(0, B, grain_for(B, B * H * 16), [&](int64_t b0, int64_t b1) {
      lstm_forward_tile<scalar_t>(layout, b1 - b0, 0, 1, g + b0 * G, G, bi, c0 + b0 * H, c1 + b0 * H, nullptr,
                                  h1 + b0 * H, H, nullptr, 0);
    });
  });
  return {hy, cy, gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cell_backward_cpu(
    const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx, const Tensor& cx,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& gates, const Tensor& cy, bool has_bias) {
  const char* op = "rnnext::lstm_cell_backward";
  check_cell_args(input, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt);
  const int64_t B = input.size(0), H = w_hh.size(1);
  check_same(op, "input", input, "grad_hy", grad_hy);
  check_same(op, "input", input, "grad_cy", grad_cy);
  check_same(op, "input", input, "gates", gates);
  check_same(op, "input", input, "cy", cy);
  check_shape(op, "grad_hy", grad_hy, {B, H});
  check_shape(op, "grad_cy", grad_cy, {B, H});
  check_shape(op, "gates", gates, {B, 4 * H});
  check_shape(op, "cy", cy, {B, H});
  Tensor acts = gates.contiguous(), c1 = cy.contiguous(), c0 = cx.contiguous();
  Tensor dh = grad_hy.contiguous();
  Tensor dc = grad_cy.contiguous().clone();
  Tensor dgates = at::empty({B, 4 * H}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_cell_backward", [&] {
    const scalar_t* a = acts.const_data_ptr<scalar_t>();
    const scalar_t* cc = c1.const_data_ptr<scalar_t>();
    const scalar_t* cp = c0.const_data_ptr<scalar_t>();
    const scalar_t* dhp = dh.const_data_ptr<scalar_t>();
    scalar_t* dcp = dc.data_ptr<scalar_t>();
    scalar_t* dg = dgates.data_ptr<scalar_t>();
    const GateLayout layout{H, false};
    at::parallel_for(0, B, grain_for(B, B * H * 16), [&](int64_t b0, int64_t b1) {
      lstm_backward_tile<scalar_t>(layout, b1 - b0, 0, 1, a + b0 * 4 * H, 4 * H, cc + b0 * H, cp + b0 * H, b1 - b0,
                                   nullptr, dhp + b0 * H, nullptr, H, 0, dcp + b0 * H, dg + b0 * 4 * H);
    });
  });
  // The GEMMs through ATen's mm, as in the forward (shapes that depend on the batch size stay out of the JIT
  // kernel cache).
  Tensor grad_input = at::mm(dgates, w_ih.contiguous());
  Tensor grad_hx = at::mm(dgates, w_hh.contiguous());
  Tensor grad_w_ih = at::mm(dgates.t(), input.contiguous());
  Tensor grad_w_hh = at::mm(dgates.t(), hx.contiguous());
  Tensor grad_bias = has_bias ? at::sum(dgates, {0}) : at::empty({0}, input.options());
  return {grad_input, grad_hx, dc, grad_w_ih, grad_w_hh, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CPU, m) {
  m.impl("lstm_cell", &lstm_cell_cpu);
  m.impl("lstm_cell_backward", &lstm_cell_backward_cpu);
}

}  // namespace rnnext::cpu
