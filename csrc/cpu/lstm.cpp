// CPU kernels of the fused LSTM cell and the fused LSTM layer (one layer, one direction, dense or packed).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/index_copy.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cpu/checks.h"
#include "cpu/gemm.h"
#include "cpu/pointwise.h"
#include "kernels/lstm_layout.h"

namespace rnnext::cpu {
namespace {

using at::Tensor;
using kernels::block_first_col;
using kernels::block_first_unit;
using kernels::block_width;
using kernels::num_unit_blocks;

// Below this many multiply-adds per step, threads cost more than they give.
constexpr int64_t kParallelStepWork = 1 << 15;
// Unit blocks whose gates one GEMM call produces before the pointwise step consumes them.
constexpr int64_t kBlocksPerChunk = 4;

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
  check_cell_args(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  const int64_t B = input.size(0), H = w_hh.size(1), I = input.size(1), G = 4 * H;
  // gates^T (4H, B) = W_ih x^T + W_hh h^T: the weights are the GEMMs' row-major left operands as they are, and
  // only the small activations get transposed (the JIT GEMM takes no transposed operand).
  const Tensor x_t = input.t().contiguous(), h_t = hx.t().contiguous();
  const Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  Tensor gates_t = at::empty({G, B}, input.options());
  Tensor bias;
  if (b_ih.has_value() || b_hh.has_value())
    bias = (b_ih.has_value() ? (b_hh.has_value() ? at::add(*b_ih, *b_hh) : *b_ih) : *b_hh).contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_cell_gemms", [&] {
    scalar_t* gt = gates_t.data_ptr<scalar_t>();
    gemm_batch_parallel<scalar_t>({
        {G, B, I, wi.const_data_ptr<scalar_t>(), I, x_t.const_data_ptr<scalar_t>(), B, gt, B, false, true},
        {G, B, H, wh.const_data_ptr<scalar_t>(), H, h_t.const_data_ptr<scalar_t>(), B, gt, B, true, true},
    });
  });
  Tensor gates = gates_t.t().contiguous();
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
                                   nullptr, dhp + b0 * H, nullptr, H, dcp + b0 * H, dg + b0 * 4 * H);
    });
  });
  const int64_t I = input.size(1), G = 4 * H;
  const Tensor dgates_t = dgates.t().contiguous();
  const Tensor x = input.contiguous(), h = hx.contiguous(), wi = w_ih.contiguous(), wh = w_hh.contiguous();
  Tensor grad_input = at::empty({B, I}, input.options());
  Tensor grad_hx = at::empty({B, H}, input.options());
  Tensor grad_w_ih = at::empty({G, I}, input.options());
  Tensor grad_w_hh = at::empty({G, H}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_cell_backward_gemms", [&] {
    const scalar_t* dg = dgates.const_data_ptr<scalar_t>();
    const scalar_t* dgt = dgates_t.const_data_ptr<scalar_t>();
    gemm_batch_parallel<scalar_t>({
        {B, I, G, dg, G, wi.const_data_ptr<scalar_t>(), I, grad_input.data_ptr<scalar_t>(), I, false, false},
        {B, H, G, dg, G, wh.const_data_ptr<scalar_t>(), H, grad_hx.data_ptr<scalar_t>(), H, false, false},
        {G, I, B, dgt, B, x.const_data_ptr<scalar_t>(), I, grad_w_ih.data_ptr<scalar_t>(), I, false, true},
        {G, H, B, dgt, B, h.const_data_ptr<scalar_t>(), H, grad_w_hh.data_ptr<scalar_t>(), H, false, true},
    });
  });
  Tensor grad_bias = has_bias ? at::sum(dgates, {0}) : at::empty({0}, input.options());
  return {grad_input, grad_hx, dc, grad_w_ih, grad_w_hh, grad_bias};
}

// ---------------------------------------------------------------------------------------------------------
// LSTM layer. Dense input is (T, B, I); packed input is (N, I) with batch_sizes (T) as in PackedSequence.
// Steps are processed in order p = 0..T-1, at time t = p (forward) or T-1-p (reverse); the rows active at
// time t are the first batch_sizes[t]. Rows keep their state in place between steps, so a row that joins
// late (reverse direction) starts from hx and a row that leaves early (forward direction) leaves its final
// state behind.

struct Steps {
  int64_t T = 0;
  std::vector<int64_t> rows;    // active rows at time t
  std::vector<int64_t> offset;  // first packed row of time t
  bool reverse = false;
  int64_t time(int64_t p) const { return reverse ? T - 1 - p : p; }
  // Rows active at processing step p (0 outside [0, T)).
  int64_t rows_at(int64_t p) const { return p < 0 || p >= T ? 0 : rows[time(p)]; }
  int64_t offset_at(int64_t p) const { return offset[time(p)]; }
};

struct LayerShapes {
  int64_t T, B, N, I, H, P;
  bool dense;
};

