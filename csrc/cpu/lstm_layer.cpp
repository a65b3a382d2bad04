// CPU kernels of the fused LSTM layer: one layer, one direction, over a whole sequence, forward and backward.
//
// Inputs come in three layouts, all run by the same recurrence:
//   dense   (T, B, I) or (B, T, I) with batch_first: every batch entry is active at every step;
//   packed  (N, I) with batch_sizes: PackedSequence data, step t holds rows offset[t] .. offset[t] + bs[t];
//   padded  (T, B, I) or (B, T, I) with batch_sizes (and sorted_indices): variable lengths without packing;
//           at step t the entries sorted_indices[0 .. bs[t]) are active, the rest is padding (zero output).
// The kernels work on "slots": slot j of step t is the j-th active entry; slots 0 .. bs[t] of a step are
// contiguous in every internal buffer (the gate/cell workspace is laid out like packed data), and a RowMap
// says which row of the input/output tensors a slot reads and writes.
//
// Steps are processed in order p = 0..T-1, at time t = p (forward) or T-1-p (reverse). Slots keep their state
// in place between steps, so a slot that joins late (reverse direction) starts from hx and one that leaves
// early (forward direction) leaves its final state behind.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/index_copy.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zero.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "common/layer_schedule.h"
#include "common/rnn_engine.h"
#include "cpu/checks.h"
#include "cpu/gemm.h"
#include "cpu/lstm_weights.h"
#include "cpu/pointwise.h"
#include "cpu/slot_split.h"
#include "kernels/lstm_layout.h"

namespace rnnext::cpu {
namespace {

using at::Tensor;
using common::check_layer_args;
using common::LayerShapes;
using common::Layout;
using common::make_steps;
using common::RowMap;
using common::Steps;
using kernels::block_first_col;
using kernels::block_first_unit;
using kernels::block_width;
using kernels::num_unit_blocks;

// Below this many multiply-adds per step, threads cost more than they give.
constexpr int64_t kParallelStepWork = 1 << 15;
int64_t grain_for(int64_t items, int64_t work) { return work < kParallelStepWork ? items : 1; }

// ---------------------------------------------------------------------------------------------------------
// Forward

template <typename scalar_t>
struct Forward {
  const LayerShapes& s;
  const Steps& st;
  const RowMap& map;
  int64_t H, P, I, K, G, NB;
  bool proj, gates_per_step;
  const scalar_t* x;     // input rows (I wide)
  const scalar_t* wt;    // [W_ih W_hh]^T blocked (K, G)
  const scalar_t* bias;  // blocked, or null
  const scalar_t* whr;   // W_hr^T (H, P), or null
  scalar_t* g;           // gates workspace (N, G), or one step's (B, G) with gates_per_step
  scalar_t* c_save;      // cell states (N, H), or null
  scalar_t* xh;          // two buffers (B, K) of [x_t | h_{t-1}] per slot
  scalar_t* c;           // cell state per slot (B, H)
  scalar_t* hf;          // unprojected h per slot (B, H), with proj
  scalar_t* y;           // output rows (P wide)
  scalar_t* hn;          // final h (B, P), batch order
  scalar_t* cn;          // final c (B, H), batch order

