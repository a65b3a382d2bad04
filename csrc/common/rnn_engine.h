// The recurrent layer engine (rnnext::lstm_layer, rnnext::rnn_layer and their backwards), written once for
// every device and every cell (LSTM, GRU, vanilla RNN): the input projection of all steps is one GEMM, each step
// runs the recurrent GEMM and the cell's fused pointwise step (the only device-specific part: a Pointwise policy,
// csrc/cpu/rnn_layer.cpp and csrc/cuda/rnn_layer.cu), and the backward computes the weight gradients as a few
// large GEMMs over all steps. Layouts and the slot schedule are common/layer_schedule.h's: dense, packed, padded
// with batch sizes (and sorted_indices), batch_first, reverse, and masked mode (device lengths). Workspace rows
// are slots in time order (like packed data).
//
// A cell is described by CellKind: its gate blocks (num_gates), its states (LSTM: h and c; GRU, RNN: h), what a
// training forward keeps per row (saved_width; LSTM also keeps c, in `cells`), and its pointwise step. The
// recurrent projection is kept apart from the input one, which GRU needs (n = tanh(gx_n + r * gh_n)) at no extra
// FLOPs. LSTM's projection (proj_size, W_hr) maps the cell's h (H wide) to the state and output (P wide).
//
// The CPU runs dense, packed and padded LSTM layers through its own fused schedule (csrc/cpu/lstm_layer.cpp:
// the input and recurrent GEMMs of a step as one, per block of hidden units), the one place a device replaces
// the whole step loop rather than a policy hook; every other layer call of every device runs here.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/index_copy.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/where.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/lt.h>
#include <ATen/ops/masked_fill.h>
#include <ATen/ops/select.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/layer_schedule.h"
#include "cpu/checks.h"
#include "cpu/scratch.h"

namespace rnnext::common {

enum class CellKind { kGRU, kRNNTanh, kRNNRelu, kLSTM };

inline CellKind parse_cell(const char* op, std::string_view cell) {
  if (cell == "gru") return CellKind::kGRU;
  if (cell == "rnn_tanh") return CellKind::kRNNTanh;
  if (cell == "rnn_relu") return CellKind::kRNNRelu;
  TORCH_CHECK(false, op, ": expected cell to be \"gru\", \"rnn_tanh\" or \"rnn_relu\", got \"", std::string(cell),
              "\"");
}

inline int64_t num_gates(CellKind c) { return c == CellKind::kLSTM ? 4 : c == CellKind::kGRU ? 3 : 1; }
// What a training forward keeps per slot row for the backward (beside the output): GRU r, z, n and gh_n; LSTM
// its gate activations i, f, g, o (and c, in a tensor of its own: the op's `cells`).
inline int64_t saved_width(CellKind c, int64_t H) {
  return c == CellKind::kGRU || c == CellKind::kLSTM ? 4 * H : 0;
}

// A layer's schedule with everything the engine indexes on the device: the output row of every slot row, the
// batch entry of every slot, and (for the backward) where every slot row's previous h lives.
struct RnnPlan {
  LayerShapes s;
  Steps st;
  int64_t used = 0;
  std::vector<int64_t> order;  // slot -> batch entry
  // Slot rows are the input's rows in order (dense time-major, packed) and slots are batch entries in order:
  // then no gather or scatter is needed (out_rows / batch_of stay undefined).
  bool identity_rows = false, identity_order = false;
  Tensor out_rows;  // (used) int64: the input/output row of each slot row
  Tensor batch_of;  // (B) int64