LayerShapes check_layer_args(const char* op, const Tensor& input, const Tensor& hx, const Tensor& cx,
                             const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                             const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
                             const std::optional<Tensor>& batch_sizes) {
  check_float_cpu(op, "input", input);
  check_same(op, "input", input, "hx", hx);
  check_same(op, "input", input, "cx", cx);
  check_same(op, "input", input, "w_ih", w_ih);
  check_same(op, "input", input, "w_hh", w_hh);
  LayerShapes s{};
  s.dense = !batch_sizes.has_value();
  if (s.dense) {
    check_dim(op, "input", input, 3, "(seq_len, batch, input_size)");
    s.T = input.size(0);
    s.B = input.size(1);
    s.N = s.T * s.B;
  } else {
    check_dim(op, "input", input, 2, "(total_rows, input_size) for a packed sequence");
    s.N = input.size(0);
  }
  s.I = input.size(-1);
  check_dim(op, "w_ih", w_ih, 2, "(4 * hidden_size, input_size)");
  check_dim(op, "w_hh", w_hh, 2, "(4 * hidden_size, proj_size or hidden_size)");
  const int64_t G = w_ih.size(0);
  TORCH_CHECK(G % 4 == 0, op, ": expected w_ih.size(0) to be 4 * hidden_size, got ", G);
  s.H = G / 4;
  s.P = s.H;
  if (w_hr.has_value()) {
    check_same(op, "input", input, "w_hr", *w_hr);
    check_dim(op, "w_hr", *w_hr, 2, "(proj_size, hidden_size)");
    s.P = w_hr->size(0);
    check_shape(op, "w_hr", *w_hr, {s.P, s.H});
  }
  check_shape(op, "w_ih", w_ih, {G, s.I});
  check_shape(op, "w_hh", w_hh, {G, s.P});
  if (b_ih.has_value()) {
    check_same(op, "input", input, "b_ih", *b_ih);
    check_shape(op, "b_ih", *b_ih, {G});
  }
  if (b_hh.has_value()) {
    check_same(op, "input", input, "b_hh", *b_hh);
    check_shape(op, "b_hh", *b_hh, {G});
  }
  check_dim(op, "hx", hx, 2, "(batch, proj_size or hidden_size)");
  if (s.dense) s.B = input.size(1);
  else s.B = hx.size(0);
  check_shape(op, "hx", hx, {s.B, s.P});
  check_shape(op, "cx", cx, {s.B, s.H});
  return s;
}

Steps make_steps(const char* op, const LayerShapes& s, const std::optional<Tensor>& batch_sizes, bool reverse) {
  Steps st;
  st.reverse = reverse;
  if (s.dense) {
    st.T = s.T;
    st.rows.assign(s.T, s.B);
  } else {
    const std::vector<int64_t> bs = check_batch_sizes(op, *batch_sizes, s.N, s.B);
    st.T = static_cast<int64_t>(bs.size());
    st.rows = bs;
  }
  st.offset.resize(st.T);
  int64_t acc = 0;
  for (int64_t t = 0; t < st.T; ++t) {
    st.offset[t] = acc;
    acc += st.rows[t];
  }
  return st;
}

// Permutation from the blocked gate layout to PyTorch's rows: perm[col] = torch row.
Tensor blocked_gate_perm(int64_t H) {
  Tensor perm = at::empty({4 * H}, at::TensorOptions().dtype(at::kLong));
  int64_t* p = perm.data_ptr<int64_t>();
  for (int64_t col = 0; col < 4 * H; ++col) p[col] = kernels::blocked_col_to_torch_row(col, H);
  return perm;
}

// Gradient rows computed in the blocked layout, put back in PyTorch's row order.
Tensor unblock_rows(const Tensor& blocked, const Tensor& perm) {
  return at::empty_like(blocked).index_copy_(0, perm, blocked);
}

// Weights of one layer rearranged for the kernels: rows in the blocked gate layout, transposed where the
// kernel multiplies by them from the right.
struct BlockedWeights {
  Tensor perm;   // blocked column -> PyTorch row
  Tensor w_t;    // (I + P, 4H) = [W_ih W_hh]^T, blocked columns
  Tensor bias;   // (4H) blocked, b_ih + b_hh, or undefined
};

// [w_ih w_hh]^T, (I + P, 4H), with its columns in the blocked gate layout (w_ih and w_hh are PyTorch's
// gate-major (4H, I) and (4H, P) weights).
Tensor blocked_transpose(const Tensor& w_ih, const Tensor& w_hh) {
  const Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  const int64_t G = wi.size(0), H = G / 4, I = wi.size(1), P = wh.size(1), NB = num_unit_blocks(H);
  Tensor out = at::empty({I + P, G}, wi.options());
  AT_DISPATCH_FLOATING_TYPES(wi.scalar_type(), "blocked_transpose", [&] {
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, NB, grain_for(NB, G * (I + P) / 4), [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t w = block_width(k, H);
        for (int64_t g = 0; g < 4; ++g) {
          const int64_t row0 = g * H + block_first_unit(k);
          scalar_t* cols = dst + block_first_col(k) + g * w;
          for (const auto& [src, K, kofs] : {std::make_tuple(wi.const_data_ptr<scalar_t>(), I, int64_t(0)),
                                             std::make_tuple(wh.const_data_ptr<scalar_t>(), P, I)}) {
            const scalar_t* rows = src + row0 * K;
            for (int64_t kk = 0; kk < K; ++kk)
              for (int64_t u = 0; u < w; ++u) cols[(kofs + kk) * G + u] = rows[u * K + kk];
          }
        }
      }
    });
  });
  return out;
}

