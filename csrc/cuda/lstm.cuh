// LSTM pointwise kernels and row gather/scatter kernels (one thread per element), shared by the CUDA layer,
// cell, thin-stack tracker and generation kernels. Math: csrc/kernels/lstm.h, in float for half types.
#pragma once
#include <ATen/OpMathType.h>

#include "cuda/common.cuh"
#include "kernels/lstm.h"
#include "kernels/lstm_masked.h"

namespace rnnext::cuda {

// One element (slot j, unit u) of the forward step. gates rows (stride 4H, standard layout) hold the
// pre-activations and receive the activations; c is per slot (in place); h goes to h_out (stride ld_h) and,
// when y is given, to y row yrow[j] (stride ld_y).
template <typename scalar_t>
__global__ void lstm_forward_kernel(int64_t n, int64_t H, scalar_t* __restrict__ gates, const scalar_t* bias,
                                    const scalar_t* c_prev, scalar_t* c_out, scalar_t* c_save, scalar_t* h_out,
                                    int64_t ld_h, scalar_t* y, const int64_t* yrow, int64_t ld_y) {
  using acc_t = at::opmath_type<scalar_t>;
  RNNEXT_CUDA_LOOP(idx, n * H) {
    const int64_t j = idx / H, u = idx % H;
    scalar_t* g = gates + j * 4 * H;
    acc_t p[4];
    for (int k = 0; k < 4; ++k) p[k] = static_cast<acc_t>(g[k * H + u]) + (bias ? static_cast<acc_t>(bias[k * H + u]) : acc_t(0));
    acc_t i, f, gg, o, c, h;
    kernels::lstm_forward_elem<acc_t>(p[0], p[1], p[2], p[3], static_cast<acc_t>(c_prev[j * H + u]), i, f, gg, o, c, h);
    g[u] = i;
    g[H + u] = f;
    g[2 * H + u] = gg;
    g[3 * H + u] = o;
    c_out[j * H + u] = c;
    if (c_save) c_save[j * H + u] = c;
    h_out[j * ld_h + u] = h;
    if (y) y[(yrow ? yrow[j] : j) * ld_y + u] = h;
  }
}

// One element of the backward step: dh = dh_a (stride ld_a) + dh_b row dyrow[j] (stride ld_b, optional);
// dc per slot in place; c_prev from c_prev_a for slots < n_prev_a, else c_prev_b.
template <typename scalar_t>
__global__ void lstm_backward_kernel(int64_t n, int64_t H, const scalar_t* acts, const scalar_t* c,
                                     const scalar_t* c_prev_a, int64_t n_prev_a, const scalar_t* c_prev_b,
                                     const scalar_t* dh_a, int64_t ld_a, const scalar_t* dh_b, const int64_t* dyrow,
                                     int64_t ld_b, scalar_t* dc, scalar_t* dgates) {
  using acc_t = at::opmath_type<scalar_t>;
  RNNEXT_CUDA_LOOP(idx, n * H) {
    const int64_t j = idx / H, u = idx % H;
    const scalar_t* a = acts + j * 4 * H;
    const scalar_t* cp = j < n_prev_a ? c_prev_a : c_prev_b;
    acc_t dh = static_cast<acc_t>(dh_a[j * ld_a + u]);
    if (dh_b) dh += static_cast<acc_t>(dh_b[(dyrow ? dyrow[j] : j) * ld_b + u]);
    acc_t di, df, dg, dout, dcp;
    kernels::lstm_backward_elem<acc_t>(a[u], a[H + u], a[2 * H + u], a[3 * H + u], c[j * H + u], cp[j * H + u], dh,
                                       static_cast<acc_t>(dc[j * H + u]), di, df, dg, dout, dcp);
    scalar_t* d = dgates + j * 4 * H;
    d[u] = di;
    d[H + u] = df;
    d[2 * H + u] = dg;
    d[3 * H + u] = dout;
    dc[j * H + u] = dcp;
  }
}

// Masked mode (per-entry lengths read on the device; csrc/kernels/lstm_masked.h), one thread per element of
// the step at time t. Workspace rows (gates, cells, h_prev, dh_proj) of the step start at t * B.
RNNEXT_HD bool masked_active(const int64_t* lengths, int64_t b, int64_t t, int64_t T) {
  return t < kernels::masked_length(lengths[b], T);
}

template <typename scalar_t>
__global__ void lstm_masked_forward_kernel(int64_t B, int64_t H, int64_t P, int64_t T, int64_t t, bool batch_first,
                                           const int64_t* lengths, scalar_t* gates, const scalar_t* xproj,
                                           const scalar_t* bias, scalar_t* c_state, scalar_t* cells, scalar_t* h_dst,
                                           int64_t ld_h, scalar_t* y) {
  using acc_t = at::opmath_type<scalar_t>;
  RNNEXT_CUDA_LOOP(idx, B * H) {
    const int64_t b = idx / H, u = idx % H;
    const int64_t row = kernels::padded_row(t, b, T, B, batch_first);
    kernels::lstm_masked_forward_point<scalar_t, acc_t>(
        masked_active(lengths, b, t, T), H, u, gates + b * 4 * H, xproj + row * 4 * H, bias, c_state + b * H,
        cells ? cells + b * H : nullptr, h_dst + b * ld_h, y ? y + row * P : nullptr);
  }
}

template <typename scalar_t>
__global__ void lstm_masked_projection_kernel(int64_t B, int64_t P, int64_t T, int64_t t, bool batch_first,
                                              const int64_t* lengths, const scalar_t* h_proj, scalar_t* h_state,
                                              scalar_t* y) {
  RNNEXT_CUDA_LOOP(idx, B * P) {
    const int64_t b = idx / P, q = idx % P;
    kernels::lstm_masked_projection_point(masked_active(lengths, b, t, T), q, h_proj + b * P, h_state + b * P,
                                          y + kernels::padded_row(t, b, T, B, batch_first) * P);
  }
}

template <typename scalar_t>
__global__ void lstm_masked_projection_grad_kernel(int64_t B, int64_t P, int64_t T, int64_t t, bool batch_first,
                                                   const int64_t* lengths, const scalar_t* dh_state,
                                                   const scalar_t* dy, scalar_t* dh_proj) {
  using acc_t = at::opmath_type<scalar_t>;
  RNNEXT_CUDA_LOOP(idx, B * P) {
    const int64_t b = idx / P, q = idx % P;
    kernels::lstm_masked_projection_grad_point<scalar_t, acc_t>(
        masked_active(lengths, b, t, T), q, dh_state + b * P, dy + kernels::padded_row(t, b, T, B, batch_first) * P,
        dh_proj + b * P);
  }
}

// c_prev: the cells rows of the step processed before (t_prev >= 0), else c0. dy is null with a projection
// (dh_a then holds the whole gradient of the unprojected h).
template <typename scalar_t>
__global__ void lstm_masked_backward_kernel(int64_t B, int64_t H, int64_t P, int64_t T, int64_t t, int64_t t_prev,
                                            bool batch_first, const int64_t* lengths, const scalar_t* acts,
                                            const scalar_t* cells, const scalar_t* c0, const scalar_t* dh_a,
                                            int64_t ld_a, const scalar_t* dy, scalar_t* dc_state, scalar_t* dgates) {
  using acc_t = at::opmath_type<scalar_t>;
  RNNEXT_CUDA_LOOP(idx, B * H) {
    const int64_t b = idx / H, u = idx % H;
    const scalar_t* c_prev = t_prev >= 0 ? cells + (t_prev * B + b) * H : c0 + b * H;
    kernels::lstm_masked_backward_point<scalar_t, acc_t>(
        masked_active(lengths, b, t, T), H, u, acts + (t * B + b) * 4 * H, cells + (t * B + b) * H, c_prev,
        dh_a + b * ld_a, dy ? dy + kernels::padded_row(t, b, T, B, batch_first) * P : nullptr, dc_state + b * H,
        dgates + (t * B + b) * 4 * H);
  }
}

// The state gradient carried to the step processed before, and the h this step read (for dW_hh).
template <typename scalar_t>
__global__ void lstm_masked_carry_kernel(int64_t B, int64_t P, int64_t T, int64_t t, int64_t t_prev, bool batch_first,
                                         const int64_t* lengths, const scalar_t* dh_recurrent, scalar_t* dh_state,
                                         const scalar_t* y, const scalar_t* h0, scalar_t* h_prev) {
  RNNEXT_CUDA_LOOP(idx, B * P) {
    const int64_t b = idx / P, q = idx % P;
    kernels::lstm_masked_carry_point(masked_active(lengths, b, t, T), q, dh_recurrent + b * P, dh_state + b * P);
    const bool prev_active = t_prev >= 0 && masked_active(lengths, b, t_prev, T);
    kernels::lstm_masked_h_prev_point(prev_active, q,
                                      prev_active ? y + kernels::padded_row(t_prev, b, T, B, batch_first) * P : nullptr,
                                      h0 + b * P, h_prev + (t * B + b) * P);
  }
}

// out[j] = src[rows[j]] for j < n (rows of width W).
template <typename scalar_t>
__global__ void gather_rows_kernel(int64_t n, int64_t W, const scalar_t* src, const int64_t* rows, int64_t ld_src,
                                   scalar_t* out, int64_t ld_out) {
  RNNEXT_CUDA_LOOP(idx, n * W) {
    const int64_t j = idx / W, w = idx % W;
    out[j * ld_out + w] = src[rows[j] * ld_src + w];
  }
}

// out[rows[j]] = src[j] for j < n.
template <typename scalar_t>
__global__ void scatter_rows_kernel(int64_t n, int64_t W, const scalar_t* src, int64_t ld_src, const int64_t* rows,
                                    scalar_t* out, int64_t ld_out) {
  RNNEXT_CUDA_LOOP(idx, n * W) {
    const int64_t j = idx / W, w = idx % W;
    out[rows[j] * ld_out + w] = src[j * ld_src + w];
  }
}

}  // namespace rnnext::cuda
