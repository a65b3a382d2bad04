// CPU kernel of the fused sampling loop of a character LSTM: embedding lookup, every layer's step, the output
// projection, temperature, top-k and the categorical draw (inverse CDF on given uniforms), for a batch of
// streams and a number of steps, with no Python per step.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "common/generate.h"
#include "common/rnn_engine.h"
#include "cpu/bf16.h"
#include "cpu/checks.h"
#include "cpu/gemm.h"
#include "cpu/lstm_weights.h"
#include "cpu/pointwise.h"
#include "kernels/sampling.h"

namespace rnnext::cpu {
namespace {

using at::Tensor;
using kernels::block_first_col;
using kernels::block_first_unit;
using kernels::block_width;
using kernels::num_unit_blocks;


// Next tokens from logits (B, V): argmax when temperature == 0, else a draw from softmax(logits / T) restricted
// to the top_k largest (all when top_k <= 0), by inverse CDF on u (B).
template <typename scalar_t>
void sample_rows(const scalar_t* logits, int64_t B, int64_t V, double temperature, int64_t top_k, const float* u,
                 int64_t* out, int64_t out_stride) {
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    std::vector<double> w(V);
    std::vector<int64_t> idx(V);
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* z = logits + b * V;
      if (temperature == 0.0) {
        int64_t best = 0;  // the first maximum, as torch.argmax; NaN counts as the maximum
        for (int64_t v = 1; v < V; ++v)
          if (std::isnan(static_cast<double>(z[v])) ? !std::isnan(static_cast<double>(z[best])) : z[v] > z[best])
            best = v;
        out[b * out_stride] = best;
        continue;
      }
      // Keep the top_k largest (ties broken by index), weight exp((z - max) / T).
      std::fill(w.begin(), w.end(), 0.0);
      const int64_t k = top_k > 0 && top_k < V ? top_k : V;
      std::iota(idx.begin(), idx.end(), int64_t(0));
      if (k < V)
        std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), [&](int64_t x, int64_t y) {
          return z[x] > z[y] || (z[x] == z[y] && x < y);
        });
      double zmax = -std::numeric_limits<double>::infinity();
      for (int64_t i = 0; i < k; ++i) zmax = std::max(zmax, static_cast<double>(z[idx[i]]));
      for (int64_t i = 0; i < k; ++i) w[idx[i]] = std::exp((static_cast<double>(z[idx[i]]) - zmax) / temperature);
      int64_t pick = kernels::pick_inverse_cdf<double>(w.data(), V, static_cast<double>(u[b]));
      out[b * out_stride] = pick < 0 ? idx[0] : pick;
    }
  });
}

