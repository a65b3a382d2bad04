// CPU kernels of the LSTM, GRU and vanilla-RNN layers: the engine of common/rnn_engine.h with the cells' fused
// pointwise steps (kernels/gru.h, kernels/lstm.h through cpu/pointwise.h) run over the step's slots by ATen's
// threads, the slot split for GRU and RNN (below), and the fused LSTM step loop (csrc/cpu/lstm_layer.cpp).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "common/rnn_engine.h"
#include "cpu/bf16.h"
#include "cpu/gemm.h"
#include "cpu/gemm_bf16.h"
#include "cpu/isa.h"
#include "cpu/scratch.h"
#include "cpu/slot_split.h"
#include "cpu/pointwise.h"
#include "kernels/gru.h"

namespace rnnext::cpu {
namespace {

using at::Tensor;
using common::CellKind;

int64_t grain(int64_t H) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1)); }

// A result stored as O: T itself, or uint16_t (bfloat16's raw bits: a native bfloat16 layer's outputs).
template <typename O, typename T>
inline O to_store(T v) {
  if constexpr (std::is_same_v<O, uint16_t>) return bf16::round_bits(v);
  else return v;
}

// Rows [0, rows) of one step, each H units wide: loops over units without branches, so that the float versions
// vectorize (compiled for AVX2 and baseline x86-64, the best picked at run time, as csrc/cpu/pointwise.cpp).
// O, the outputs' type: T, or uint16_t for a native bfloat16 layer (its state h stays T = float).
template <typename T, typename O>
RNNEXT_HD void gru_forward_rows(int64_t rows, int64_t H, const T* __restrict__ gx, const T* __restrict__ gh,
                             T* __restrict__ h, O* __restrict__ h_out, T* __restrict__ saved) {
  for (int64_t j = 0; j < rows; ++j) {
    const T* x = gx + j * 3 * H;
    const T* r = gh + j * 3 * H;
    T* hj = h + j * H;
    O* oj = h_out + j * H;
    if (saved != nullptr) {
      T* sv = saved + j * 4 * H;
#pragma omp simd
      for (int64_t u = 0; u < H; ++u) {
        T rr, zz, nn, hn;
        kernels::gru_forward_elem(x[u], x[H + u], x[2 * H + u], r[u], r[H + u], r[2 * H + u], hj[u], rr, zz, nn, hn);
        hj[u] = hn;
        oj[u] = to_store<O>(hn);
        sv[u] = rr;
        sv[H + u] = zz;
        sv[2 * H + u] = nn;
        sv[3 * H + u] = r[2 * H + u];
      }
    } else {
#pragma omp simd
      for (int64_t u = 0; u < H; ++u) {
        T rr, zz, nn, hn;
        kernels::gru_forward_elem(x[u], x[H + u], x[2 * H + u], r[u], r[H + u], r[2 * H + u], hj[u], rr, zz, nn, hn);
        hj[u] = hn;
        oj[u] = to_store<O>(hn);
      }
    }
  }
}

template <typename T>
RNNEXT_HD void gru_backward_rows(int64_t rows, int64_t H, const T* __restrict__ saved, const T* __restrict__ h_prev,
                              const T* __restrict__ dh, T* __restrict__ dgx, T* __restrict__ dgh,
                              T* __restrict__ dh_direct) {
  for (int64_t j = 0; j < rows; ++j) {
    const T* sv = saved + j * 4 * H;
    const T* hp = h_prev + j * H;
    const T* d = dh + j * H;
    T* gx = dgx + j * 3 * H;
    T* gh = dgh + j * 3 * H;
    T* dd = dh_direct + j * H;
#pragma omp simd
    for (int64_t u = 0; u < H; ++u) {
      T d_r, d_z, d_n, d_hn, d_h;
      kernels::gru_backward_elem(sv[u], sv[H + u], sv[2 * H + u], sv[3 * H + u], hp[u], d[u], d_r, d_z, d_n, d_hn,
                                 d_h);
      gx[u] = d_r;
      gx[H + u] = d_z;
      gx[2 * H + u] = d_n;
      gh[u] = d_r;
      gh[H + u] = d_z;
      gh[2 * H + u] = d_hn;
      dd[u] = d_h;
    }
  }
}

template <typename T, typename O>
RNNEXT_HD void rnn_forward_rows(int64_t n, bool relu, const T* __restrict__ gx, const T* __restrict__ gh,
                             T* __restrict__ h, O* __restrict__ h_out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T hn = kernels::rnn_activation(gx[i] + gh[i], relu);
    h[i] = hn;
    h_out[i] = to_store<O>(hn);
  }
}

template <typename T>
RNNEXT_HD void rnn_backward_rows(int64_t n, bool relu, const T* __restrict__ h_new, const T* __restrict__ dh,
                              T* __restrict__ dgx) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dgx[i] = kernels::rnn_activation_backward(h_new[i], dh[i], relu);
}

