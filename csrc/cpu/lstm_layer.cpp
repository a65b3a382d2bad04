// The CPU's fused LSTM step loop: the engine's (common/rnn_engine.h) forward and backward recurrence of an LSTM
// layer, one direction, on the CPU's host-side layouts (dense, packed, padded; masked mode runs the engine's own
// loop). The engine hands over the layer in slot rows (the input's rows in slot order, like packed data: slot j
// of step p is row offset[p] + j) and the states in slot order; this loop runs, per step, the input and recurrent
// GEMMs as one ([x_t | h_{t-1}] times [W_ih W_hh]^T) and the pointwise step, per block of hidden units
// (kernels/lstm_layout.h: a block's four gates adjacent, so that a thread owning a range of blocks needs nothing
// from the others within a step), with threads split by slots or by unit blocks (cpu/slot_split.h). Its gate
// workspace is in that blocked column order; its backward and weight gradients read it so.
//
// Steps are processed in order p = 0..T-1, at time t = p (forward) or T-1-p (reverse). Slots keep their state
// in place between steps, so a slot that joins late (reverse direction) starts from hx and one that leaves
// early (forward direction) leaves its final state behind.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/rnn_engine.h"
#include "cpu/gemm.h"
#include "cpu/gemm_bf16.h"
#include "cpu/lstm_weights.h"
#include "cpu/pointwise.h"
#include "cpu/scratch.h"
#include "cpu/slot_split.h"
#include "kernels/lstm_layout.h"

namespace rnnext::cpu {
namespace {


using at::Tensor;

std::optional<Tensor> bf16_to_float(const std::optional<Tensor>& t) {
  return t.has_value() ? std::optional<Tensor>(t->to(at::kFloat)) : std::nullopt;
}
using common::Steps;
using kernels::block_first_col;
using kernels::block_first_unit;
using kernels::block_width;
using kernels::num_unit_blocks;

// Below this many multiply-adds per step, threads cost more than they give.
constexpr int64_t kParallelStepWork = 1 << 15;
int64_t grain_for(int64_t items, int64_t work) { return work < kParallelStepWork ? items : 1; }

// ---------------------------------------------------------------------------------------------------------
// [w_ih w_hh]^T (K = I + P rows, 4H blocked columns) of bfloat16 weights, packed in k-pairs as cpu/gemm_bf16.h
// lays B out (out[(p G + col) 2 + i] = row 2p + i of column col, a zero completing an odd K),
// read once from PyTorch's gate-major rows: column col is row perm[col] of [w_ih | w_hh].
void pack_blocked_bf16(const Tensor& w_ih, const Tensor& w_hh, const Tensor& perm, uint16_t* out) {
  const Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  const int64_t G = wi.size(0), I = wi.size(1), P = wh.size(1), K = I + P, pairs = (K + 1) / 2;
  const uint16_t* a = reinterpret_cast<const uint16_t*>(wi.const_data_ptr<c10::BFloat16>());
  const uint16_t* b = reinterpret_cast<const uint16_t*>(wh.const_data_ptr<c10::BFloat16>());
  const int64_t* pr = perm.const_data_ptr<int64_t>();
  // Columns in groups of 64 (64 source rows, 4 KiB of each matrix's row starts, stay in L1 across the pairs),
  // the pairs of a group in order.
  constexpr int64_t kCols = 64;
  at::parallel_for(0, (G + kCols - 1) / kCols, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t c0 = g0 * kCols; c0 < std::min(G, g1 * kCols); c0 += kCols) {
      const int64_t c1 = std::min(G, c0 + kCols);
      for (int64_t p = 0; p < pairs; ++p) {
        const int64_t k = 2 * p;
        uint16_t* o = out + p * G * 2;
        // A pair from one matrix moves as one 32-bit word; a pair that straddles w_ih and w_hh (odd I) or ends
        // an odd K value by value.
        const uint16_t* src = k + 1 < I ? a + k : k >= I && k + 1 < K ? b + (k - I) : nullptr;
        const int64_t ld = k + 1 < I ? I : P;
        if (src != nullptr) {
          for (int64_t col = c0; col < c1; ++col) std::memcpy(o + 2 * col, src + pr[col] * ld, 4);
          continue;
        }
        for (int64_t col = c0; col < c1; ++col) {
          const int64_t r = pr[col];
          for (int64_t i = 0; i < 2; ++i) {
            const int64_t kk = k + i;
            o[2 * col + i] = kk < I ? a[r * I + kk] : kk < K ? b[r * P + (kk - I)] : uint16_t(0);
          }
        }
      }
    }
  });
}