  Tensor to_slots(const Tensor& rows2d) const {  // (rows, F) in the input's row order -> slot rows
    return identity_rows ? rows2d : rows2d.index_select(0, out_rows);
  }
  Tensor state_to_slots(const Tensor& t) const {
    return identity_order ? t.contiguous() : t.index_select(0, batch_of).contiguous();
  }
  Tensor state_to_batch(const Tensor& t) const {
    return identity_order ? t : at::empty_like(t).index_copy_(0, batch_of, t);
  }
  // The input/output row of slot row r, for a kernel that gathers as it goes (a CPU plan: out_rows on the host).
  struct SlotRows {
    const int64_t* rows;  // null: identity
    int64_t operator()(int64_t r) const { return rows != nullptr ? rows[r] : r; }
  };
  SlotRows slot_row() const { return {identity_rows ? nullptr : out_rows.template const_data_ptr<int64_t>()}; }
};

// upload: host int64 vector -> int64 tensor on the input's device (the CPU: a copy; CUDA: through pinned memory).
template <typename Upload>
RnnPlan make_rnn_plan(const char* op, const Tensor& input, const Tensor& hx, const Tensor* cx, const Tensor& w_ih,
                      const Tensor& w_hh, const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                      const std::optional<Tensor>& w_hr, const std::optional<Tensor>& batch_sizes,
                      const std::optional<Tensor>& sorted_indices, bool batch_first, bool reverse, CellKind cell,
                      Backend backend, Upload upload) {
  RnnPlan plan;
  plan.s = check_recurrent_args(op, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, sorted_indices,
                                batch_first, num_gates(cell), backend);
  plan.st = make_steps(op, plan.s, batch_sizes, reverse);
  const std::optional<Tensor> si_host =
      sorted_indices.has_value() ? std::optional<Tensor>(sorted_indices->to(at::kCPU)) : std::nullopt;
  plan.order = cpu::check_permutation(op, "sorted_indices", si_host, plan.s.B);
  const RowMap map{plan.s.layout, batch_first, plan.s.T, plan.s.B, plan.order.empty() ? nullptr : plan.order.data()};
  const Steps& st = plan.st;
  plan.used = st.T > 0 ? st.offset[st.T - 1] + st.rows[st.T - 1] : 0;
  plan.identity_order = plan.order.empty();
  plan.identity_rows = plan.identity_order && (plan.s.layout == Layout::kPacked ||
                                               (plan.s.layout == Layout::kDense && !batch_first));
  if (!plan.identity_rows) {
    std::vector<int64_t> rows(plan.used);
    for (int64_t t = 0; t < st.T; ++t)
      for (int64_t j = 0; j < st.rows[t]; ++j) rows[st.offset[t] + j] = map.row_at_time(st, t, j);
    plan.out_rows = upload(rows);
  }
  if (!plan.identity_order) plan.batch_of = upload(plan.order);
  return plan;
}

// One direction's recurrence after the input projection, in slot order: what a policy's forward_steps reads
// and writes. h (B, P) holds every slot's state in place (hx on entry, the final states on exit); h_slots
// (used, P) gets every slot row's new h; saved (N, W) the rows the backward needs, when defined. P = H but
// for an LSTM with a projection.
struct ForwardSteps {
  const RnnPlan& plan;
  CellKind cell;
  const Tensor& gx;    // (used, G): x W_ih^T + b_ih of every slot row
  const Tensor& w_hh;  // (G, P), contiguous
  const std::optional<Tensor>& b_hh;
  const Tensor& h;
  const Tensor& h_slots;
  const Tensor& saved;
  // LSTM: the cell state of every slot (B, H) in place, every slot row's new c (N, H) when training, and W_hr
  // (P, H, contiguous) with a projection; undefined otherwise.
  Tensor c = Tensor(), cells = Tensor(), w_hr = Tensor();
  // The policy projects the input itself, inside its step loop (Pointwise::fuses_input): gx is then undefined
  // and x, W_ih and b_ih are what it reads. x holds the input's rows in the input's order: slot row r reads row
  // plan.slot_row(r) (it gathers them as it goes).
  bool fused_input = false;
  Tensor x = Tensor(), w_ih = Tensor();
  std::optional<Tensor> b_ih = std::nullopt;
};

// The backward recurrence: given every slot row's output gradient (dy_slots), the h it produced (h_slots) and
// the h it read (h_prev), writes the pre-activation gradients dgx (used, G) and dgh (used, G; the same tensor
// as dgx for RNN); dh (B, H) holds grad_hy on entry and the gradient of hx on exit.
struct BackwardSteps {
  const RnnPlan& plan;
  CellKind cell;
  const Tensor& saved;  // (N, W) or undefined (RNN)
  const Tensor& h_slots;
  const Tensor& h_prev;
  const Tensor& dy_slots;
  const Tensor& w_hh;  // (G, P), contiguous
  const Tensor& dh;
  const Tensor& dgx;
  const Tensor& dgh;
  // LSTM: every slot row's c (cells) and the c it read (c_prev), both (used, H); dc (B, H) holds grad_cy on entry
  // and the gradient of cx on exit; with a projection, W_hr (P, H) and dh_proj (used, P), which receives the
  // gradient reaching every row's projected h (for W_hr's gradient).
  Tensor cells = Tensor(), c_prev = Tensor(), dc = Tensor(), w_hr = Tensor(), dh_proj = Tensor();
  // The initial states in slot order (B, P) and (B, H; LSTM). With fused_input (the forward's policy projected the
  // input itself), h_prev and c_prev are undefined: the policy's backward_steps and weight_grads work from
  // h_slots, cells and these.
  Tensor h0 = Tensor(), c0 = Tensor();
  bool fused_input = false;
  // With fused_input, also the input's and the output's rows in the input's order (slot row r is their row
  // plan.slot_row(r)); h_slots is then undefined.
  Tensor x_rows = Tensor(), y_rows = Tensor();
  // Scratch a policy's backward_steps may leave for its weight_grads (the CPU's bfloat16 LSTM: its gate
  // gradients rounded to bfloat16).
  mutable Tensor scratch = Tensor();
  // (A native bfloat16 GRU on the CPU: its input gate gradients rounded too; scratch holds the recurrent ones.)
  mutable Tensor scratch_x = Tensor();
  // The input weights (G, I), for a policy whose backward_steps computes the input gradient itself (the CPU's
  // native bfloat16 GRU/RNN, while the gate gradients are in cache): it leaves it here, (used, I), for its
  // weight_grads.
  Tensor w_ih = Tensor();
  mutable Tensor dx_slots = Tensor();
  // The gate gradients' column sums (the bias gradient) where backward_steps adds them up on the way (the CPU's
  // bfloat16 LSTM: (threads, G) partial sums, blocked columns), for its weight_grads.
  mutable Tensor bias_grad = Tensor();
};

// The gradients after the backward recurrence: of every slot row's input (dx_slots, used x I), the weights, the
// biases (b_ih, b_hh; empty without bias) and W_hr (empty without a projection).
struct WeightGrads {
  Tensor dx_slots, w_ih, w_hh, b_ih, b_hh, w_hr;
};

// out = x W^T + b through ATen (any device): a policy's linear_out unless it has a better kernel for the shape.
inline void aten_linear_out(const Tensor& out, const Tensor& x, const Tensor& w, const std::optional<Tensor>& b) {
  Tensor o = out;
  if (b.has_value())
    at::addmm_out(o, *b, x, w.t());
  else
    at::mm_out(o, x, w.t());
}

// out (n, K) = (accumulate ? out : 0) + a (n, G) W (G, K), through ATen.
inline void aten_matmul_out(const Tensor& out, const Tensor& a, const Tensor& w, bool accumulate) {
  Tensor o = out;
  if (accumulate)
    at::addmm_out(o, out, a, w);
  else
    at::mm_out(o, a, w);
}

// The policy's per-step calls (every device implements them):
//   forward(cell, n, H, gx (n, G), gh (n, G), h (n, H) in/out, h_out (n, H), saved (n, W) or undefined): one GRU
//     or RNN step of n slots;
//   backward(cell, n, H, saved (n, W) or undefined, h_new (n, H), h_prev (n, H), dh (n, H), dgx (n, G), dgh (n, G)
//     or undefined when it equals dgx (RNN), dh_direct (n, H) or undefined (RNN)): its backward;
//   lstm_forward(n, H, pre (n, 4H): pre-activations in, activations out, c (n, H) in/out, cells (n, H) or
//     undefined: receives the new c, h (n, H)): one LSTM step in PyTorch's gate order;
//   lstm_backward(n, H, acts (n, 4H), c (n, H), c_prev (n, H), dh (n, H), dc (n, H): incoming on entry, the
//     gradient of c_prev on exit, dgates (n, 4H)): its backward.
// and per layer: linear_out, matmul_out (GEMMs), forward_steps / backward_steps (the step loops: the aten_*
// loops below or the device's own), weight_grads (aten_weight_grads or its own) and fuses_input(cell): whether
// its forward_steps projects the input itself (then gx is not computed, and its own backward_steps and
// weight_grads read the workspace it wrote: the CPU's fused LSTM schedule, with its own gate column order), and
// native_bf16(cell, input): whether it runs this bfloat16 call natively (the CPU's GRU/RNN): its forward_steps
// then projects the input itself (while the backward stays the engine's) and its backward_steps read the output
// gradient in bfloat16 as it is.

// One LSTM step of n slots: gx, gh (n, 4H) the input and recurrent projections (gh is overwritten when gates is
// undefined); gates (n, 4H) receives the activations when defined; c (n, H) in place; cells (n, H) the new c when
// defined; the new state h (P wide) goes to h_out, through hf (n, H) and W_hr with a projection.
template <typename Pointwise>
void lstm_step(int64_t n, int64_t H, const Tensor& gx, const Tensor& gh, const Tensor& gates, const Tensor& c,
               const Tensor& cells, const Tensor& w_hr, const Tensor& hf, const Tensor& h_out) {
  Tensor pre = gates.defined() ? gates : gh;
  at::add_out(pre, gx, gh);
  Pointwise::lstm_forward(n, H, pre, c, cells, w_hr.defined() ? hf : h_out);
  if (w_hr.defined()) Pointwise::linear_out(h_out, hf, w_hr, std::nullopt);
}

// The backward of lstm_step, given d (n, P): the gradient reaching the new state h. dhf (n, H) is scratch for the
// gradient of the unprojected h, with a projection.
template <typename Pointwise>
void lstm_step_backward(int64_t n, int64_t H, const Tensor& d, const Tensor& acts, const Tensor& cells,
                        const Tensor& c_prev, const Tensor& w_hr, const Tensor& dhf, const Tensor& dc,
                        const Tensor& dgates) {
  if (w_hr.defined()) Pointwise::matmul_out(dhf, d, w_hr, /*accumulate=*/false);
  Pointwise::lstm_backward(n, H, acts, cells, c_prev, w_hr.defined() ? dhf : d, dc, dgates);
}

// The recurrence as one GEMM (Pointwise::linear_out) and one pointwise call per step (all threads inside each
// step): any device, any cell.
template <typename Pointwise>
void aten_forward_steps(const ForwardSteps& f) {
  const Steps& st = f.plan.st;
  const int64_t H = f.plan.s.H, B = f.plan.s.B;
  const bool lstm = f.cell == CellKind::kLSTM;
  Tensor gh = at::empty({B, num_gates(f.cell) * H}, f.gx.options());
  Tensor hf = f.w_hr.defined() ? at::empty({B, H}, f.gx.options()) : Tensor();
  // (Rows [a, a + n) of t: t itself when that is all of it, sparing a view per operand on a single step; an
  // undefined t stays undefined.)
  auto rows = [](const Tensor& t, int64_t a, int64_t n) {
    return !t.defined() || (a == 0 && n == t.size(0)) ? t : t.narrow(0, a, n);
  };
  for (int64_t p = 0; p < st.T; ++p) {
    const int64_t n = st.rows_at(p), off = st.offset_at(p);
    const Tensor gh_n = rows(gh, 0, n);
    const Tensor h_n = rows(f.h, 0, n);
    Pointwise::linear_out(gh_n, h_n, f.w_hh, f.b_hh);
    if (lstm) {
      const Tensor out = rows(f.h_slots, off, n);
      lstm_step<Pointwise>(n, H, rows(f.gx, off, n), gh_n, rows(f.saved, off, n), rows(f.c, 0, n),
                           rows(f.cells, off, n), f.w_hr, rows(hf, 0, n), out);
      h_n.copy_(out);
    } else {
      Pointwise::forward(f.cell, n, H, rows(f.gx, off, n), gh_n, h_n, rows(f.h_slots, off, n),
                         rows(f.saved, off, n));
    }
  }
}

template <typename Pointwise>
void aten_backward_steps(const BackwardSteps& b) {
  const Steps& st = b.plan.st;
  const int64_t B = b.plan.s.B, H = b.plan.s.H, P = b.plan.s.P;
  const bool gru = b.cell == CellKind::kGRU, lstm = b.cell == CellKind::kLSTM;
  const auto opts = b.dh.options();
  Tensor dh_direct = gru ? at::empty({B, H}, opts) : Tensor();
  Tensor dtot = at::empty({B, P}, opts);
  Tensor dhf = b.w_hr.defined() ? at::empty({B, H}, opts) : Tensor();
  for (int64_t p = st.T - 1; p >= 0; --p) {
    const int64_t n = st.rows_at(p), off = st.offset_at(p);
    // The gradient reaching the step's new h (kept per row for W_hr's gradient, with a projection).
    Tensor d = b.dh_proj.defined() ? b.dh_proj.narrow(0, off, n) : dtot.narrow(0, 0, n);
    at::add_out(d, b.dh.narrow(0, 0, n), b.dy_slots.narrow(0, off, n));
    Tensor dh_n = b.dh.narrow(0, 0, n);
    if (lstm) {
      lstm_step_backward<Pointwise>(n, H, d, b.saved.narrow(0, off, n), b.cells.narrow(0, off, n),
                                    b.c_prev.narrow(0, off, n), b.w_hr, dhf.defined() ? dhf.narrow(0, 0, n) : dhf,
                                    b.dc.narrow(0, 0, n), b.dgx.narrow(0, off, n));
      at::mm_out(dh_n, b.dgx.narrow(0, off, n), b.w_hh);
      continue;
    }
    Pointwise::backward(b.cell, n, H, b.saved.defined() ? b.saved.narrow(0, off, n) : Tensor(),
                        b.h_slots.narrow(0, off, n), b.h_prev.narrow(0, off, n), d, b.dgx.narrow(0, off, n),
                        gru ? b.dgh.narrow(0, off, n) : Tensor(), gru ? dh_direct.narrow(0, 0, n) : Tensor());
    if (gru)
      at::addmm_out(dh_n, dh_direct.narrow(0, 0, n), b.dgh.narrow(0, off, n), b.w_hh);
    else
      at::mm_out(dh_n, b.dgx.narrow(0, off, n), b.w_hh);
  }
}

// Masked mode (a padded batch with `lengths` on the input's device, never read by the host; the plan is the
// dense one): every entry runs at every step, and entry b is active at time t when t < len(b), len clamped to
// [0, T]. An inactive entry keeps its states and outputs zero; in the backward its pre-activation gradients are
// zero and its state gradients pass through. Written once with ATen ops on top of the policy's linear_out and
// pointwise step, so every device runs the same code.
inline Tensor masked_active(const Tensor& lengths, int64_t T) {
  // (T, B, 1): row t says which entries are active at time t (workspace rows are in time order).
  return lengths.clamp(0, T).unsqueeze(0).gt(at::arange(T, lengths.options()).unsqueeze(1)).unsqueeze(2);
}

template <typename Pointwise>
void masked_forward_steps(const ForwardSteps& f, const Tensor& lengths) {
  const Steps& st = f.plan.st;
  const int64_t B = f.plan.s.B, H = f.plan.s.H, P = f.plan.s.P;
  const bool lstm = f.cell == CellKind::kLSTM;
  const auto opts = f.gx.options();
  const Tensor active = masked_active(lengths, st.T);
  Tensor gh = at::empty({B, num_gates(f.cell) * H}, opts);
  Tensor h_new = at::empty({B, P}, opts);
  Tensor step = at::empty({B, H}, opts);  // the state the step updates in place: c (LSTM) or h
  Tensor hf = f.w_hr.defined() ? at::empty({B, H}, opts) : Tensor();
  for (int64_t p = 0; p < st.T; ++p) {
    const int64_t off = st.offset_at(p);
    const Tensor m = active.select(0, st.time(p)), inactive = m.logical_not();
    Pointwise::linear_out(gh, f.h, f.w_hh, f.b_hh);
    if (lstm) {
      const Tensor gates = f.saved.defined() ? f.saved.narrow(0, off, B) : Tensor();
      const Tensor cells = f.cells.defined() ? f.cells.narrow(0, off, B) : Tensor();
      step.copy_(f.c);
      lstm_step<Pointwise>(B, H, f.gx.narrow(0, off, B), gh, gates, step, cells, f.w_hr, hf, h_new);
      f.c.copy_(at::where(m, step, f.c));
      // Nothing reads an inactive row; zeros keep the projection's weight gradient (o tanh(c) of every row)
      // finite whatever the padding holds.
      if (gates.defined()) gates.masked_fill_(inactive, 0);
      if (cells.defined()) cells.masked_fill_(inactive, 0);
    } else {
      step.copy_(f.h);
      Pointwise::forward(f.cell, B, H, f.gx.narrow(0, off, B), gh, step, h_new,
                         f.saved.defined() ? f.saved.narrow(0, off, B) : Tensor());
    }
    f.h.copy_(at::where(m, h_new, f.h));
    f.h_slots.narrow(0, off, B).copy_(h_new.masked_fill(inactive, 0));
  }
}

// The state every row of a masked layer read: the previous step's value (h_slots: outputs, or LSTM's cells) where
// the entry was active there, else the initial state h0 (an entry's first step; an inactive row's value does not
// matter, its gradients are zero).
inline Tensor masked_h_prev(const Tensor& lengths, const Steps& st, const Tensor& h_slots, const Tensor& h0) {
  const int64_t B = h0.size(0), H = h0.size(1);
  if (st.T <= 1) return h0.contiguous();
  // The previously processed time of time t is t - 1 (forward) or t + 1 (reverse).
  const int64_t n = st.T - 1;
  const Tensor was_active = masked_active(lengths, st.T).narrow(0, st.reverse ? 1 : 0, n);
  const Tensor prev_out = h_slots.view({st.T, B, H}).narrow(0, st.reverse ? 1 : 0, n);
  const Tensor carried = at::where(was_active, prev_out, h0.unsqueeze(0));
  const Tensor first = h0.unsqueeze(0);
  return (st.reverse ? at::cat({carried, first}) : at::cat({first, carried})).view({st.T * B, H});
}

template <typename Pointwise>
void masked_backward_steps(const BackwardSteps& b, const Tensor& lengths) {
  const Steps& st = b.plan.st;
  const int64_t B = b.plan.s.B, H = b.plan.s.H, P = b.plan.s.P;
  const bool gru = b.cell == CellKind::kGRU, lstm = b.cell == CellKind::kLSTM;
  const auto opts = b.dh.options();
  const Tensor active = masked_active(lengths, st.T);
  Tensor dh_direct = gru ? at::empty({B, H}, opts) : Tensor();
  Tensor d = at::empty({B, P}, opts), dh_new = at::empty({B, P}, opts);
  Tensor dc_step = lstm ? at::empty({B, H}, opts) : Tensor();
  Tensor dhf = b.w_hr.defined() ? at::empty({B, H}, opts) : Tensor();
  for (int64_t p = st.T - 1; p >= 0; --p) {
    const int64_t off = st.offset_at(p);
    const Tensor m = active.select(0, st.time(p)), inactive = m.logical_not();
    // The output of an inactive step is the constant zero: its gradient goes nowhere.
    at::add_out(d, b.dh, b.dy_slots.narrow(0, off, B).masked_fill(inactive, 0));
    const Tensor dgx = b.dgx.narrow(0, off, B), dgh = gru ? b.dgh.narrow(0, off, B) : Tensor();
    if (lstm) {
      Tensor dp = d;
      if (b.dh_proj.defined()) {  // kept per row for W_hr's gradient: zero where inactive
        dp = b.dh_proj.narrow(0, off, B);
        dp.copy_(d.masked_fill(inactive, 0));
      }
      dc_step.copy_(b.dc);
      lstm_step_backward<Pointwise>(B, H, dp, b.saved.narrow(0, off, B), b.cells.narrow(0, off, B),
                                    b.c_prev.narrow(0, off, B), b.w_hr, dhf, dc_step, dgx);
      b.dc.copy_(at::where(m, dc_step, b.dc));
    } else {
      Pointwise::backward(b.cell, B, H, b.saved.defined() ? b.saved.narrow(0, off, B) : Tensor(),
                          b.h_slots.narrow(0, off, B), b.h_prev.narrow(0, off, B), d, dgx, dgh,
                          gru ? dh_direct : Tensor());
    }
    dgx.masked_fill_(inactive, 0);
    if (gru) {
      dgh.masked_fill_(inactive, 0);
      at::addmm_out(dh_new, dh_direct, dgh, b.w_hh);
    } else {
      at::mm_out(dh_new, dgx, b.w_hh);
    }
    b.dh.copy_(at::where(m, dh_new, b.dh));
  }
}

// One step of one layer outside a sequence (generation): h (B, H) updated in place from x (B, in).
template <typename Pointwise>
void rnn_cell_step(CellKind cell, const Tensor& x, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                   const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  const int64_t B = h.size(0), H = h.size(1), G = num_gates(cell) * H;
  const Tensor gx = at::empty({B, G}, h.options()), gh = at::empty({B, G}, h.options());
  Pointwise::linear_pair_out(gx, x.contiguous(), w_ih.contiguous(), b_ih, gh, h, w_hh.contiguous(), b_hh);
  Pointwise::forward(cell, B, H, gx, gh, h, at::empty({B, H}, h.options()), Tensor());
}

// The cell ops (rnnext::rnn_cell and its backward): one step of one layer, the GRUCell / RNNCell modules'
// call. The argument checks are the layer's on a one-step input. Returns (hy, saved): saved is what the
// backward needs (GRU: r, z, n, h W_hn^T + b_hn; RNN: nothing).
template <typename Pointwise>
std::tuple<Tensor, Tensor> rnn_cell_forward(const char* op, const Tensor& input, const Tensor& hx,
                                            const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                            const std::optional<Tensor>& b_hh, std::string_view cell_name,
                                            Backend backend) {
  const CellKind cell = parse_cell(op, cell_name);
  cpu::check_dim(op, "input", input, 2, "(batch, input_size)");
  const LayerShapes s = check_recurrent_args(op, input.unsqueeze(0), hx, nullptr, w_ih, w_hh, b_ih, b_hh,
                                             std::nullopt, std::nullopt, std::nullopt, false, num_gates(cell),
                                             backend);
  const int64_t B = s.B, H = s.H, G = num_gates(cell) * H, W = saved_width(cell, H);
  const auto opts = input.options();
  const Tensor gx = at::empty({B, G}, opts), gh = at::empty({B, G}, opts);
  Pointwise::linear_pair_out(gx, input.contiguous(), w_ih.contiguous(), b_ih, gh, hx.contiguous(), w_hh.contiguous(),
                             b_hh);
  // Updated in place: GRU's step reads the previous h from it; the RNN step only writes it.
  Tensor hy = cell == CellKind::kGRU ? hx.contiguous().clone() : at::empty({B, H}, opts);
  Tensor saved = at::empty({W > 0 ? B : 0, W}, opts);
  Pointwise::forward(cell, B, H, gx, gh, hy, at::empty({B, H}, opts), W > 0 ? saved : Tensor());
  return {hy, saved};
}

// -> (grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh (both [0] without bias)).
template <typename Pointwise>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_cell_backward(
    const char* op, const Tensor& grad_hy, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& hy, const Tensor& saved, std::string_view cell_name, bool has_bias,
    Backend backend) {
  const CellKind cell = parse_cell(op, cell_name);
  cpu::check_dim(op, "input", input, 2, "(batch, input_size)");
  const LayerShapes s = check_recurrent_args(op, input.unsqueeze(0), hx, nullptr, w_ih, w_hh, std::nullopt,
                                             std::nullopt, std::nullopt, std::nullopt, std::nullopt, false,
                                             num_gates(cell), backend);
  const int64_t B = s.B, H = s.H, G = num_gates(cell) * H, W = saved_width(cell, H);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_hy", &grad_hy}, {"hy", &hy},
                                {"saved", &saved}})
    cpu::check_same(op, "input", input, name, *t);
  cpu::check_shape(op, "grad_hy", grad_hy, {B, H});
  cpu::check_shape(op, "hy", hy, {B, H});
  cpu::check_shape(op, "saved", saved, {W > 0 ? B : 0, W});
  const bool gru = cell == CellKind::kGRU;
  const auto opts = input.options();
  const Tensor x = input.contiguous(), h = hx.contiguous();
  Tensor dgx = at::empty({B, G}, opts);
  Tensor dgh = gru ? at::empty({B, G}, opts) : dgx;
  Tensor dh_direct = gru ? at::empty({B, H}, opts) : Tensor();
  Pointwise::backward(cell, B, H, gru ? saved.contiguous() : Tensor(), hy.contiguous(), h, grad_hy.contiguous(), dgx,
                      gru ? dgh : Tensor(), dh_direct);
  const Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  // The gradient into hx: its direct part (GRU) plus the recurrent one.
  Tensor grad_hx = gru ? dh_direct : at::empty({B, H}, opts);
  Pointwise::matmul_out(grad_hx, dgh, wh, /*accumulate=*/gru);
  Tensor grad_input = at::empty({B, s.I}, opts);
  Pointwise::matmul_out(grad_input, dgx, wi, /*accumulate=*/false);
  const Tensor empty = at::empty({0}, opts);
  return {grad_input, grad_hx, Pointwise::weight_grad(dgx, x), Pointwise::weight_grad(dgh, h),
          has_bias ? at::sum(dgx, {0}) : empty, has_bias ? at::sum(dgh, {0}) : at::empty({0}, opts)};
}

