// TreeLSTM pointwise kernels (one thread per row and unit), used by the TreeLSTM cell and the thin stack.
#pragma once
#include <ATen/OpMathType.h>

#include "cuda/common.cuh"
#include "kernels/treelstm.h"

namespace rnnext::cuda {

// pre (row stride 5H) + bias -> activations in acts (row stride 5H, may be pre); h and c (row stride ld_hc);
// children's c with row stride ld_cc.
template <typename scalar_t>
__global__ void treelstm_forward_kernel(int64_t M, int64_t H, const scalar_t* pre, const scalar_t* bias,
                                        const scalar_t* c_left, const scalar_t* c_right, int64_t ld_cc,
                                        scalar_t* acts, scalar_t* h, scalar_t* c, int64_t ld_hc) {
  using acc_t = at::opmath_type<scalar_t>;
  RNNEXT_CUDA_LOOP(idx, M * H) {
    const int64_t r = idx / H, u = idx % H;
    const scalar_t* p = pre + r * 5 * H;
    acc_t v[5];
    for (int k = 0; k < 5; ++k) v[k] = static_cast<acc_t>(p[k * H + u]) + (bias ? static_cast<acc_t>(bias[k * H + u]) : acc_t(0));
    acc_t a, i, f1, f2, o, cc, hh;
    kernels::treelstm_forward_elem<acc_t>(v[0], v[1], v[2], v[3], v[4], c_left[r * ld_cc + u], c_right[r * ld_cc + u],
                                          a, i, f1, f2, o, cc, hh);
    scalar_t* out = acts + r * 5 * H;
    out[u] = a;
    out[H + u] = i;
    out[2 * H + u] = f1;
    out[3 * H + u] = f2;
    out[4 * H + u] = o;
    c[r * ld_hc + u] = cc;
    h[r * ld_hc + u] = hh;
  }
}

template <typename scalar_t>
__global__ void treelstm_backward_kernel(int64_t M, int64_t H, const scalar_t* acts, const scalar_t* c, int64_t ld_hc,
                                         const scalar_t* c_left, const scalar_t* c_right, int64_t ld_cc,
                                         const scalar_t* dh, const scalar_t* dc, int64_t ld_d, scalar_t* dpre,
                                         scalar_t* dc_left, scalar_t* dc_right, int64_t ld_dcc) {
  using acc_t = at::opmath_type<scalar_t>;
  RNNEXT_CUDA_LOOP(idx, M * H) {
    const int64_t r = idx / H, u = idx % H;
    const scalar_t* a = acts + r * 5 * H;
    acc_t da, di, df1, df2, dout, gl, gr;
    kernels::treelstm_backward_elem<acc_t>(a[u], a[H + u], a[2 * H + u], a[3 * H + u], a[4 * H + u], c[r * ld_hc + u],
                                           c_left[r * ld_cc + u], c_right[r * ld_cc + u], dh[r * ld_d + u],
                                           dc[r * ld_d + u], da, di, df1, df2, dout, gl, gr);
    scalar_t* d = dpre + r * 5 * H;
    d[u] = da;
    d[H + u] = di;
    d[2 * H + u] = df1;
    d[3 * H + u] = df2;
    d[4 * H + u] = dout;
    dc_left[r * ld_dcc + u] = gl;
    dc_right[r * ld_dcc + u] = gr;
  }
}

}  // namespace rnnext::cuda