// Forward

// S: the storage type of the input, output and states (float, double, or bfloat16); A: the type the gates, the
// cell state and the pointwise math use (float for bfloat16, else S). With bfloat16 the step's GEMM runs on
// AVX512-BF16 (cpu/gemm_bf16.h: [x_t | h_{t-1}] and the weights in bfloat16, float32 accumulation) and the new
// h, computed in float32, is rounded once into the next step's GEMM operand and the output.
template <typename S>
struct Forward {
  static constexpr bool kBf16 = std::is_same_v<S, c10::BFloat16>;
  using A = std::conditional_t<kBf16, float, S>;
  const Steps& st;
  common::RnnPlan::SlotRows row;  // slot row -> input row
  int64_t B, H, P, I, K, G, NB;
  bool proj, gates_per_step;
  const S* x;      // input rows (I wide), in the input's order
  const S* wt;     // [W_ih W_hh]^T blocked (K, G); with bfloat16 packed in k-pairs (cpu/gemm_bf16.h)
  const A* bias;   // blocked, or null
  const S* whr;    // W_hr^T (H, P), or null (never with bfloat16)
  A* g;            // gates workspace (N, G), or one step's (B, G) with gates_per_step
  A* c_save;       // cell states (N, H), or null
  S* xh;           // two buffers (B, K) of [x_t | h_{t-1}] per slot
  A* c;            // cell state per slot (B, H)
  A* hf;           // unprojected h per slot (B, H): with proj, and with bfloat16 (h before rounding)
  S* y;            // output slot rows (P wide)
  S* hn;           // final h (B, P), slot order (c's final value is c itself)

