// Instantiations of the pointwise tiles declared in pointwise.h; float gets per-ISA clones.
#include "cpu/pointwise.h"
#include "cpu/isa.h"

#include <cstdlib>

#include "kernels/lstm.h"
#include "kernels/lstm_layout.h"
#include "kernels/treelstm.h"


namespace rnnext::cpu {

// pointwise_avx512.cpp
void lstm_forward_tile_avx512(GateLayout l, int64_t rows, int64_t k0, int64_t k1, float* gates, int64_t ld_g,
                              const float* bias, const float* c_prev, float* c_out, float* c_save, float* h,
                              int64_t ld_h, float* y, int64_t ld_y);
void lstm_backward_tile_avx512(GateLayout l, int64_t rows, int64_t k0, int64_t k1, const float* acts, int64_t ld_g,
                               const float* c, const float* c_prev_a, int64_t n_prev_a, const float* c_prev_b,
                               const float* dh_a, const float* dh_b, int64_t ld_dh, int64_t ld_dhb, float* dc, float* dgates);

namespace {

bool has_avx512() {
  static const bool has = [] {
    // RNNEXT_DISABLE_AVX512=1 takes the AVX2/baseline clones instead (the tests run every path).
    const char* off = std::getenv("RNNEXT_DISABLE_AVX512");
    if (off != nullptr && off[0] == '1') return false;
    return cpu_has_avx512f();
  }();
  return has;
}

}  // namespace

bool pointwise_has_avx512() { return has_avx512(); }

namespace {

struct Block {
  int64_t unit, col, width;  // first unit, first gate column, units (= gate stride)
};

RNNEXT_HD Block block_of(const GateLayout& l, int64_t k) {
  if (!l.blocked) return {0, 0, l.H};
  return {kernels::block_first_unit(k), kernels::block_first_col(k), kernels::block_width(k, l.H)};
}

// One row of one block; W > 0 is the block width known at compile time, W == 0 takes it from w.
template <int W, typename T>
RNNEXT_HD void forward_block(int64_t w_rt, T* __restrict__ g, const T* __restrict__ bias, const T* c_prev, T* c_out,
                             T* __restrict__ c_save, T* __restrict__ h, T* __restrict__ y) {
  const int64_t w = W > 0 ? W : w_rt;
#pragma omp simd
  for (int64_t u = 0; u < w; ++u) {
    T pi = g[u], pf = g[w + u], pg = g[2 * w + u], po = g[3 * w + u];
    if (bias != nullptr) {
      pi += bias[u];
      pf += bias[w + u];
      pg += bias[2 * w + u];
      po += bias[3 * w + u];
    }
    T i, f, gg, o, c, hh;
    kernels::lstm_forward_elem(pi, pf, pg, po, c_prev[u], i, f, gg, o, c, hh);
    g[u] = i;
    g[w + u] = f;
    g[2 * w + u] = gg;
    g[3 * w + u] = o;
    c_out[u] = c;
    h[u] = hh;
  }
  if (c_save != nullptr)
    for (int64_t u = 0; u < w; ++u) c_save[u] = c_out[u];
  if (y != nullptr)
    for (int64_t u = 0; u < w; ++u) y[u] = h[u];
}

template <typename T>
RNNEXT_HD void forward_tile(GateLayout l, int64_t rows, int64_t k0, int64_t k1, T* gates, int64_t ld_g,
                            const T* bias, const T* c_prev, T* c_out, T* c_save, T* h, int64_t ld_h, T* y,
                            int64_t ld_y) {
  for (int64_t b = 0; b < rows; ++b) {
    for (int64_t k = k0; k < k1; ++k) {
      const Block bl = block_of(l, k);
      T* g = gates + b * ld_g + bl.col;
      const T* bi = bias != nullptr ? bias + bl.col : nullptr;
      const int64_t cu = b * l.H + bl.unit;
      T* cs = c_save != nullptr ? c_save + cu : nullptr;
      T* yy = y != nullptr ? y + b * ld_y + bl.unit : nullptr;
      T* hh = h + b * ld_h + bl.unit;
      if (bl.width == kernels::kUnitBlock)
        forward_block<kernels::kUnitBlock>(bl.width, g, bi, c_prev + cu, c_out + cu, cs, hh, yy);
      else
        forward_block<0>(bl.width, g, bi, c_prev + cu, c_out + cu, cs, hh, yy);
    }
  }
}

template <int W, typename T>
RNNEXT_HD void backward_block(int64_t w_rt, const T* __restrict__ a, const T* __restrict__ c,
                              const T* __restrict__ c_prev, const T* __restrict__ dh_a, const T* __restrict__ dh_b,
                              T* __restrict__ dc, T* __restrict__ dg) {
  const int64_t w = W > 0 ? W : w_rt;
#pragma omp simd
  for (int64_t u = 0; u < w; ++u) {
    const T dh = dh_b != nullptr ? dh_a[u] + dh_b[u] : dh_a[u];
    T di, df, dgg, dout, dcp;
    kernels::lstm_backward_elem(a[u], a[w + u], a[2 * w + u], a[3 * w + u], c[u], c_prev[u], dh, dc[u], di, df, dgg,
                                dout, dcp);
    dg[u] = di;
    dg[w + u] = df;
    dg[2 * w + u] = dgg;
    dg[3 * w + u] = dout;
    dc[u] = dcp;
  }
}

template <typename T>
RNNEXT_HD void backward_tile(GateLayout l, int64_t rows, int64_t k0, int64_t k1, const T* acts, int64_t ld_g,
                             const T* c, const T* c_prev_a, int64_t n_prev_a, const T* c_prev_b, const T* dh_a,
                             const T* dh_b, int64_t ld_dh, int64_t ld_dhb, T* dc, T* dgates) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* cp = b < n_prev_a ? c_prev_a : c_prev_b;
    for (int64_t k = k0; k < k1; ++k) {
      const Block bl = block_of(l, k);
      const int64_t cu = b * l.H + bl.unit, du = b * ld_dh + bl.unit, gc = b * ld_g + bl.col;
      const T* dhb = dh_b != nullptr ? dh_b + b * ld_dhb + bl.unit : nullptr;
      if (bl.width == kernels::kUnitBlock)
        backward_block<kernels::kUnitBlock>(bl.width, acts + gc, c + cu, cp + cu, dh_a + du, dhb, dc + cu, dgates + gc);
      else
        backward_block<0>(bl.width, acts + gc, c + cu, cp + cu, dh_a + du, dhb, dc + cu, dgates + gc);
    }
  }
}

