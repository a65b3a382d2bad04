// The schedule of one recurrent layer over its input layout (dense, packed, padded with batch sizes) and the
// checks of a layer op's arguments: backend-neutral, shared by the CPU kernels (csrc/cpu/) and the CUDA ones
// (csrc/cuda/), so both validate the same things with the same messages and walk the same steps.
//
// Slot j of step t is the j-th active entry of that step (entries sorted by length, longest first); slots
// 0 .. rows[t] of a step are contiguous in every workspace (laid out like packed data), and a RowMap says
// which row of the input/output a slot reads and writes. Steps are processed in order p = 0 .. T-1, at time
// t = p (forward) or T-1-p (reverse).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cpu/checks.h"

namespace rnnext::common {

using at::Tensor;

enum class Backend { kCPU, kCUDA };

// A floating-point argument on the backend's device: float32/float64 on the CPU, also float16/bfloat16 on CUDA.
inline void check_float_input(const char* op, const char* name, const Tensor& t, Backend backend) {
  if (backend == Backend::kCPU) {
    // (bfloat16 reaches the CPU engine only through an op's bfloat16 entry: cpu/bf16.h.)
    if (t.scalar_type() != at::kBFloat16) cpu::check_float_cpu(op, name, t);
    TORCH_CHECK(t.device().is_cpu(), op, ": expected ", name, " on the CPU, got ", t.device());
    return;
  }
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op, ": expected ",
              name, " to be float32, float64, float16 or bfloat16, got ", st);
  TORCH_CHECK(t.is_cuda(), op, ": expected ", name, " on a CUDA device, got ", t.device());
}

enum class Layout { kDense, kPacked, kPadded };

struct Steps {
  int64_t T = 0;
  std::vector<int64_t> rows;    // active slots at time t
  std::vector<int64_t> offset;  // first workspace row of time t
  bool reverse = false;
  int64_t time(int64_t p) const { return reverse ? T - 1 - p : p; }
  // Slots active at processing step p (0 outside [0, T)).
  int64_t rows_at(int64_t p) const { return p < 0 || p >= T ? 0 : rows[time(p)]; }
  int64_t offset_at(int64_t p) const { return offset[time(p)]; }
};

struct LayerShapes {
  Layout layout;
  bool batch_first;
  int64_t T, B, N, I, H, P;  // T: input steps; N: rows of the workspace (T * B unless packed)
};

// Which row of the (rows, features) view of input/output a slot of a step reads and writes.
struct RowMap {
  Layout layout;
  bool batch_first;
  int64_t T, B;
  const int64_t* order;  // slot -> batch entry (padded layout with sorted_indices), else null

  int64_t batch(int64_t j) const { return order != nullptr ? order[j] : j; }
  int64_t row(const Steps& st, int64_t p, int64_t j) const {
    if (layout == Layout::kPacked) return st.offset_at(p) + j;
    const int64_t t = st.time(p), b = batch(j);
    return batch_first ? b * T + t : t * B + b;
  }
  // The same, by time t instead of processing step.
  int64_t row_at_time(const Steps& st, int64_t t, int64_t j) const {
    if (layout == Layout::kPacked) return st.offset[t] + j;
    const int64_t b = batch(j);
    return batch_first ? b * T + t : t * B + b;
  }
  // Consecutive slots of a step sit at a constant row stride (then kernels can address them as a block).
  bool uniform() const { return order == nullptr; }
  int64_t row_stride() const { return layout != Layout::kPacked && batch_first ? T : 1; }
};