  S* xh_buf(int64_t p) const { return xh + (p % 2) * B * K; }
  // x of step p into the read buffer of step p, slots [j0, j1).
  void load_x(int64_t p, int64_t j0, int64_t j1) const {
    S* dst = xh_buf(p);
    for (int64_t j = j0; j < j1; ++j) {
      const S* src = x + row(st.offset_at(p) + j) * I;
      std::copy(src, src + I, dst + j * K);
    }
  }
  // Gates, pointwise step and (without proj) h for slots [j0, j1) and unit blocks [k0, k1) of step p.
  void cells(int64_t p, int64_t j0, int64_t j1, int64_t k0, int64_t k1) const {
    const int64_t m = j1 - j0, off = st.offset_at(p);
    const S* xr = xh_buf(p) + j0 * K;
    S* hw = xh_buf(p + 1) + j0 * K + I;
    A* gp = (gates_per_step ? g : g + off * G) + j0 * G;
    A* cr = c + j0 * H;
    A* cs = c_save != nullptr ? c_save + (off + j0) * H : nullptr;
    // Without a projection the tile writes the output rows itself.
    S* yy = proj ? nullptr : y + (off + j0) * P;
    const GateLayout layout{H, true};
    for (int64_t c0 = k0; c0 < k1; c0 += kBlocksPerChunk) {
      const int64_t c1 = std::min(k1, c0 + kBlocksPerChunk);
      const int64_t d0 = block_first_col(c0), d1 = 4 * (block_first_unit(c1 - 1) + block_width(c1 - 1, H));
      if constexpr (kBf16) {
        gemm_bf16_packed(m, d1 - d0, K, reinterpret_cast<const uint16_t*>(xr), K,
                         reinterpret_cast<const uint16_t*>(wt) + 2 * d0, G, gp + d0, G, /*accumulate=*/false);
        if (pointwise_has_avx512()) {  // h rounded inside the step, straight into the operand and the output
          lstm_forward_tile_bf16_avx512(layout, m, c0, c1, gp, G, !gates_per_step, bias, cr, cr, cs,
                                        reinterpret_cast<uint16_t*>(hw), K, reinterpret_cast<uint16_t*>(yy), P);
          continue;
        }
        A* h32 = hf + j0 * H;
        lstm_forward_tile<A>(layout, m, c0, c1, gp, G, bias, cr, cr, cs, h32, H, nullptr, 0);
        const int64_t u0 = block_first_unit(c0), u1 = block_first_unit(c1 - 1) + block_width(c1 - 1, H);
        for (int64_t j = 0; j < m; ++j) {
          uint16_t* dst = reinterpret_cast<uint16_t*>(hw + j * K);
          round_to_bf16(u1 - u0, h32 + j * H + u0, dst + u0);
          std::copy(dst + u0, dst + u1, reinterpret_cast<uint16_t*>(yy + j * P) + u0);
        }
      } else {
        gemm_rowmajor(m, d1 - d0, K, xr, K, wt + d0, G, gp + d0, G, /*accumulate=*/false);
        if (proj)
          lstm_forward_tile<S>(layout, m, c0, c1, gp, G, bias, cr, cr, cs, hf + j0 * H, H, nullptr, 0);
        else
          lstm_forward_tile<S>(layout, m, c0, c1, gp, G, bias, cr, cr, cs, hw, K, yy, P);
      }
    }
  }
  // With proj: h = h_full W_hr^T for slots [j0, j1), columns [q0, q1).
  void project(int64_t p, int64_t j0, int64_t j1, int64_t q0, int64_t q1) const {
    if constexpr (!kBf16) {
      S* hw = xh_buf(p + 1) + j0 * K + I;
      gemm_rowmajor(j1 - j0, q1 - q0, H, hf + j0 * H, H, whr + q0, P, hw + q0, K, /*accumulate=*/false);
    }
  }
  // Copies h (columns [q0, q1)) of slots [j0, j1) to the output rows where the tile did not (with a projection),
  // and of slots whose last step this is to the final states.
  void emit(int64_t p, int64_t j0, int64_t j1, int64_t q0, int64_t q1) const {
    const S* hw = xh_buf(p + 1) + I;
    if (proj)
      for (int64_t j = j0; j < j1; ++j)
        std::copy(hw + j * K + q0, hw + j * K + q1, y + (st.offset_at(p) + j) * P + q0);
    for (int64_t j = std::max(j0, st.rows_at(p + 1)); j < j1; ++j)
      std::copy(hw + j * K + q0, hw + j * K + q1, hn + j * P + q0);
  }