// The weight gradients as a few large GEMMs over all slot rows (a policy's weight_grads unless it has its own).
inline WeightGrads aten_weight_grads(const BackwardSteps& b, const Tensor& x_slots, const Tensor& w_ih,
                                     bool has_bias) {
  const int64_t H = b.plan.s.H, used = b.plan.used;
  const auto opts = x_slots.options();
  WeightGrads w;
  w.dx_slots = at::mm(b.dgx, w_ih);
  w.w_ih = at::mm(b.dgx.t(), x_slots);
  w.w_hh = at::mm(b.dgh.t(), b.h_prev);
  w.b_ih = has_bias ? at::sum(b.dgx, {0}) : at::empty({0}, opts);
  w.b_hh = !has_bias ? at::empty({0}, opts) : b.cell == CellKind::kGRU ? at::sum(b.dgh, {0}) : w.b_ih.clone();
  w.w_hr = at::empty({0}, opts);
  if (b.dh_proj.defined())  // the unprojected h of every row: o tanh(c), from the saved activations
    w.w_hr = at::mm(b.dh_proj.t(), at::mul(b.saved.narrow(0, 0, used).narrow(1, 3 * H, H), at::tanh(b.cells)));
  return w;
}

// One layer call's tensors, forward: the cell's states (cx for LSTM, else null) and LSTM's projection.
struct LayerArgs {
  const Tensor& input;
  const Tensor& hx;
  const Tensor* cx;
  const Tensor& w_ih;
  const Tensor& w_hh;
  const std::optional<Tensor>& w_hr;
  const std::optional<Tensor>& batch_sizes;
  const std::optional<Tensor>& sorted_indices;
  const std::optional<Tensor>& lengths;
  bool batch_first, reverse;
};