template <typename T>
RNNEXT_HD void add_rows(int64_t n, const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

RNNEXT_CLONES void gru_forward_rows_f32(int64_t rows, int64_t H, const float* gx, const float* gh, float* h,
                                        float* h_out, float* saved) {
  gru_forward_rows(rows, H, gx, gh, h, h_out, saved);
}
RNNEXT_CLONES void gru_backward_rows_f32(int64_t rows, int64_t H, const float* saved, const float* h_prev,
                                         const float* dh, float* dgx, float* dgh, float* dh_direct) {
  gru_backward_rows(rows, H, saved, h_prev, dh, dgx, dgh, dh_direct);
}
RNNEXT_CLONES void rnn_forward_rows_f32(int64_t n, bool relu, const float* gx, const float* gh, float* h,
                                        float* h_out) {
  rnn_forward_rows(n, relu, gx, gh, h, h_out);
}
RNNEXT_CLONES void rnn_backward_rows_f32(int64_t n, bool relu, const float* h_new, const float* dh, float* dgx) {
  rnn_backward_rows(n, relu, h_new, dh, dgx);
}
RNNEXT_CLONES void add_rows_f32(int64_t n, const float* a, const float* b, float* out) { add_rows(n, a, b, out); }
RNNEXT_CLONES void gru_forward_rows_bf16(int64_t rows, int64_t H, const float* gx, const float* gh, float* h,
                                         uint16_t* h_out, float* saved) {
  gru_forward_rows(rows, H, gx, gh, h, h_out, saved);
}
RNNEXT_CLONES void rnn_forward_rows_bf16(int64_t n, bool relu, const float* gx, const float* gh, float* h,
                                         uint16_t* h_out) {
  rnn_forward_rows(n, relu, gx, gh, h, h_out);
}
// A native bfloat16 layer's backward step, gru_backward_rows_bf16_avx512's contract (cpu/pointwise.h): d = dh + dy
// (dy bfloat16), the gate gradients rounded to bfloat16 and added to acc row by row, the direct gradient into dh.
RNNEXT_CLONES void gru_backward_rows_bf16(int64_t rows, int64_t H, const float* __restrict__ saved,
                                          const uint16_t* __restrict__ h_prev, const uint16_t* __restrict__ dy,
                                          float* __restrict__ dh, uint16_t* __restrict__ dgx16,
                                          uint16_t* __restrict__ dgh16, float* __restrict__ acc) {
  for (int64_t j = 0; j < rows; ++j) {
    const float* sv = saved + j * 4 * H;
    uint16_t* gx = dgx16 + j * 3 * H;
    uint16_t* gh = dgh16 + j * 3 * H;
#pragma omp simd
    for (int64_t u = 0; u < H; ++u) {
      float d_r, d_z, d_n, d_hn, d_h;
      kernels::gru_backward_elem(sv[u], sv[H + u], sv[2 * H + u], sv[3 * H + u], bf16::value(h_prev[j * H + u]),
                                 dh[j * H + u] + bf16::value(dy[j * H + u]), d_r, d_z, d_n, d_hn, d_h);
      gx[u] = gh[u] = bf16::round_bits(d_r);
      gx[H + u] = gh[H + u] = bf16::round_bits(d_z);
      gx[2 * H + u] = bf16::round_bits(d_n);
      gh[2 * H + u] = bf16::round_bits(d_hn);
      dh[j * H + u] = d_h;
      acc[u] += d_r;
      acc[H + u] += d_z;
      acc[2 * H + u] += d_n;
      acc[3 * H + u] += d_hn;
    }
  }
}
// The RNN's: d = dh + dy, its pre-activation gradient rounded into dg16 and added to acc.
RNNEXT_CLONES void rnn_backward_rows_bf16(int64_t rows, int64_t H, bool relu, const uint16_t* __restrict__ h_new,
                                          const uint16_t* __restrict__ dy, const float* __restrict__ dh,
                                          uint16_t* __restrict__ dg16, float* __restrict__ acc) {
  for (int64_t j = 0; j < rows; ++j) {
#pragma omp simd
    for (int64_t u = 0; u < H; ++u) {
      const int64_t i = j * H + u;
      const float g = kernels::rnn_activation_backward(bf16::value(h_new[i]), dh[i] + bf16::value(dy[i]), relu);
      dg16[i] = bf16::round_bits(g);
      acc[u] += g;
    }
  }
}

// The cloned (vectorized) versions, float and double.
void gru_forward_dispatch(int64_t rows, int64_t H, const float* gx, const float* gh, float* h, float* o, float* s) {
  if (pointwise_has_avx512()) return gru_forward_rows_avx512(rows, H, gx, gh, h, o, s);
  gru_forward_rows_f32(rows, H, gx, gh, h, o, s);
}
RNNEXT_CLONES void gru_forward_dispatch(int64_t rows, int64_t H, const double* gx, const double* gh, double* h,
                                        double* o, double* s) {
  gru_forward_rows(rows, H, gx, gh, h, o, s);
}
void gru_backward_dispatch(int64_t rows, int64_t H, const float* s, const float* hp, const float* d, float* gx,
                           float* gh, float* dd) {
  if (pointwise_has_avx512()) return gru_backward_rows_avx512(rows, H, s, hp, d, gx, gh, dd);
  gru_backward_rows_f32(rows, H, s, hp, d, gx, gh, dd);
}
RNNEXT_CLONES void gru_backward_dispatch(int64_t rows, int64_t H, const double* s, const double* hp, const double* d,
                                         double* gx, double* gh, double* dd) {
  gru_backward_rows(rows, H, s, hp, d, gx, gh, dd);
}
// A native bfloat16 layer's: bfloat16 outputs and stored states (raw bits), the state itself float32 (GRU on
// AVX-512 where pointwise_has_avx512()).
void gru_forward_dispatch(int64_t rows, int64_t H, const float* gx, const float* gh, float* h, uint16_t* o,
                          float* s) {
  if (pointwise_has_avx512()) return gru_forward_rows_bf16_avx512(rows, H, gx, gh, h, o, s);
  gru_forward_rows_bf16(rows, H, gx, gh, h, o, s);
}
void gru_backward_dispatch(int64_t rows, int64_t H, const float* s, const uint16_t* hp, const uint16_t* dy, float* dh,
                           uint16_t* gx16, uint16_t* gh16, float* acc) {
  if (pointwise_has_avx512()) return gru_backward_rows_bf16_avx512(rows, H, s, hp, dy, dh, gx16, gh16, acc);
  gru_backward_rows_bf16(rows, H, s, hp, dy, dh, gx16, gh16, acc);
}
void rnn_forward_dispatch(int64_t n, bool relu, const float* gx, const float* gh, float* h, uint16_t* o) {
  rnn_forward_rows_bf16(n, relu, gx, gh, h, o);
}
void rnn_forward_dispatch(int64_t n, bool relu, const float* gx, const float* gh, float* h, float* o) {
  rnn_forward_rows_f32(n, relu, gx, gh, h, o);
}
RNNEXT_CLONES void rnn_forward_dispatch(int64_t n, bool relu, const double* gx, const double* gh, double* h,
                                        double* o) {
  rnn_forward_rows(n, relu, gx, gh, h, o);
}
void rnn_backward_dispatch(int64_t n, bool relu, const float* hn, const float* d, float* gx) {
  rnn_backward_rows_f32(n, relu, hn, d, gx);
}
RNNEXT_CLONES void rnn_backward_dispatch(int64_t n, bool relu, const double* hn, const double* d, double* gx) {
  rnn_backward_rows(n, relu, hn, d, gx);
}

void add_rows_dispatch(int64_t n, const float* a, const float* b, float* out) { add_rows_f32(n, a, b, out); }
RNNEXT_CLONES void add_rows_dispatch(int64_t n, const double* a, const double* b, double* out) {
  add_rows(n, a, b, out);
}
#undef RNNEXT_CLONES

// The slot split (cpu/slot_split.h): each thread runs the whole recurrence of its own slots, the recurrent GEMM
// of a step as one JIT GEMM over its rows, with no barrier between steps. w_hh_t is W_hh^T (H, G) row-major, bias
// b_hh (or null). With whh_p (W_hh^T packed) the recurrent GEMMs run on bfloat16 operands: h rounded, or, with
// bfloat16 outputs (out_t: a native bfloat16 layer), the previous step's outputs themselves.
// A native layer may project its input here (f.fused_input: bfloat16 x, W_ih, b_ih): each thread its rows of a
// step into a buffer of its own, just before they are used (gathering the input rows when the slot rows are not
// the input's rows): the same products as the engine's projection, in cache.
template <typename scalar_t, typename out_t = scalar_t>
void slot_forward(const common::ForwardSteps& f, int64_t nt, const scalar_t* w_hh_t, const scalar_t* bias,
                  const std::vector<uint16_t>* whh_p = nullptr) {
  const common::Steps& st = f.plan.st;
  const int64_t H = f.plan.s.H, G = common::num_gates(f.cell) * H, W = common::saved_width(f.cell, H);
  const int64_t I = f.plan.s.I;
  const bool project = f.fused_input;
  TORCH_INTERNAL_ASSERT(!project || (std::is_same_v<out_t, uint16_t> && f.x.scalar_type() == at::kBFloat16));
  const scalar_t* gx = project ? nullptr : f.gx.const_data_ptr<scalar_t>();
  const std::vector<uint16_t> wih_p = project ? pack_bf16_t(f.w_ih) : std::vector<uint16_t>();  // (I, G)
  const Tensor b_ih = project && f.b_ih.has_value() ? f.b_ih->to(at::kFloat).contiguous() : Tensor();
  const float* bi = b_ih.defined() ? b_ih.const_data_ptr<float>() : nullptr;
  const uint16_t* x16 = project ? reinterpret_cast<const uint16_t*>(f.x.const_data_ptr<c10::BFloat16>()) : nullptr;
  const common::RnnPlan::SlotRows row = f.plan.slot_row();
  scalar_t* h = f.h.data_ptr<scalar_t>();
  TORCH_INTERNAL_ASSERT(f.h_slots.itemsize() == sizeof(out_t));
  out_t* hs = static_cast<out_t*>(f.h_slots.data_ptr());
  scalar_t* sv = f.saved.defined() ? f.saved.data_ptr<scalar_t>() : nullptr;
  Tensor gh_buf = at::empty({f.plan.s.B, G}, f.h.options());
  scalar_t* gh = gh_buf.data_ptr<scalar_t>();
  const bool relu = f.cell == CellKind::kRNNRelu;
  const std::vector<int64_t> bounds = balanced_slot_split(st, f.plan.s.B, nt);
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t th = t0; th < t1; ++th) {
      const int64_t j0 = bounds[th], j1 = bounds[th + 1];
      std::vector<float> gx_buf(project ? (j1 - j0) * G : 0);
      std::vector<uint16_t> x_buf(project && row.rows != nullptr ? (j1 - j0) * I : 0);
      for (int64_t p = 0; p < st.T && j0 < j1; ++p) {
        const int64_t e = std::min(j1, st.rows_at(p)), m = e - j0, r = st.offset_at(p) + j0;
        if (m <= 0) continue;
        const scalar_t* gxr = gx != nullptr ? gx + r * G : nullptr;
        if constexpr (std::is_same_v<out_t, uint16_t>) {
          if (project) {
            const uint16_t* xr = x16 + r * I;
            if (row.rows != nullptr) {
              for (int64_t j = 0; j < m; ++j) std::copy_n(x16 + row(r + j) * I, I, x_buf.data() + j * I);
              xr = x_buf.data();
            }
            if (bi != nullptr)
              for (int64_t j = 0; j < m; ++j) std::copy(bi, bi + G, gx_buf.data() + j * G);
            gemm_bf16_packed(m, G, I, xr, I, wih_p.data(), G, gx_buf.data(), G, /*accumulate=*/bi != nullptr);
            gxr = gx_buf.data();
          }
        }
        scalar_t* ghr = gh + j0 * G;
        if (bias != nullptr)
          for (int64_t j = 0; j < m; ++j) std::copy(bias, bias + G, ghr + j * G);
        if constexpr (std::is_same_v<out_t, uint16_t>) {
          // Slots that ran the previous step read its outputs (their h, rounded); the others (a reversed packed
          // batch's shorter sequences) start here from their initial state, rounded now.
          const int64_t ran = p > 0 ? std::clamp<int64_t>(st.rows_at(p - 1) - j0, 0, m) : 0;
          if (ran > 0)
            gemm_bf16_packed(ran, G, H, hs + (st.offset_at(p - 1) + j0) * H, H, whh_p->data(), G, ghr, G,
                             /*accumulate=*/bias != nullptr);
          if (ran < m)
            gemm_bf16_rounded(m - ran, G, H, h + (j0 + ran) * H, H, whh_p->data(), ghr + ran * G, G,
                              /*accumulate=*/bias != nullptr);
        } else {
          gemm_rows_maybe_bf16<scalar_t>(m, G, H, h + j0 * H, H, w_hh_t, whh_p != nullptr ? whh_p->data() : nullptr,
                                         ghr, G, bias != nullptr);
        }
        if (f.cell == CellKind::kGRU)
          gru_forward_dispatch(m, H, gxr, ghr, h + j0 * H, hs + r * H, sv != nullptr ? sv + r * W : nullptr);
        else
          rnn_forward_dispatch(m * H, relu, gxr, ghr, h + j0 * H, hs + r * H);
      }
    }
  });
}