  void run_by_slots(int64_t nt) const {
    const std::vector<int64_t> bounds = balanced_slot_split(st, B, nt);
    at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t th = t0; th < t1; ++th) {
        const int64_t j0 = bounds[th], j1 = bounds[th + 1];
        for (int64_t p = 0; p < st.T && j0 < j1; ++p) {
          const int64_t e = std::min(j1, st.rows_at(p));
          if (e <= j0) continue;
          load_x(p, j0, e);
          cells(p, j0, e, 0, NB);
          if (proj) project(p, j0, e, 0, P);
          emit(p, j0, e, 0, P);
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
        if (!proj) emit(p, 0, n, u0, u1);
      });
      if (proj) {
        at::parallel_for(0, P, grain_for(P, n * H * P), [&](int64_t q0, int64_t q1) {
          project(p, 0, n, q0, q1);
          emit(p, 0, n, q0, q1);
        });
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------------------
// Backward

template <typename scalar_t>
struct Backward {
  const Steps& st;
  int64_t B, H, P, G, NB;
  bool proj;
  const scalar_t* a;    // gate activations (N, G), blocked
  const scalar_t* cs;   // cell states (N, H)
  const scalar_t* c0;   // cx per slot (B, H)
  const scalar_t* whh;  // W_hh, blocked rows (G, P)
  const scalar_t* whr;  // W_hr (P, H), or null
  const scalar_t* dy;   // output gradient slot rows (P wide)
  scalar_t* dg;         // gate pre-activation gradients (N, G), blocked (left unwritten by a bfloat16 layer
                        // on AVX-512, whose pointwise step rounds them straight into dg16)
  scalar_t* dh;         // per slot (B, P): recurrent gradient into h, ends as grad of hx
  scalar_t* dc;         // per slot (B, H): gradient into c, ends as grad of cx
  scalar_t* dhp;        // with proj: dh of every step (N, P), for the gradient of W_hr
  scalar_t* dhf;        // with proj: per slot (B, H), gradient into the unprojected h
  // A bfloat16 layer (float scalar_t) runs the recurrent GEMM in bfloat16: every row's gate gradients rounded
  // (used, G) and W_hh's blocked rows packed in k-pairs; both null otherwise.
  uint16_t* dg16 = nullptr;
  const uint16_t* whh16 = nullptr;
  // With bfloat16 also the bias gradient, summed from the float32 gate gradients while they are in registers
  // (AVX-512) or in cache: one row of G per thread of the slot split (the unit split's threads own disjoint
  // columns of row 0); rows in the same order either way.
  scalar_t* dsum = nullptr;
  // With bfloat16 and the slot split, optionally the input gradient too, each step's rows from their rounded
  // gate gradients while in cache: W_ih's blocked rows packed in k-pairs (G, I) and the output (used, I).
  const uint16_t* wih16 = nullptr;
  uint16_t* dx16 = nullptr;
  int64_t I = 0;

  // dh[slots j0..j1, columns q0..q1] = dgates(step p) W_hh: the gradient that flows into step p - 1 (into hx
  // for slots that start at step p).
  void recurrent(int64_t p, int64_t j0, int64_t j1, int64_t q0, int64_t q1) const {
    if (p >= st.T || j1 <= j0) return;
    const int64_t r = st.offset_at(p) + j0;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (dg16 != nullptr) {
        gemm_bf16_packed(j1 - j0, q1 - q0, G, dg16 + r * G, G, whh16 + 2 * q0, P, dh + j0 * P + q0, P, false);
        return;
      }
    }
    gemm_rowmajor(j1 - j0, q1 - q0, G, dg + r * G, G, whh + q0, P, dh + j0 * P + q0, P, false);
  }
  // With proj: dh (P wide) = recurrent part + output gradient, kept per step for W_hr's gradient.
  void projected_grad(int64_t p, int64_t j0, int64_t j1, int64_t q0, int64_t q1) const {
    scalar_t* rows = dhp + st.offset_at(p) * P;
    for (int64_t j = j0; j < j1; ++j) {
      const scalar_t* src = dy + (st.offset_at(p) + j) * P;
      for (int64_t q = q0; q < q1; ++q) rows[j * P + q] = dh[j * P + q] + src[q];
    }
  }
  // The pointwise backward of slots [j0, j1), unit blocks [k0, k1), given the gradient into h.
  void cells(int64_t p, int64_t j0, int64_t j1, int64_t k0, int64_t k1, scalar_t* acc) const {
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
      dh_b = dy + (off + j0) * P;
      ld_b = P;
      dh_a = dh + j0 * P;
      ld_a = P;
    }
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (dg16 != nullptr && pointwise_has_avx512()) {  // rounded and summed inside the step
        lstm_backward_tile_bf16_avx512(GateLayout{H, true}, j1 - j0, k0, k1, a + (off + j0) * G, G,
                                       cs + (off + j0) * H, cs + (off_prev + j0) * H, n_prev, c0 + j0 * H, dh_a,
                                       dh_b, ld_a, ld_b, dc + j0 * H, dg16 + (off + j0) * G, acc);
        return;
      }
    }
    lstm_backward_tile<scalar_t>(GateLayout{H, true}, j1 - j0, k0, k1, a + (off + j0) * G, G, cs + (off + j0) * H,
                                 cs + (off_prev + j0) * H, n_prev, c0 + j0 * H, dh_a, dh_b, ld_a, ld_b,
                                 dc + j0 * H, dg + (off + j0) * G);
    if (dg16 != nullptr) {  // this thread's columns of the rows, rounded for the recurrent GEMM
      const int64_t d0 = block_first_col(k0), d1 = 4 * (block_first_unit(k1 - 1) + block_width(k1 - 1, H));
      if constexpr (std::is_same_v<scalar_t, float>)
        for (int64_t j = j0; j < j1; ++j) round_to_bf16(d1 - d0, dg + (off + j) * G + d0, dg16 + (off + j) * G + d0);
      for (int64_t j = j0; j < j1; ++j) {
        const scalar_t* row = dg + (off + j) * G;
#pragma omp simd
        for (int64_t d = d0; d < d1; ++d) acc[d] += row[d];
      }
    }
  }

  // dx16 rows of slots [j0, j1) at step p = their rounded gate gradients W_ih (dx: float32 room for them).
  void input_grad(int64_t p, int64_t j0, int64_t j1, float* dx) const {
    const int64_t r = st.offset_at(p) + j0;
    gemm_bf16_packed(j1 - j0, I, G, dg16 + r * G, G, wih16, I, dx, I, false);
    round_to_bf16((j1 - j0) * I, dx, dx16 + r * I);
  }

  void run_by_slots(int64_t nt) const {
    const std::vector<int64_t> bounds = balanced_slot_split(st, B, nt);
    at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t th = t0; th < t1; ++th) {
        const int64_t j0 = bounds[th], j1 = bounds[th + 1];
        if (j0 >= j1) continue;
        std::vector<float> dx(wih16 != nullptr ? static_cast<size_t>((j1 - j0) * I) : 0);
        for (int64_t p = st.T - 1; p >= 0; --p) {
          // Before skipping a step where none of this thread's slots is active: slots that join at p + 1
          // (reverse direction) take their hx gradient from this recurrent product.
          recurrent(p + 1, j0, std::min(j1, st.rows_at(p + 1)), 0, P);
          const int64_t e = std::min(j1, st.rows_at(p));
          if (e <= j0) continue;
          if (proj) projected_grad(p, j0, e, 0, P);
          cells(p, j0, e, 0, NB, dsum != nullptr ? dsum + th * G : nullptr);
          if (wih16 != nullptr) input_grad(p, j0, e, dx.data());
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
          cells(p, 0, n, k0, k1, dsum);
        });
      } else {
        at::parallel_for(0, P, grain_for(P, n * G * P), [&](int64_t q0, int64_t q1) {
          recurrent(p + 1, 0, st.rows_at(p + 1), q0, q1);
          projected_grad(p, 0, n, q0, q1);
        });
        at::parallel_for(0, NB, grain_for(NB, n * H * P),
                         [&](int64_t k0, int64_t k1) { cells(p, 0, n, k0, k1, dsum); });
      }
    }
    at::parallel_for(0, P, grain_for(P, st.rows_at(0) * G * P),
                     [&](int64_t q0, int64_t q1) { recurrent(0, 0, st.rows_at(0), q0, q1); });
  }
};

}  // namespace

