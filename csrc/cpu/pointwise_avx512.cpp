// AVX-512 versions of the float pointwise tiles (pointwise.h), chosen at run time on CPUs that have it.
// The whole file is compiled for AVX-512; the shared headers are included inside an anonymous namespace so
// that no AVX-512 copy of an inline function can leak into (and be merged with) the generic code.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#include "cpu/pointwise.h"

#pragma GCC push_options
#pragma GCC target("avx512f,fma")

namespace {
#include "cpu/vec_avx512.h"
#include "kernels/lstm.h"
#include "kernels/lstm_layout.h"

using ::rnnext::cpu::GateLayout;

struct Block {
  int64_t unit, col, width;
};

inline Block block_of(const GateLayout& l, int64_t k) {
  if (!l.blocked) return {0, 0, l.H};
  return {rnnext::kernels::block_first_unit(k), rnnext::kernels::block_first_col(k),
          rnnext::kernels::block_width(k, l.H)};
}

inline __mmask16 lanes(int64_t left) { return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u); }
inline __m512 load(__mmask16 m, const float* p) {
  return m == __mmask16(0xFFFF) ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
}
inline void store(__mmask16 m, float* p, __m512 x) {
  if (m == __mmask16(0xFFFF))
    _mm512_storeu_ps(p, x);
  else if (m != 0)
    _mm512_mask_storeu_ps(p, m, x);
}

constexpr int kGroup = 1;  // vectors processed together (independent dependency chains)
alignas(64) const float kZeros[16] = {};
alignas(64) float kSink[16];  // target of the stores of unused group slots (never stored: mask 0)

// One 16-lane vector of the forward step: the four gates at g + j * gs, bias at bias + j * bgs.
struct FwdItem {
  float* g;
  const float* bias;
  int64_t gs, bgs;
  const float* cp;
  float *co, *cs, *h, *y;
  __mmask16 m, ms, my;
};

void forward_group(const FwdItem* it, int count) {
  VN<kGroup> pi, pf, pg, po, cp;
  for (int k = 0; k < kGroup; ++k) {
    const FwdItem& x = it[k < count ? k : 0];
    const __mmask16 m = k < count ? x.m : 0;
    pi.v[k] = _mm512_add_ps(load(m, x.g), load(m, x.bias));
    pf.v[k] = _mm512_add_ps(load(m, x.g + x.gs), load(m, x.bias + x.bgs));
    pg.v[k] = _mm512_add_ps(load(m, x.g + 2 * x.gs), load(m, x.bias + 2 * x.bgs));
    po.v[k] = _mm512_add_ps(load(m, x.g + 3 * x.gs), load(m, x.bias + 3 * x.bgs));
    cp.v[k] = load(m, x.cp);
  }
  VN<kGroup> i, f, gg, o, c, h;
  rnnext::kernels::lstm_forward_elem(pi, pf, pg, po, cp, i, f, gg, o, c, h);
  for (int k = 0; k < count; ++k) {
    const FwdItem& x = it[k];
    store(x.m, x.g, i.v[k]);
    store(x.m, x.g + x.gs, f.v[k]);
    store(x.m, x.g + 2 * x.gs, gg.v[k]);
    store(x.m, x.g + 3 * x.gs, o.v[k]);
    store(x.m, x.co, c.v[k]);
    store(x.m, x.h, h.v[k]);
    store(x.ms, x.cs, c.v[k]);
    store(x.my, x.y, h.v[k]);
  }
}

struct BwdItem {
  const float* a;
  int64_t gs;
  const float *c, *cp, *dha, *dhb;
  float *dc, *dg;
  __mmask16 m, mb;
};