// Every argument of a recurrent layer op with num_gates gate blocks per hidden unit (LSTM 4, GRU 3, RNN 1) and
// a cell state cx when the cell has one (LSTM): dtypes,
// devices, ranks and shapes, each failure naming the op, the argument and the expectation. Returns the sizes.
inline LayerShapes check_recurrent_args(const char* op, const Tensor& input, const Tensor& hx, const Tensor* cx,
                                        const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                        const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
                                        const std::optional<Tensor>& batch_sizes,
                                        const std::optional<Tensor>& sorted_indices, bool batch_first,
                                        int64_t num_gates, Backend backend) {
  check_float_input(op, "input", input, backend);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"hx", &hx}, {"w_ih", &w_ih}, {"w_hh", &w_hh}})
    cpu::check_same(op, "input", input, name, *t);
  if (cx != nullptr) cpu::check_same(op, "input", input, "cx", *cx);
  LayerShapes s{};
  s.batch_first = batch_first;
  if (input.dim() == 2) {
    TORCH_CHECK(batch_sizes.has_value(), op, ": a 2-D input is packed data (total_rows, input_size) and needs "
                "batch_sizes; a dense sequence is 3-D (seq_len, batch, input_size)");
    TORCH_CHECK(!sorted_indices.has_value(), op, ": sorted_indices applies to a padded 3-D input; for packed data "
                "give hx and cx in the packed (sorted) order");
    s.layout = Layout::kPacked;
    s.N = input.size(0);
    s.B = hx.dim() == 2 ? hx.size(0) : 0;
  } else {
    cpu::check_dim(op, "input", input, 3,
                   batch_first ? "(batch, seq_len, input_size)" : "(seq_len, batch, input_size)");
    TORCH_CHECK(batch_sizes.has_value() || !sorted_indices.has_value(), op,
                ": sorted_indices needs batch_sizes (the lengths of a padded input)");
    s.layout = batch_sizes.has_value() ? Layout::kPadded : Layout::kDense;
    s.T = input.size(batch_first ? 1 : 0);
    s.B = input.size(batch_first ? 0 : 1);
    s.N = s.T * s.B;
  }
  s.I = input.size(-1);
  TORCH_CHECK(s.I > 0, op, ": expected input's last dimension (input_size) to be at least 1, got 0");
  const std::string gates = std::to_string(num_gates) + " * hidden_size";
  cpu::check_dim(op, "w_ih", w_ih, 2, ("(" + gates + ", input_size)").c_str());
  cpu::check_dim(op, "w_hh", w_hh, 2, ("(" + gates + (w_hr.has_value() ? ", proj_size)" : ", hidden_size)")).c_str());
  const int64_t G = w_ih.size(0);
  TORCH_CHECK(G % num_gates == 0 && G > 0, op, ": expected w_ih.size(0) to be ", gates, " > 0, got ", G);
  s.H = G / num_gates;
  s.P = s.H;
  if (w_hr.has_value()) {
    cpu::check_same(op, "input", input, "w_hr", *w_hr);
    cpu::check_dim(op, "w_hr", *w_hr, 2, "(proj_size, hidden_size)");
    s.P = w_hr->size(0);
    cpu::check_shape(op, "w_hr", *w_hr, {s.P, s.H});
  }
  cpu::check_shape(op, "w_ih", w_ih, {G, s.I});
  cpu::check_shape(op, "w_hh", w_hh, {G, s.P});
  for (const auto& [name, b] : {std::pair<const char*, const std::optional<Tensor>*>{"b_ih", &b_ih}, {"b_hh", &b_hh}})
    if (b->has_value()) {
      cpu::check_same(op, "input", input, name, **b);
      cpu::check_shape(op, name, **b, {G});
    }
  cpu::check_dim(op, "hx", hx, 2, w_hr.has_value() ? "(batch, proj_size)" : "(batch, hidden_size)");
  cpu::check_shape(op, "hx", hx, {s.B, s.P});
  if (cx != nullptr) cpu::check_shape(op, "cx", *cx, {s.B, s.H});
  return s;
}

// The LSTM layer's arguments (four gate blocks, a cell state cx).
inline LayerShapes check_layer_args(const char* op, const Tensor& input, const Tensor& hx, const Tensor& cx,
                                    const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                    const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
                                    const std::optional<Tensor>& batch_sizes,
                                    const std::optional<Tensor>& sorted_indices, bool batch_first,
                                    Backend backend = Backend::kCPU) {
  return check_recurrent_args(op, input, hx, &cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, sorted_indices,
                              batch_first, 4, backend);
}

