// The GRU / vanilla-RNN layer (rnnext::rnn_layer and its backward), written once for every device: the input
// projection of all steps is one GEMM, each step runs the recurrent GEMM and the cell's fused pointwise step
// (the only device-specific part: a Pointwise policy, csrc/cpu/rnn_layer.cpp and csrc/cuda/rnn_layer.cu), and
// the backward computes the weight gradients as a few large GEMMs over all steps. Layouts and the slot
// schedule are those of the LSTM layer (common/layer_schedule.h): dense, packed, padded with batch sizes (and
// sorted_indices), batch_first, reverse, and masked mode (device lengths). Workspace rows are slots in time
// order (like packed data).
//
// Keeping gx and gh apart is what GRU needs (n = tanh(gx_n + r * gh_n)), at no extra FLOPs.
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
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/layer_schedule.h"
#include "cpu/checks.h"

namespace rnnext::common {

enum class CellKind { kGRU, kRNNTanh, kRNNRelu };

inline CellKind parse_cell(const char* op, std::string_view cell) {
  if (cell == "gru") return CellKind::kGRU;
  if (cell == "rnn_tanh") return CellKind::kRNNTanh;
  if (cell == "rnn_relu") return CellKind::kRNNRelu;
  TORCH_CHECK(false, op, ": expected cell to be \"gru\", \"rnn_tanh\" or \"rnn_relu\", got \"", std::string(cell),
              "\"");
}

inline int64_t num_gates(CellKind c) { return c == CellKind::kGRU ? 3 : 1; }
// What a training forward keeps per slot row for the backward (beside the output): GRU r, z, n and gh_n.
inline int64_t saved_width(CellKind c, int64_t H) { return c == CellKind::kGRU ? 4 * H : 0; }

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
};