Tensor lstm_generate_cpu(const Tensor& logits, const Tensor& h0, const Tensor& c0, const Tensor& embedding,
                         at::TensorList w_ih, at::TensorList w_hh, const c10::List<std::optional<Tensor>>& b_ih,
                         const c10::List<std::optional<Tensor>>& b_hh, const Tensor& head_weight,
                         const std::optional<Tensor>& head_bias, const Tensor& uniforms, double temperature,
                         int64_t top_k) {
  const char* op = "rnnext::lstm_generate";
  if (bf16::active(logits))
    return lstm_generate_cpu(bf16::up(op, "logits", logits), bf16::up(op, "h0", h0), bf16::up(op, "c0", c0),
                             bf16::up(op, "embedding", embedding), bf16::up(op, "w_ih", w_ih),
                             bf16::up(op, "w_hh", w_hh), bf16::up(op, "b_ih", b_ih), bf16::up(op, "b_hh", b_hh),
                             bf16::up(op, "head_weight", head_weight), bf16::up(op, "head_bias", head_bias), uniforms,
                             temperature, top_k);
  const common::GenerateShapes sh = common::check_generate_args(op, logits, h0, &c0, embedding, w_ih, w_hh, b_ih, b_hh,
                                                               head_weight, head_bias, uniforms, temperature, 4,
                                                               common::Backend::kCPU);
  const int64_t B = sh.B, V = sh.V, L = sh.L, H = sh.H, E = sh.E, steps = sh.steps;
  std::vector<BlockedWeights> layers;
  for (int64_t l = 0; l < L; ++l) {
    std::optional<Tensor> bi = b_ih.get(l), bh = b_hh.get(l);
    layers.push_back(block_weights(w_ih[l], w_hh[l], bi, bh));
  }
  Tensor tokens = at::empty({B, steps}, logits.options().dtype(at::kLong));
  if (steps == 0 || B == 0) return tokens;
  const Tensor u = uniforms.contiguous(), emb = embedding.contiguous(), hw = head_weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "lstm_generate", [&] {
    int64_t* tok = tokens.data_ptr<int64_t>();
    const Tensor z0 = logits.contiguous();
    sample_rows<scalar_t>(z0.const_data_ptr<scalar_t>(), B, V, temperature, top_k, u.const_data_ptr<float>(), tok,
                          steps);
    // Per layer: rows [x | h] of width K (two buffers, read one and write h into the other), c in place.
    std::vector<Tensor> xh(L), cbuf(L);
    std::vector<int> cur(L, 0);
    for (int64_t l = 0; l < L; ++l) {
      const int64_t in = l == 0 ? E : H;
      xh[l] = at::empty({2, B, in + H}, logits.options());
      xh[l].narrow(2, in, H).copy_(h0[l].unsqueeze(0).expand({2, B, H}));
      cbuf[l] = c0[l].contiguous().clone();
    }
    Tensor gates = at::empty({B, 4 * H}, logits.options());
    Tensor h_last = at::empty({B, H}, logits.options());
    Tensor z = at::empty({B, V}, logits.options());
    const int64_t G = 4 * H, NB = num_unit_blocks(H);
    const GateLayout layout{H, true};
    for (int64_t s = 1; s < steps; ++s) {
      // The embedding of the previous draw is layer 0's input.
      scalar_t* x0 = xh[0].data_ptr<scalar_t>() + cur[0] * B * (E + H);
      const scalar_t* ep = emb.const_data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {
        const int64_t t = tok[b * steps + s - 1];
        std::copy(ep + t * E, ep + (t + 1) * E, x0 + b * (E + H));
      }
      for (int64_t l = 0; l < L; ++l) {
        const int64_t in = l == 0 ? E : H, K = in + H;
        const scalar_t* xr = xh[l].data_ptr<scalar_t>() + cur[l] * B * K;
        scalar_t* hw = xh[l].data_ptr<scalar_t>() + (1 - cur[l]) * B * K + in;
        // The next layer reads h_t as its x (into its current read buffer); the top layer's goes to the head.
        scalar_t* x_next = l + 1 < L ? xh[l + 1].data_ptr<scalar_t>() + cur[l + 1] * B * (2 * H) : h_last.data_ptr<scalar_t>();
        const int64_t ld_next = l + 1 < L ? 2 * H : H;
        const scalar_t* wt = layers[l].w_t.const_data_ptr<scalar_t>();
        const scalar_t* bias = layers[l].bias.defined() ? layers[l].bias.const_data_ptr<scalar_t>() : nullptr;
        scalar_t* g = gates.data_ptr<scalar_t>();
        scalar_t* c = cbuf[l].data_ptr<scalar_t>();
        at::parallel_for(0, NB, B * G * K < (1 << 15) ? NB : 1, [&](int64_t k0, int64_t k1) {
          for (int64_t j0 = k0; j0 < k1; j0 += kBlocksPerChunk) {
            const int64_t j1 = std::min(k1, j0 + kBlocksPerChunk);
            const int64_t d0 = block_first_col(j0), d1 = 4 * (block_first_unit(j1 - 1) + block_width(j1 - 1, H));
            gemm_rowmajor(B, d1 - d0, K, xr, K, wt + d0, G, g + d0, G, /*accumulate=*/false);
            lstm_forward_tile<scalar_t>(layout, B, j0, j1, g, G, bias, c, c, nullptr, hw, K, x_next, ld_next);
          }
        });
        cur[l] = 1 - cur[l];
      }
      // Logits as F.linear computes them, then the draw.
      if (head_bias.has_value())
        at::addmm_out(z, *head_bias, h_last, hw.t());
      else
        at::mm_out(z, h_last, hw.t());
      sample_rows<scalar_t>(z.const_data_ptr<scalar_t>(), B, V, temperature, top_k, u.const_data_ptr<float>() + s * B,
                            tok + s, steps);
    }
  });
  return tokens;
}

// The GRU / RNN generator's loop (common/generate.h) with the CPU layer step and draw.
Tensor rnn_generate_cpu(const Tensor& logits, const Tensor& h0, const Tensor& embedding, at::TensorList w_ih,
                        at::TensorList w_hh, const c10::List<std::optional<Tensor>>& b_ih,
                        const c10::List<std::optional<Tensor>>& b_hh, const Tensor& head_weight,
                        const std::optional<Tensor>& head_bias, const Tensor& uniforms, double temperature,
                        int64_t top_k, c10::string_view cell_name) {
  const char* op = "rnnext::rnn_generate";
  if (bf16::active(logits))
    return rnn_generate_cpu(bf16::up(op, "logits", logits), bf16::up(op, "h0", h0),
                            bf16::up(op, "embedding", embedding), bf16::up(op, "w_ih", w_ih),
                            bf16::up(op, "w_hh", w_hh), bf16::up(op, "b_ih", b_ih), bf16::up(op, "b_hh", b_hh),
                            bf16::up(op, "head_weight", head_weight), bf16::up(op, "head_bias", head_bias), uniforms,
                            temperature, top_k, cell_name);
  const common::CellKind cell = common::parse_cell(op, std::string_view(cell_name.data(), cell_name.size()));
  const common::GenerateShapes g =
      common::check_generate_args(op, logits, h0, nullptr, embedding, w_ih, w_hh, b_ih, b_hh, head_weight, head_bias,
                                  uniforms, temperature, common::num_gates(cell), common::Backend::kCPU);
  const Tensor u = uniforms.contiguous();
  Tensor tokens;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "rnn_generate", [&] {
    tokens = common::rnn_generate_loop(
        g, logits, h0, embedding, head_weight, head_bias,
        [&](const Tensor& x, const Tensor& h, int64_t l) {
          rnn_cell_step(cell, x, h, w_ih[l], w_hh[l], b_ih.get(l), b_hh.get(l));
        },
        [&](const Tensor& z, int64_t s, const Tensor& out) {
          sample_rows<scalar_t>(z.const_data_ptr<scalar_t>(), g.B, g.V, temperature, top_k,
                                u.const_data_ptr<float>() + s * g.B, out.data_ptr<int64_t>() + s, g.steps);
        });
  });
  return tokens;
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CPU, m) {
  m.impl("lstm_generate", &lstm_generate_cpu);
  m.impl("rnn_generate", &rnn_generate_cpu);
}

}  // namespace rnnext::cpu