// With whh_p (W_hh packed: a native bfloat16 call) the recurrent GEMMs run on bfloat16 operands: every row's
// gradient operand (GRU: dgh, RNN: dgx) rounded into d16 (used, G), kept for the weight gradients. With bsum
// (nt, G + H, zeros), each thread adds up its rows of dgx (G) and, for GRU, of dgh's n part (H) while they are in
// cache: the bias gradients' partial sums.
// kNative (a native bfloat16 layer: h_slots and h_prev bfloat16, bsum given): each step's pointwise kernel reads
// dh + dy itself, writes the gate gradients rounded (d16: dgh for GRU, dgx for RNN; GRU's dgx into dgx16) and adds
// them to bsum; no float32 gate gradients at all. With wih_p (W_ih packed, (G, I)), each step's input gradient
// too, from its rounded dgx while in cache, rounded into dx16 (used, I).
template <typename scalar_t, bool kNative = false>
void slot_backward(const common::BackwardSteps& b, int64_t nt, const std::vector<uint16_t>* whh_p = nullptr,
                   uint16_t* d16 = nullptr, scalar_t* bsum = nullptr, uint16_t* dgx16 = nullptr,
                   const uint16_t* wih_p = nullptr, uint16_t* dx16 = nullptr) {
  const common::Steps& st = b.plan.st;
  const int64_t H = b.plan.s.H, G = common::num_gates(b.cell) * H, W = common::saved_width(b.cell, H);
  const bool gru = b.cell == CellKind::kGRU, relu = b.cell == CellKind::kRNNRelu;
  const scalar_t* sv = gru ? b.saved.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* whh = whh_p == nullptr ? b.w_hh.const_data_ptr<scalar_t>() : nullptr;
  const uint16_t* whh16 = whh_p != nullptr ? whh_p->data() : nullptr;
  scalar_t* dh = b.dh.data_ptr<scalar_t>();
  const std::vector<int64_t> bounds = balanced_slot_split(st, b.plan.s.B, nt);
  if constexpr (kNative) {
    const auto* dy = reinterpret_cast<const uint16_t*>(b.dy_slots.const_data_ptr<c10::BFloat16>());
    const auto* hs = reinterpret_cast<const uint16_t*>(b.h_slots.const_data_ptr<c10::BFloat16>());
    const auto* hp = reinterpret_cast<const uint16_t*>(b.h_prev.const_data_ptr<c10::BFloat16>());
    const int64_t I = wih_p != nullptr ? b.w_ih.size(1) : 0;
    at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t th = t0; th < t1; ++th) {
        const int64_t j0 = bounds[th], j1 = bounds[th + 1];
        scalar_t* acc = bsum + th * (G + H);
        std::vector<float> dx(static_cast<size_t>(std::max<int64_t>(j1 - j0, 0) * I));  // a step's, before rounding
        for (int64_t p = st.T - 1; p >= 0 && j0 < j1; --p) {
          const int64_t e = std::min(j1, st.rows_at(p)), m = e - j0, r = st.offset_at(p) + j0;
          if (m <= 0) continue;
          if (gru)
            gru_backward_dispatch(m, H, sv + r * W, hp + r * H, dy + r * H, dh + j0 * H, dgx16 + r * G, d16 + r * G,
                                  acc);
          else
            rnn_backward_rows_bf16(m, H, relu, hs + r * H, dy + r * H, dh + j0 * H, d16 + r * G, acc);
          // GRU: dh holds the direct part of the gradient into the previous h; the recurrent GEMM adds the rest.
          gemm_bf16_packed(m, H, G, d16 + r * G, G, whh_p->data(), H, dh + j0 * H, H, /*accumulate=*/gru);
          if (wih_p != nullptr) {
            gemm_bf16_packed(m, I, G, (gru ? dgx16 : d16) + r * G, G, wih_p, I, dx.data(), I, false);
            round_to_bf16(m * I, dx.data(), dx16 + r * I);
          }
        }
      }
    });
    return;
  }
  const scalar_t* dy = b.dy_slots.const_data_ptr<scalar_t>();
  const scalar_t* hs = b.h_slots.const_data_ptr<scalar_t>();
  const scalar_t* hp = b.h_prev.const_data_ptr<scalar_t>();
  scalar_t* dgx = b.dgx.data_ptr<scalar_t>();
  scalar_t* dgh = b.dgh.data_ptr<scalar_t>();
  Tensor dtot_buf = at::empty({b.plan.s.B, H}, b.dh.options());
  scalar_t* dtot = dtot_buf.data_ptr<scalar_t>();
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t th = t0; th < t1; ++th) {
      const int64_t j0 = bounds[th], j1 = bounds[th + 1];
      for (int64_t p = st.T - 1; p >= 0 && j0 < j1; --p) {
        const int64_t e = std::min(j1, st.rows_at(p)), m = e - j0, r = st.offset_at(p) + j0;
        if (m <= 0) continue;
        scalar_t* d = dtot + j0 * H;
        add_rows_dispatch(m * H, dh + j0 * H, dy + r * H, d);
        if (gru) {
          // The direct part of the gradient into the previous h goes straight into dh; the recurrent GEMM adds
          // the rest.
          gru_backward_dispatch(m, H, sv + r * W, hp + r * H, d, dgx + r * G, dgh + r * G, dh + j0 * H);
          gemm_rows_maybe_bf16<scalar_t>(m, H, G, dgh + r * G, G, whh, whh16, dh + j0 * H, H, /*accumulate=*/true,
                                         d16 != nullptr ? d16 + r * G : nullptr);
        } else {
          rnn_backward_dispatch(m * H, relu, hs + r * H, d, dgx + r * G);
          gemm_rows_maybe_bf16<scalar_t>(m, H, G, dgx + r * G, G, whh, whh16, dh + j0 * H, H, /*accumulate=*/false,
                                         d16 != nullptr ? d16 + r * G : nullptr);
        }
        if (bsum != nullptr) {
          scalar_t* acc = bsum + th * (G + H);
          for (int64_t j = 0; j < m; ++j) {
            const scalar_t* gxr = dgx + (r + j) * G;
#pragma omp simd
            for (int64_t c = 0; c < G; ++c) acc[c] += gxr[c];
            if (gru) {
              const scalar_t* ghn = dgh + (r + j) * G + 2 * H;
#pragma omp simd
              for (int64_t c = 0; c < H; ++c) acc[G + c] += ghn[c];
            }
          }
        }
      }
    }
  });
}

