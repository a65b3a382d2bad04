// The generation ops (rnnext::lstm_generate, rnnext::rnn_generate): argument checks shared by every device and
// cell, and the GRU / RNN sampling loop written once (the device supplies one step of a layer and the draw).
#pragma once
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "common/layer_schedule.h"

namespace rnnext::common {

struct GenerateShapes {
  int64_t B, V, L, H, E, steps;
};

// logits (B, V), h0 (L, B, H), c0 (L, B, H) when the cell has one (LSTM), embedding (V, E), per layer w_ih
// (gates H, E or H), w_hh (gates H, H) and optional biases (gates H), head_weight (V, H), head_bias (V),
// uniforms float32 (steps, B) on the CPU (or, on CUDA, on the logits' device), a finite temperature >= 0.
inline GenerateShapes check_generate_args(const char* op, const Tensor& logits, const Tensor& h0, const Tensor* c0,
                                          const Tensor& embedding, at::TensorList w_ih, at::TensorList w_hh,
                                          const c10::List<std::optional<Tensor>>& b_ih,
                                          const c10::List<std::optional<Tensor>>& b_hh, const Tensor& head_weight,
                                          const std::optional<Tensor>& head_bias, const Tensor& uniforms,
                                          double temperature, int64_t gates, Backend backend) {
  check_float_input(op, "logits", logits, backend);
  cpu::check_dim(op, "logits", logits, 2, "(batch, vocab)");
  const int64_t B = logits.size(0), V = logits.size(1);
  // Every draw indexes the embedding: an empty vocabulary has nothing to draw (argmax of nothing is no row).
  TORCH_CHECK(V >= 1, op, ": expected a vocabulary of at least 1 entry, got logits of shape ", logits.sizes());
  cpu::check_same(op, "logits", logits, "h0", h0);
  cpu::check_dim(op, "h0", h0, 3, "(num_layers, batch, hidden_size)");
  const int64_t L = h0.size(0), H = h0.size(2);
  TORCH_CHECK(L >= 1, op, ": expected at least one layer, got h0 of shape ", h0.sizes());
  cpu::check_shape(op, "h0", h0, {L, B, H});
  if (c0 != nullptr) {
    cpu::check_same(op, "logits", logits, "c0", *c0);
    cpu::check_shape(op, "c0", *c0, {L, B, H});
  }
  cpu::check_same(op, "logits", logits, "embedding", embedding);
  cpu::check_dim(op, "embedding", embedding, 2, "(vocab, embed_dim)");
  TORCH_CHECK(embedding.size(0) == V, op, ": expected embedding of ", V, " rows (the vocabulary of logits), got ",
              embedding.size(0));
  const int64_t E = embedding.size(1);
  TORCH_CHECK(static_cast<int64_t>(w_ih.size()) == L && static_cast<int64_t>(w_hh.size()) == L &&
                  static_cast<int64_t>(b_ih.size()) == L && static_cast<int64_t>(b_hh.size()) == L,
              op, ": expected w_ih, w_hh, b_ih and b_hh to hold one entry per layer (", L, ")");
  for (int64_t l = 0; l < L; ++l) {
    const int64_t in = l == 0 ? E : H;
    cpu::check_same(op, "logits", logits, "w_ih", w_ih[l]);
    cpu::check_same(op, "logits", logits, "w_hh", w_hh[l]);
    TORCH_CHECK(w_ih[l].sizes() == at::IntArrayRef({gates * H, in}) &&
                    w_hh[l].sizes() == at::IntArrayRef({gates * H, H}),
                op, ": layer ", l, ": expected w_ih (", gates * H, ", ", in, ") and w_hh (", gates * H, ", ", H,
                "), got ", w_ih[l].sizes(), " and ", w_hh[l].sizes());
    for (const auto& [name, b] : {std::pair<const char*, std::optional<Tensor>>{"b_ih", b_ih.get(l)},
                                  {"b_hh", b_hh.get(l)}})
      if (b.has_value()) {
        cpu::check_same(op, "logits", logits, name, *b);
        cpu::check_shape(op, name, *b, {gates * H});
      }
  }
  cpu::check_same(op, "logits", logits, "head_weight", head_weight);
  cpu::check_shape(op, "head_weight", head_weight, {V, H});
  if (head_bias.has_value()) {
    cpu::check_same(op, "logits", logits, "head_bias", *head_bias);
    cpu::check_shape(op, "head_bias", *head_bias, {V});
  }
  TORCH_CHECK(temperature >= 0.0 && std::isfinite(temperature), op,
              ": expected a finite temperature >= 0 (0: greedy), got ", temperature);
  TORCH_CHECK(uniforms.dim() == 2 && uniforms.size(1) == B && uniforms.scalar_type() == at::kFloat, op,
              ": expected uniforms as float32 of shape (steps, ", B, "), got ", uniforms.scalar_type(), " ",
              uniforms.sizes());
  TORCH_CHECK(uniforms.device().is_cpu() || (backend == Backend::kCUDA && uniforms.device() == logits.device()), op,
              ": expected uniforms on the CPU", backend == Backend::kCUDA ? " or the device of logits" : "", ", got ",
              uniforms.device());
  return {B, V, L, H, E, uniforms.size(0)};
}

// The sampling loop of a GRU / RNN generator: draw from the logits, embed the draw, run every layer's step
// (step(x, h, l) updates h of layer l in place), project by the head, draw again. draw(z, s, tokens) writes
// column s of tokens (B, steps) from the logits z (B, V). Runs on any device (ATen ops between the two).
template <typename Step, typename Draw>
Tensor rnn_generate_loop(const GenerateShapes& g, const Tensor& logits, const Tensor& h0, const Tensor& embedding,
                         const Tensor& head_weight, const std::optional<Tensor>& head_bias, Step step, Draw draw) {
  Tensor tokens = at::empty({g.B, g.steps}, logits.options().dtype(at::kLong));
  if (g.steps == 0 || g.B == 0) return tokens;
  std::vector<Tensor> h(g.L);
  for (int64_t l = 0; l < g.L; ++l) h[l] = h0[l].contiguous().clone();
  Tensor z = logits.contiguous();
  for (int64_t s = 0; s < g.steps; ++s) {
    draw(z, s, tokens);
    if (s + 1 == g.steps) break;
    Tensor x = embedding.index_select(0, tokens.select(1, s));
    for (int64_t l = 0; l < g.L; ++l) {
      step(x, h[l], l);
      x = h[l];
    }
    // Logits as F.linear computes them.
    z = head_bias.has_value() ? at::addmm(*head_bias, x, head_weight.t()) : at::mm(x, head_weight.t());
  }
  return tokens;
}

}  // namespace rnnext::common