BlockedWeights block_weights(const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                             const std::optional<Tensor>& b_hh) {
  BlockedWeights bw;
  bw.perm = blocked_gate_perm(w_hh.size(0) / 4);
  bw.w_t = blocked_transpose(w_ih, w_hh);
  if (b_ih.has_value() || b_hh.has_value()) {
    const Tensor bias = b_ih.has_value() ? (b_hh.has_value() ? at::add(*b_ih, *b_hh) : *b_ih) : *b_hh;
    bw.bias = bias.index_select(0, bw.perm).contiguous();
  }
  return bw;
}

// Two ways to share a layer's recurrence among threads:
//  - by rows (batch entries): the rows of a batch never interact, so each thread runs the whole sequence for
//    its own rows with no synchronization at all (used when every thread gets at least kMinRowsPerThread rows);
//  - by columns (hidden units): all threads work on every step, one barrier per step (small batches).

// Splits the rows [0, B) into nt contiguous ranges of about equal work (a row's work is its number of steps).
std::vector<int64_t> balanced_row_split(const Steps& st, int64_t B, int64_t nt) {
  std::vector<int64_t> steps_of_row(B, 0);
  for (int64_t t = 0; t < st.T; ++t)
    for (int64_t b = 0; b < st.rows[t]; ++b) ++steps_of_row[b];
  int64_t total = 0;
  for (int64_t v : steps_of_row) total += v;
  std::vector<int64_t> bounds{0};
  int64_t acc = 0, b = 0;
  for (int64_t th = 1; th < nt; ++th) {
    while (b < B && acc * nt < total * th) acc += steps_of_row[b++];
    bounds.push_back(b);
  }
  bounds.push_back(B);
  return bounds;
}

constexpr int64_t kMinRowsPerThread = 16;

int64_t row_split_threads(int64_t B) {
  const int64_t nt = at::get_num_threads();
  return B >= kMinRowsPerThread * nt ? nt : 0;
}

template <typename scalar_t>
void layer_forward_rows(const LayerShapes& s, const Steps& st, const Tensor& x, const BlockedWeights& bw,
                        const std::optional<Tensor>& w_hr, const Tensor& hx, const Tensor& cx, Tensor& gates,
                        bool gates_per_step, Tensor& output, Tensor& hy, Tensor& cy, scalar_t* c_save, int64_t nt) {
  const int64_t B = s.B, H = s.H, P = s.P, I = s.I, G = 4 * H, NB = num_unit_blocks(H), K = I + P;
  const bool proj = w_hr.has_value();
  const GateLayout layout{H, true};
  // As in layer_forward_cols, but every thread only ever touches its own rows of these buffers.
  Tensor xh = at::empty({2, B, K}, hx.options());
  xh.narrow(2, I, P).copy_(hx.unsqueeze(0).expand({2, B, P}));
  Tensor cbuf = cx.contiguous().clone();
  Tensor hfull = proj ? at::empty({B, H}, hx.options()) : Tensor();
  Tensor w_hr_t = proj ? w_hr->t().contiguous() : Tensor();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* wt = bw.w_t.const_data_ptr<scalar_t>();
  const scalar_t* bias = bw.bias.defined() ? bw.bias.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* g = gates.data_ptr<scalar_t>();
  scalar_t* xh2 = xh.data_ptr<scalar_t>();
  scalar_t* c = cbuf.data_ptr<scalar_t>();
  scalar_t* y = output.data_ptr<scalar_t>();
  scalar_t* hn = hy.data_ptr<scalar_t>();
  scalar_t* cn = cy.data_ptr<scalar_t>();
  scalar_t* hf = proj ? hfull.data_ptr<scalar_t>() : nullptr;
  const scalar_t* whr = proj ? w_hr_t.const_data_ptr<scalar_t>() : nullptr;
  const std::vector<int64_t> bounds = balanced_row_split(st, B, nt);

  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t th = t0; th < t1; ++th) {
      const int64_t r0 = bounds[th], r1 = bounds[th + 1];
      auto copy_x = [&](int64_t p, scalar_t* buf, int64_t end) {  // x of step p into rows [r0, end) of buf
        const scalar_t* src = xp + st.offset_at(p) * I;
        for (int64_t b = r0; b < end; ++b) std::copy(src + b * I, src + (b + 1) * I, buf + b * K);
      };
      if (r0 >= r1) continue;
      for (int64_t p = 0; p < st.T; ++p) {
        const int64_t n = st.rows_at(p), n_next = st.rows_at(p + 1), off = st.offset_at(p);
        const int64_t end = std::min(r1, n), m = end - r0;
        if (m <= 0) continue;
        scalar_t* xr_all = xh2 + (p % 2) * B * K;
        copy_x(p, xr_all, end);
        const scalar_t* xr = xr_all + r0 * K;
        scalar_t* xw = xh2 + ((p + 1) % 2) * B * K;
        scalar_t* hw = xw + r0 * K + I;
        scalar_t* gp = (gates_per_step ? g : g + off * G) + r0 * G;
        scalar_t* cr = c + r0 * H;
        scalar_t* cs = c_save != nullptr ? c_save + (off + r0) * H : nullptr;
        for (int64_t j0 = 0; j0 < NB; j0 += kBlocksPerChunk) {
          const int64_t j1 = std::min(NB, j0 + kBlocksPerChunk);
          const int64_t d0 = block_first_col(j0), d1 = 4 * (block_first_unit(j1 - 1) + block_width(j1 - 1, H));
          gemm_rowmajor(m, d1 - d0, K, xr, K, wt + d0, G, gp + d0, G, /*accumulate=*/false);
          if (proj)
            lstm_forward_tile<scalar_t>(layout, m, j0, j1, gp, G, bias, cr, cr, cs, hf + r0 * H, H, nullptr, 0);
          else
            lstm_forward_tile<scalar_t>(layout, m, j0, j1, gp, G, bias, cr, cr, cs, hw, K, y + (off + r0) * P, P);
        }
        if (proj) {
          gemm_rowmajor(m, P, H, hf + r0 * H, H, whr, P, hw, K, /*accumulate=*/false);
          for (int64_t b = 0; b < m; ++b) std::copy(hw + b * K, hw + b * K + P, y + (off + r0 + b) * P);
        }
        for (int64_t b = std::max(r0, n_next); b < end; ++b) {  // rows whose last step this is
          std::copy(hw + (b - r0) * K, hw + (b - r0) * K + P, hn + b * P);
          std::copy(c + b * H, c + (b + 1) * H, cn + b * H);
        }
      }
    }
  });
}