// What a forward returns: the output, the final states (cy undefined without a cell state), the saved rows and
// LSTM's cells (empty when not training).
struct LayerOut {
  Tensor output, hy, cy, saved, cells;
};

// Forward. Pointwise::forward_steps(const ForwardSteps&) runs the recurrence (aten_forward_steps, or a
// device's own schedule).
template <typename Pointwise, typename Upload>
LayerOut layer_forward(const char* op, CellKind cell, const LayerArgs& a, const std::optional<Tensor>& b_ih,
                       const std::optional<Tensor>& b_hh, bool train, Backend backend, Upload upload) {
  if (a.lengths.has_value())
    check_masked_lengths(op, a.input, *a.lengths, a.batch_first, a.batch_sizes, a.sorted_indices);
  const RnnPlan plan = make_rnn_plan(op, a.input, a.hx, a.cx, a.w_ih, a.w_hh, b_ih, b_hh, a.w_hr, a.batch_sizes,
                                     a.sorted_indices, a.batch_first, a.reverse, cell, backend, upload);
  const LayerShapes& s = plan.s;
  const int64_t H = s.H, P = s.P, I = s.I, used = plan.used;
  const bool lstm = cell == CellKind::kLSTM;
  const auto opts = a.input.options();
  std::vector<int64_t> out_shape = a.input.sizes().vec();
  out_shape.back() = P;
  LayerOut r;
  // A padded input's output is zero at the padding.
  r.output = s.layout == Layout::kPadded ? at::zeros(out_shape, opts) : at::empty(out_shape, opts);
  const int64_t W = saved_width(cell, H);
  // The workspace and LSTM's cell state are float32 for a bfloat16 layer on the CPU (which reaches the engine
  // only where the step loop computes bfloat16 natively: the fused LSTM loop), else the input's dtype (CUDA's
  // kernels keep half types in their workspace and compute in float).
  const auto acc_opts =
      a.input.scalar_type() == at::kBFloat16 && backend == Backend::kCPU ? opts.dtype(at::kFloat) : opts;
  // Training keeps rows for the backward; a padded input uses only the first `used`: keep the rest defined.
  auto workspace = [&](bool keep, int64_t width) {
    if (!keep) return at::empty({0}, acc_opts);
    Tensor t = at::empty({s.N, width}, acc_opts);
    t.narrow(0, used, s.N - used).zero_();
    return t;
  };
  r.saved = workspace(train && W > 0, W);
  r.cells = workspace(train && lstm, H);
  if (used == 0) {
    r.hy = a.hx.contiguous().clone();
    if (lstm) r.cy = a.cx->contiguous().clone();
    return r;
  }
  // Slot order; every slot keeps its states in place (copies: the steps update them).
  auto slots = [&](const Tensor& t) { return plan.identity_order ? t.contiguous().clone() : plan.state_to_slots(t); };
  // The state a step updates in place: float32 for a bfloat16 GRU/RNN on the CPU (the native bfloat16 policy,
  // whose outputs are the rounded states); the fused LSTM loop rounds its h itself.
  const bool acc_state = !lstm && acc_opts.dtype() != opts.dtype();
  const Tensor h = acc_state ? slots(a.hx).to(acc_opts.dtype()) : slots(a.hx);
  const Tensor c = lstm ? slots(*a.cx).to(acc_opts.dtype()) : Tensor();
  // (Contiguous weights: the same values give the same bits in any layout.)
  const Tensor w_ih = a.w_ih.contiguous();
  const bool fused =
      !a.lengths.has_value() && (Pointwise::fuses_input(cell) || Pointwise::native_bf16(cell, a.input));
  const Tensor x_rows = a.input.reshape({-1, I}).contiguous();
  Tensor gx;
  if (!fused) {
    // (A temporary: on the CPU from cpu::scratch, memory kept mapped between calls.)
    gx = backend == Backend::kCPU
             ? cpu::scratch(cpu::ScratchSlot::kInputGates, {used, num_gates(cell) * H},
                            acc_opts.dtype().toScalarType())
             : at::empty({used, num_gates(cell) * H}, acc_opts);
    Pointwise::linear_out(gx, plan.to_slots(x_rows).contiguous(), w_ih, b_ih);
  }
  // Every slot row's new h: the output itself when the slot rows are its rows.
  const Tensor h_slots = plan.identity_rows ? r.output.view({-1, P}) : at::empty({used, P}, opts);
  const ForwardSteps f{plan,    cell, gx, a.w_hh.contiguous(), b_hh, h, h_slots, train && W > 0 ? r.saved : Tensor(),
                       c,       train && lstm ? r.cells : Tensor(),
                       a.w_hr.has_value() ? a.w_hr->contiguous() : Tensor(), fused, x_rows, w_ih, b_ih};
  if (a.lengths.has_value())
    masked_forward_steps<Pointwise>(f, *a.lengths);
  else
    Pointwise::forward_steps(f);
  if (!plan.identity_rows) r.output.view({-1, P}).index_copy_(0, plan.out_rows, h_slots);
  r.hy = plan.state_to_batch(h).to(opts.dtype());
  if (lstm) r.cy = plan.state_to_batch(c).to(opts.dtype());
  return r;
}