template <typename T>
RNNEXT_HD void hidden_tile(GateLayout l, int64_t rows, const T* acts, int64_t ld_g, const T* c, T* h) {
  const int64_t nb = l.blocked ? kernels::num_unit_blocks(l.H) : 1;
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t k = 0; k < nb; ++k) {
      const Block bl = block_of(l, k);
      const T* o = acts + b * ld_g + bl.col + 3 * bl.width;
      const T* cc = c + b * l.H + bl.unit;
      T* hh = h + b * l.H + bl.unit;
#pragma omp simd
      for (int64_t u = 0; u < bl.width; ++u) hh[u] = o[u] * kernels::tanh_act(cc[u]);
    }
}

}  // namespace

RNNEXT_CLONES void forward_tile_f32(GateLayout l, int64_t rows, int64_t k0, int64_t k1, float* gates, int64_t ld_g,
                                    const float* bias, const float* c_prev, float* c_out, float* c_save, float* h,
                                    int64_t ld_h, float* y, int64_t ld_y) {
  forward_tile(l, rows, k0, k1, gates, ld_g, bias, c_prev, c_out, c_save, h, ld_h, y, ld_y);
}
template <>
void lstm_forward_tile<float>(GateLayout l, int64_t rows, int64_t k0, int64_t k1, float* gates, int64_t ld_g,
                              const float* bias, const float* c_prev, float* c_out, float* c_save, float* h,
                              int64_t ld_h, float* y, int64_t ld_y) {
  if (has_avx512())
    lstm_forward_tile_avx512(l, rows, k0, k1, gates, ld_g, bias, c_prev, c_out, c_save, h, ld_h, y, ld_y);
  else
    forward_tile_f32(l, rows, k0, k1, gates, ld_g, bias, c_prev, c_out, c_save, h, ld_h, y, ld_y);
}
template <>
RNNEXT_CLONES void lstm_forward_tile<double>(GateLayout l, int64_t rows, int64_t k0, int64_t k1, double* gates, int64_t ld_g,
                               const double* bias, const double* c_prev, double* c_out, double* c_save, double* h,
                               int64_t ld_h, double* y, int64_t ld_y) {
  forward_tile(l, rows, k0, k1, gates, ld_g, bias, c_prev, c_out, c_save, h, ld_h, y, ld_y);
}