  scalar_t* xh_buf(int64_t p) const { return xh + (p % 2) * s.B * K; }
  // x of step p into the read buffer of step p, slots [j0, j1).
  void load_x(int64_t p, int64_t j0, int64_t j1) const {
    scalar_t* dst = xh_buf(p);
    for (int64_t j = j0; j < j1; ++j) {
      const scalar_t* src = x + map.row(st, p, j) * I;
      std::copy(src, src + I, dst + j * K);
    }
  }
  // Gates, pointwise step and (without proj) h for slots [j0, j1) and unit blocks [k0, k1) of step p.
  void cells(int64_t p, int64_t j0, int64_t j1, int64_t k0, int64_t k1) const {
    const int64_t m = j1 - j0, off = st.offset_at(p);
    const scalar_t* xr = xh_buf(p) + j0 * K;
    scalar_t* hw = xh_buf(p + 1) + j0 * K + I;
    scalar_t* gp = (gates_per_step ? g : g + off * G) + j0 * G;
    scalar_t* cr = c + j0 * H;
    scalar_t* cs = c_save != nullptr ? c_save + (off + j0) * H : nullptr;
    // The tile writes y itself when the step's output rows are evenly spaced.
    const bool direct_y = !proj && map.uniform();
    scalar_t* yy = direct_y ? y + map.row(st, p, j0) * P : nullptr;
    const GateLayout layout{H, true};
    for (int64_t c0 = k0; c0 < k1; c0 += kBlocksPerChunk) {
      const int64_t c1 = std::min(k1, c0 + kBlocksPerChunk);
      const int64_t d0 = block_first_col(c0), d1 = 4 * (block_first_unit(c1 - 1) + block_width(c1 - 1, H));
      gemm_rowmajor(m, d1 - d0, K, xr, K, wt + d0, G, gp + d0, G, /*accumulate=*/false);
      if (proj)
        lstm_forward_tile<scalar_t>(layout, m, c0, c1, gp, G, bias, cr, cr, cs, hf + j0 * H, H, nullptr, 0);
      else
        lstm_forward_tile<scalar_t>(layout, m, c0, c1, gp, G, bias, cr, cr, cs, hw, K, yy, map.row_stride() * P);
    }
  }
  // With proj: h = h_full W_hr^T for slots [j0, j1), columns [q0, q1).
  void project(int64_t p, int64_t j0, int64_t j1, int64_t q0, int64_t q1) const {
    scalar_t* hw = xh_buf(p + 1) + j0 * K + I;
    gemm_rowmajor(j1 - j0, q1 - q0, H, hf + j0 * H, H, whr + q0, P, hw + q0, K, /*accumulate=*/false);
  }
  // Copies h (columns [q0, q1)) of slots [j0, j1) to the output rows where the tile did not, and h and c of
  // slots whose last step this is to the final states (c: units [u0, u1)).
  void emit(int64_t p, int64_t j0, int64_t j1, int64_t q0, int64_t q1, int64_t u0, int64_t u1) const {
    const scalar_t* hw = xh_buf(p + 1) + I;
    if (proj || !map.uniform())
      for (int64_t j = j0; j < j1; ++j)
        std::copy(hw + j * K + q0, hw + j * K + q1, y + map.row(st, p, j) * P + q0);
    for (int64_t j = std::max(j0, st.rows_at(p + 1)); j < j1; ++j) {
      const int64_t b = map.batch(j);
      std::copy(hw + j * K + q0, hw + j * K + q1, hn + b * P + q0);
      std::copy(c + j * H + u0, c + j * H + u1, cn + b * H + u0);
    }
  }

  void run_by_slots(int64_t nt) const {
    const std::vector<int64_t> bounds = balanced_slot_split(st, s.B, nt);
    at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t th = t0; th < t1; ++th) {
        const int64_t j0 = bounds[th], j1 = bounds[th + 1];
        for (int64_t p = 0; p < st.T && j0 < j1; ++p) {
          const int64_t e = std::min(j1, st.rows_at(p));
          if (e <= j0) continue;
          load_x(p, j0, e);
          cells(p, j0, e, 0, NB);
          if (proj) project(p, j0, e, 0, P);
          emit(p, j0, e, 0, P, 0, H);
        }
      }
    });
  }

  void run_by_units() const {
    if (st.T > 0) load_x(0, 0, st.rows_at(0));
    for (int64_t p = 0; p < st.T; ++p) {
      const int64_t n = st.rows_at(p), n_next = st.rows_at(p + 1);
      at::parallel_for(0, NB, grain_for(NB, n * G * K), [&](int64_t k0, int64_t k1) {
        const int64_t u0 = block_first_unit(k0), u1 = block_first_unit(k1 - 1) + block_width(k1 - 1, H);
        if (p + 1 < st.T) load_x(p + 1, n_next * k0 / NB, n_next * k1 / NB);  // this thread's share
        cells(p, 0, n, k0, k1);
        if (!proj) emit(p, 0, n, u0, u1, u0, u1);
      });
      if (proj) {
        at::parallel_for(0, P, grain_for(P, n * H * P), [&](int64_t q0, int64_t q1) {
          project(p, 0, n, q0, q1);
          emit(p, 0, n, q0, q1, q0 * H / P, q1 * H / P);
        });
      }
    }
  }
};