// The backward's extra tensors: the gradients of the output and final states (grad_cy null without a cell
// state), and what the forward returned.
struct LayerGrads {
  const Tensor& grad_output;
  const Tensor& grad_hy;
  const Tensor* grad_cy;
  const Tensor& output;
  const Tensor& saved;
  const Tensor* cells;
};

// What a backward returns: the gradients of the input, the initial states (grad_cx undefined without a cell
// state), the weights, the biases (empty without bias; LSTM's op returns grad_b_ih only: the two are equal) and
// W_hr (empty without a projection).
struct LayerGradsOut {
  Tensor grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr;
};

// Backward. Pointwise::backward_steps(const BackwardSteps&) runs the backward recurrence.
template <typename Pointwise, typename Upload>
LayerGradsOut layer_backward(const char* op, CellKind cell, const LayerArgs& a, const LayerGrads& g, bool has_bias,
                             Backend backend, Upload upload) {
  if (a.lengths.has_value())
    check_masked_lengths(op, a.input, *a.lengths, a.batch_first, a.batch_sizes, a.sorted_indices);
  const RnnPlan plan = make_rnn_plan(op, a.input, a.hx, a.cx, a.w_ih, a.w_hh, std::nullopt, std::nullopt, a.w_hr,
                                     a.batch_sizes, a.sorted_indices, a.batch_first, a.reverse, cell, backend, upload);
  const LayerShapes& s = plan.s;
  const Steps& st = plan.st;
  const bool lstm = cell == CellKind::kLSTM, gru = cell == CellKind::kGRU;
  const int64_t H = s.H, P = s.P, I = s.I, used = plan.used, G = num_gates(cell) * H, W = saved_width(cell, H);
  const Tensor& input = a.input;
  if (lstm) {
    check_layer_backward_args(op, s, input, g.grad_output, g.grad_hy, *g.grad_cy, g.output, g.saved, *g.cells);
  } else {
    std::vector<int64_t> out_shape = input.sizes().vec();
    out_shape.back() = H;
    for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_output", &g.grad_output},
                                  {"grad_hy", &g.grad_hy}, {"output", &g.output}})
      cpu::check_same(op, "input", input, name, *t);
    // (A bfloat16 layer's workspace on the CPU is float32.)
    if (input.scalar_type() == at::kBFloat16 && backend == Backend::kCPU) {
      TORCH_CHECK(g.saved.scalar_type() == at::kFloat && g.saved.device() == input.device(), op,
                  ": expected saved to be float32 on the device of input (a bfloat16 layer's workspace), got ",
                  g.saved.scalar_type(), " on ", g.saved.device());
    } else {
      cpu::check_same(op, "input", input, "saved", g.saved);
    }
    cpu::check_shape(op, "grad_output", g.grad_output, out_shape);
    cpu::check_shape(op, "output", g.output, out_shape);
    cpu::check_shape(op, "grad_hy", g.grad_hy, {s.B, H});
    if (W > 0) cpu::check_shape(op, "saved", g.saved, {s.N, W});
  }
  const auto opts = input.options();
  // A bfloat16 layer on the CPU (the fused LSTM loop's native path) runs its recurrence in float32: the state
  // gradients, the gate gradients and the output gradient it reads; its policy's weight_grads run the GEMMs.
  const auto acc_opts =
      input.scalar_type() == at::kBFloat16 && backend == Backend::kCPU ? opts.dtype(at::kFloat) : opts;
  // The pointwise policies read through raw pointers, and the GEMMs should give the same bits for the same
  // values in any layout: contiguous operands.
  const Tensor sv = g.saved.contiguous(), wi = a.w_ih.contiguous(), wh = a.w_hh.contiguous();
  auto slots = [&](const Tensor& t) {
    return (plan.identity_order ? t.contiguous().clone() : plan.state_to_slots(t)).to(acc_opts.dtype());
  };
  const Tensor dh = slots(g.grad_hy), dc = lstm ? slots(*g.grad_cy) : Tensor();  // slot order
  auto to_batch = [&](const Tensor& t) { return t.defined() ? plan.state_to_batch(t).to(opts.dtype()) : t; };
  LayerGradsOut r;
  const Tensor empty = at::empty({0}, opts);
  r.grad_b_ih = r.grad_b_hh = r.grad_w_hr = empty;
  if (used == 0) {
    r.grad_input = at::zeros(input.sizes(), opts);
    r.grad_hx = to_batch(dh);
    r.grad_cx = to_batch(dc);
    r.grad_w_ih = at::zeros(a.w_ih.sizes(), opts);
    r.grad_w_hh = at::zeros(a.w_hh.sizes(), opts);
    if (has_bias) r.grad_b_ih = at::zeros({G}, opts), r.grad_b_hh = at::zeros({G}, opts);
    if (a.w_hr.has_value()) r.grad_w_hr = at::zeros(a.w_hr->sizes(), opts);
    return r;
  }
  const bool fused = !a.lengths.has_value() && Pointwise::fuses_input(cell);
  // (On the CPU the large temporaries come from cpu::scratch: memory kept mapped between calls.)
  auto temp = [&](cpu::ScratchSlot slot, at::IntArrayRef sizes, at::ScalarType dtype) {
    return backend == Backend::kCPU ? cpu::scratch(slot, sizes, dtype) : at::empty(sizes, opts.dtype(dtype));
  };
  Tensor dy_slots = plan.to_slots(g.grad_output.reshape({-1, P})).contiguous();
  if (dy_slots.scalar_type() != acc_opts.dtype().toScalarType() && !Pointwise::native_bf16(cell, input))
    dy_slots = temp(cpu::ScratchSlot::kOutputGrad, {used, P}, acc_opts.dtype().toScalarType()).copy_(dy_slots);
  const Tensor x_rows = input.reshape({-1, I}).contiguous(), y_rows = g.output.reshape({-1, P}).contiguous();
  const Tensor h_slots = fused ? Tensor() : plan.to_slots(y_rows).contiguous();
  // The state each slot row read: the slot's row of the previous step, or the initial state for a slot's first
  // step.
  Tensor prev_rows;
  // Every step with all B slots (a dense batch): the previous rows are the initial state, then every row but the
  // last step's, in order (reversed: every row but the first time step's, then the initial state; one copy, no
  // gather).
  bool every_slot = true;
  for (int64_t p = 0; p < st.T; ++p) every_slot = every_slot && st.rows_at(p) == s.B;
  if (!a.lengths.has_value() && !fused && !every_slot) {
    std::vector<int64_t> prev(used);
    for (int64_t p = 0; p < st.T; ++p)
      for (int64_t j = 0, n_prev = st.rows_at(p - 1); j < st.rows_at(p); ++j)
        prev[st.offset_at(p) + j] = j < n_prev ? st.offset_at(p - 1) + j : used + j;
    prev_rows = upload(prev);
  }
  auto previous = [&](const Tensor& rows, const Tensor& first) {
    if (fused) return Tensor();
    if (a.lengths.has_value()) return masked_h_prev(*a.lengths, st, rows, first);
    if (!every_slot) return at::cat({rows, first}).index_select(0, prev_rows);
    return st.reverse ? at::cat({rows.narrow(0, s.B, used - s.B), first})
                      : at::cat({first, rows.narrow(0, 0, used - s.B)});
  };
  const Tensor h0 = plan.state_to_slots(a.hx);
  const Tensor h_prev = previous(h_slots, h0);
  const Tensor cells = lstm ? g.cells->narrow(0, 0, used).contiguous() : Tensor();
  // (A native bfloat16 call keeps its gate gradients in bfloat16 only: no float32 ones, (0, G).)
  const int64_t dg_rows = Pointwise::native_bf16(cell, input) ? 0 : used;
  Tensor dgx = temp(cpu::ScratchSlot::kGateGrads, {dg_rows, G}, acc_opts.dtype().toScalarType());
  Tensor dgh = gru ? temp(cpu::ScratchSlot::kGateGradsH, {dg_rows, G}, acc_opts.dtype().toScalarType()) : dgx;
  BackwardSteps b{plan, cell, W > 0 ? sv : Tensor(), h_slots, h_prev, dy_slots, wh, dh, dgx, dgh};
  b.h0 = h0;
  b.w_ih = wi;
  b.fused_input = fused;
  if (fused) b.x_rows = x_rows, b.y_rows = y_rows;
  if (lstm) {
    b.cells = cells;
    b.c0 = plan.state_to_slots(*a.cx).to(acc_opts.dtype());
    b.c_prev = previous(cells, b.c0);
    b.dc = dc;
    if (a.w_hr.has_value()) {
      b.w_hr = a.w_hr->contiguous();
      b.dh_proj = at::empty({used, P}, opts);
    }
  }
  if (a.lengths.has_value())
    masked_backward_steps<Pointwise>(b, *a.lengths);
  else
    Pointwise::backward_steps(b);
  WeightGrads w = Pointwise::weight_grads(b, fused ? Tensor() : plan.to_slots(x_rows).contiguous(), wi, has_bias);
  const Tensor grad_input =
      plan.identity_rows ? w.dx_slots
                         : at::zeros({input.numel() / I, I}, opts).index_copy_(0, plan.out_rows, w.dx_slots);
  r.grad_input = grad_input.view(input.sizes());
  r.grad_hx = to_batch(dh);
  r.grad_cx = to_batch(dc);
  r.grad_w_ih = w.w_ih;
  r.grad_w_hh = w.w_hh;
  r.grad_b_ih = w.b_ih;
  r.grad_b_hh = w.b_hh;
  r.grad_w_hr = w.w_hr;
  return r;
}