inline Steps make_steps(const char* op, const LayerShapes& s, const std::optional<Tensor>& batch_sizes, bool reverse) {
  Steps st;
  st.reverse = reverse;
  if (s.layout == Layout::kDense) {
    st.T = s.T;
    st.rows.assign(s.T, s.B);
  } else {
    st.rows = cpu::check_batch_sizes(op, *batch_sizes, s.layout == Layout::kPacked ? s.N : -1, s.B);
    st.T = static_cast<int64_t>(st.rows.size());
    TORCH_CHECK(s.layout == Layout::kPacked || st.T <= s.T, op, ": batch_sizes has ", st.T,
                " steps but the padded input only ", s.T, " (a length is longer than the sequence)");
  }
  st.offset.resize(st.T);
  for (int64_t t = 0, acc = 0; t < st.T; acc += st.rows[t], ++t) st.offset[t] = acc;
  return st;
}

// The backward op's extra arguments: the gradients and the forward's output and workspace, shaped as the
// forward made them for the layer of sizes s.
inline void check_layer_backward_args(const char* op, const LayerShapes& s, const Tensor& input,
                                      const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
                                      const Tensor& output, const Tensor& gates, const Tensor& cells) {
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = s.P;
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_output", &grad_output},
                                {"grad_hy", &grad_hy}, {"grad_cy", &grad_cy}, {"output", &output}})
    cpu::check_same(op, "input", input, name, *t);
  // The workspace: the input's dtype, float32 for a bfloat16 layer on the CPU (cpu/bf16.h).
  const auto ws = input.scalar_type() == at::kBFloat16 && input.device().is_cpu() ? at::kFloat : input.scalar_type();
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"gates", &gates}, {"cells", &cells}}) {
    TORCH_CHECK(t->scalar_type() == ws, op, ": expected ", name, " to be ", ws, " (the workspace of a ",
                input.scalar_type(), " forward), got ", t->scalar_type());
    TORCH_CHECK(t->device() == input.device(), op, ": expected ", name, " on the device of input (", input.device(),
                "), got ", t->device());
  }
  cpu::check_shape(op, "grad_output", grad_output, out_shape);
  cpu::check_shape(op, "output", output, out_shape);
  cpu::check_shape(op, "grad_hy", grad_hy, {s.B, s.P});
  cpu::check_shape(op, "grad_cy", grad_cy, {s.B, s.H});
  cpu::check_shape(op, "gates", gates, {s.N, 4 * s.H});
  cpu::check_shape(op, "cells", cells, {s.N, s.H});
}

// Masked mode's `lengths` for a padded (T, B, I) input ((B, T, I) with batch_first): 1-D int64 of B entries on
// the input's device (read there, never by the host), and no batch_sizes or sorted_indices beside it.
inline void check_masked_lengths(const char* op, const Tensor& input, const Tensor& lengths, bool batch_first,
                                 const std::optional<Tensor>& batch_sizes,
                                 const std::optional<Tensor>& sorted_indices) {
  TORCH_CHECK(!batch_sizes.has_value() && !sorted_indices.has_value(), op,
              ": lengths and batch_sizes/sorted_indices are two ways to give variable lengths; give one");
  TORCH_CHECK(input.dim() == 3, op, ": lengths applies to a padded 3-D input, got ", input.dim(), " dimensions");
  const int64_t B = input.size(batch_first ? 0 : 1);
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == B, op, ": expected lengths to be 1-D with ", B,
              " entries (one per batch entry), got shape ", lengths.sizes());
  TORCH_CHECK(lengths.scalar_type() == at::kLong, op, ": expected lengths to be int64, got ", lengths.scalar_type());
  TORCH_CHECK(lengths.device() == input.device(), op, ": expected lengths on the input's device (", input.device(),
              "), got ", lengths.device());
}

}  // namespace rnnext::common