// Steps below which the forward runs on ATen's GEMMs: the slot split needs W_hh^T laid out row-major (one copy
// of the weights per call), which a few steps do not repay.
constexpr int64_t kMinSlotSteps = 4;

struct CpuPointwise {
  // out = x W^T + b on W as it is stored: a few float rows (one step at batch <= kGemvMaxRows) as
  // matrix-vector products, all threads sharing W's rows; more rows through ATen's GEMM (measured faster here
  // than cpu::linear_panels for a single product: 253 vs 302 us at 64 rows, 3H = 768, K = 128 + 256).
  static void linear_out(const Tensor& out, const Tensor& x, const Tensor& w, const std::optional<Tensor>& b) {
    const bool contiguous = out.is_contiguous() && x.is_contiguous() && w.is_contiguous() &&
                            (!b.has_value() || b->is_contiguous());
    if (x.scalar_type() != at::kFloat || x.size(0) > kGemvMaxRows || !contiguous)
      return common::aten_linear_out(out, x, w, b);
    gemv_rows(x.size(0), w.size(0), w.size(1), x.const_data_ptr<float>(), x.size(1), w.const_data_ptr<float>(),
              w.size(1), b.has_value() ? b->const_data_ptr<float>() : nullptr, out.data_ptr<float>(), out.size(1));
  }

  // Two independent projections of one step (x W_ih^T + b_ih and h W_hh^T + b_hh): with two threads or more,
  // rows beyond the matrix-vector range and about equal work (input and hidden sizes within 1.5x), each runs on
  // its own thread (ATen's GEMM then runs single-threaded inside), sparing the fork and join of two small
  // threaded GEMMs. Measured: GRU cell at I = H = 256, batch 16 / 32: 123 / 191 us against 147 / 221 us;
  // at I = 128, H = 256 (unequal halves) the pair was slower (333 against 291 us), hence the balance test.
  static void linear_pair_out(const Tensor& out1, const Tensor& x1, const Tensor& w1, const std::optional<Tensor>& b1,
                              const Tensor& out2, const Tensor& x2, const Tensor& w2,
                              const std::optional<Tensor>& b2) {
    const int64_t k1 = x1.size(1), k2 = x2.size(1);
    const bool balanced = 2 * std::max(k1, k2) <= 3 * std::min(k1, k2);
    // (float only: float64 GEMMs measured slower this way, 81 against 62 us for a GRU cell at batch 32, H = 51.)
    if (at::get_num_threads() < 2 || x1.size(0) <= kGemvMaxRows || !balanced || x1.scalar_type() != at::kFloat) {
      linear_out(out1, x1, w1, b1);
      linear_out(out2, x2, w2, b2);
      return;
    }
    // The worker threads run ATen ops: they take the caller's dispatch state (below autograd inside a kernel).
    const at::ThreadLocalState state;
    at::parallel_for(0, 2, 1, [&](int64_t i0, int64_t i1) {
      const at::ThreadLocalStateGuard guard(state);
      for (int64_t i = i0; i < i1; ++i) {
        if (i == 0)
          linear_out(out1, x1, w1, b1);
        else
          linear_out(out2, x2, w2, b2);
      }
    });
  }