void lstm_fused_forward_steps(const common::ForwardSteps& f) {
  const Steps& st = f.plan.st;
  const int64_t B = f.plan.s.B, H = f.plan.s.H, P = f.plan.s.P, I = f.plan.s.I, G = 4 * H, K = I + P;
  const bool proj = f.w_hr.defined(), train = f.saved.defined();
  const bool bf16 = f.x.scalar_type() == at::kBFloat16;  // (the engine sends bfloat16 here only without proj)
  const auto opts = f.x.options();
  const auto acc_opts = f.c.options();  // the gates' and the cell state's dtype (float32 for bfloat16)
  // Training keeps every step's gate activations for the backward; inference needs one step's.
  const Tensor gates = train ? f.saved : at::empty({B, G}, acc_opts);
  BlockedWeights bw;
  if (bf16) {  // [W_ih W_hh]^T blocked and packed in k-pairs straight from the bfloat16 weights, in one pass
    bw.perm = blocked_gate_perm(H);
    bw.w_t = scratch(ScratchSlot::kPackedWeights, {(K + 1) / 2 * 2, G}, at::kBFloat16);
    pack_blocked_bf16(f.w_ih, f.w_hh, bw.perm, reinterpret_cast<uint16_t*>(bw.w_t.data_ptr<c10::BFloat16>()));
    if (const auto bias = sum_biases(bf16_to_float(f.b_ih), bf16_to_float(f.b_hh)))
      bw.bias = bias->index_select(0, bw.perm).contiguous();
  } else {
    bw = block_weights(f.w_ih, f.w_hh, f.b_ih, f.b_hh);
  }
  const Tensor& w_t = bw.w_t;
  const Tensor w_hr_t = proj ? f.w_hr.t().contiguous() : Tensor();
  // [x_t | h_{t-1}] per slot in two buffers (both start with hx: late joiners read it).
  Tensor xh = at::empty({2, B, K}, opts);
  xh.narrow(2, I, P).copy_(f.h.unsqueeze(0).expand({2, B, P}));
  Tensor hfull = proj || bf16 ? at::empty({B, H}, acc_opts) : Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, f.x.scalar_type(), "lstm_layer", [&] {
    using A = typename Forward<scalar_t>::A;
    const Forward<scalar_t> fw{st, f.plan.slot_row(), B, H, P, I, K, G, num_unit_blocks(H), proj, !train,
                               f.x.const_data_ptr<scalar_t>(), w_t.const_data_ptr<scalar_t>(),
                               bw.bias.defined() ? bw.bias.const_data_ptr<A>() : nullptr,
                               proj ? w_hr_t.const_data_ptr<scalar_t>() : nullptr, gates.data_ptr<A>(),
                               train ? f.cells.data_ptr<A>() : nullptr, xh.data_ptr<scalar_t>(),
                               f.c.data_ptr<A>(), hfull.defined() ? hfull.data_ptr<A>() : nullptr,
                               f.h_slots.data_ptr<scalar_t>(), f.h.data_ptr<scalar_t>()};
    if (const int64_t nt = slot_split_threads(B))
      fw.run_by_slots(nt);
    else
      fw.run_by_units();
  });
}

