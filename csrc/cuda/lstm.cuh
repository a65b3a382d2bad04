// LSTM pointwise kernels (one thread per element), shared by the CUDA layer (csrc/cuda/rnn_layer.cu), cell,
// thin-stack tracker and generation kernels. Math: csrc/kernels/lstm.h, in float for half types.
#pragma once
#include <ATen/OpMathType.h>

#include "cuda/common.cuh"
#include "kernels/lstm.h"

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

}  // namespace rnnext::cuda
