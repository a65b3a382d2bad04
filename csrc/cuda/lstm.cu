// CUDA kernels of the fused LSTM cell and layer. GEMMs run through ATen (cuBLAS) on the current stream; the
// per-element math is the shared csrc/kernels/lstm.h, evaluated in float for half types. The layer keeps the
// CPU kernel's semantics (dense, packed and padded layouts; slots; reverse) with the standard gate layout.
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
#include "cpu/lstm_masked.h"
#include "cuda/common.cuh"
#include "cuda/lstm.cuh"

namespace rnnext::cuda {
namespace {

using at::Tensor;

Tensor view_rows(const Tensor& t, int64_t row0, int64_t n) { return t.narrow(0, row0, n); }

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

// ---------------------------------------------------------------------------------------------------------
// Layer

// The shared step schedule (common/layer_schedule.h) and the sizes the CUDA layer reads beside it.
struct Schedule : common::Steps {
  int64_t B = 0, N = 0, used = 0;  // batch, workspace rows, rows in use
  bool packed = false;
};

// The schedule and, on the device, the input/output row of every (step, slot): (T, B) int64 (only slots active
// at the step are used), and the batch entry of every slot.
struct LayerPlan {
  Schedule s;
  Tensor row_of;  // (T, B) device int64
  Tensor batch_of;  // (B) device int64
  int64_t P, H, I;
};

LayerPlan make_layer_plan(const char* op, const Tensor& input, const Tensor& hx, const Tensor& cx,
                          const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                          const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
                          const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices,
                          bool batch_first, bool reverse) {
  // The CPU kernel's checks and schedule (csrc/common/layer_schedule.h).
  const common::LayerShapes sh = common::check_layer_args(op, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                          batch_sizes, sorted_indices, batch_first,
                                                          common::Backend::kCUDA);
  const common::Steps st = common::make_steps(op, sh, batch_sizes, reverse);
  // A permutation read on the host (sorted_indices from host lengths already lives there).
  const std::optional<Tensor> si_host =
      sorted_indices.has_value() ? std::optional<Tensor>(sorted_indices->to(at::kCPU)) : std::nullopt;
  std::vector<int64_t> order = cpu::check_permutation(op, "sorted_indices", si_host, sh.B);
  const common::RowMap map{sh.layout, batch_first, sh.T, sh.B, order.empty() ? nullptr : order.data()};
  LayerPlan lp;
  Schedule& s = lp.s;
  static_cast<common::Steps&>(s) = st;
  s.B = sh.B;
  s.N = sh.N;
  s.packed = sh.layout == common::Layout::kPacked;
  s.used = s.T > 0 ? s.offset[s.T - 1] + s.rows[s.T - 1] : 0;
  lp.H = sh.H;
  lp.P = sh.P;
  lp.I = sh.I;
  std::vector<int64_t> rows(std::max<int64_t>(s.T * s.B, 1), 0);
  for (int64_t t = 0; t < s.T; ++t)
    for (int64_t j = 0; j < s.rows[t]; ++j) rows[t * s.B + j] = map.row_at_time(st, t, j);
  if (order.empty())
    for (int64_t j = 0; j < s.B; ++j) order.push_back(j);
  order.resize(std::max<int64_t>(s.B, 1), 0);
  lp.row_of = upload(rows, input.device());
  lp.batch_of = upload(order, input.device()).narrow(0, 0, s.B);
  return lp;
}

// ---------------------------------------------------------------------------------------------------------
// Masked layer: lengths on the device, every entry at every step (nothing read on the host, no sync).

// Masked mode's sizes, after the same checks as every other layout (the CPU's, csrc/common/layer_schedule.h).
cpu::MaskedLayerShape masked_shape(const char* op, const Tensor& input, const Tensor& hx, const Tensor& cx,
                                   const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                   const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
                                   const Tensor& lengths, const std::optional<Tensor>& batch_sizes,
                                   const std::optional<Tensor>& sorted_indices, bool batch_first, bool reverse) {
  cpu::check_masked_lengths(op, input, lengths, batch_first, batch_sizes, sorted_indices);
  const common::LayerShapes s = common::check_layer_args(op, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                         batch_sizes, sorted_indices, batch_first,
                                                         common::Backend::kCUDA);
  return {s.T, s.B, s.I, s.H, s.P, batch_first, reverse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_masked_cuda(
    const cpu::MaskedLayerShape& s, const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
    const std::optional<Tensor>& w_hr, const Tensor& lengths, bool train) {
  const int64_t T = s.T, B = s.B, H = s.H, P = s.P;
  cpu::MaskedForwardBuffers fb = cpu::masked_forward_buffers(s, input, hx, cx, w_ih, b_ih, b_hh, train);
  if (T > 0 && B > 0) {
    const Tensor len = lengths.contiguous();
    const bool proj = w_hr.has_value();
    Tensor hfull = proj ? at::empty({B, H}, input.options()) : Tensor();
    Tensor hproj = proj ? at::empty({B, P}, input.options()) : Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lstm_layer_masked_cuda", [&] {
      for (int64_t p = 0; p < T; ++p) {
        const int64_t t = s.reverse ? T - 1 - p : p;
        Tensor g = view_rows(fb.gates, train ? t * B : 0, B);
        at::mm_out(g, fb.h_state, w_hh.t());
        lstm_masked_forward_kernel<scalar_t><<<blocks_for(B * H), kThreads, 0, stream()>>>(
            B, H, P, T, t, s.batch_first, len.const_data_ptr<int64_t>(), g.data_ptr<scalar_t>(),
            fb.xproj.const_data_ptr<scalar_t>(), fb.bias.defined() ? fb.bias.const_data_ptr<scalar_t>() : nullptr,
            fb.c_state.data_ptr<scalar_t>(), train ? fb.cells.data_ptr<scalar_t>() + t * B * H : nullptr,
            proj ? hfull.data_ptr<scalar_t>() : fb.h_state.data_ptr<scalar_t>(), proj ? H : P,
            proj ? nullptr : fb.output.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (proj) {
          at::mm_out(hproj, hfull, w_hr->t());
          lstm_masked_projection_kernel<scalar_t><<<blocks_for(B * P), kThreads, 0, stream()>>>(
              B, P, T, t, s.batch_first, len.const_data_ptr<int64_t>(), hproj.const_data_ptr<scalar_t>(),
              fb.h_state.data_ptr<scalar_t>(), fb.output.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
    });
  }
  return {fb.output, fb.h_state, fb.c_state, train ? fb.gates : at::empty({0}, input.options()), fb.cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_masked_backward_cuda(
    const cpu::MaskedLayerShape& s, const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const Tensor& lengths, const Tensor& output, const Tensor& gates,
    const Tensor& cells, bool has_bias) {
  const int64_t T = s.T, B = s.B, H = s.H, P = s.P, G = 4 * H;
  const bool proj = w_hr.has_value();
  TORCH_CHECK(gates.sizes() == at::IntArrayRef({T * B, G}) && cells.sizes() == at::IntArrayRef({T * B, H}),
              "rnnext::lstm_layer_backward: expected the training workspace gates (", T * B, ", ", G, ") and cells (",
              T * B, ", ", H, ")");
  cpu::MaskedBackwardBuffers bb = cpu::masked_backward_buffers(s, grad_hy, grad_cy, proj);
  if (T > 0 && B > 0) {
    const Tensor len = lengths.contiguous();
    const Tensor dy = grad_output.contiguous(), y = output.contiguous(), acts = gates.contiguous();
    const Tensor cs = cells.contiguous(), c0 = cx.contiguous(), h0 = hx.contiguous();
    Tensor dh_full = proj ? at::empty({B, H}, input.options()) : Tensor();
    Tensor dh_rec = at::empty({B, P}, input.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lstm_layer_masked_backward_cuda",
                                    [&] {
      for (int64_t p = T - 1; p >= 0; --p) {
        const int64_t t = s.reverse ? T - 1 - p : p;
        const int64_t t_prev = p == 0 ? -1 : (s.reverse ? t + 1 : t - 1);  // the step processed before t
        if (proj) {
          lstm_masked_projection_grad_kernel<scalar_t><<<blocks_for(B * P), kThreads, 0, stream()>>>(
              B, P, T, t, s.batch_first, len.const_data_ptr<int64_t>(), bb.dh_state.const_data_ptr<scalar_t>(),
              dy.const_data_ptr<scalar_t>(), bb.dh_proj.data_ptr<scalar_t>() + t * B * P);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          at::mm_out(dh_full, view_rows(bb.dh_proj, t * B, B), *w_hr);
        }
        lstm_masked_backward_kernel<scalar_t><<<blocks_for(B * H), kThreads, 0, stream()>>>(
            B, H, P, T, t, t_prev, s.batch_first, len.const_data_ptr<int64_t>(), acts.const_data_ptr<scalar_t>(),
            cs.const_data_ptr<scalar_t>(), c0.const_data_ptr<scalar_t>(),
            proj ? dh_full.const_data_ptr<scalar_t>() : bb.dh_state.const_data_ptr<scalar_t>(), proj ? H : P,
            proj ? nullptr : dy.const_data_ptr<scalar_t>(), bb.dc_state.data_ptr<scalar_t>(),
            bb.dgates.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        at::mm_out(dh_rec, view_rows(bb.dgates, t * B, B), w_hh);
        lstm_masked_carry_kernel<scalar_t><<<blocks_for(B * P), kThreads, 0, stream()>>>(
            B, P, T, t, t_prev, s.batch_first, len.const_data_ptr<int64_t>(), dh_rec.const_data_ptr<scalar_t>(),
            bb.dh_state.data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), h0.const_data_ptr<scalar_t>(),
            bb.h_prev.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return cpu::masked_backward_gradients(s, bb, input, w_ih, gates, cells, has_bias);
}

// ---------------------------------------------------------------------------------------------------------
// Layer entry points

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_cuda(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices, bool batch_first,
    bool reverse, bool train, const std::optional<Tensor>& lengths) {
  const char* op = "rnnext::lstm_layer";
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"hx", &hx}, {"cx", &cx}, {"w_ih", &w_ih},
                                {"w_hh", &w_hh}})
    check_cuda(op, name, *t, input);
  const c10::cuda::CUDAGuard guard(input.device());
  if (lengths.has_value())
    return lstm_layer_masked_cuda(masked_shape(op, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, *lengths,
                                               batch_sizes, sorted_indices, batch_first, reverse),
                                  input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, *lengths, train);
  const LayerPlan lp = make_layer_plan(op, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, sorted_indices,
                                       batch_first, reverse);
  const Schedule& s = lp.s;
  const int64_t H = lp.H, P = lp.P, I = lp.I, B = s.B, G = 4 * H;
  const auto opts = input.options();
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = P;
  const bool padded = !s.packed && batch_sizes.has_value();
  Tensor output = padded ? at::zeros(out_shape, opts) : at::empty(out_shape, opts);
  Tensor gates = train ? at::zeros({s.N, G}, opts) : at::empty({B, G}, opts);
  Tensor cells = train ? at::zeros({s.N, H}, opts) : at::empty({0}, opts);
  Tensor hy = hx.contiguous().clone(), cy = cx.contiguous().clone();
  if (s.used > 0) {
    const Tensor x = input.reshape({-1, I});
    const Tensor bias = cpu::sum_biases(b_ih, b_hh).value_or(Tensor());
    const Tensor xproj = at::mm(x, w_ih.t());  // every input row's input projection
    Tensor h_state = hx.index_select(0, lp.batch_of).contiguous();  // slot order
    Tensor c_state = cx.index_select(0, lp.batch_of).contiguous();
    Tensor hfull = w_hr.has_value() ? at::empty({B, H}, opts) : Tensor();
    Tensor h_new = at::empty({B, P}, opts);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lstm_layer_cuda", [&] {
      for (int64_t p = 0; p < s.T; ++p) {
        const int64_t n = s.rows_at(p), t = s.time(p), off = s.offset_at(p);
        const int64_t* rows = lp.row_of.const_data_ptr<int64_t>() + t * B;
        Tensor g = train ? view_rows(gates, off, n) : view_rows(gates, 0, n);
        gather_rows_kernel<scalar_t><<<blocks_for(n * G), kThreads, 0, stream()>>>(
            n, G, xproj.const_data_ptr<scalar_t>(), rows, G, g.data_ptr<scalar_t>(), G);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        g.addmm_(view_rows(h_state, 0, n), w_hh.t());
        scalar_t* hdst = w_hr.has_value() ? hfull.data_ptr<scalar_t>() : h_new.data_ptr<scalar_t>();
        lstm_forward_kernel<scalar_t><<<blocks_for(n * H), kThreads, 0, stream()>>>(
            n, H, g.data_ptr<scalar_t>(), bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
            c_state.const_data_ptr<scalar_t>(), c_state.data_ptr<scalar_t>(),
            train ? cells.data_ptr<scalar_t>() + off * H : nullptr, hdst, H,
            w_hr.has_value() ? nullptr : output.data_ptr<scalar_t>(), rows, P);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (w_hr.has_value()) {
          at::mm_out(lvalue(view_rows(h_new, 0, n)), view_rows(hfull, 0, n), w_hr->t());
          scatter_rows_kernel<scalar_t><<<blocks_for(n * P), kThreads, 0, stream()>>>(
              n, P, h_new.const_data_ptr<scalar_t>(), P, rows, output.data_ptr<scalar_t>(), P);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        view_rows(h_state, 0, n).copy_(view_rows(h_new, 0, n));
        // Slots whose last step this is leave their final state.
        const int64_t n_next = s.rows_at(p + 1);
        if (n_next < n) {
          const Tensor finishing = view_rows(lp.batch_of, n_next, n - n_next);
          hy.index_copy_(0, finishing, view_rows(h_state, n_next, n - n_next));
          cy.index_copy_(0, finishing, view_rows(c_state, n_next, n - n_next));
        }
      }
    });
  }
  if (!train) gates = at::empty({0}, opts);
  return {output, hy, cy, gates, cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward_cuda(
    const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
    const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices, bool batch_first,
    const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse, bool has_bias,
    const std::optional<Tensor>& lengths) {
  const char* op = "rnnext::lstm_layer_backward";
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_output", &grad_output},
                                {"grad_hy", &grad_hy}, {"grad_cy", &grad_cy}, {"hx", &hx}, {"cx", &cx},
                                {"output", &output}, {"gates", &gates}, {"cells", &cells}})
    check_cuda(op, name, *t, input);
  const c10::cuda::CUDAGuard guard(input.device());
  // The CPU kernel's checks, every layout (csrc/common/layer_schedule.h).
  if (lengths.has_value()) cpu::check_masked_lengths(op, input, *lengths, batch_first, batch_sizes, sorted_indices);
  const common::LayerShapes shapes = common::check_layer_args(
      op, input, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt, w_hr, batch_sizes, sorted_indices, batch_first,
      common::Backend::kCUDA);
  common::check_layer_backward_args(op, shapes, input, grad_output, grad_hy, grad_cy, output, gates, cells);
  if (lengths.has_value()) {
    const cpu::MaskedLayerShape s{shapes.T, shapes.B, shapes.I, shapes.H, shapes.P, batch_first, reverse};
    return lstm_layer_masked_backward_cuda(s, grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, w_hr,
                                           *lengths, output, gates, cells, has_bias);
  }
  const LayerPlan lp = make_layer_plan(op, input, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt, w_hr, batch_sizes,
                                       sorted_indices, batch_first, reverse);
  const Schedule& s = lp.s;
  const int64_t H = lp.H, P = lp.P, I = lp.I, B = s.B, G = 4 * H;
  const auto opts = input.options();
  const Tensor empty = at::empty({0}, opts);
  Tensor dh = grad_hy.index_select(0, lp.batch_of).contiguous();
  Tensor dc = grad_cy.index_select(0, lp.batch_of).contiguous();
  auto to_batch = [&](const Tensor& t) { return at::zeros_like(t).index_copy_(0, lp.batch_of, t); };
  if (s.used == 0)
    return {at::zeros(input.sizes(), opts), to_batch(dh), to_batch(dc), at::zeros(w_ih.sizes(), opts),
            at::zeros(w_hh.sizes(), opts), has_bias ? at::zeros({G}, opts) : empty,
            w_hr.has_value() ? at::zeros(w_hr->sizes(), opts) : at::empty({0}, opts)};
  const Tensor dy = grad_output.reshape({-1, P}).contiguous();
  const Tensor y = output.reshape({-1, P}).contiguous();
  const Tensor x = input.reshape({-1, I}).contiguous();
  const Tensor c0 = cx.index_select(0, lp.batch_of).contiguous();
  const Tensor h0 = hx.index_select(0, lp.batch_of).contiguous();
  Tensor dgates = at::empty({s.used, G}, opts);
  Tensor dhp = w_hr.has_value() ? at::empty({s.used, P}, opts) : Tensor();
  Tensor dhfull = w_hr.has_value() ? at::empty({B, H}, opts) : Tensor();
  Tensor dy_step = at::empty({B, P}, opts);
  Tensor x_slots = at::empty({s.used, I}, opts), hprev_slots = at::empty({s.used, P}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lstm_layer_backward_cuda", [&] {
    for (int64_t p = s.T - 1; p >= 0; --p) {
      const int64_t n = s.rows_at(p), t = s.time(p), off = s.offset_at(p), n_next = s.rows_at(p + 1);
      const int64_t* rows = lp.row_of.const_data_ptr<int64_t>() + t * B;
      if (p + 1 < s.T && n_next > 0)  // recurrent gradient from step p + 1
        at::mm_out(lvalue(view_rows(dh, 0, n_next)), view_rows(dgates, s.offset_at(p + 1), n_next), w_hh);
      gather_rows_kernel<scalar_t><<<blocks_for(n * P), kThreads, 0, stream()>>>(
          n, P, dy.const_data_ptr<scalar_t>(), rows, P, dy_step.data_ptr<scalar_t>(), P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const scalar_t* dh_a = dh.const_data_ptr<scalar_t>();
      const scalar_t* dh_b = dy_step.const_data_ptr<scalar_t>();
      int64_t ld_a = P;
      if (w_hr.has_value()) {
        Tensor d = view_rows(dhp, off, n);
        at::add_out(d, view_rows(dh, 0, n), view_rows(dy_step, 0, n));
        at::mm_out(lvalue(view_rows(dhfull, 0, n)), d, *w_hr);
        dh_a = dhfull.const_data_ptr<scalar_t>();
        dh_b = nullptr;
        ld_a = H;
      }
      const int64_t n_prev = s.rows_at(p - 1);
      const scalar_t* cs = cells.const_data_ptr<scalar_t>();
      lstm_backward_kernel<scalar_t><<<blocks_for(n * H), kThreads, 0, stream()>>>(
          n, H, gates.const_data_ptr<scalar_t>() + off * G, cs + off * H,
          cs + (p > 0 ? s.offset_at(p - 1) : 0) * H, n_prev, c0.const_data_ptr<scalar_t>(), dh_a, ld_a, dh_b,
          nullptr, P, dc.data_ptr<scalar_t>(), dgates.data_ptr<scalar_t>() + off * G);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // The rows the weight gradients need, in slot order: x of the step and the h it read.
      gather_rows_kernel<scalar_t><<<blocks_for(n * I), kThreads, 0, stream()>>>(
          n, I, x.const_data_ptr<scalar_t>(), rows, I, x_slots.data_ptr<scalar_t>() + off * I, I);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      Tensor hp = view_rows(hprev_slots, off, n);
      hp.copy_(view_rows(h0, 0, n));
      if (n_prev > 0) {
        const int64_t m = std::min(n, n_prev);
        gather_rows_kernel<scalar_t><<<blocks_for(m * P), kThreads, 0, stream()>>>(
            m, P, y.const_data_ptr<scalar_t>(), lp.row_of.const_data_ptr<int64_t>() + s.time(p - 1) * B, P,
            hp.data_ptr<scalar_t>(), P);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    at::mm_out(lvalue(view_rows(dh, 0, s.rows_at(0))), view_rows(dgates, s.offset_at(0), s.rows_at(0)), w_hh);
  });
  Tensor dx_slots = at::mm(dgates, w_ih);
  Tensor grad_input = at::zeros({s.N, I}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lstm_layer_backward_dx", [&] {
    for (int64_t p = 0; p < s.T; ++p) {
      const int64_t n = s.rows_at(p), t = s.time(p);
      scatter_rows_kernel<scalar_t><<<blocks_for(n * I), kThreads, 0, stream()>>>(
          n, I, dx_slots.const_data_ptr<scalar_t>() + s.offset_at(p) * I, I,
          lp.row_of.const_data_ptr<int64_t>() + t * B, grad_input.data_ptr<scalar_t>(), I);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  Tensor grad_w_hr = at::empty({0}, opts);
  if (w_hr.has_value()) {
    // The unprojected h of every step: o * tanh(c), from the saved activations.
    const Tensor o = gates.narrow(0, 0, s.used).narrow(1, 3 * H, H);
    grad_w_hr = at::mm(dhp.t(), at::mul(o, at::tanh(cells.narrow(0, 0, s.used))));
  }
  return {grad_input.view(input.sizes()), to_batch(dh), to_batch(dc), at::mm(dgates.t(), x_slots),
          at::mm(dgates.t(), hprev_slots), has_bias ? at::sum(dgates, {0}) : empty, grad_w_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CUDA, m) {
  m.impl("lstm_cell", &lstm_cell_cuda);
  m.impl("lstm_cell_backward", &lstm_cell_backward_cuda);
  m.impl("lstm_layer", &lstm_layer_cuda);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cuda);
}

}  // namespace rnnext::cuda