  // out (n, K) = (accumulate ? out : 0) + a (n, G) W (G, K), all threads sharing the columns.
  // float64 runs on ATen's (threaded) GEMMs: the JIT kernels are float only, and per-thread double GEMMs are
  // slower than one threaded call.
  static void matmul_out(const Tensor& out, const Tensor& a, const Tensor& w, bool accumulate) {
    if (a.scalar_type() != at::kFloat) return common::aten_matmul_out(out, a, w, accumulate);
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "rnn_matmul", [&] {
      const int64_t n = a.size(0), G = a.size(1), K = w.size(1);
      gemm_batch_parallel<scalar_t>({{n, K, G, a.const_data_ptr<scalar_t>(), G, w.const_data_ptr<scalar_t>(), K,
                                      out.data_ptr<scalar_t>(), K, accumulate, /*split_rows=*/false}});
    });
  }

  // dg^T x (G, K): a weight gradient, summed over the rows of dg (n, G) and x (n, K).
  static Tensor weight_grad(const Tensor& dg, const Tensor& x) {
    if (dg.scalar_type() != at::kFloat) return mm_any(dg.t(), x);
    Tensor out = at::empty({dg.size(1), x.size(1)}, dg.options());
    AT_DISPATCH_FLOATING_TYPES(dg.scalar_type(), "rnn_weight_grad", [&] {
      gemm_tn_parallel<scalar_t>(dg.size(1), x.size(1), dg.size(0), dg.const_data_ptr<scalar_t>(), dg.size(1),
                                 x.const_data_ptr<scalar_t>(), x.size(1), out.data_ptr<scalar_t>(), x.size(1));
    });
    return out;
  }

  // An LSTM's host-side layouts run the fused schedule of csrc/cpu/lstm_layer.cpp, which projects the input
  // inside its step loop; RNNEXT_LSTM_ENGINE=1 sends them through the engine's ATen step loop instead (the one
  // every CUDA layer call runs), so that the tests cover that loop on the CPU. The engine asks once per op call.
  static bool fuses_input(CellKind cell) {
    if (cell != CellKind::kLSTM) return false;
    const char* v = std::getenv("RNNEXT_LSTM_ENGINE");
    return v == nullptr || v[0] != '1';
  }
  static bool native_bf16(CellKind, const Tensor&) { return false; }

  static common::WeightGrads weight_grads(const common::BackwardSteps& b, const Tensor& x_slots, const Tensor& w_ih,
                                          bool has_bias) {
    return b.fused_input ? lstm_fused_weight_grads(b, w_ih, has_bias)
                         : common::aten_weight_grads(b, x_slots, w_ih, has_bias);
  }

  static void forward_steps(const common::ForwardSteps& f) {
    if (f.fused_input) return lstm_fused_forward_steps(f);
    const int64_t nt = slot_split_threads(f.plan.s.B);
    if (nt == 0 || f.plan.st.T < kMinSlotSteps || f.cell == CellKind::kLSTM)
      return common::aten_forward_steps<CpuPointwise>(f);
    AT_DISPATCH_FLOATING_TYPES(f.gx.scalar_type(), "rnn_forward_steps", [&] {
      const Tensor w_hh_t = f.w_hh.t().contiguous();
      slot_forward<scalar_t>(f, nt, w_hh_t.const_data_ptr<scalar_t>(),
                             f.b_hh.has_value() ? f.b_hh->const_data_ptr<scalar_t>() : nullptr);
    });
  }

  static void backward_steps(const common::BackwardSteps& b) {
    if (b.fused_input) return lstm_fused_backward_steps(b);
    const int64_t nt = slot_split_threads(b.plan.s.B);
    if (nt == 0 || b.cell == CellKind::kLSTM) return common::aten_backward_steps<CpuPointwise>(b);
    AT_DISPATCH_FLOATING_TYPES(b.dh.scalar_type(), "rnn_backward_steps", [&] { slot_backward<scalar_t>(b, nt); });
  }

  static void forward(CellKind cell, int64_t n, int64_t H, const Tensor& gx, const Tensor& gh, const Tensor& h,
                      const Tensor& h_out, const Tensor& saved) {
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "rnn_forward_step", [&] {
      const scalar_t* gxp = gx.const_data_ptr<scalar_t>();
      const scalar_t* ghp = gh.const_data_ptr<scalar_t>();
      scalar_t* hp = h.data_ptr<scalar_t>();
      scalar_t* hout = h_out.data_ptr<scalar_t>();
      scalar_t* sv = saved.defined() ? saved.data_ptr<scalar_t>() : nullptr;
      const bool relu = cell == CellKind::kRNNRelu;
      at::parallel_for(0, n, grain(H), [&](int64_t j0, int64_t j1) {
        if (cell == CellKind::kGRU)
          gru_forward_dispatch(j1 - j0, H, gxp + j0 * 3 * H, ghp + j0 * 3 * H, hp + j0 * H, hout + j0 * H,
                               sv != nullptr ? sv + j0 * 4 * H : nullptr);
        else
          rnn_forward_dispatch((j1 - j0) * H, relu, gxp + j0 * H, ghp + j0 * H, hp + j0 * H, hout + j0 * H);
      });
    });
  }

  static void backward(CellKind cell, int64_t n, int64_t H, const Tensor& saved, const Tensor& h_new,
                       const Tensor& h_prev, const Tensor& dh, const Tensor& dgx, const Tensor& dgh,
                       const Tensor& dh_direct) {
    AT_DISPATCH_FLOATING_TYPES(dh.scalar_type(), "rnn_backward_step", [&] {
      const scalar_t* d = dh.const_data_ptr<scalar_t>();
      scalar_t* dx = dgx.data_ptr<scalar_t>();
      const bool relu = cell == CellKind::kRNNRelu;
      if (cell != CellKind::kGRU) {
        const scalar_t* hn = h_new.const_data_ptr<scalar_t>();
        at::parallel_for(0, n, grain(H), [&](int64_t j0, int64_t j1) {
          rnn_backward_dispatch((j1 - j0) * H, relu, hn + j0 * H, d + j0 * H, dx + j0 * H);
        });
        return;
      }
      const scalar_t* sv = saved.const_data_ptr<scalar_t>();
      const scalar_t* hp = h_prev.const_data_ptr<scalar_t>();
      scalar_t* dr = dgh.data_ptr<scalar_t>();
      scalar_t* dd = dh_direct.data_ptr<scalar_t>();
      at::parallel_for(0, n, grain(H), [&](int64_t j0, int64_t j1) {
        gru_backward_dispatch(j1 - j0, H, sv + j0 * 4 * H, hp + j0 * H, d + j0 * H, dx + j0 * 3 * H,
                              dr + j0 * 3 * H, dd + j0 * H);
      });
    });
  }

  // One LSTM step in PyTorch's gate order (csrc/cpu/pointwise.h's tiles, rows split across threads).
  static void lstm_forward(int64_t n, int64_t H, const Tensor& pre, const Tensor& c, const Tensor& cells,
                           const Tensor& h) {
    AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "lstm_forward_step", [&] {
      scalar_t* g = pre.data_ptr<scalar_t>();
      scalar_t* cp = c.data_ptr<scalar_t>();
      scalar_t* cs = cells.defined() ? cells.data_ptr<scalar_t>() : nullptr;
      scalar_t* hp = h.data_ptr<scalar_t>();
      at::parallel_for(0, n, grain(4 * H), [&](int64_t j0, int64_t j1) {
        lstm_forward_tile<scalar_t>(GateLayout{H, false}, j1 - j0, 0, 1, g + j0 * 4 * H, 4 * H, nullptr, cp + j0 * H,
                                    cp + j0 * H, cs != nullptr ? cs + j0 * H : nullptr, hp + j0 * H, H, nullptr, 0);
      });
    });
  }

  static void lstm_backward(int64_t n, int64_t H, const Tensor& acts, const Tensor& c, const Tensor& c_prev,
                            const Tensor& dh, const Tensor& dc, const Tensor& dgates) {
    AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "lstm_backward_step", [&] {
      const scalar_t* a = acts.const_data_ptr<scalar_t>();
      const scalar_t* cc = c.const_data_ptr<scalar_t>();
      const scalar_t* cp = c_prev.const_data_ptr<scalar_t>();
      const scalar_t* d = dh.const_data_ptr<scalar_t>();
      scalar_t* dcp = dc.data_ptr<scalar_t>();
      scalar_t* dg = dgates.data_ptr<scalar_t>();
      at::parallel_for(0, n, grain(4 * H), [&](int64_t j0, int64_t j1) {
        lstm_backward_tile<scalar_t>(GateLayout{H, false}, j1 - j0, 0, 1, a + j0 * 4 * H, 4 * H, cc + j0 * H,
                                     cp + j0 * H, j1 - j0, cp + j0 * H, d + j0 * H, nullptr, H, 0, dcp + j0 * H,
                                     dg + j0 * 4 * H);
      });
    });
  }
};

// Native bfloat16 GRU/RNN layers (a bfloat16 call on an AVX512-BF16 CPU, not masked mode): the engine runs on
// float32 copies of the bfloat16 values with a float32 workspace and state, as for any bfloat16 call, and this
// policy runs the large GEMMs on bfloat16 operands with float32 accumulation (cpu/gemm_bf16.h): the input
// projection, the slot split's recurrent GEMMs forward and backward (h and the gate gradients rounded to
// bfloat16 as operands; the state itself stays float32), the input gradient and the weight gradients (ATen's
// bfloat16 GEMM); bias gradients are sums of the float32 gate gradients. Where the slot split does not run
// (small batches, fewer than kMinSlotSteps steps) the step loop keeps float32 GEMMs: more precise, and a per-step
// packing of W_hh would cost more than the GEMM saves.
struct CpuPointwiseBf16 : CpuPointwise {
  static constexpr int64_t kMinRows = 64;  // fewer rows: one step's GEMM, kept in float32