bool lstm_fused_takes_bf16(const std::optional<Tensor>& w_hr, const std::optional<Tensor>& lengths) {
  return gemm_bf16_available() && !w_hr.has_value() && !lengths.has_value();
}

void lstm_fused_backward_steps(const common::BackwardSteps& b) {
  const Steps& st = b.plan.st;
  const int64_t B = b.plan.s.B, H = b.plan.s.H, P = b.plan.s.P, G = 4 * H;
  const bool proj = b.w_hr.defined();
  // (In the state gradients' dtype: float32 for a bfloat16 layer, whose recurrence runs in float32 but for the
  // recurrent GEMM: bfloat16 gate gradients and W_hh, float32 accumulation.)
  const bool bf16 = b.w_hh.scalar_type() == at::kBFloat16 && !proj;
  // W_hh's blocked rows (G, P): in the state gradients' dtype for the float GEMMs, or packed in k-pairs.
  const Tensor w_hh_rows = b.w_hh.index_select(0, blocked_gate_perm(H));
  const Tensor w_hh_blocked = bf16 ? Tensor() : w_hh_rows.to(b.dh.scalar_type()).contiguous();
  const std::vector<uint16_t> whh16 = bf16 ? pack_bf16(w_hh_rows) : std::vector<uint16_t>();
  Tensor dg16;
  if (bf16) {
    dg16 = scratch(ScratchSlot::kGateGradsBf16, {b.dgx.size(0), G}, at::kBFloat16);
    b.scratch = dg16;  // complete after the loop: lstm_fused_weight_grads's operand
    b.bias_grad = at::zeros({std::max<int64_t>(1, slot_split_threads(B)), G}, b.dh.options());
  }
  Tensor dh_full = proj ? at::empty({B, H}, b.dh.options()) : Tensor();
  // bfloat16 with the slot split: the input gradient inside the step loop (left in b.dx_slots).
  const int64_t nt = slot_split_threads(B);
  const bool step_dx = bf16 && nt > 0 && b.w_ih.defined();
  const std::vector<uint16_t> wih16 =
      step_dx ? pack_bf16(b.w_ih.index_select(0, blocked_gate_perm(H))) : std::vector<uint16_t>();
  if (step_dx) b.dx_slots = at::empty({b.plan.used, b.w_ih.size(1)}, b.w_ih.options());
  AT_DISPATCH_FLOATING_TYPES(b.dh.scalar_type(), "lstm_layer_backward", [&] {
    const Backward<scalar_t> bw{st, B, H, P, G, num_unit_blocks(H), proj, b.saved.const_data_ptr<scalar_t>(),
                                b.cells.const_data_ptr<scalar_t>(), b.c0.const_data_ptr<scalar_t>(),
                                bf16 ? nullptr : w_hh_blocked.const_data_ptr<scalar_t>(),
                                proj ? b.w_hr.const_data_ptr<scalar_t>() : nullptr,
                                b.dy_slots.const_data_ptr<scalar_t>(), b.dgx.data_ptr<scalar_t>(),
                                b.dh.data_ptr<scalar_t>(), b.dc.data_ptr<scalar_t>(),
                                proj ? b.dh_proj.data_ptr<scalar_t>() : nullptr,
                                proj ? dh_full.data_ptr<scalar_t>() : nullptr,
                                bf16 ? reinterpret_cast<uint16_t*>(dg16.data_ptr<c10::BFloat16>()) : nullptr,
                                bf16 ? whh16.data() : nullptr,
                                bf16 ? b.bias_grad.data_ptr<scalar_t>() : nullptr,
                                step_dx ? wih16.data() : nullptr,
                                step_dx ? reinterpret_cast<uint16_t*>(b.dx_slots.data_ptr<c10::BFloat16>()) : nullptr,
                                step_dx ? b.w_ih.size(1) : 0};
    if (nt > 0)
      bw.run_by_slots(nt);
    else
      bw.run_by_units();
  });
}