// The recurrence by columns. Every step, each thread owns a range of unit blocks: it computes its gate columns,
// [x_t h_{t-1}] [W_ih W_hh]^T as one GEMM into the step's gate rows, then the pointwise step of its units, so a
// step needs one barrier. With proj_size, a second phase projects h (threads own columns of P).
template <typename scalar_t>
void layer_forward_cols(const LayerShapes& s, const Steps& st, const Tensor& x, const BlockedWeights& bw,
                   const std::optional<Tensor>& w_hr, const Tensor& hx, const Tensor& cx, Tensor& gates,
                   bool gates_per_step, Tensor& output, Tensor& hy, Tensor& cy, scalar_t* c_save) {
  const int64_t B = s.B, H = s.H, P = s.P, I = s.I, G = 4 * H, NB = num_unit_blocks(H), K = I + P;
  const bool proj = w_hr.has_value();
  const GateLayout layout{H, true};
  // Rows [x_t | h_{t-1}] ping-pong between two buffers: a step reads one (its GEMM needs every unit of h) and
  // writes h_t and x_{t+1} into the other. c is updated in place by the thread that owns its units. Rows that
  // join late (reverse direction) find hx and cx there.
  Tensor xh = at::empty({2, B, K}, hx.options());
  xh.narrow(2, I, P).copy_(hx.unsqueeze(0).expand({2, B, P}));
  Tensor cbuf = cx.contiguous().clone();
  Tensor hfull = proj ? at::empty({B, H}, hx.options()) : Tensor();
  Tensor w_hr_t = proj ? w_hr->t().contiguous() : Tensor();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* wt = bw.w_t.const_data_ptr<scalar_t>();
  const scalar_t* bias = bw.bias.defined() ? bw.bias.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* g = gates.data_ptr<scalar_t>();
  scalar_t* xh2 = xh.data_ptr<scalar_t>();
  scalar_t* c = cbuf.data_ptr<scalar_t>();
  scalar_t* y = output.data_ptr<scalar_t>();
  scalar_t* hn = hy.data_ptr<scalar_t>();
  scalar_t* cn = cy.data_ptr<scalar_t>();
  scalar_t* hf = proj ? hfull.data_ptr<scalar_t>() : nullptr;
  const scalar_t* whr = proj ? w_hr_t.const_data_ptr<scalar_t>() : nullptr;
  auto copy_x = [&](int64_t p, scalar_t* dst, int64_t r0, int64_t r1) {  // x of step p into dst rows [r0, r1)
    const scalar_t* src = xp + st.offset_at(p) * I;
    for (int64_t b = r0; b < r1; ++b) std::copy(src + b * I, src + (b + 1) * I, dst + b * K);
  };
  if (st.T > 0) copy_x(0, xh2, 0, st.rows_at(0));

  for (int64_t p = 0; p < st.T; ++p) {
    const int64_t n = st.rows_at(p), n_next = st.rows_at(p + 1), off = st.offset_at(p);
    const scalar_t* xr = xh2 + (p % 2) * B * K;
    scalar_t* xw = xh2 + ((p + 1) % 2) * B * K;
    scalar_t* hw = xw + I;  // h_t, row stride K
    scalar_t* gp = gates_per_step ? g : g + off * G;
    at::parallel_for(0, NB, grain_for(NB, n * G * K), [&](int64_t k0, int64_t k1) {
      const int64_t c0 = block_first_col(k0), c1 = 4 * (block_first_unit(k1 - 1) + block_width(k1 - 1, H));
      const int64_t u0 = block_first_unit(k0), u1 = c1 / 4;
      if (p + 1 < st.T) copy_x(p + 1, xw, n_next * k0 / NB, n_next * k1 / NB);
      scalar_t* cs = c_save != nullptr ? c_save + off * H : nullptr;
      // GEMM and pointwise chunk by chunk, so that a chunk's gates are still in cache for the pointwise step.
      for (int64_t j0 = k0; j0 < k1; j0 += kBlocksPerChunk) {
        const int64_t j1 = std::min(k1, j0 + kBlocksPerChunk);
        const int64_t d0 = block_first_col(j0), d1 = 4 * (block_first_unit(j1 - 1) + block_width(j1 - 1, H));
        gemm_rowmajor(n, d1 - d0, K, xr, K, wt + d0, G, gp + d0, G, /*accumulate=*/false);
        if (proj)
          lstm_forward_tile<scalar_t>(layout, n, j0, j1, gp, G, bias, c, c, cs, hf, H, nullptr, 0);
        else
          lstm_forward_tile<scalar_t>(layout, n, j0, j1, gp, G, bias, c, c, cs, hw, K, y + off * P, P);
      }
      if (!proj) {
        for (int64_t b = n_next; b < n; ++b)  // rows whose last step this is
          std::copy(hw + b * K + u0, hw + b * K + u1, hn + b * P + u0);
      }
      for (int64_t b = n_next; b < n; ++b) std::copy(c + b * H + u0, c + b * H + u1, cn + b * H + u0);
    });
    if (proj) {
      at::parallel_for(0, P, grain_for(P, n * H * P), [&](int64_t q0, int64_t q1) {
        gemm_rowmajor(n, q1 - q0, H, hf, H, whr + q0, P, hw + q0, K, /*accumulate=*/false);
        for (int64_t b = 0; b < n; ++b) {
          std::copy(hw + b * K + q0, hw + b * K + q1, y + (off + b) * P + q0);
          if (b >= n_next) std::copy(hw + b * K + q0, hw + b * K + q1, hn + b * P + q0);
        }
      });
    }
  }
}