void backward_group(const BwdItem* it, int count) {
  VN<kGroup> i, f, g, o, c, cp, dh, dcin;
  for (int k = 0; k < kGroup; ++k) {
    const BwdItem& x = it[k < count ? k : 0];
    const __mmask16 m = k < count ? x.m : 0;
    i.v[k] = load(m, x.a);
    f.v[k] = load(m, x.a + x.gs);
    g.v[k] = load(m, x.a + 2 * x.gs);
    o.v[k] = load(m, x.a + 3 * x.gs);
    c.v[k] = load(m, x.c);
    cp.v[k] = load(m, x.cp);
    dh.v[k] = _mm512_add_ps(load(m, x.dha), load(k < count ? x.mb : 0, x.dhb));
    dcin.v[k] = load(m, x.dc);
  }
  VN<kGroup> di, df, dg, dout, dcp;
  rnnext::kernels::lstm_backward_elem(i, f, g, o, c, cp, dh, dcin, di, df, dg, dout, dcp);
  for (int k = 0; k < count; ++k) {
    const BwdItem& x = it[k];
    store(x.m, x.dg, di.v[k]);
    store(x.m, x.dg + x.gs, df.v[k]);
    store(x.m, x.dg + 2 * x.gs, dg.v[k]);
    store(x.m, x.dg + 3 * x.gs, dout.v[k]);
    store(x.m, x.dc, dcp.v[k]);
  }
}

}  // namespace

namespace rnnext::cpu {

void lstm_forward_tile_avx512(GateLayout l, int64_t rows, int64_t k0, int64_t k1, float* gates, int64_t ld_g,
                              const float* bias, const float* c_prev, float* c_out, float* c_save, float* h,
                              int64_t ld_h, float* y, int64_t ld_y) {
  FwdItem items[kGroup];
  int count = 0;
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t k = k0; k < k1; ++k) {
      const Block bl = block_of(l, k);
      for (int64_t u = 0; u < bl.width; u += 16) {
        const int64_t cu = b * l.H + bl.unit + u, hu = bl.unit + u;
        const __mmask16 m = lanes(bl.width - u);
        FwdItem& it = items[count];
        it.g = gates + b * ld_g + bl.col + u;
        it.gs = bl.width;
        it.bias = bias != nullptr ? bias + bl.col + u : kZeros;
        it.bgs = bias != nullptr ? bl.width : 0;
        it.cp = c_prev + cu;
        it.co = c_out + cu;
        it.cs = c_save != nullptr ? c_save + cu : kSink;
        it.h = h + b * ld_h + hu;
        it.y = y != nullptr ? y + b * ld_y + hu : kSink;
        it.m = m;
        it.ms = c_save != nullptr ? m : 0;
        it.my = y != nullptr ? m : 0;
        if (++count == kGroup) {
          forward_group(items, count);
          count = 0;
        }
      }
    }
  if (count > 0) forward_group(items, count);
}

void lstm_backward_tile_avx512(GateLayout l, int64_t rows, int64_t k0, int64_t k1, const float* acts, int64_t ld_g,
                               const float* c, const float* c_prev_a, int64_t n_prev_a, const float* c_prev_b,
                               const float* dh_a, const float* dh_b, int64_t ld_dh, float* dc, float* dgates) {
  BwdItem items[kGroup];
  int count = 0;
  for (int64_t b = 0; b < rows; ++b) {
    const float* cpr = b < n_prev_a ? c_prev_a : c_prev_b;
    for (int64_t k = k0; k < k1; ++k) {
      const Block bl = block_of(l, k);
      for (int64_t u = 0; u < bl.width; u += 16) {
        const int64_t cu = b * l.H + bl.unit + u, du = b * ld_dh + bl.unit + u, gc = b * ld_g + bl.col + u;
        const __mmask16 m = lanes(bl.width - u);
        BwdItem& it = items[count];
        it.a = acts + gc;
        it.gs = bl.width;
        it.c = c + cu;
        it.cp = cpr + cu;
        it.dha = dh_a + du;
        it.dhb = dh_b != nullptr ? dh_b + du : kZeros;
        it.dc = dc + cu;
        it.dg = dgates + gc;
        it.m = m;
        it.mb = dh_b != nullptr ? m : 0;
        if (++count == kGroup) {
          backward_group(items, count);
          count = 0;
        }
      }
    }
  }
  if (count > 0) backward_group(items, count);
}

}  // namespace rnnext::cpu

#pragma GCC pop_options
