// Instantiations of the pointwise loops declared in pointwise.h; float gets per-ISA clones.
#include "cpu/pointwise.h"

#include "kernels/lstm.h"

#define RNNEXT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace rnnext::cpu {
namespace {

template <typename T>
RNNEXT_HD void forward_body(int64_t w, int64_t gs, T* __restrict__ gates, const T* c_prev, T* c_out,
                            T* __restrict__ c_save, T* __restrict__ h_out, T* __restrict__ h_out2) {
  T* gi = gates;
  T* gf = gates + gs;
  T* gg = gates + 2 * gs;
  T* go = gates + 3 * gs;
  T hbuf[64];
  for (int64_t u0 = 0; u0 < w; u0 += 64) {
    const int64_t n = w - u0 < 64 ? w - u0 : 64;
#pragma omp simd
    for (int64_t u = 0; u < n; ++u) {
      const int64_t j = u0 + u;
      T i, f, g, o, c, h;
      kernels::lstm_forward_elem(gi[j], gf[j], gg[j], go[j], c_prev[j], i, f, g, o, c, h);
      gi[j] = i;
      gf[j] = f;
      gg[j] = g;
      go[j] = o;
      c_out[j] = c;
      hbuf[u] = h;
    }
    for (int64_t u = 0; u < n; ++u) h_out[u0 + u] = hbuf[u];
    if (c_save != nullptr)
      for (int64_t u = 0; u < n; ++u) c_save[u0 + u] = c_out[u0 + u];
    if (h_out2 != nullptr)
      for (int64_t u = 0; u < n; ++u) h_out2[u0 + u] = hbuf[u];
  }
}

template <typename T>
RNNEXT_HD void backward_body(int64_t w, int64_t gs, const T* __restrict__ acts, const T* __restrict__ c,
                             const T* __restrict__ c_prev, const T* __restrict__ dh_a, const T* __restrict__ dh_b,
                             T* __restrict__ dc, T* __restrict__ dgates) {
#pragma omp simd
  for (int64_t u = 0; u < w; ++u) {
    const T dh = dh_b != nullptr ? dh_a[u] + dh_b[u] : dh_a[u];
    T di, df, dg, dout, dcp;
    kernels::lstm_backward_elem(acts[u], acts[gs + u], acts[2 * gs + u], acts[3 * gs + u], c[u], c_prev[u], dh,
                                dc[u], di, df, dg, dout, dcp);
    dgates[u] = di;
    dgates[gs + u] = df;
    dgates[2 * gs + u] = dg;
    dgates[3 * gs + u] = dout;
    dc[u] = dcp;
  }
}

template <typename T>
RNNEXT_HD void hidden_body(int64_t w, int64_t gs, const T* __restrict__ acts, const T* __restrict__ c,
                           T* __restrict__ h) {
#pragma omp simd
  for (int64_t u = 0; u < w; ++u) h[u] = acts[3 * gs + u] * kernels::tanh_act(c[u]);
}

}  // namespace

template <>
RNNEXT_CLONES void lstm_pointwise_forward<float>(int64_t w, int64_t gs, float* gates, const float* c_prev,
                                                 float* c_out, float* c_save, float* h_out, float* h_out2) {
  forward_body(w, gs, gates, c_prev, c_out, c_save, h_out, h_out2);
}
template <>
void lstm_pointwise_forward<double>(int64_t w, int64_t gs, double* gates, const double* c_prev, double* c_out,
                                    double* c_save, double* h_out, double* h_out2) {
  forward_body(w, gs, gates, c_prev, c_out, c_save, h_out, h_out2);
}

template <>
RNNEXT_CLONES void lstm_pointwise_backward<float>(int64_t w, int64_t gs, const float* acts, const float* c,
                                                  const float* c_prev, const float* dh_a, const float* dh_b,
                                                  float* dc, float* dgates) {
  backward_body(w, gs, acts, c, c_prev, dh_a, dh_b, dc, dgates);
}
template <>
void lstm_pointwise_backward<double>(int64_t w, int64_t gs, const double* acts, const double* c,
                                     const double* c_prev, const double* dh_a, const double* dh_b, double* dc,
                                     double* dgates) {
  backward_body(w, gs, acts, c, c_prev, dh_a, dh_b, dc, dgates);
}

template <>
RNNEXT_CLONES void lstm_pointwise_hidden<float>(int64_t w, int64_t gs, const float* acts, const float* c,
                                                float* h) {
  hidden_body(w, gs, acts, c, h);
}
template <>
void lstm_pointwise_hidden<double>(int64_t w, int64_t gs, const double* acts, const double* c, double* h) {
  hidden_body(w, gs, acts, c, h);
}

}  // namespace rnnext::cpu