// RNNEXT_LSTM_ENGINE=1 runs every layout through the engine's generic step loop (common/rnn_engine.h, the one
// every CUDA layer call takes) instead of the fused schedule below, so that the tests cover that loop on the CPU.
// Read per call: a forward and its backward must see the same value (their workspaces differ in gate layout).
bool use_engine(const std::optional<Tensor>& lengths) {
  if (lengths.has_value()) return true;  // masked mode: the engine's
  const char* v = std::getenv("RNNEXT_LSTM_ENGINE");
  return v != nullptr && v[0] == '1';
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_cpu(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices, bool batch_first,
    bool reverse, bool train, const std::optional<Tensor>& lengths) {
  if (use_engine(lengths))
    return lstm_layer_engine(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, sorted_indices, batch_first,
                             reverse, train, lengths);
  const char* op = "rnnext::lstm_layer";
  const LayerShapes s =
      check_layer_args(op, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, sorted_indices, batch_first);
  const Steps st = make_steps(op, s, batch_sizes, reverse);
  const std::vector<int64_t> order = check_permutation(op, "sorted_indices", sorted_indices, s.B);
  const RowMap map{s.layout, batch_first, s.T, s.B, order.empty() ? nullptr : order.data()};
  const int64_t H = s.H, P = s.P, G = 4 * H;
  const auto opts = input.options();
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = P;
  // A padded input's output is zero at the padding.
  Tensor output = s.layout == Layout::kPadded ? at::zeros(out_shape, opts) : at::empty(out_shape, opts);
  Tensor hy = hx.contiguous().clone();
  Tensor cy = cx.contiguous().clone();
  // Training keeps every step's gate activations and cell state for the backward; inference needs one step's.
  Tensor gates = train ? at::empty({s.N, G}, opts) : at::empty({s.B, G}, opts);
  Tensor cells = train ? at::empty({s.N, H}, opts) : at::empty({0}, opts);
  if (train) {  // a padded input uses only the first rows of the workspace; keep the rest defined
    const int64_t used = st.T > 0 ? st.offset[st.T - 1] + st.rows[st.T - 1] : 0;
    gates.narrow(0, used, s.N - used).zero_();
    cells.narrow(0, used, s.N - used).zero_();
  }
  if (st.T > 0 && s.B > 0) {
    const BlockedWeights bw = block_weights(w_ih, w_hh, b_ih, b_hh);
    const Tensor w_hr_t = w_hr.has_value() ? w_hr->t().contiguous() : Tensor();
    const Tensor x = input.contiguous();
    const int64_t K = s.I + P;
    // Slot-ordered state: [x_t | h_{t-1}] in two buffers (both start with hx: late joiners read it), and c.
    Tensor xh = at::empty({2, s.B, K}, opts);
    const Tensor h0 = order.empty() ? hx : hx.index_select(0, *sorted_indices);
    xh.narrow(2, s.I, P).copy_(h0.unsqueeze(0).expand({2, s.B, P}));
    Tensor cbuf = (order.empty() ? cx : cx.index_select(0, *sorted_indices)).contiguous().clone();
    Tensor hfull = w_hr.has_value() ? at::empty({s.B, H}, opts) : Tensor();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer", [&] {
      const Forward<scalar_t> f{
          s, st, map, H, P, s.I, K, G, num_unit_blocks(H), w_hr.has_value(), !train,
          x.const_data_ptr<scalar_t>(), bw.w_t.const_data_ptr<scalar_t>(),
          bw.bias.defined() ? bw.bias.const_data_ptr<scalar_t>() : nullptr,
          w_hr.has_value() ? w_hr_t.const_data_ptr<scalar_t>() : nullptr, gates.data_ptr<scalar_t>(),
          train ? cells.data_ptr<scalar_t>() : nullptr, xh.data_ptr<scalar_t>(), cbuf.data_ptr<scalar_t>(),
          w_hr.has_value() ? hfull.data_ptr<scalar_t>() : nullptr, output.data_ptr<scalar_t>(),
          hy.data_ptr<scalar_t>(), cy.data_ptr<scalar_t>()};
      if (const int64_t nt = slot_split_threads(s.B))
        f.run_by_slots(nt);
      else
        f.run_by_units();
    });
  }
  if (!train) gates = at::empty({0}, opts);
  return {output, hy, cy, gates, cells};
}

