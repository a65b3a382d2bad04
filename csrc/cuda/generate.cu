// CUDA kernel of the fused character sampling loop: per step an embedding gather, each layer's two cuBLAS GEMMs
// and fused LSTM step, the head GEMM and a sampling kernel (one thread per stream; argmax, or top-k and an
// inverse-CDF draw on the given uniforms, csrc/kernels/sampling.h). No host synchronization between steps.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

#include "common/generate.h"
#include "common/rnn_engine.h"
#include "cuda/common.cuh"
#include "cuda/lstm.cuh"
#include "kernels/sampling.h"

namespace rnnext::cuda {
namespace {

using at::Tensor;

template <typename scalar_t>
__global__ void sample_kernel(int64_t B, int64_t V, const scalar_t* logits, double temperature, int64_t top_k,
                              const float* u, float* weights, int64_t* out, int64_t out_stride) {
  RNNEXT_CUDA_LOOP(b, B) {
    const scalar_t* z = logits + b * V;
    if (temperature == 0.0) {
      int64_t best = 0;
      for (int64_t v = 1; v < V; ++v) {
        const float zv = static_cast<float>(z[v]), zb = static_cast<float>(z[best]);
        if (zv != zv ? zb == zb : zv > zb) best = v;
      }
      out[b * out_stride] = best;
      continue;
    }
    float* w = weights + b * V;
    const int64_t k = top_k > 0 && top_k < V ? top_k : V;
    float zmax = -INFINITY;
    for (int64_t v = 0; v < V; ++v) zmax = fmaxf(zmax, static_cast<float>(z[v]));
    for (int64_t v = 0; v < V; ++v) {
      // In the top k: fewer than k entries rank above it (ties broken by index, as on the CPU).
      int64_t above = 0;
      if (k < V)
        for (int64_t x = 0; x < V && above < k; ++x)
          above += z[x] > z[v] || (z[x] == z[v] && x < v);
      w[v] = above < k ? expf((static_cast<float>(z[v]) - zmax) / static_cast<float>(temperature)) : 0.0f;
    }
    const int64_t pick = kernels::pick_inverse_cdf<float>(w, V, u[b]);
    out[b * out_stride] = pick < 0 ? 0 : pick;
  }
}

template <typename scalar_t>
__global__ void embed_kernel(int64_t B, int64_t E, const int64_t* tokens, int64_t stride, const scalar_t* emb,
                             scalar_t* x) {
  RNNEXT_CUDA_LOOP(idx, B * E) {
    const int64_t b = idx / E, e = idx % E;
    x[idx] = emb[tokens[b * stride] * E + e];
  }
}

Tensor lstm_generate_cuda(const Tensor& logits, const Tensor& h0, const Tensor& c0, const Tensor& embedding,
                          at::TensorList w_ih, at::TensorList w_hh, const c10::List<std::optional<Tensor>>& b_ih,
                          const c10::List<std::optional<Tensor>>& b_hh, const Tensor& head_weight,
                          const std::optional<Tensor>& head_bias, const Tensor& uniforms, double temperature,
                          int64_t top_k) {
  const char* op = "rnnext::lstm_generate";
  const common::GenerateShapes g = common::check_generate_args(op, logits, h0, &c0, embedding, w_ih, w_hh, b_ih, b_hh,
                                                              head_weight, head_bias, uniforms, temperature, 4,
                                                              common::Backend::kCUDA);
  const int64_t B = g.B, V = g.V, L = g.L, H = g.H, E = g.E;
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t steps = uniforms.size(0);
  Tensor tokens = at::empty({B, steps}, logits.options().dtype(at::kLong));
  if (steps == 0 || B == 0) return tokens;
  const Tensor u = uniforms.to(logits.device()).contiguous();
  Tensor weights = at::empty({B, V}, logits.options().dtype(at::kFloat));
  std::vector<Tensor> h(L), c(L), bias(L);
  for (int64_t l = 0; l < L; ++l) {
    h[l] = h0[l].contiguous().clone();
    c[l] = c0[l].contiguous().clone();
    const std::optional<Tensor> bi = b_ih.get(l), bh = b_hh.get(l);
    if (bi.has_value() || bh.has_value())
      bias[l] = (bi.has_value() ? (bh.has_value() ? at::add(*bi, *bh) : *bi) : *bh).contiguous();
  }
  Tensor x = at::empty({B, E}, logits.options()), gates = at::empty({B, 4 * H}, logits.options());
  Tensor z = logits.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lstm_generate_cuda", [&] {
    int64_t* tok = tokens.data_ptr<int64_t>();
    for (int64_t s = 0; s < steps; ++s) {
      sample_kernel<scalar_t><<<blocks_for(B, 128), 128, 0, stream()>>>(B, V, z.const_data_ptr<scalar_t>(),
                                                                         temperature, top_k,
                                                                         u.const_data_ptr<float>() + s * B,
                                                                         weights.data_ptr<float>(), tok + s, steps);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (s + 1 == steps) break;
      embed_kernel<scalar_t><<<blocks_for(B * E), kThreads, 0, stream()>>>(
          B, E, tok + s, steps, embedding.const_data_ptr<scalar_t>(), x.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      Tensor in = x;
      for (int64_t l = 0; l < L; ++l) {
        at::mm_out(gates, in, w_ih[l].t());
        gates.addmm_(h[l], w_hh[l].t());
        lstm_forward_kernel<scalar_t><<<blocks_for(B * H), kThreads, 0, stream()>>>(
            B, H, gates.data_ptr<scalar_t>(), bias[l].defined() ? bias[l].const_data_ptr<scalar_t>() : nullptr,
            c[l].const_data_ptr<scalar_t>(), c[l].data_ptr<scalar_t>(), nullptr, h[l].data_ptr<scalar_t>(), H, nullptr,
            nullptr, 0);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        in = h[l];
      }
      if (head_bias.has_value())
        at::addmm_out(z, *head_bias, in, head_weight.t());
      else
        at::mm_out(z, in, head_weight.t());
    }
  });
  return tokens;
}

// The GRU / RNN generator's loop (common/generate.h) with the CUDA layer step and the sampling kernel.
Tensor rnn_generate_cuda(const Tensor& logits, const Tensor& h0, const Tensor& embedding, at::TensorList w_ih,
                         at::TensorList w_hh, const c10::List<std::optional<Tensor>>& b_ih,
                         const c10::List<std::optional<Tensor>>& b_hh, const Tensor& head_weight,
                         const std::optional<Tensor>& head_bias, const Tensor& uniforms, double temperature,
                         int64_t top_k, c10::string_view cell_name) {
  const char* op = "rnnext::rnn_generate";
  const common::CellKind cell = common::parse_cell(op, std::string_view(cell_name.data(), cell_name.size()));
  const common::GenerateShapes g =
      common::check_generate_args(op, logits, h0, nullptr, embedding, w_ih, w_hh, b_ih, b_hh, head_weight, head_bias,
                                  uniforms, temperature, common::num_gates(cell), common::Backend::kCUDA);
  const c10::cuda::CUDAGuard guard(logits.device());
  const Tensor u = uniforms.to(logits.device()).contiguous();
  Tensor weights = at::empty({g.B, g.V}, logits.options().dtype(at::kFloat));
  Tensor tokens;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "rnn_generate_cuda", [&] {
    tokens = common::rnn_generate_loop(
        g, logits, h0, embedding, head_weight, head_bias,
        [&](const Tensor& x, const Tensor& h, int64_t l) {
          rnn_cell_step(cell, x, h, w_ih[l], w_hh[l], b_ih.get(l), b_hh.get(l));
        },
        [&](const Tensor& z, int64_t s, const Tensor& out) {
          sample_kernel<scalar_t><<<blocks_for(g.B, 128), 128, 0, stream()>>>(
              g.B, g.V, z.const_data_ptr<scalar_t>(), temperature, top_k, u.const_data_ptr<float>() + s * g.B,
              weights.data_ptr<float>(), out.data_ptr<int64_t>() + s, g.steps);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  });
  return tokens;
}

// The plan is simulated on the host: CUDA transitions are copied there (one synchronization) and the plan
// comes back on their device.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> thin_stack_plan_cuda(
    const Tensor& transitions, int64_t num_tokens, const std::optional<Tensor>& lengths) {
  static auto cpu_plan = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rnnext::thin_stack_plan", "")
                             .typed<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
                                 const Tensor&, int64_t, const std::optional<Tensor>&)>();
  const std::optional<Tensor> ln = lengths.has_value() ? std::optional<Tensor>(lengths->cpu()) : std::nullopt;
  auto [l, r, n, bt, st, s2, top] = cpu_plan.call(transitions.cpu(), num_tokens, ln);
  const auto dev = transitions.device();
  return {l.to(dev), r.to(dev), n.to(dev), bt.to(dev), st.to(dev), s2.to(dev), top.to(dev)};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CUDA, m) {
  m.impl("lstm_generate", &lstm_generate_cuda);
  m.impl("rnn_generate", &rnn_generate_cuda);
  m.impl("thin_stack_plan", &thin_stack_plan_cuda);
}

}  // namespace rnnext::cuda