// The two ops' entry points, any device.
template <typename Pointwise, typename Upload>
std::tuple<Tensor, Tensor, Tensor> rnn_layer_forward(const char* op, const Tensor& input, const Tensor& hx,
                                                     const Tensor& w_ih, const Tensor& w_hh,
                                                     const std::optional<Tensor>& b_ih,
                                                     const std::optional<Tensor>& b_hh,
                                                     const std::optional<Tensor>& batch_sizes,
                                                     const std::optional<Tensor>& sorted_indices, bool batch_first,
                                                     bool reverse, bool train, std::string_view cell_name,
                                                     const std::optional<Tensor>& lengths, Backend backend,
                                                     Upload upload) {
  const CellKind cell = parse_cell(op, cell_name);
  const std::optional<Tensor> no_proj;
  const LayerArgs a{input, hx, nullptr, w_ih, w_hh, no_proj, batch_sizes, sorted_indices, lengths, batch_first,
                    reverse};
  LayerOut r = layer_forward<Pointwise>(op, cell, a, b_ih, b_hh, train, backend, upload);
  return {r.output, r.hy, r.saved};
}

template <typename Pointwise, typename Upload>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_layer_backward(
    const char* op, const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input, const Tensor& hx,
    const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& batch_sizes,
    const std::optional<Tensor>& sorted_indices, bool batch_first, bool reverse, const Tensor& output,
    const Tensor& saved, std::string_view cell_name, bool has_bias, const std::optional<Tensor>& lengths,
    Backend backend, Upload upload) {
  const CellKind cell = parse_cell(op, cell_name);
  const std::optional<Tensor> no_proj;
  const LayerArgs a{input, hx, nullptr, w_ih, w_hh, no_proj, batch_sizes, sorted_indices, lengths, batch_first,
                    reverse};
  LayerGradsOut r = layer_backward<Pointwise>(op, cell, a, {grad_output, grad_hy, nullptr, output, saved, nullptr},
                                              has_bias, backend, upload);
  return {r.grad_input, r.grad_hx, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh};
}