RNNEXT_CLONES void backward_tile_f32(GateLayout l, int64_t rows, int64_t k0, int64_t k1, const float* acts,
                                     int64_t ld_g, const float* c, const float* c_prev_a, int64_t n_prev_a,
                                     const float* c_prev_b, const float* dh_a, const float* dh_b, int64_t ld_dh,
                                     int64_t ld_dhb, float* dc, float* dgates) {
  backward_tile(l, rows, k0, k1, acts, ld_g, c, c_prev_a, n_prev_a, c_prev_b, dh_a, dh_b, ld_dh, ld_dhb, dc, dgates);
}
template <>
void lstm_backward_tile<float>(GateLayout l, int64_t rows, int64_t k0, int64_t k1, const float* acts, int64_t ld_g,
                               const float* c, const float* c_prev_a, int64_t n_prev_a, const float* c_prev_b,
                               const float* dh_a, const float* dh_b, int64_t ld_dh, int64_t ld_dhb, float* dc, float* dgates) {
  if (has_avx512())
    lstm_backward_tile_avx512(l, rows, k0, k1, acts, ld_g, c, c_prev_a, n_prev_a, c_prev_b, dh_a, dh_b, ld_dh, ld_dhb, dc,
                              dgates);
  else
    backward_tile_f32(l, rows, k0, k1, acts, ld_g, c, c_prev_a, n_prev_a, c_prev_b, dh_a, dh_b, ld_dh, ld_dhb, dc, dgates);
}
template <>
RNNEXT_CLONES void lstm_backward_tile<double>(GateLayout l, int64_t rows, int64_t k0, int64_t k1, const double* acts,
                                int64_t ld_g, const double* c, const double* c_prev_a, int64_t n_prev_a,
                                const double* c_prev_b, const double* dh_a, const double* dh_b, int64_t ld_dh,
                                int64_t ld_dhb, double* dc, double* dgates) {
  backward_tile(l, rows, k0, k1, acts, ld_g, c, c_prev_a, n_prev_a, c_prev_b, dh_a, dh_b, ld_dh, ld_dhb, dc, dgates);
}

template <>
RNNEXT_CLONES void lstm_hidden_tile<float>(GateLayout l, int64_t rows, const float* acts, int64_t ld_g,
                                           const float* c, float* h) {
  hidden_tile(l, rows, acts, ld_g, c, h);
}
template <>
RNNEXT_CLONES void lstm_hidden_tile<double>(GateLayout l, int64_t rows, const double* acts, int64_t ld_g, const double* c,
                              double* h) {
  hidden_tile(l, rows, acts, ld_g, c, h);
}