// ---------------------------------------------------------------------------------------------------------
// Backward

template <typename scalar_t>
struct Backward {
  const LayerShapes& s;
  const Steps& st;
  const RowMap& map;
  int64_t H, P, G, NB;
  bool proj;
  const scalar_t* a;    // gate activations (N, G), blocked
  const scalar_t* cs;   // cell states (N, H)
  const scalar_t* c0;   // cx per slot (B, H)
  const scalar_t* whh;  // W_hh, blocked rows (G, P)
  const scalar_t* whr;  // W_hr (P, H), or null
  const scalar_t* dy;   // output gradient rows (P wide)
  scalar_t* dg;         // gate pre-activation gradients (N, G), blocked
  scalar_t* dh;         // per slot (B, P): recurrent gradient into h, ends as grad of hx
  scalar_t* dc;         // per slot (B, H): gradient into c, ends as grad of cx
  scalar_t* dhp;        // with proj: dh of every step (N, P), for the gradient of W_hr
  scalar_t* dhf;        // with proj: per slot (B, H), gradient into the unprojected h
  scalar_t* dy_slots;   // per slot (B, P): the step's output gradient gathered, when its rows are scattered

  // dh[slots j0..j1, columns q0..q1] = dgates(step p) W_hh: the gradient that flows into step p - 1 (into hx
  // for slots that start at step p).
  void recurrent(int64_t p, int64_t j0, int64_t j1, int64_t q0, int64_t q1) const {
    if (p >= st.T || j1 <= j0) return;
    gemm_rowmajor(j1 - j0, q1 - q0, G, dg + (st.offset_at(p) + j0) * G, G, whh + q0, P, dh + j0 * P + q0, P, false);
  }
  // The output gradient of slots [j0, j1) of step p, columns [q0, q1), and its row stride.
  std::pair<const scalar_t*, int64_t> output_grad(int64_t p, int64_t j0, int64_t j1, int64_t q0, int64_t q1) const {
    if (map.uniform()) return {dy + map.row(st, p, j0) * P, map.row_stride() * P};
    for (int64_t j = j0; j < j1; ++j) {
      const scalar_t* src = dy + map.row(st, p, j) * P;
      std::copy(src + q0, src + q1, dy_slots + j * P + q0);
    }
    return {dy_slots + j0 * P, P};
  }
  // With proj: dh (P wide) = recurrent part + output gradient, kept per step for W_hr's gradient.
  void projected_grad(int64_t p, int64_t j0, int64_t j1, int64_t q0, int64_t q1) const {
    scalar_t* rows = dhp + st.offset_at(p) * P;
    for (int64_t j = j0; j < j1; ++j) {
      const scalar_t* src = dy + map.row(st, p, j) * P;
      for (int64_t q = q0; q < q1; ++q) rows[j * P + q] = dh[j * P + q] + src[q];
    }
  }
  // The pointwise backward of slots [j0, j1), unit blocks [k0, k1), given the gradient into h.
  void cells(int64_t p, int64_t j0, int64_t j1, int64_t k0, int64_t k1) const {
    const int64_t off = st.offset_at(p), off_prev = p > 0 ? st.offset_at(p - 1) : 0;
    const int64_t n_prev = std::max<int64_t>(0, st.rows_at(p - 1) - j0);
    const scalar_t *dh_a, *dh_b = nullptr;
    int64_t ld_a, ld_b = 0;
    if (proj) {
      const int64_t u0 = block_first_unit(k0), u1 = block_first_unit(k1 - 1) + block_width(k1 - 1, H);
      gemm_rowmajor(j1 - j0, u1 - u0, P, dhp + (off + j0) * P, P, whr + u0, H, dhf + j0 * H + u0, H, false);
      dh_a = dhf + j0 * H;
      ld_a = H;
    } else {
      const int64_t u0 = block_first_unit(k0), u1 = block_first_unit(k1 - 1) + block_width(k1 - 1, H);
      std::tie(dh_b, ld_b) = output_grad(p, j0, j1, u0, u1);
      dh_a = dh + j0 * P;
      ld_a = P;
    }
    lstm_backward_tile<scalar_t>(GateLayout{H, true}, j1 - j0, k0, k1, a + (off + j0) * G, G, cs + (off + j0) * H,
                                 cs + (off_prev + j0) * H, n_prev, c0 + j0 * H, dh_a, dh_b, ld_a, ld_b,
                                 dc + j0 * H, dg + (off + j0) * G);
  }