template <typename scalar_t>
void layer_forward(const LayerShapes& s, const Steps& st, const Tensor& x, const BlockedWeights& bw,
                   const std::optional<Tensor>& w_hr, const Tensor& hx, const Tensor& cx, Tensor& gates,
                   bool gates_per_step, Tensor& output, Tensor& hy, Tensor& cy, scalar_t* c_save) {
  if (const int64_t nt = row_split_threads(s.B))
    layer_forward_rows<scalar_t>(s, st, x, bw, w_hr, hx, cx, gates, gates_per_step, output, hy, cy, c_save, nt);
  else
    layer_forward_cols<scalar_t>(s, st, x, bw, w_hr, hx, cx, gates, gates_per_step, output, hy, cy, c_save);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_cpu(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& batch_sizes, bool reverse, bool train) {
  const char* op = "rnnext::lstm_layer";
  const LayerShapes s = check_layer_args(op, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes);
  const Steps st = make_steps(op, s, batch_sizes, reverse);
  const int64_t H = s.H, P = s.P, G = 4 * H;
  const auto opts = input.options();
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = P;
  Tensor output = at::empty(out_shape, opts);
  Tensor hy = hx.contiguous().clone();
  Tensor cy = cx.contiguous().clone();
  // Training keeps every step's gate activations and cell state for the backward; inference needs one step's.
  Tensor gates = train ? at::empty({s.N, G}, opts) : at::empty({s.B, G}, opts);
  Tensor cells = train ? at::empty({s.N, H}, opts) : at::empty({0}, opts);
  if (s.N > 0) {
    const BlockedWeights bw = block_weights(w_ih, w_hh, b_ih, b_hh);
    const std::optional<Tensor> w_hr_c =
        w_hr.has_value() ? std::optional<Tensor>(w_hr->contiguous()) : std::optional<Tensor>();
    const Tensor x = input.reshape({s.N, s.I}).contiguous();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer", [&] {
      layer_forward<scalar_t>(s, st, x, bw, w_hr_c, hx, cx, gates, !train, output, hy, cy,
                              train ? cells.data_ptr<scalar_t>() : nullptr);
    });
  }
  if (!train) gates = at::empty({0}, opts);
  return {output, hy, cy, gates, cells};
}