  // (A native layer never gets here: it projects its input inside the step loop, slot_forward.)
  static void linear_out(const Tensor& out, const Tensor& x, const Tensor& w, const std::optional<Tensor>& b) {
    if (x.size(0) < kMinRows || x.scalar_type() != at::kFloat || !out.is_contiguous() || !x.is_contiguous())
      return CpuPointwise::linear_out(out, x, w, b);
    const std::vector<uint16_t> wp = pack_bf16_t(w);  // (K, G), from w's rows
    const int64_t n = x.size(0), G = w.size(0), K = w.size(1);
    const Tensor bias = b.has_value() ? b->contiguous() : Tensor();
    const float* xp = x.const_data_ptr<float>();
    const float* bp = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
    float* op = out.data_ptr<float>();
    at::parallel_for(0, n, kMinRows, [&](int64_t r0, int64_t r1) {
      if (bp != nullptr)
        for (int64_t r = r0; r < r1; ++r) std::copy(bp, bp + G, op + r * G);
      gemm_bf16_rounded(r1 - r0, G, K, xp + r0 * K, K, wp.data(), op + r0 * G, G, bp != nullptr);
    });
  }

  static void linear_pair_out(const Tensor& out1, const Tensor& x1, const Tensor& w1, const std::optional<Tensor>& b1,
                              const Tensor& out2, const Tensor& x2, const Tensor& w2,
                              const std::optional<Tensor>& b2) {
    linear_out(out1, x1, w1, b1);
    linear_out(out2, x2, w2, b2);
  }

  // A native layer (bfloat16 input: rnn_native_bf16 chose it, and the slot split) projects its input inside the
  // step loop (each thread its rows of each step, while they are in cache: slot_forward) and its backward steps
  // read the bfloat16 output gradient (slot_backward).
  static bool native_bf16(CellKind cell, const Tensor& input) {
    return cell != CellKind::kLSTM && input.scalar_type() == at::kBFloat16;
  }

  // A native layer (bfloat16 outputs: rnn_native_bf16 chose the slot split for it) or a float32 one.
  static void forward_steps(const common::ForwardSteps& f) {
    const int64_t nt = slot_split_threads(f.plan.s.B);
    const bool native = f.h_slots.scalar_type() == at::kBFloat16;
    TORCH_INTERNAL_ASSERT(!native || (nt > 0 && f.plan.st.T >= kMinSlotSteps && f.cell != CellKind::kLSTM));
    if (nt == 0 || f.plan.st.T < kMinSlotSteps || f.cell == CellKind::kLSTM)
      return common::aten_forward_steps<CpuPointwise>(f);
    const std::vector<uint16_t> p = pack_bf16(f.w_hh.t());
    const Tensor bias = f.b_hh.has_value() ? f.b_hh->to(at::kFloat).contiguous() : Tensor();  // (native: bf16)
    const float* bp = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
    if (native) return slot_forward<float, uint16_t>(f, nt, nullptr, bp, &p);
    slot_forward<float>(f, nt, nullptr, bp, &p);
  }

  static void backward_steps(const common::BackwardSteps& b) {
    const int64_t nt = slot_split_threads(b.plan.s.B);
    const bool native = b.h_slots.scalar_type() == at::kBFloat16;
    TORCH_INTERNAL_ASSERT(!native || (nt > 0 && b.cell != CellKind::kLSTM));
    if (nt == 0 || b.cell == CellKind::kLSTM) return common::aten_backward_steps<CpuPointwise>(b);
    const std::vector<uint16_t> p = pack_bf16(b.w_hh);  // (G, H)
    const int64_t n = b.plan.used, G = b.dgx.size(1);
    b.scratch = scratch(ScratchSlot::kGateGradsBf16, {n, G}, at::kBFloat16);
    b.bias_grad = at::zeros({nt, G + b.plan.s.H}, b.dgx.options());
    uint16_t* d16 = reinterpret_cast<uint16_t*>(b.scratch.data_ptr<c10::BFloat16>());
    if (!native) return slot_backward<float>(b, nt, &p, d16, b.bias_grad.data_ptr<float>());
    if (b.cell == CellKind::kGRU)
      b.scratch_x = scratch(ScratchSlot::kWeightGradOperand, {n, G}, at::kBFloat16);
    // The input gradient inside the step loop (from each step's rounded dgx while in cache).
    const std::vector<uint16_t> p_ih = pack_bf16(b.w_ih);  // (G, I)
    b.dx_slots = at::empty({n, b.w_ih.size(1)}, b.h_slots.options());
    slot_backward<float, /*kNative=*/true>(
        b, nt, &p, d16, b.bias_grad.data_ptr<float>(),
        b.scratch_x.defined() ? reinterpret_cast<uint16_t*>(b.scratch_x.data_ptr<c10::BFloat16>()) : nullptr,
        p_ih.data(), reinterpret_cast<uint16_t*>(b.dx_slots.data_ptr<c10::BFloat16>()));
  }

  // aten_weight_grads' products on bfloat16 operands; a native layer's gradients in bfloat16 (x_slots and h_prev
  // are then bfloat16 already).
  static common::WeightGrads weight_grads(const common::BackwardSteps& b, const Tensor& x_slots, const Tensor& w_ih,
                                          bool has_bias) {
    const auto opts = x_slots.options();
    const at::ScalarType dt = x_slots.scalar_type();
    const bool native = dt == at::kBFloat16;
    const int64_t n = b.plan.used, G = w_ih.size(0), I = w_ih.size(1);
    common::WeightGrads w;
    // (A native layer's backward_steps made the input gradient already.)
    const bool dx_done = b.dx_slots.defined();
    w.dx_slots = dx_done ? b.dx_slots : at::empty({n, I}, opts);
    const Tensor dx_f = native && !dx_done ? scratch(ScratchSlot::kInputGrads, {n, I}, at::kFloat) : w.dx_slots;
    const std::vector<uint16_t> p = dx_done ? std::vector<uint16_t>() : pack_bf16(w_ih);  // (G, I)
    // The rounded gate gradients: the slot split's (b.scratch: dgh for GRU, dgx for RNN; b.scratch_x: a native
    // GRU's dgx), and dgx rounded here for GRU otherwise (or when the step loop kept float32 GEMMs).
    const bool gru = b.cell == CellKind::kGRU, kept = b.scratch.defined();
    const Tensor kept_dgx16 = !kept ? Tensor() : gru ? b.scratch_x : b.scratch;
    const bool round_dgx = !kept_dgx16.defined();
    const Tensor dgx16 = round_dgx ? scratch(ScratchSlot::kWeightGradOperand, {n, G}, at::kBFloat16) : kept_dgx16;
    const Tensor dgx = round_dgx ? b.dgx.contiguous() : Tensor();
    const float* dg = round_dgx ? dgx.const_data_ptr<float>() : nullptr;
    uint16_t* dg16 = reinterpret_cast<uint16_t*>(dgx16.data_ptr<c10::BFloat16>());
    float* dx = dx_done ? nullptr : dx_f.data_ptr<float>();
    uint16_t* dx16 = native ? reinterpret_cast<uint16_t*>(w.dx_slots.data_ptr<c10::BFloat16>()) : nullptr;
    if (!dx_done) at::parallel_for(0, n, kMinRows, [&](int64_t r0, int64_t r1) {
      if (round_dgx)
        gemm_bf16_rounded(r1 - r0, I, G, dg + r0 * G, G, p.data(), dx + r0 * I, I, false, dg16 + r0 * G);
      else
        gemm_bf16_packed(r1 - r0, I, G, dg16 + r0 * G, G, p.data(), I, dx + r0 * I, I, false);
      if (native) round_to_bf16((r1 - r0) * I, dx + r0 * I, dx16 + r0 * I);
    });
    const Tensor h16 = b.h_prev.to(at::kBFloat16);
    w.w_ih = mm_bf16(dgx16.narrow(0, 0, n).t(), x_slots.to(at::kBFloat16)).to(dt);
    const Tensor dgh16 = !gru ? dgx16 : kept ? b.scratch : b.dgh.to(at::kBFloat16);
    w.w_hh = mm_bf16(dgh16.narrow(0, 0, n).t(), h16).to(dt);
    auto own = [&](const Tensor& t) { return t.to(dt, /*non_blocking=*/false, /*copy=*/true); };
    if (!has_bias) {
      w.b_ih = w.b_hh = at::empty({0}, opts);
    } else if (b.bias_grad.defined()) {  // the slot split's partial sums: [dgx | dgh's n part]
      const Tensor s = at::sum(b.bias_grad, {0});
      w.b_ih = own(s.narrow(0, 0, G));
      const int64_t H = b.plan.s.H;  // GRU: b_hh's r, z parts are dgx's; its n part is dgh's
      w.b_hh = gru ? at::cat({s.narrow(0, 0, 2 * H), s.narrow(0, G, H)}).to(dt) : own(w.b_ih);
    } else {
      w.b_ih = own(at::sum(b.dgx, {0}));
      w.b_hh = gru ? own(at::sum(b.dgh, {0})) : own(w.b_ih);
    }
    w.w_hr = at::empty({0}, opts);
    return w;
  }
};