// upload: host int64 vector -> int64 tensor on the input's device (the CPU: a copy; CUDA: through pinned memory).
template <typename Upload>
RnnPlan make_rnn_plan(const char* op, const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                      const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                      const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices,
                      bool batch_first, bool reverse, CellKind cell, Backend backend, Upload upload) {
  RnnPlan plan;
  plan.s = check_recurrent_args(op, input, hx, nullptr, w_ih, w_hh, b_ih, b_hh, std::nullopt, batch_sizes,
                                sorted_indices, batch_first, num_gates(cell), backend);
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
// and writes. h (B, H) holds every slot's state in place (hx on entry, the final states on exit); h_slots
// (used, H) gets every slot row's new h; saved (N, W) the rows the backward needs, when defined.
struct ForwardSteps {
  const RnnPlan& plan;
  CellKind cell;
  const Tensor& gx;    // (used, G): x W_ih^T + b_ih of every slot row
  const Tensor& w_hh;  // (G, H), contiguous
  const std::optional<Tensor>& b_hh;
  const Tensor& h;
  const Tensor& h_slots;
  const Tensor& saved;
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
  const Tensor& w_hh;  // (G, H), contiguous
  const Tensor& dh;
  const Tensor& dgx;
  const Tensor& dgh;
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

// The recurrence as one GEMM (Pointwise::linear_out) and one pointwise call per step (all threads inside each
// step): any device.
// Pointwise::forward(cell, n, H, gx (n, G H), gh (n, G H), h (n, H) in/out, h_out (n, H), saved (n, W) or
// undefined) runs one step's cell on its n slots; Pointwise::backward(cell, n, H, saved (n, W) or undefined,
// h_new (n, H), h_prev (n, H), dh (n, H), dgx (n, G H), dgh (n, G H) or undefined when it equals dgx (RNN),
// dh_direct (n, H) or undefined (RNN)) its backward.
template <typename Pointwise>
void aten_forward_steps(const ForwardSteps& f) {
  const Steps& st = f.plan.st;
  const int64_t H = f.plan.s.H;
  Tensor gh = at::empty({f.plan.s.B, num_gates(f.cell) * H}, f.gx.options());
  // (Rows [a, a + n) of t: t itself when that is all of it, sparing a view per operand on a single step.)
  auto rows = [](const Tensor& t, int64_t a, int64_t n) { return a == 0 && n == t.size(0) ? t : t.narrow(0, a, n); };
  for (int64_t p = 0; p < st.T; ++p) {
    const int64_t n = st.rows_at(p), off = st.offset_at(p);
    const Tensor gh_n = rows(gh, 0, n);
    const Tensor h_n = rows(f.h, 0, n);
    Pointwise::linear_out(gh_n, h_n, f.w_hh, f.b_hh);
    Pointwise::forward(f.cell, n, H, rows(f.gx, off, n), gh_n, h_n, rows(f.h_slots, off, n),
                       f.saved.defined() ? rows(f.saved, off, n) : Tensor());
  }
}

template <typename Pointwise>
void aten_backward_steps(const BackwardSteps& b) {
  const Steps& st = b.plan.st;
  const int64_t B = b.plan.s.B, H = b.plan.s.H;
  const bool gru = b.cell == CellKind::kGRU;
  const auto opts = b.dh.options();
  Tensor dh_direct = gru ? at::empty({B, H}, opts) : Tensor();
  Tensor dtot = at::empty({B, H}, opts);
  for (int64_t p = st.T - 1; p >= 0; --p) {
    const int64_t n = st.rows_at(p), off = st.offset_at(p);
    Tensor d = dtot.narrow(0, 0, n);
    at::add_out(d, b.dh.narrow(0, 0, n), b.dy_slots.narrow(0, off, n));
    Pointwise::backward(b.cell, n, H, b.saved.defined() ? b.saved.narrow(0, off, n) : Tensor(),
                        b.h_slots.narrow(0, off, n), b.h_prev.narrow(0, off, n), d, b.dgx.narrow(0, off, n),
                        gru ? b.dgh.narrow(0, off, n) : Tensor(), gru ? dh_direct.narrow(0, 0, n) : Tensor());
    Tensor dh_n = b.dh.narrow(0, 0, n);
    if (gru)
      at::addmm_out(dh_n, dh_direct.narrow(0, 0, n), b.dgh.narrow(0, off, n), b.w_hh);
    else
      at::mm_out(dh_n, b.dgx.narrow(0, off, n), b.w_hh);
  }
}

// Masked mode (a padded batch with `lengths` on the input's device, never read by the host; the plan is the
// dense one): every entry runs at every step, and entry b is active at time t when t < len(b), len clamped to
// [0, T]. An inactive entry keeps its state and outputs zero; in the backward its pre-activation gradients are
// zero and its state gradient passes through. Written once with ATen ops on top of the policy's linear_out and
// pointwise step, so every device runs the same code.
inline Tensor masked_active(const Tensor& lengths, int64_t T) {
  // (T, B, 1): row t says which entries are active at time t (workspace rows are in time order).
  return lengths.clamp(0, T).unsqueeze(0).gt(at::arange(T, lengths.options()).unsqueeze(1)).unsqueeze(2);
}

template <typename Pointwise>
void masked_forward_steps(const ForwardSteps& f, const Tensor& lengths) {
  const Steps& st = f.plan.st;
  const int64_t B = f.plan.s.B, H = f.plan.s.H;
  const auto opts = f.gx.options();
  const Tensor active = masked_active(lengths, st.T);
  Tensor gh = at::empty({B, num_gates(f.cell) * H}, opts);
  Tensor h_step = at::empty({B, H}, opts), h_new = at::empty({B, H}, opts);
  for (int64_t p = 0; p < st.T; ++p) {
    const int64_t off = st.offset_at(p);
    const Tensor m = active.select(0, st.time(p));
    Pointwise::linear_out(gh, f.h, f.w_hh, f.b_hh);
    h_step.copy_(f.h);
    Pointwise::forward(f.cell, B, H, f.gx.narrow(0, off, B), gh, h_step, h_new,
                       f.saved.defined() ? f.saved.narrow(0, off, B) : Tensor());
    f.h.copy_(at::where(m, h_new, f.h));
    f.h_slots.narrow(0, off, B).copy_(h_new.masked_fill(m.logical_not(), 0));
  }
}

// The h every row of a masked layer read: the previous step's output where the entry was active there, else hx
// (an entry's first step; an inactive row's value does not matter, its gradients are zero).
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
  const int64_t B = b.plan.s.B, H = b.plan.s.H;
  const bool gru = b.cell == CellKind::kGRU;
  const auto opts = b.dh.options();
  const Tensor active = masked_active(lengths, st.T);
  Tensor dh_direct = gru ? at::empty({B, H}, opts) : Tensor();
  Tensor d = at::empty({B, H}, opts), dh_new = at::empty({B, H}, opts);
  for (int64_t p = st.T - 1; p >= 0; --p) {
    const int64_t off = st.offset_at(p);
    const Tensor m = active.select(0, st.time(p)), inactive = m.logical_not();
    // The output of an inactive step is the constant zero: its gradient goes nowhere.
    at::add_out(d, b.dh, b.dy_slots.narrow(0, off, B).masked_fill(inactive, 0));
    const Tensor dgx = b.dgx.narrow(0, off, B), dgh = gru ? b.dgh.narrow(0, off, B) : Tensor();
    Pointwise::backward(b.cell, B, H, b.saved.defined() ? b.saved.narrow(0, off, B) : Tensor(),
                        b.h_slots.narrow(0, off, B), b.h_prev.narrow(0, off, B), d, dgx, dgh,
                        gru ? dh_direct : Tensor());
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

// Forward. Pointwise::forward_steps(const ForwardSteps&) runs the recurrence (aten_forward_steps, or a
// device's own schedule).
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
  if (lengths.has_value()) check_masked_lengths(op, input, *lengths, batch_first, batch_sizes, sorted_indices);
  const RnnPlan plan = make_rnn_plan(op, input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, sorted_indices, batch_first,
                                     reverse, cell, backend, upload);
  const LayerShapes& s = plan.s;
  const int64_t H = s.H, I = s.I, used = plan.used;
  const auto opts = input.options();
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = H;
  // A padded input's output is zero at the padding.
  Tensor output = s.layout == Layout::kPadded ? at::zeros(out_shape, opts) : at::empty(out_shape, opts);
  const int64_t W = saved_width(cell, H);
  Tensor saved = train && W > 0 ? at::zeros({s.N, W}, opts) : at::empty({0}, opts);
  // Slot order; every slot keeps its state in place (a copy: the steps update it).
  Tensor h = plan.identity_order ? hx.contiguous().clone() : plan.state_to_slots(hx);
  if (used == 0) return {output, hx.contiguous().clone(), saved};
  const Tensor x_slots = plan.to_slots(input.reshape({-1, I})).contiguous();
  // (Contiguous weights: the same values give the same bits in any layout.)
  const Tensor gx = at::empty({used, num_gates(cell) * H}, opts);
  Pointwise::linear_out(gx, x_slots, w_ih.contiguous(), b_ih);
  // Every slot row's new h: the output itself when the slot rows are its rows.
  Tensor h_slots = plan.identity_rows ? output.view({-1, H}) : at::empty({used, H}, opts);
  const ForwardSteps f{plan, cell, gx, w_hh.contiguous(), b_hh, h, h_slots, train && W > 0 ? saved : Tensor()};
  if (lengths.has_value())
    masked_forward_steps<Pointwise>(f, *lengths);
  else
    Pointwise::forward_steps(f);
  if (!plan.identity_rows) output.view({-1, H}).index_copy_(0, plan.out_rows, h_slots);
  return {output, plan.state_to_batch(h), saved};
}

// Backward. Pointwise::backward_steps(const BackwardSteps&) runs the backward recurrence.
template <typename Pointwise, typename Upload>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_layer_backward(
    const char* op, const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input, const Tensor& hx,
    const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& batch_sizes,
    const std::optional<Tensor>& sorted_indices, bool batch_first, bool reverse, const Tensor& output,
    const Tensor& saved, std::string_view cell_name, bool has_bias, const std::optional<Tensor>& lengths,
    Backend backend, Upload upload) {
  const CellKind cell = parse_cell(op, cell_name);
  if (lengths.has_value()) check_masked_lengths(op, input, *lengths, batch_first, batch_sizes, sorted_indices);
  const RnnPlan plan = make_rnn_plan(op, input, hx, w_ih, w_hh, std::nullopt, std::nullopt, batch_sizes,
                                     sorted_indices, batch_first, reverse, cell, backend, upload);
  const LayerShapes& s = plan.s;
  const Steps& st = plan.st;
  const int64_t H = s.H, I = s.I, used = plan.used, G = num_gates(cell) * H, W = saved_width(cell, H);
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = H;
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_output", &grad_output},
                                {"grad_hy", &grad_hy}, {"output", &output}, {"saved", &saved}})
    cpu::check_same(op, "input", input, name, *t);
  cpu::check_shape(op, "grad_output", grad_output, out_shape);
  cpu::check_shape(op, "output", output, out_shape);
  cpu::check_shape(op, "grad_hy", grad_hy, {s.B, H});
  if (W > 0)
    cpu::check_shape(op, "saved", saved, {s.N, W});
  const auto opts = input.options();
  // The pointwise policies read through raw pointers, and the GEMMs should give the same bits for the same
  // values in any layout: contiguous operands.
  const Tensor sv = saved.contiguous(), wi = w_ih.contiguous(), wh = w_hh.contiguous();
  Tensor dh = plan.identity_order ? grad_hy.contiguous().clone() : plan.state_to_slots(grad_hy);  // slot order
  auto to_batch = [&](const Tensor& t) { return plan.state_to_batch(t); };
  const Tensor empty = at::empty({0}, opts);
  if (used == 0)
    return {at::zeros(input.sizes(), opts), to_batch(dh), at::zeros(w_ih.sizes(), opts),
            at::zeros(w_hh.sizes(), opts), has_bias ? at::zeros({G}, opts) : empty,
            has_bias ? at::zeros({G}, opts) : at::empty({0}, opts)};
  const Tensor dy_slots = plan.to_slots(grad_output.reshape({-1, H})).contiguous();
  const Tensor h_slots = plan.to_slots(output.reshape({-1, H})).contiguous();
  // The h each slot row read: the slot's row of the previous step, or hx for a slot's first step.
  std::vector<int64_t> prev(used);
  for (int64_t p = 0; p < st.T; ++p)
    for (int64_t j = 0, n_prev = st.rows_at(p - 1); j < st.rows_at(p); ++j)
      prev[st.offset_at(p) + j] = j < n_prev ? st.offset_at(p - 1) + j : used + j;
  const Tensor h0 = plan.state_to_slots(hx);
  const Tensor h_prev = lengths.has_value() ? masked_h_prev(*lengths, st, h_slots, h0)
                                            : at::cat({h_slots, h0}).index_select(0, upload(prev));
  Tensor dgx = at::empty({used, G}, opts);
  Tensor dgh = cell == CellKind::kGRU ? at::empty({used, G}, opts) : dgx;
  const BackwardSteps b{plan, cell, W > 0 ? sv : Tensor(), h_slots, h_prev, dy_slots, wh, dh, dgx, dgh};
  if (lengths.has_value())
    masked_backward_steps<Pointwise>(b, *lengths);
  else
    Pointwise::backward_steps(b);
  const Tensor x_slots = plan.to_slots(input.reshape({-1, I})).contiguous();
  const Tensor dx_slots = at::mm(dgx, wi);
  const Tensor grad_input = plan.identity_rows ? dx_slots
                                               : at::zeros({input.numel() / I, I}, opts).index_copy_(0, plan.out_rows,
                                                                                                    dx_slots);
  return {grad_input.view(input.sizes()), to_batch(dh), at::mm(dgx.t(), x_slots), at::mm(dgh.t(), h_prev),
          has_bias ? at::sum(dgx, {0}) : empty, has_bias ? at::sum(dgh, {0}) : at::empty({0}, opts)};
}

}  // namespace rnnext::common

namespace rnnext::cpu {
// common::rnn_cell_step with the CPU kernels (csrc/cpu/rnn_layer.cpp), for the generation loop.
void rnn_cell_step(common::CellKind cell, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                   const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                   const std::optional<at::Tensor>& b_hh);
}  // namespace rnnext::cpu

namespace rnnext::cuda {
// common::rnn_cell_step with the CUDA kernels (csrc/cuda/rnn_layer.cu).
void rnn_cell_step(common::CellKind cell, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                   const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                   const std::optional<at::Tensor>& b_hh);
}  // namespace rnnext::cuda