template <typename scalar_t>
void layer_backward_cols(const LayerShapes& s, const Steps& st, const Tensor& acts, const Tensor& cells,
                    const Tensor& cx, const Tensor& w_hh_blocked, const std::optional<Tensor>& w_hr,
                    const Tensor& grad_output, Tensor& dgates, Tensor& dh_state, Tensor& dc_state,
                    Tensor& dh_proj) {
  const int64_t H = s.H, P = s.P, G = 4 * H, NB = num_unit_blocks(H);
  const bool proj = w_hr.has_value();
  const GateLayout layout{H, true};
  const scalar_t* a = acts.const_data_ptr<scalar_t>();
  const scalar_t* cs = cells.const_data_ptr<scalar_t>();
  const scalar_t* c0 = cx.const_data_ptr<scalar_t>();
  const scalar_t* whh = w_hh_blocked.const_data_ptr<scalar_t>();
  const scalar_t* dy = grad_output.const_data_ptr<scalar_t>();
  const scalar_t* whr = proj ? w_hr->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* dg = dgates.data_ptr<scalar_t>();
  scalar_t* dh = dh_state.data_ptr<scalar_t>();
  scalar_t* dc = dc_state.data_ptr<scalar_t>();
  scalar_t* dhp = proj ? dh_proj.data_ptr<scalar_t>() : nullptr;
  Tensor dhfull_t = proj ? at::empty({s.B, H}, cx.options()) : Tensor();
  scalar_t* dhf = proj ? dhfull_t.data_ptr<scalar_t>() : nullptr;

  // dh_state[:rows] = dgates(step p) @ W_hh: the recurrent gradient that flows into step p - 1 (into hx for
  // rows that start at step p). Columns [q0, q1) of P.
  auto recurrent_grad = [&](int64_t p, int64_t q0, int64_t q1) {
    if (p >= st.T) return;
    gemm_rowmajor(st.rows_at(p), q1 - q0, G, dg + st.offset_at(p) * G, G, whh + q0, P, dh + q0, P, false);
  };
  auto pointwise = [&](int64_t p, int64_t k0, int64_t k1, const scalar_t* dh_a, int64_t ld_a, bool add_dy) {
    const int64_t n = st.rows_at(p), off = st.offset_at(p);
    const int64_t off_prev = p > 0 ? st.offset_at(p - 1) : 0;
    lstm_backward_tile<scalar_t>(layout, n, k0, k1, a + off * G, G, cs + off * H, cs + off_prev * H,
                                 st.rows_at(p - 1), c0, dh_a, add_dy ? dy + off * P : nullptr, ld_a, dc,
                                 dg + off * G);
  };

  for (int64_t p = st.T - 1; p >= 0; --p) {
    const int64_t n = st.rows_at(p), off = st.offset_at(p);
    if (!proj) {
      at::parallel_for(0, NB, grain_for(NB, n * G * P), [&](int64_t k0, int64_t k1) {
        const int64_t u0 = block_first_unit(k0), u1 = block_first_unit(k1 - 1) + block_width(k1 - 1, H);
        recurrent_grad(p + 1, u0, u1);
        pointwise(p, k0, k1, dh, P, /*add_dy=*/true);
      });
    } else {
      // dh (width P) = recurrent part + dy, stored per step for the gradient of w_hr; then dh_full = dh @ w_hr.
      scalar_t* dhp_step = dhp + off * P;
      at::parallel_for(0, P, grain_for(P, n * G * P), [&](int64_t q0, int64_t q1) {
        recurrent_grad(p + 1, q0, q1);
        for (int64_t b = 0; b < n; ++b)
          for (int64_t q = q0; q < q1; ++q) dhp_step[b * P + q] = dh[b * P + q] + dy[(off + b) * P + q];
      });
      at::parallel_for(0, NB, grain_for(NB, n * H * P), [&](int64_t k0, int64_t k1) {
        const int64_t u0 = block_first_unit(k0), u1 = block_first_unit(k1 - 1) + block_width(k1 - 1, H);
        gemm_rowmajor(n, u1 - u0, P, dhp_step, P, whr + u0, H, dhf + u0, H, false);
        pointwise(p, k0, k1, dhf, H, /*add_dy=*/false);
      });
    }
  }
  at::parallel_for(0, P, grain_for(P, st.rows_at(0) * G * P), [&](int64_t q0, int64_t q1) {
    recurrent_grad(0, q0, q1);
  });
}