common::WeightGrads lstm_fused_weight_grads(const common::BackwardSteps& b, const Tensor& w_ih, bool has_bias) {
  const Steps& st = b.plan.st;
  const int64_t H = b.plan.s.H, P = b.plan.s.P, I = b.plan.s.I, G = 4 * H, used = b.plan.used;
  const auto opts = w_ih.options();
  const Tensor perm = blocked_gate_perm(H);
  // [dW_ih dW_hh db] = dgates^T [x h_prev 1] in one GEMM, where h_prev is the h each slot row read and the
  // column of ones gives the bias gradient for free. A bfloat16 layer runs this GEMM and dx's in bfloat16 on its
  // gate gradients rounded once (float32 accumulation inside ATen's bfloat16 GEMM) and sums the bias gradient
  // from the float32 gate gradients (the rounded ones measured up to 3x stock bfloat16's error there; the
  // weight and input gradients stay within the bounds of tests/test_bf16.py).
  const bool bf16 = w_ih.scalar_type() == at::kBFloat16;
  // (bfloat16 leaves the column of ones out: its bias gradient is summed apart, and ATen's bfloat16 GEMM runs
  // ~10% faster on I + P = 384 columns than on 385.)
  const int64_t KX = bf16 ? I + P : I + P + 1;
  Tensor xh1 = scratch(ScratchSlot::kWeightGradOperand, {used, KX}, w_ih.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w_ih.scalar_type(), "lstm_layer_backward_xh", [&] {
    // (The input's and the output's rows in the input's order, gathered here.)
    const common::RnnPlan::SlotRows row = b.plan.slot_row();
    const scalar_t* xp = b.x_rows.const_data_ptr<scalar_t>();
    const scalar_t* yp = b.y_rows.const_data_ptr<scalar_t>();
    const scalar_t* h0p = b.h0.const_data_ptr<scalar_t>();
    scalar_t* dst = xh1.data_ptr<scalar_t>();
    at::parallel_for(0, st.T, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = st.rows_at(p), n_prev = st.rows_at(p - 1), off = st.offset_at(p);
        for (int64_t j = 0; j < n; ++j) {
          scalar_t* out = dst + (off + j) * KX;
          const scalar_t* xr = xp + row(off + j) * I;
          std::copy(xr, xr + I, out);
          const scalar_t* h = j < n_prev ? yp + row(st.offset_at(p - 1) + j) * P : h0p + j * P;
          std::copy(h, h + P, out + I);
          if (!bf16) out[I + P] = scalar_t(1);
        }
      }
    });
  });
  // (bfloat16: the recurrence's rounded copy when it made one, i.e. without a projection.)
  const Tensor dg = !bf16 ? b.dgx : b.scratch.defined() ? b.scratch : b.dgx.to(at::kBFloat16);
  const Tensor grad_cat = unblock_rows(mm_any(dg.t(), xh1), perm);  // (4H, KX)
  common::WeightGrads w;
  const Tensor empty = at::empty({0}, opts);
  w.w_ih = grad_cat.narrow(1, 0, I).contiguous();
  w.w_hh = grad_cat.narrow(1, I, P).contiguous();
  w.b_ih = !has_bias ? empty
           : bf16    ? unblock_rows(at::sum(b.bias_grad.defined() ? b.bias_grad : b.dgx, {0}), perm)
                           .to(at::kBFloat16)
                     : grad_cat.select(1, I + P).contiguous();
  w.b_hh = has_bias ? w.b_ih.clone() : empty;
  // The input gradient dgates W_ih (the blocked rows of W_ih match the blocked columns of dgates).
  if (b.dx_slots.defined()) {  // (made by the step loop)
    w.dx_slots = b.dx_slots;
  } else if (bf16) {
    w.dx_slots = mm_any(dg, w_ih.index_select(0, perm).contiguous());
  } else {
    const Tensor w_ih_blocked = w_ih.index_select(0, perm).contiguous();
    w.dx_slots = at::empty({used, I}, opts);
    AT_DISPATCH_FLOATING_TYPES(w_ih.scalar_type(), "lstm_layer_backward_dx", [&] {
      gemm_batch_parallel<scalar_t>({{used, I, G, b.dgx.const_data_ptr<scalar_t>(), G,
                                      w_ih_blocked.const_data_ptr<scalar_t>(), I, w.dx_slots.data_ptr<scalar_t>(),
                                      I, false, true}});
    });
  }
  w.w_hr = empty;
  if (b.w_hr.defined()) {
    // Recompute the unprojected h = o * tanh(c) of every step.
    Tensor hfull = at::empty({used, H}, opts);
    AT_DISPATCH_FLOATING_TYPES(w_ih.scalar_type(), "lstm_layer_backward_hfull", [&] {
      const scalar_t* ap = b.saved.const_data_ptr<scalar_t>();
      const scalar_t* cp = b.cells.const_data_ptr<scalar_t>();
      scalar_t* h = hfull.data_ptr<scalar_t>();
      at::parallel_for(0, used, 64, [&](int64_t r0, int64_t r1) {
        lstm_hidden_tile<scalar_t>(GateLayout{H, true}, r1 - r0, ap + r0 * G, G, cp + r0 * H, h + r0 * H);
      });
    });
    w.w_hr = at::mm(b.dh_proj.t(), hfull);
  }
  return w;
}

}  // namespace rnnext::cpu
