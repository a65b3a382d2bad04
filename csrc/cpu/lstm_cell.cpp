// CPU kernels of the fused LSTM cell (one step: both GEMMs and the pointwise step) and its backward.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "cpu/bf16.h"
#include "cpu/bias.h"
#include "cpu/checks.h"
#include "cpu/gemm.h"
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
  if (bf16::active(input)) {
    const char* op = "rnnext::lstm_cell";
    auto [hy, cy, gates] = lstm_cell_cpu(bf16::up(op, "input", input), bf16::up(op, "hx", hx), bf16::up(op, "cx", cx),
                                         bf16::up(op, "w_ih", w_ih), bf16::up(op, "w_hh", w_hh),
                                         bf16::up(op, "b_ih", b_ih), bf16::up(op, "b_hh", b_hh));
    return {bf16::down(hy), bf16::down(cy), gates};
  }
  check_cell_args(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  const int64_t B = input.size(0), H = w_hh.size(1), I = input.size(1), G = 4 * H;
  // gates = x W_ih^T + h W_hh^T on the weights as they are: matrix-vector products for a few rows, else the
  // panels of cpu/gemm.h (the bias is added in the pointwise step).
  const auto opts = input.options();
  const Tensor x = input.contiguous(), h = hx.contiguous(), wi = w_ih.contiguous(), wh = w_hh.contiguous();
  const Tensor bias = sum_biases(b_ih, b_hh).value_or(Tensor());
  Tensor gates = at::empty({B, G}, opts);
  if (input.scalar_type() == at::kFloat && B <= kGemvMaxRows) {
    // A few rows: matrix-vector products over the weights as they are (no panels of padded columns).
    gemv_rows(B, G, I, x.const_data_ptr<float>(), I, wi.const_data_ptr<float>(), I, nullptr,
              gates.data_ptr<float>(), G);
    gemv_rows(B, G, H, h.const_data_ptr<float>(), H, wh.const_data_ptr<float>(), H, nullptr,
              gates.data_ptr<float>(), G, /*accumulate=*/true);
  } else if (input.scalar_type() != at::kFloat) {
    // float64: ATen's threaded GEMMs (the JIT kernels are float only).
    at::mm_out(gates, x, wi.t());
    gates.addmm_(h, wh.t());
  } else {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_cell_gemms", [&] {
      linear_panels<scalar_t>(B, G,
                              {{x.const_data_ptr<scalar_t>(), I, I, wi.const_data_ptr<scalar_t>()},
                               {h.const_data_ptr<scalar_t>(), H, H, wh.const_data_ptr<scalar_t>()}},
                              nullptr, gates.data_ptr<scalar_t>(), G);
    });
  }
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
  if (bf16::active(input)) {
    auto [gi, ghx, gcx, gwi, gwh, gb] = lstm_cell_backward_cpu(
        bf16::up(op, "grad_hy", grad_hy), bf16::up(op, "grad_cy", grad_cy), bf16::up(op, "input", input),
        bf16::up(op, "hx", hx), bf16::up(op, "cx", cx), bf16::up(op, "w_ih", w_ih), bf16::up(op, "w_hh", w_hh),
        bf16::workspace(op, "gates", gates), bf16::up(op, "cy", cy), has_bias);
    return {bf16::down(gi), bf16::down(ghx), bf16::down(gcx), bf16::down(gwi), bf16::down(gwh), bf16::down(gb)};
  }
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
  // dx, dh: rows of the batch (bounded row tiles); dW = dgates^T [x, h]: a sum over the batch, in K chunks of
  // bounded sizes (gemm_tn_parallel). No GEMM shape follows the batch size.
  const int64_t I = input.size(1), G = 4 * H;
  const Tensor x = input.contiguous(), h = hx.contiguous(), wi = w_ih.contiguous(), wh = w_hh.contiguous();
  Tensor grad_input = at::empty({B, I}, input.options());
  Tensor grad_hx = at::empty({B, H}, input.options());
  Tensor grad_w_ih = at::empty({G, I}, input.options());
  Tensor grad_w_hh = at::empty({G, H}, input.options());
  if (input.scalar_type() != at::kFloat) {  // float64: ATen's threaded GEMMs
    at::mm_out(grad_input, dgates, wi);
    at::mm_out(grad_hx, dgates, wh);
    at::mm_out(grad_w_ih, dgates.t(), x);
    at::mm_out(grad_w_hh, dgates.t(), h);
  } else {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_cell_backward_gemms", [&] {
      const scalar_t* dg = dgates.const_data_ptr<scalar_t>();
      gemm_batch_parallel<scalar_t>({
          {B, I, G, dg, G, wi.const_data_ptr<scalar_t>(), I, grad_input.data_ptr<scalar_t>(), I, false, false},
          {B, H, G, dg, G, wh.const_data_ptr<scalar_t>(), H, grad_hx.data_ptr<scalar_t>(), H, false, false},
      });
      gemm_tn_parallel<scalar_t>(G, I, B, dg, G, x.const_data_ptr<scalar_t>(), I, grad_w_ih.data_ptr<scalar_t>(), I);
      gemm_tn_parallel<scalar_t>(G, H, B, dg, G, h.const_data_ptr<scalar_t>(), H, grad_w_hh.data_ptr<scalar_t>(), H);
    });
  }
  Tensor grad_bias = has_bias ? at::sum(dgates, {0}) : at::empty({0}, input.options());
  return {grad_input, grad_hx, dc, grad_w_ih, grad_w_hh, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CPU, m) {
  m.impl("lstm_cell", &lstm_cell_cpu);
  m.impl("lstm_cell_backward", &lstm_cell_backward_cpu);
}

}  // namespace rnnext::cpu