  void run_by_slots(int64_t nt) const {
    const std::vector<int64_t> bounds = balanced_slot_split(st, s.B, nt);
    at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t th = t0; th < t1; ++th) {
        const int64_t j0 = bounds[th], j1 = bounds[th + 1];
        if (j0 >= j1) continue;
        for (int64_t p = st.T - 1; p >= 0; --p) {
          // Before skipping a step where none of this thread's slots is active: slots that join at p + 1
          // (reverse direction) take their hx gradient from this recurrent product.
          recurrent(p + 1, j0, std::min(j1, st.rows_at(p + 1)), 0, P);
          const int64_t e = std::min(j1, st.rows_at(p));
          if (e <= j0) continue;
          if (proj) projected_grad(p, j0, e, 0, P);
          cells(p, j0, e, 0, NB);
        }
        recurrent(0, j0, std::min(j1, st.rows_at(0)), 0, P);
      }
    });
  }

  void run_by_units() const {
    for (int64_t p = st.T - 1; p >= 0; --p) {
      const int64_t n = st.rows_at(p);
      if (!proj) {
        at::parallel_for(0, NB, grain_for(NB, n * G * P), [&](int64_t k0, int64_t k1) {
          const int64_t u0 = block_first_unit(k0), u1 = block_first_unit(k1 - 1) + block_width(k1 - 1, H);
          recurrent(p + 1, 0, st.rows_at(p + 1), u0, u1);
          cells(p, 0, n, k0, k1);
        });
      } else {
        at::parallel_for(0, P, grain_for(P, n * G * P), [&](int64_t q0, int64_t q1) {
          recurrent(p + 1, 0, st.rows_at(p + 1), q0, q1);
          projected_grad(p, 0, n, q0, q1);
        });
        at::parallel_for(0, NB, grain_for(NB, n * H * P), [&](int64_t k0, int64_t k1) { cells(p, 0, n, k0, k1); });
      }
    }
    at::parallel_for(0, P, grain_for(P, st.rows_at(0) * G * P),
                     [&](int64_t q0, int64_t q1) { recurrent(0, 0, st.rows_at(0), q0, q1); });
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
    const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices, bool batch_first,
    const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse, bool has_bias,
    const std::optional<Tensor>& lengths) {
  if (use_engine(lengths))
    return lstm_layer_backward_engine(grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, w_hr, batch_sizes,
                                      sorted_indices, batch_first, output, gates, cells, reverse, has_bias, lengths);
  const char* op = "rnnext::lstm_layer_backward";
  const LayerShapes s = check_layer_args(op, input, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt, w_hr,
                                         batch_sizes, sorted_indices, batch_first);
  const Steps st = make_steps(op, s, batch_sizes, reverse);
  const std::vector<int64_t> order = check_permutation(op, "sorted_indices", sorted_indices, s.B);
  const RowMap map{s.layout, batch_first, s.T, s.B, order.empty() ? nullptr : order.data()};
  const int64_t H = s.H, P = s.P, G = 4 * H, I = s.I;
  const int64_t used = st.T > 0 ? st.offset[st.T - 1] + st.rows[st.T - 1] : 0;  // workspace rows in use
  common::check_layer_backward_args(op, s, input, grad_output, grad_hy, grad_cy, output, gates, cells);
  const auto opts = input.options();
  const Tensor empty = at::empty({0}, opts);
  const Tensor idx = order.empty() ? Tensor() : *sorted_indices;
  auto to_slots = [&](const Tensor& t) { return (idx.defined() ? t.index_select(0, idx) : t).contiguous().clone(); };
  auto to_batch = [&](const Tensor& t) { return idx.defined() ? at::empty_like(t).index_copy_(0, idx, t) : t; };
  Tensor dh_state = to_slots(grad_hy);
  Tensor dc_state = to_slots(grad_cy);
  if (used == 0) {
    return {at::zeros_like(input, at::MemoryFormat::Contiguous), to_batch(dh_state), to_batch(dc_state),
            at::zeros_like(w_ih, at::MemoryFormat::Contiguous), at::zeros_like(w_hh, at::MemoryFormat::Contiguous),
            has_bias ? at::zeros({G}, opts) : empty,
            w_hr.has_value() ? at::zeros_like(*w_hr, at::MemoryFormat::Contiguous) : empty};
  }
  const Tensor perm = blocked_gate_perm(H);
  const Tensor w_ih_blocked = w_ih.index_select(0, perm).contiguous();
  const Tensor w_hh_blocked = w_hh.index_select(0, perm).contiguous();
  const Tensor acts = gates.contiguous(), cs = cells.contiguous(), c0 = to_slots(cx);
  const Tensor dy = grad_output.contiguous();
  const Tensor w_hr_c = w_hr.has_value() ? w_hr->contiguous() : Tensor();
  Tensor dgates = at::empty({used, G}, opts);
  Tensor dh_proj = w_hr.has_value() ? at::empty({used, P}, opts) : Tensor();
  Tensor dh_full = w_hr.has_value() ? at::empty({s.B, H}, opts) : Tensor();
  Tensor dy_slots = map.uniform() ? Tensor() : at::empty({s.B, P}, opts);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_backward", [&] {
    const Backward<scalar_t> b{s, st, map, H, P, G, num_unit_blocks(H), w_hr.has_value(),
                               acts.const_data_ptr<scalar_t>(), cs.const_data_ptr<scalar_t>(),
                               c0.const_data_ptr<scalar_t>(), w_hh_blocked.const_data_ptr<scalar_t>(),
                               w_hr.has_value() ? w_hr_c.const_data_ptr<scalar_t>() : nullptr,
                               dy.const_data_ptr<scalar_t>(), dgates.data_ptr<scalar_t>(),
                               dh_state.data_ptr<scalar_t>(), dc_state.data_ptr<scalar_t>(),
                               w_hr.has_value() ? dh_proj.data_ptr<scalar_t>() : nullptr,
                               w_hr.has_value() ? dh_full.data_ptr<scalar_t>() : nullptr,
                               map.uniform() ? nullptr : dy_slots.data_ptr<scalar_t>()};
    if (const int64_t nt = slot_split_threads(s.B))
      b.run_by_slots(nt);
    else
      b.run_by_units();
  });

  // The weight gradients as large GEMMs over all steps: [dW_ih dW_hh db] = dgates^T [x h_prev 1], where
  // h_prev is the h each slot's step read and the column of ones gives the bias gradient for free.
  const int64_t KX = I + P + 1;
  const Tensor x = input.contiguous(), y = output.contiguous();
  Tensor xh1 = at::empty({used, KX}, opts);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_backward_xh", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const Tensor h0 = to_slots(hx);
    const scalar_t* h0p = h0.const_data_ptr<scalar_t>();
    scalar_t* dst = xh1.data_ptr<scalar_t>();
    at::parallel_for(0, st.T, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = st.rows_at(p), n_prev = st.rows_at(p - 1), off = st.offset_at(p);
        for (int64_t j = 0; j < n; ++j) {
          scalar_t* row = dst + (off + j) * KX;
          const scalar_t* xr = xp + map.row(st, p, j) * I;
          std::copy(xr, xr + I, row);
          const scalar_t* h = j < n_prev ? yp + map.row(st, p - 1, j) * P : h0p + j * P;
          std::copy(h, h + P, row + I);
          row[I + P] = scalar_t(1);
        }
      }
    });
  });
  const Tensor grad_cat = unblock_rows(at::mm(dgates.t(), xh1), perm);  // (4H, I + P + 1)
  Tensor grad_w_ih = grad_cat.narrow(1, 0, I).contiguous();
  Tensor grad_w_hh = grad_cat.narrow(1, I, P).contiguous();
  Tensor grad_bias = has_bias ? grad_cat.select(1, I + P).contiguous() : empty;

  // grad_input = dgates W_ih (the blocked rows of W_ih match the blocked columns of dgates), computed per slot
  // and, unless the slots are the input's rows, put back in the input's layout.
  Tensor dx_slots = at::empty({used, I}, opts);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_backward_dx", [&] {
    gemm_batch_parallel<scalar_t>({{used, I, G, dgates.const_data_ptr<scalar_t>(), G,
                                    w_ih_blocked.const_data_ptr<scalar_t>(), I, dx_slots.data_ptr<scalar_t>(), I,
                                    false, true}});
  });
  Tensor grad_input;
  const bool slots_are_rows = s.layout == Layout::kPacked || (s.layout == Layout::kDense && !batch_first);
  if (slots_are_rows) {
    grad_input = dx_slots.view(input.sizes());
  } else {
    grad_input = s.layout == Layout::kPadded ? at::zeros(input.sizes(), opts) : at::empty(input.sizes(), opts);
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_backward_dx_rows", [&] {
      const scalar_t* src = dx_slots.const_data_ptr<scalar_t>();
      scalar_t* dst = grad_input.data_ptr<scalar_t>();
      at::parallel_for(0, st.T, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p)
          for (int64_t j = 0; j < st.rows_at(p); ++j)
            std::copy(src + (st.offset_at(p) + j) * I, src + (st.offset_at(p) + j + 1) * I,
                      dst + map.row(st, p, j) * I);
      });
    });
  }

  Tensor grad_w_hr = empty;
  if (w_hr.has_value()) {
    // Recompute the unprojected h = o * tanh(c) of every step.
    Tensor hfull = at::empty({used, H}, opts);
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_backward_hfull", [&] {
      const scalar_t* ap = acts.const_data_ptr<scalar_t>();
      const scalar_t* cp = cs.const_data_ptr<scalar_t>();
      scalar_t* h = hfull.data_ptr<scalar_t>();
      at::parallel_for(0, used, 64, [&](int64_t r0, int64_t r1) {
        lstm_hidden_tile<scalar_t>(GateLayout{H, true}, r1 - r0, ap + r0 * G, G, cp + r0 * H, h + r0 * H);
      });
    });
    grad_w_hr = at::mm(dh_proj.t(), hfull);
  }
  return {grad_input, to_batch(dh_state), to_batch(dc_state), grad_w_ih, grad_w_hh, grad_bias, grad_w_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CPU, m) {
  m.impl("lstm_layer", &lstm_layer_cpu);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cpu);
}

}  // namespace rnnext::cpu