namespace {

template <typename T>
RNNEXT_HD void treelstm_forward_body(int64_t rows, int64_t H, const T* pre, const T* bias, const T* c_left,
                                     const T* c_right, int64_t ld_cc, T* acts, T* h, T* c, int64_t ld_hc) {
  const int64_t G = 5 * H;
  for (int64_t r = 0; r < rows; ++r) {
    const T* p = pre + r * G;
    T* a = acts + r * G;
    const T* cl = c_left + r * ld_cc;
    const T* cr = c_right + r * ld_cc;
    T* hh = h + r * ld_hc;
    T* cc = c + r * ld_hc;
#pragma omp simd
    for (int64_t u = 0; u < H; ++u) {
      T pa = p[u], pi = p[H + u], pf1 = p[2 * H + u], pf2 = p[3 * H + u], po = p[4 * H + u];
      if (bias != nullptr) {
        pa += bias[u];
        pi += bias[H + u];
        pf1 += bias[2 * H + u];
        pf2 += bias[3 * H + u];
        po += bias[4 * H + u];
      }
      T va, vi, vf1, vf2, vo, vc, vh;
      kernels::treelstm_forward_elem(pa, pi, pf1, pf2, po, cl[u], cr[u], va, vi, vf1, vf2, vo, vc, vh);
      a[u] = va;
      a[H + u] = vi;
      a[2 * H + u] = vf1;
      a[3 * H + u] = vf2;
      a[4 * H + u] = vo;
      cc[u] = vc;
      hh[u] = vh;
    }
  }
}

template <typename T>
RNNEXT_HD void treelstm_backward_body(int64_t rows, int64_t H, const T* acts, const T* c, int64_t ld_hc,
                                      const T* c_left, const T* c_right, int64_t ld_cc, const T* dh, const T* dc,
                                      int64_t ld_d, T* dpre, T* dc_left, T* dc_right, int64_t ld_dcc) {
  const int64_t G = 5 * H;
  for (int64_t r = 0; r < rows; ++r) {
    const T* a = acts + r * G;
    const T* cc = c + r * ld_hc;
    const T* cl = c_left + r * ld_cc;
    const T* cr = c_right + r * ld_cc;
    const T* dhr = dh + r * ld_d;
    const T* dcr = dc + r * ld_d;
    T* dp = dpre + r * G;
    T* dcl = dc_left + r * ld_dcc;
    T* dcrr = dc_right + r * ld_dcc;
#pragma omp simd
    for (int64_t u = 0; u < H; ++u) {
      T da, di, df1, df2, dout, gl, gr;
      kernels::treelstm_backward_elem(a[u], a[H + u], a[2 * H + u], a[3 * H + u], a[4 * H + u], cc[u], cl[u], cr[u],
                                      dhr[u], dcr[u], da, di, df1, df2, dout, gl, gr);
      dp[u] = da;
      dp[H + u] = di;
      dp[2 * H + u] = df1;
      dp[3 * H + u] = df2;
      dp[4 * H + u] = dout;
      dcl[u] = gl;
      dcrr[u] = gr;
    }
  }
}

}  // namespace

#define RNNEXT_TREELSTM_INSTANCES(T, ATTR)                                                                    \
  template <>                                                                                               \
  ATTR void treelstm_forward_rows<T>(int64_t rows, int64_t H, const T* pre, const T* bias, const T* c_left,   \
                                     const T* c_right, int64_t ld_cc, T* acts, T* h, T* c, int64_t ld_hc) {   \
    treelstm_forward_body(rows, H, pre, bias, c_left, c_right, ld_cc, acts, h, c, ld_hc);                     \
  }                                                                                                         \
  template <>                                                                                               \
  ATTR void treelstm_backward_rows<T>(int64_t rows, int64_t H, const T* acts, const T* c, int64_t ld_hc,      \
                                      const T* c_left, const T* c_right, int64_t ld_cc, const T* dh,          \
                                      const T* dc, int64_t ld_d, T* dpre, T* dc_left, T* dc_right,            \
                                      int64_t ld_dcc) {                                                       \
    treelstm_backward_body(rows, H, acts, c, ld_hc, c_left, c_right, ld_cc, dh, dc, ld_d, dpre, dc_left,      \
                           dc_right, ld_dcc);                                                                 \
  }
RNNEXT_TREELSTM_INSTANCES(float, RNNEXT_CLONES_512)
RNNEXT_TREELSTM_INSTANCES(double, RNNEXT_CLONES)
#undef RNNEXT_TREELSTM_INSTANCES

}  // namespace rnnext::cpu