// Whether a bfloat16 GRU/RNN layer call runs its GEMMs in bfloat16 (CpuPointwiseBf16).
bool rnn_takes_bf16(const std::optional<Tensor>& lengths) { return gemm_bf16_available() && !lengths.has_value(); }

// Whether it runs natively too: on the bfloat16 tensors as they are, bfloat16 outputs written by the steps (and
// read back as the next step's GEMM operand), only the state, the workspace and the gradients inside float32
// (CpuPointwiseBf16 with the slot split, which the forward takes for this batch and number of steps). Otherwise
// the engine runs on float32 copies. Both give the same bits (the same bfloat16 operands and float32 sums), up
// to denormal outputs: the native path flushes them to zero as AVX512-BF16's conversion does.
bool rnn_native_bf16(const Tensor& input, const Tensor& hx, const std::optional<Tensor>& batch_sizes,
                     bool batch_first, const std::optional<Tensor>& lengths) {
  if (!rnn_takes_bf16(lengths) || hx.dim() != 2) return false;
  if (bf16::upcast_forced()) return false;  // (how the tests compare the two paths)
  int64_t T = 0, B = 0, rows = 0;
  if (input.dim() == 3) {
    T = batch_sizes.has_value() ? batch_sizes->numel() : input.size(batch_first ? 1 : 0);
    B = input.size(batch_first ? 0 : 1);
    rows = T * B;
    if (batch_sizes.has_value() && batch_sizes->scalar_type() == at::kLong && batch_sizes->device().is_cpu()) {
      const Tensor bs = batch_sizes->contiguous();  // (checked again by the engine: only a row count here)
      rows = 0;
      for (int64_t t = 0; t < T; ++t) rows += bs.const_data_ptr<int64_t>()[t];
    }
  } else if (input.dim() == 2 && batch_sizes.has_value()) {
    T = batch_sizes->numel();
    B = hx.size(0);
    rows = input.size(0);
  }
  // Fewer rows than CpuPointwiseBf16::kMinRows: the float32-copy path projects the input with float32's GEMM
  // (one small GEMM), which a native layer (projecting inside its step loop) would not match bit for bit; such a
  // call runs on the float32 copies either way.
  return slot_split_threads(B) > 0 && T >= kMinSlotSteps && rows >= CpuPointwiseBf16::kMinRows;
}

Tensor upload_cpu(const std::vector<int64_t>& v) {
  Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
  return t;
}

