// The masked LSTM layer on the CPU: lstm_layer with per-entry `lengths`, every entry run at every step with the
// per-element code of csrc/kernels/lstm_masked.h, which the CUDA kernel runs too (there the lengths stay on the
// GPU). rnnext.nn.LSTM's CPU path takes lengths through the sorted schedule of lstm_layer.cpp instead, which
// skips the padding; this one gives the op's `lengths` the same meaning on every device and tests that code.
#include "cpu/lstm_masked.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "cpu/bias.h"
#include "kernels/lstm_masked.h"

namespace rnnext::cpu {

using at::Tensor;
using kernels::masked_length;
using kernels::padded_row;

MaskedForwardBuffers masked_forward_buffers(const MaskedLayerShape& s, const Tensor& input, const Tensor& hx,
                                            const Tensor& cx, const Tensor& w_ih, const std::optional<Tensor>& b_ih,
                                            const std::optional<Tensor>& b_hh, bool train) {
  const int64_t T = s.T, B = s.B, H = s.H, G = 4 * H;
  const auto opts = input.options();
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = s.P;
  return {at::zeros(out_shape, opts),
          hx.contiguous().clone(),
          cx.contiguous().clone(),
          at::zeros({train ? T * B : B, G}, opts),
          train ? at::zeros({T * B, H}, opts) : at::empty({0}, opts),
          at::mm(input.reshape({-1, s.I}), w_ih.t()),
          sum_biases(b_ih, b_hh).value_or(Tensor())};
}

MaskedBackwardBuffers masked_backward_buffers(const MaskedLayerShape& s, const Tensor& grad_hy, const Tensor& grad_cy,
                                              bool projected) {
  const auto opts = grad_hy.options();
  return {grad_hy.contiguous().clone(), grad_cy.contiguous().clone(), at::zeros({s.T * s.B, 4 * s.H}, opts),
          at::zeros({s.T * s.B, s.P}, opts), projected ? at::zeros({s.T * s.B, s.P}, opts) : Tensor()};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> masked_backward_gradients(
    const MaskedLayerShape& s, const MaskedBackwardBuffers& bb, const Tensor& input, const Tensor& w_ih,
    const Tensor& gates, const Tensor& cells, bool has_bias) {
  const int64_t T = s.T, B = s.B, H = s.H, I = s.I;
  const auto opts = input.options();
  const Tensor x_tm = s.batch_first ? input.transpose(0, 1).reshape({T * B, I}) : input.reshape({T * B, I});
  const Tensor dx = at::mm(bb.dgates, w_ih).view({T, B, I});
  Tensor grad_w_hr = at::empty({0}, opts);
  if (bb.dh_proj.defined())  // the unprojected h = o * tanh(c) of every step (zero where inactive: o is 0 there)
    grad_w_hr = at::mm(bb.dh_proj.t(), at::mul(gates.narrow(1, 3 * H, H), at::tanh(cells)));
  return {s.batch_first ? dx.transpose(0, 1).contiguous() : dx,
          bb.dh_state,
          bb.dc_state,
          at::mm(bb.dgates.t(), x_tm),
          at::mm(bb.dgates.t(), bb.h_prev),
          has_bias ? at::sum(bb.dgates, {0}) : at::empty({0}, opts),
          grad_w_hr};
}

namespace {

// Entries per parallel chunk: enough per-element work to pay for a thread.
int64_t entry_grain(int64_t width) { return std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(width, 1)); }

std::vector<int64_t> clamped_lengths(const Tensor& lengths, int64_t T) {
  const Tensor l = lengths.contiguous();
  std::vector<int64_t> out(l.const_data_ptr<int64_t>(), l.const_data_ptr<int64_t>() + l.numel());
  for (auto& v : out) v = masked_length(v, T);
  return out;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_masked_forward(
    const MaskedLayerShape& s, const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
    const std::optional<Tensor>& w_hr, const Tensor& lengths, bool train) {
  const int64_t T = s.T, B = s.B, H = s.H, P = s.P, G = 4 * H;
  MaskedForwardBuffers fb = masked_forward_buffers(s, input, hx, cx, w_ih, b_ih, b_hh, train);
  if (T > 0 && B > 0) {
    const std::vector<int64_t> len = clamped_lengths(lengths, T);
    const bool proj = w_hr.has_value();
    Tensor hfull = proj ? at::empty({B, H}, input.options()) : Tensor();
    Tensor hproj = proj ? at::empty({B, P}, input.options()) : Tensor();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_masked", [&] {
      const scalar_t* xp = fb.xproj.const_data_ptr<scalar_t>();
      const scalar_t* bp = fb.bias.defined() ? fb.bias.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* hs = fb.h_state.data_ptr<scalar_t>();
      scalar_t* cs = fb.c_state.data_ptr<scalar_t>();
      scalar_t* yp = fb.output.data_ptr<scalar_t>();
      for (int64_t p = 0; p < T; ++p) {
        const int64_t t = s.reverse ? T - 1 - p : p;
        Tensor g = fb.gates.narrow(0, train ? t * B : 0, B);
        at::mm_out(g, fb.h_state, w_hh.t());
        scalar_t* gp = g.data_ptr<scalar_t>();
        scalar_t* save = train ? fb.cells.data_ptr<scalar_t>() + t * B * H : nullptr;
        scalar_t* hf = proj ? hfull.data_ptr<scalar_t>() : nullptr;
        at::parallel_for(0, B, entry_grain(H), [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const bool active = t < len[b];
            const int64_t row = padded_row(t, b, T, B, s.batch_first);
            for (int64_t u = 0; u < H; ++u)
              kernels::lstm_masked_forward_point<scalar_t, scalar_t>(
                  active, H, u, gp + b * G, xp + row * G, bp, cs + b * H, save ? save + b * H : nullptr,
                  proj ? hf + b * H : hs + b * P, proj ? nullptr : yp + row * P);
          }
        });
        if (proj) {
          at::mm_out(hproj, hfull, w_hr->t());
          const scalar_t* hpp = hproj.const_data_ptr<scalar_t>();
          at::parallel_for(0, B, entry_grain(P), [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b) {
              const int64_t row = padded_row(t, b, T, B, s.batch_first);
              for (int64_t q = 0; q < P; ++q)
                kernels::lstm_masked_projection_point(t < len[b], q, hpp + b * P, hs + b * P, yp + row * P);
            }
          });
        }
      }
    });
  }
  return {fb.output, fb.h_state, fb.c_state, train ? fb.gates : at::empty({0}, input.options()), fb.cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_masked_backward(
    const MaskedLayerShape& s, const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const Tensor& lengths, const Tensor& output, const Tensor& gates,
    const Tensor& cells, bool has_bias) {
  const int64_t T = s.T, B = s.B, H = s.H, P = s.P, G = 4 * H;
  const bool proj = w_hr.has_value();
  MaskedBackwardBuffers bb = masked_backward_buffers(s, grad_hy, grad_cy, proj);
  if (T > 0 && B > 0) {
    const std::vector<int64_t> len = clamped_lengths(lengths, T);
    const Tensor dy = grad_output.contiguous(), y = output.contiguous(), acts = gates.contiguous();
    const Tensor cs = cells.contiguous(), c0 = cx.contiguous(), h0 = hx.contiguous();
    Tensor dh_full = proj ? at::empty({B, H}, input.options()) : Tensor();
    Tensor dh_rec = at::empty({B, P}, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_masked_backward", [&] {
      const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
      const scalar_t* yp = y.const_data_ptr<scalar_t>();
      const scalar_t* ap = acts.const_data_ptr<scalar_t>();
      const scalar_t* cp = cs.const_data_ptr<scalar_t>();
      const scalar_t* c0p = c0.const_data_ptr<scalar_t>();
      const scalar_t* h0p = h0.const_data_ptr<scalar_t>();
      scalar_t* dhs = bb.dh_state.data_ptr<scalar_t>();
      scalar_t* dcs = bb.dc_state.data_ptr<scalar_t>();
      for (int64_t p = T - 1; p >= 0; --p) {
        const int64_t t = s.reverse ? T - 1 - p : p;
        const int64_t t_prev = p == 0 ? -1 : (s.reverse ? t + 1 : t - 1);  // the step processed before t
        if (proj) {
          scalar_t* dhp = bb.dh_proj.data_ptr<scalar_t>() + t * B * P;
          at::parallel_for(0, B, entry_grain(P), [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b) {
              const int64_t row = padded_row(t, b, T, B, s.batch_first);
              for (int64_t q = 0; q < P; ++q)
                kernels::lstm_masked_projection_grad_point<scalar_t, scalar_t>(t < len[b], q, dhs + b * P,
                                                                               dyp + row * P, dhp + b * P);
            }
          });
          at::mm_out(dh_full, bb.dh_proj.narrow(0, t * B, B), *w_hr);
        }
        const scalar_t* dhf = proj ? dh_full.const_data_ptr<scalar_t>() : nullptr;
        scalar_t* dg = bb.dgates.data_ptr<scalar_t>() + t * B * G;
        at::parallel_for(0, B, entry_grain(H), [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t row = padded_row(t, b, T, B, s.batch_first);
            const scalar_t* c_prev = t_prev >= 0 ? cp + (t_prev * B + b) * H : c0p + b * H;
            for (int64_t u = 0; u < H; ++u)
              kernels::lstm_masked_backward_point<scalar_t, scalar_t>(
                  t < len[b], H, u, ap + (t * B + b) * G, cp + (t * B + b) * H, c_prev,
                  proj ? dhf + b * H : dhs + b * P, proj ? nullptr : dyp + row * P, dcs + b * H, dg + b * G);
          }
        });
        at::mm_out(dh_rec, bb.dgates.narrow(0, t * B, B), w_hh);
        const scalar_t* dhr = dh_rec.const_data_ptr<scalar_t>();
        scalar_t* hp = bb.h_prev.data_ptr<scalar_t>() + t * B * P;
        at::parallel_for(0, B, entry_grain(P), [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const bool active = t < len[b], prev_active = t_prev >= 0 && t_prev < len[b];
            const scalar_t* y_prev = prev_active ? yp + padded_row(t_prev, b, T, B, s.batch_first) * P : nullptr;
            for (int64_t q = 0; q < P; ++q) {
              kernels::lstm_masked_carry_point(active, q, dhr + b * P, dhs + b * P);
              kernels::lstm_masked_h_prev_point(prev_active, q, y_prev, h0p + b * P, hp + b * P);
            }
          }
        });
      }
    });
  }
  return masked_backward_gradients(s, bb, input, w_ih, gates, cells, has_bias);
}

}  // namespace rnnext::cpu