template <typename Pointwise, typename Upload>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_forward(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices, bool batch_first,
    bool reverse, bool train, const std::optional<Tensor>& lengths, Backend backend, Upload upload) {
  const LayerArgs a{input, hx, &cx, w_ih, w_hh, w_hr, batch_sizes, sorted_indices, lengths, batch_first, reverse};
  LayerOut r = layer_forward<Pointwise>("rnnext::lstm_layer", CellKind::kLSTM, a, b_ih, b_hh, train, backend, upload);
  return {r.output, r.hy, r.cy, r.saved, r.cells};
}

template <typename Pointwise, typename Upload>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward(
    const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
    const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices, bool batch_first,
    const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse, bool has_bias,
    const std::optional<Tensor>& lengths, Backend backend, Upload upload) {
  const LayerArgs a{input, hx, &cx, w_ih, w_hh, w_hr, batch_sizes, sorted_indices, lengths, batch_first, reverse};
  LayerGradsOut r = layer_backward<Pointwise>("rnnext::lstm_layer_backward", CellKind::kLSTM, a,
                                              {grad_output, grad_hy, &grad_cy, output, gates, &cells}, has_bias,
                                              backend, upload);
  return {r.grad_input, r.grad_hx, r.grad_cx, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_w_hr};
}

}  // namespace rnnext::common