template <typename scalar_t>
void layer_backward_rows(const LayerShapes& s, const Steps& st, const Tensor& acts, const Tensor& cells,
                         const Tensor& cx, const Tensor& w_hh_blocked, const std::optional<Tensor>& w_hr,
                         const Tensor& grad_output, Tensor& dgates, Tensor& dh_state, Tensor& dc_state,
                         Tensor& dh_proj, int64_t nt) {
  const int64_t H = s.H, P = s.P, G = 4 * H, NB = num_unit_blocks(H);
  const bool proj = w_hr.has_value();
  const GateLayout layout{H, true};
  const scalar_t* a = acts.const_data_ptr<scalar_t>();
  const scalar_t* cs = cells.const_data_ptr<scalar_t>();
  const scalar_t* c0 = cx.const_data_ptr<scalar_t>();
  const scalar_t* whh = w_hh_blocked.const_data_ptr<scalar_t>();
  const scalar_t* dy = grad_output.const_data_ptr<scalar_t>();
  const scalar_t* whr = proj ? w_hr->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* dg = dgates.data_ptr<scalar_t>();
  scalar_t* dh = dh_state.data_ptr<scalar_t>();
  scalar_t* dc = dc_state.data_ptr<scalar_t>();
  scalar_t* dhp = proj ? dh_proj.data_ptr<scalar_t>() : nullptr;
  Tensor dhfull_t = proj ? at::empty({s.B, H}, cx.options()) : Tensor();
  scalar_t* dhf = proj ? dhfull_t.data_ptr<scalar_t>() : nullptr;
  const std::vector<int64_t> bounds = balanced_row_split(st, s.B, nt);

  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t th = t0; th < t1; ++th) {
      const int64_t r0 = bounds[th], r1 = bounds[th + 1];
      if (r0 >= r1) continue;
      // dh[rows] = dgates(step p) @ W_hh for this thread's rows active at step p.
      auto recurrent_grad = [&](int64_t p) {
        const int64_t m = std::min(r1, st.rows_at(p)) - r0;
        if (p < st.T && m > 0)
          gemm_rowmajor(m, P, G, dg + (st.offset_at(p) + r0) * G, G, whh, P, dh + r0 * P, P, false);
      };
      for (int64_t p = st.T - 1; p >= 0; --p) {
        const int64_t n = st.rows_at(p), off = st.offset_at(p), m = std::min(r1, n) - r0;
        if (m <= 0) continue;
        const int64_t off_prev = p > 0 ? st.offset_at(p - 1) : 0;
        const int64_t n_prev = std::max<int64_t>(0, st.rows_at(p - 1) - r0);
        recurrent_grad(p + 1);
        const scalar_t* dh_a = dh + r0 * P;
        const scalar_t* dh_b = dy + (off + r0) * P;
        int64_t ld = P;
        if (proj) {
          scalar_t* dhp_rows = dhp + (off + r0) * P;
          for (int64_t b = 0; b < m; ++b)
            for (int64_t q = 0; q < P; ++q) dhp_rows[b * P + q] = dh[(r0 + b) * P + q] + dy[(off + r0 + b) * P + q];
          gemm_rowmajor(m, H, P, dhp_rows, P, whr, H, dhf + r0 * H, H, false);
          dh_a = dhf + r0 * H;
          dh_b = nullptr;
          ld = H;
        }
        lstm_backward_tile<scalar_t>(layout, m, 0, NB, a + (off + r0) * G, G, cs + (off + r0) * H,
                                     cs + (off_prev + r0) * H, n_prev, c0 + r0 * H, dh_a, dh_b, ld, dc + r0 * H,
                                     dg + (off + r0) * G);
      }
      recurrent_grad(0);
    }
  });
}