std::tuple<Tensor, Tensor, Tensor> rnn_layer_cpu(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                                 const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                                 const std::optional<Tensor>& b_hh,
                                                 const std::optional<Tensor>& batch_sizes,
                                                 const std::optional<Tensor>& sorted_indices, bool batch_first,
                                                 bool reverse, bool train, c10::string_view cell,
                                                 const std::optional<Tensor>& lengths) {
  if (bf16::active(input) && rnn_native_bf16(input, hx, batch_sizes, batch_first, lengths)) {
    const char* op = "rnnext::rnn_layer";
    bf16::check(op, {{"hx", &hx}, {"w_ih", &w_ih}, {"w_hh", &w_hh}, {"b_ih", b_ih ? &*b_ih : nullptr},
                     {"b_hh", b_hh ? &*b_hh : nullptr}});
    return common::rnn_layer_forward<CpuPointwiseBf16>(op, input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes,
                                                       sorted_indices, batch_first, reverse, train,
                                                       std::string_view(cell.data(), cell.size()), lengths,
                                                       common::Backend::kCPU, upload_cpu);
  }
  if (bf16::active(input)) {
    const char* op = "rnnext::rnn_layer";
    const Tensor x = bf16::up(op, "input", input), h = bf16::up(op, "hx", hx), wi = bf16::up(op, "w_ih", w_ih),
                 wh = bf16::up(op, "w_hh", w_hh);
    const std::optional<Tensor> bi = bf16::up(op, "b_ih", b_ih), bh = bf16::up(op, "b_hh", b_hh);
    auto [out, hy, saved] =
        rnn_takes_bf16(lengths)
            ? common::rnn_layer_forward<CpuPointwiseBf16>(op, x, h, wi, wh, bi, bh, batch_sizes, sorted_indices,
                                                          batch_first, reverse, train,
                                                          std::string_view(cell.data(), cell.size()), lengths,
                                                          common::Backend::kCPU, upload_cpu)
            : rnn_layer_cpu(x, h, wi, wh, bi, bh, batch_sizes, sorted_indices, batch_first, reverse, train, cell,
                            lengths);
    return {bf16::down(out), bf16::down(hy), saved};
  }
  return common::rnn_layer_forward<CpuPointwise>("rnnext::rnn_layer", input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes,
                                                 sorted_indices, batch_first, reverse, train,
                                                 std::string_view(cell.data(), cell.size()), lengths,
                                                 common::Backend::kCPU, upload_cpu);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_layer_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices,
    bool batch_first, bool reverse, const Tensor& output, const Tensor& saved, c10::string_view cell,
    bool has_bias, const std::optional<Tensor>& lengths) {
  if (bf16::active(input) && rnn_native_bf16(input, hx, batch_sizes, batch_first, lengths)) {
    const char* op = "rnnext::rnn_layer_backward";
    bf16::check(op, {{"grad_output", &grad_output}, {"grad_hy", &grad_hy}, {"hx", &hx}, {"w_ih", &w_ih},
                     {"w_hh", &w_hh}, {"output", &output}});
    return common::rnn_layer_backward<CpuPointwiseBf16>(op, grad_output, grad_hy, input, hx, w_ih, w_hh, batch_sizes,
                                                        sorted_indices, batch_first, reverse, output,
                                                        bf16::workspace(op, "saved", saved),
                                                        std::string_view(cell.data(), cell.size()), has_bias,
                                                        lengths, common::Backend::kCPU, upload_cpu);
  }
  if (bf16::active(input)) {
    const char* op = "rnnext::rnn_layer_backward";
    const Tensor go = bf16::up(op, "grad_output", grad_output), gh = bf16::up(op, "grad_hy", grad_hy),
                 x = bf16::up(op, "input", input), h = bf16::up(op, "hx", hx), wi = bf16::up(op, "w_ih", w_ih),
                 wh = bf16::up(op, "w_hh", w_hh), out = bf16::up(op, "output", output),
                 sv = bf16::workspace(op, "saved", saved);
    auto [gi, ghx, gwi, gwh, gbi, gbh] =
        rnn_takes_bf16(lengths)
            ? common::rnn_layer_backward<CpuPointwiseBf16>(op, go, gh, x, h, wi, wh, batch_sizes, sorted_indices,
                                                           batch_first, reverse, out, sv,
                                                           std::string_view(cell.data(), cell.size()), has_bias,
                                                           lengths, common::Backend::kCPU, upload_cpu)
            : rnn_layer_backward_cpu(go, gh, x, h, wi, wh, batch_sizes, sorted_indices, batch_first, reverse, out, sv,
                                     cell, has_bias, lengths);
    return {bf16::down(gi), bf16::down(ghx), bf16::down(gwi), bf16::down(gwh), bf16::down(gbi), bf16::down(gbh)};
  }
  return common::rnn_layer_backward<CpuPointwise>("rnnext::rnn_layer_backward", grad_output, grad_hy, input, hx, w_ih,
                                                  w_hh, batch_sizes, sorted_indices, batch_first, reverse, output,
                                                  saved, std::string_view(cell.data(), cell.size()), has_bias,
                                                  lengths, common::Backend::kCPU, upload_cpu);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_cpu(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices, bool batch_first,
    bool reverse, bool train, const std::optional<Tensor>& lengths) {
  if (bf16::active(input) && CpuPointwise::fuses_input(CellKind::kLSTM) && lstm_fused_takes_bf16(w_hr, lengths))
    // Natively: the fused loop's GEMMs in bfloat16 (AVX512-BF16), its workspace and cell state in float32.
    return common::lstm_layer_forward<CpuPointwise>(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                                    sorted_indices, batch_first, reverse, train, lengths,
                                                    common::Backend::kCPU, upload_cpu);
  if (bf16::active(input)) {
    const char* op = "rnnext::lstm_layer";
    auto [out, hy, cy, gates, cells] = lstm_layer_cpu(
        bf16::up(op, "input", input), bf16::up(op, "hx", hx), bf16::up(op, "cx", cx), bf16::up(op, "w_ih", w_ih),
        bf16::up(op, "w_hh", w_hh), bf16::up(op, "b_ih", b_ih), bf16::up(op, "b_hh", b_hh), bf16::up(op, "w_hr", w_hr),
        batch_sizes, sorted_indices, batch_first, reverse, train, lengths);
    return {bf16::down(out), bf16::down(hy), bf16::down(cy), gates, cells};
  }
  return common::lstm_layer_forward<CpuPointwise>(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                                  sorted_indices, batch_first, reverse, train, lengths,
                                                  common::Backend::kCPU, upload_cpu);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
    const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices, bool batch_first,
    const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse, bool has_bias,
    const std::optional<Tensor>& lengths) {
  if (bf16::active(input) && CpuPointwise::fuses_input(CellKind::kLSTM) && lstm_fused_takes_bf16(w_hr, lengths))
    // Natively: the recurrence in float32, the weight-gradient and input-gradient GEMMs in bfloat16.
    return common::lstm_layer_backward<CpuPointwise>(grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh,
                                                     w_hr, batch_sizes, sorted_indices, batch_first, output, gates,
                                                     cells, reverse, has_bias, lengths, common::Backend::kCPU,
                                                     upload_cpu);
  if (bf16::active(input)) {
    const char* op = "rnnext::lstm_layer_backward";
    auto [gi, ghx, gcx, gwi, gwh, gb, gwr] = lstm_layer_backward_cpu(
        bf16::up(op, "grad_output", grad_output), bf16::up(op, "grad_hy", grad_hy), bf16::up(op, "grad_cy", grad_cy),
        bf16::up(op, "input", input), bf16::up(op, "hx", hx), bf16::up(op, "cx", cx), bf16::up(op, "w_ih", w_ih),
        bf16::up(op, "w_hh", w_hh), bf16::up(op, "w_hr", w_hr), batch_sizes, sorted_indices, batch_first,
        bf16::up(op, "output", output), bf16::workspace(op, "gates", gates), bf16::workspace(op, "cells", cells),
        reverse, has_bias, lengths);
    return {bf16::down(gi), bf16::down(ghx), bf16::down(gcx), bf16::down(gwi), bf16::down(gwh), bf16::down(gb),
            bf16::down(gwr)};
  }
  return common::lstm_layer_backward<CpuPointwise>(grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, w_hr,
                                                   batch_sizes, sorted_indices, batch_first, output, gates, cells,
                                                   reverse, has_bias, lengths, common::Backend::kCPU, upload_cpu);
}

std::tuple<Tensor, Tensor> rnn_cell_cpu(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                       const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                       const std::optional<Tensor>& b_hh, c10::string_view cell) {
  if (bf16::active(input)) {
    const char* op = "rnnext::rnn_cell";
    auto [hy, saved] = rnn_cell_cpu(bf16::up(op, "input", input), bf16::up(op, "hx", hx), bf16::up(op, "w_ih", w_ih),
                                    bf16::up(op, "w_hh", w_hh), bf16::up(op, "b_ih", b_ih), bf16::up(op, "b_hh", b_hh),
                                    cell);
    return {bf16::down(hy), saved};
  }
  return common::rnn_cell_forward<CpuPointwise>("rnnext::rnn_cell", input, hx, w_ih, w_hh, b_ih, b_hh,
                                                std::string_view(cell.data(), cell.size()), common::Backend::kCPU);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_cell_backward_cpu(
    const Tensor& grad_hy, const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& hy, const Tensor& saved, c10::string_view cell, bool has_bias) {
  if (bf16::active(input)) {
    const char* op = "rnnext::rnn_cell_backward";
    auto [gi, ghx, gwi, gwh, gbi, gbh] = rnn_cell_backward_cpu(
        bf16::up(op, "grad_hy", grad_hy), bf16::up(op, "input", input), bf16::up(op, "hx", hx),
        bf16::up(op, "w_ih", w_ih), bf16::up(op, "w_hh", w_hh), bf16::up(op, "hy", hy),
        bf16::workspace(op, "saved", saved), cell, has_bias);
    return {bf16::down(gi), bf16::down(ghx), bf16::down(gwi), bf16::down(gwh), bf16::down(gbi), bf16::down(gbh)};
  }
  return common::rnn_cell_backward<CpuPointwise>("rnnext::rnn_cell_backward", grad_hy, input, hx, w_ih, w_hh, hy,
                                                 saved, std::string_view(cell.data(), cell.size()), has_bias,
                                                 common::Backend::kCPU);
}

}  // namespace

void rnn_cell_step(CellKind cell, const Tensor& x, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                   const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  common::rnn_cell_step<CpuPointwise>(cell, x, h, w_ih, w_hh, b_ih, b_hh);
}

TORCH_LIBRARY_IMPL(rnnext, CPU, m) {
  m.impl("lstm_layer", &lstm_layer_cpu);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cpu);
  m.impl("rnn_layer", &rnn_layer_cpu);
  m.impl("rnn_layer_backward", &rnn_layer_backward_cpu);
  m.impl("rnn_cell", &rnn_cell_cpu);
  m.impl("rnn_cell_backward", &rnn_cell_backward_cpu);
}

}  // namespace rnnext::cpu