namespace rnnext::cpu {
// common::rnn_cell_step with the CPU kernels (csrc/cpu/rnn_layer.cpp), for the generation loop.
void rnn_cell_step(common::CellKind cell, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                   const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                   const std::optional<at::Tensor>& b_hh);

// The CPU's fused LSTM step loop (csrc/cpu/lstm_layer.cpp): the CPU policy's forward_steps, backward_steps and
// weight_grads for an LSTM (host-side layouts), with its own blocked gate column order in the workspace.
void lstm_fused_forward_steps(const common::ForwardSteps& f);
void lstm_fused_backward_steps(const common::BackwardSteps& b);
common::WeightGrads lstm_fused_weight_grads(const common::BackwardSteps& b, const at::Tensor& w_ih, bool has_bias);
// Whether the fused LSTM forward runs bfloat16 natively here (AVX512-BF16 GEMMs): without a projection and
// outside masked mode, on a CPU that has the instructions.
bool lstm_fused_takes_bf16(const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& lengths);
}  // namespace rnnext::cpu

namespace rnnext::cuda {
// common::rnn_cell_step with the CUDA kernels (csrc/cuda/rnn_layer.cu).
void rnn_cell_step(common::CellKind cell, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                   const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                   const std::optional<at::Tensor>& b_hh);
}  // namespace rnnext::cuda