template <typename scalar_t>
void layer_backward(const LayerShapes& s, const Steps& st, const Tensor& acts, const Tensor& cells,
                    const Tensor& cx, const Tensor& w_hh_blocked, const std::optional<Tensor>& w_hr,
                    const Tensor& grad_output, Tensor& dgates, Tensor& dh_state, Tensor& dc_state,
                    Tensor& dh_proj) {
  if (const int64_t nt = row_split_threads(s.B))
    layer_backward_rows<scalar_t>(s, st, acts, cells, cx, w_hh_blocked, w_hr, grad_output, dgates, dh_state,
                                  dc_state, dh_proj, nt);
  else
    layer_backward_cols<scalar_t>(s, st, acts, cells, cx, w_hh_blocked, w_hr, grad_output, dgates, dh_state,
                                  dc_state, dh_proj);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
    const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& batch_sizes, const Tensor& output, const Tensor& gates, const Tensor& cells,
    bool reverse, bool has_bias) {
  const char* op = "rnnext::lstm_layer_backward";
  const LayerShapes s =
      check_layer_args(op, input, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt, w_hr, batch_sizes);
  const Steps st = make_steps(op, s, batch_sizes, reverse);
  const int64_t H = s.H, P = s.P, G = 4 * H, N = s.N;
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = P;
  check_same(op, "input", input, "grad_output", grad_output);
  check_same(op, "input", input, "grad_hy", grad_hy);
  check_same(op, "input", input, "grad_cy", grad_cy);
  check_same(op, "input", input, "output", output);
  check_shape(op, "grad_output", grad_output, out_shape);
  check_shape(op, "output", output, out_shape);
  check_shape(op, "grad_hy", grad_hy, {s.B, P});
  check_shape(op, "grad_cy", grad_cy, {s.B, H});
  if (N > 0) {
    check_same(op, "input", input, "gates", gates);
    check_same(op, "input", input, "cells", cells);
    check_shape(op, "gates", gates, {N, G});
    check_shape(op, "cells", cells, {N, H});
  }
  const auto opts = input.options();
  Tensor dh_state = grad_hy.contiguous().clone();
  Tensor dc_state = grad_cy.contiguous().clone();
  const Tensor empty = at::empty({0}, opts);
  if (N == 0) {
    return {at::zeros_like(input), dh_state, dc_state, at::zeros_like(w_ih), at::zeros_like(w_hh),
            has_bias ? at::zeros({G}, opts) : empty, w_hr.has_value() ? at::zeros_like(*w_hr) : empty};
  }
  const Tensor perm = blocked_gate_perm(H);
  const Tensor w_ih_blocked = w_ih.index_select(0, perm).contiguous();
  const Tensor w_hh_blocked = w_hh.index_select(0, perm).contiguous();
  const Tensor acts = gates.contiguous(), cs = cells.contiguous(), c0 = cx.contiguous();
  const Tensor dy = grad_output.contiguous().view({N, P});
  const std::optional<Tensor> w_hr_c =
      w_hr.has_value() ? std::optional<Tensor>(w_hr->contiguous()) : std::optional<Tensor>();
  Tensor dgates = at::empty({N, G}, opts);
  Tensor dh_proj = w_hr.has_value() ? at::empty({N, P}, opts) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_backward", [&] {
    layer_backward<scalar_t>(s, st, acts, cs, c0, w_hh_blocked, w_hr_c, dy, dgates, dh_state, dc_state, dh_proj);
  });

  // The weight gradients as large GEMMs over all steps: [dW_ih dW_hh db] = dgates^T [x h_prev 1], where
  // h_prev is the h each packed row's step read and the column of ones gives the bias gradient for free.
  const int64_t I = s.I, KX = I + P + 1;
  const Tensor x2d = input.reshape({N, I}).contiguous();
  const Tensor y2d = output.reshape({N, P}).contiguous();
  Tensor xh1 = at::empty({N, KX}, opts);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_backward_xh", [&] {
    const scalar_t* xp = x2d.const_data_ptr<scalar_t>();
    const scalar_t* y = y2d.const_data_ptr<scalar_t>();
    const Tensor h0c = hx.contiguous();
    const scalar_t* h0 = h0c.const_data_ptr<scalar_t>();
    scalar_t* dst = xh1.data_ptr<scalar_t>();
    at::parallel_for(0, st.T, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = st.rows_at(p), n_prev = st.rows_at(p - 1), off = st.offset_at(p);
        for (int64_t b = 0; b < n; ++b) {
          scalar_t* row = dst + (off + b) * KX;
          std::copy(xp + (off + b) * I, xp + (off + b + 1) * I, row);
          const scalar_t* h = b < n_prev ? y + (st.offset_at(p - 1) + b) * P : h0 + b * P;
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
  // grad_input = dgates @ W_ih (the blocked rows of W_ih match the blocked columns of dgates).
  Tensor grad_input = at::empty({N, I}, opts);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_backward_dx", [&] {
    gemm_batch_parallel<scalar_t>({{N, I, G, dgates.const_data_ptr<scalar_t>(), G,
                                    w_ih_blocked.const_data_ptr<scalar_t>(), I, grad_input.data_ptr<scalar_t>(), I,
                                    false, true}});
  });
  grad_input = grad_input.view(input.sizes());
  Tensor grad_w_hr = empty;
  if (w_hr.has_value()) {
    // Recompute the unprojected h = o * tanh(c) of every step.
    Tensor hfull = at::empty({N, H}, opts);
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_backward_hfull", [&] {
      const scalar_t* a = acts.const_data_ptr<scalar_t>();
      const scalar_t* c = cs.const_data_ptr<scalar_t>();
      scalar_t* h = hfull.data_ptr<scalar_t>();
      at::parallel_for(0, N, 64, [&](int64_t r0, int64_t r1) {
        lstm_hidden_tile<scalar_t>(GateLayout{H, true}, r1 - r0, a + r0 * G, G, c + r0 * H, h + r0 * H);
      });
    });
    grad_w_hr = at::mm(dh_proj.t(), hfull);
  }
  return {grad_input, dh_state, dc_state, grad_w_ih, grad_w_hh, grad_bias, grad_w_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CPU, m) {
  m.impl("lstm_cell", &lstm_cell_cpu);
  m.impl("lstm_cell_backward", &lstm_cell_backward_cpu);
  m.impl("lstm_layer", &lstm_layer_cpu);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cpu);
}

}  // namespace rnnext::cpu
