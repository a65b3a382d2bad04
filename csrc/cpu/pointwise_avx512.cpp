// AVX-512 versions of the float pointwise tiles (pointwise.h), chosen at run time on CPUs that have it.
// The whole file is compiled for AVX-512; the shared headers are included inside an anonymous namespace so
// that no AVX-512 copy of an inline function can leak into (and be merged with) the generic code.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/isa.h"
#if RNNEXT_X86
#include <immintrin.h>

#include "cpu/pointwise.h"

RNNEXT_BEGIN_AVX512

namespace {
#include "cpu/vec_avx512.h"
#include "kernels/gru.h"
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

// store() for data read again only much later (a training forward's saved activations): a whole, aligned vector
// bypasses the cache (no read for ownership of the line).
inline void store_nt(__mmask16 m, float* p, __m512 x) {
  if (m == __mmask16(0xFFFF) && (reinterpret_cast<uintptr_t>(p) & 63) == 0)
    _mm512_stream_ps(p, x);
  else
    store(m, p, x);
}

// A 16-lane vector (lanes m) of VN<1> from p.
// v rounded to bfloat16 (cpu/bf16.h's round_bits: nearest, ties to even, NaN quiet, denormals to zero), each
// lane's 16-bit pattern in the low half of its 32-bit lane.
inline __m512i round_bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF));
  const __m512i hi = _mm512_srli_epi32(u, 16);
  __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), _mm512_and_si512(hi, _mm512_set1_epi32(1)))),
      16);
  const __mmask16 nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7F800000));
  const __mmask16 tiny = _mm512_cmplt_epi32_mask(abs, _mm512_set1_epi32(0x00800000));
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
  return _mm512_mask_mov_epi32(r, tiny, _mm512_and_si512(hi, _mm512_set1_epi32(0x8000)));
}

// The lanes m of 16 bfloat16 values at p (raw 16-bit patterns; n >= 16 of them readable, else only the n the
// mask covers) as float32.
inline __m512 load_bf16(__mmask16 m, const uint16_t* p, int64_t n) {
  __m256i b;
  if (n >= 16) {
    b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  } else {
    alignas(32) uint16_t tail[16] = {};
    std::memcpy(tail, p, static_cast<size_t>(n) * sizeof(uint16_t));
    b = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
  }
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_maskz_cvtepu16_epi32(m, b), 16));
}

inline VN<1> ld1(__mmask16 m, const float* p) {
  VN<1> r;
  r.v[0] = load(m, p);
  return r;
}

// One 16-lane vector (lanes m) of the forward step's gates: pre-activations at g + j * gs, bias (may be null) at
// bias + j * gs, the previous c at cp; the activations and c out.
inline void forward_gates(__mmask16 m, const float* g, int64_t gs, const float* bias, const float* cp, VN<1>& i,
                          VN<1>& f, VN<1>& gg, VN<1>& o, VN<1>& c) {
  VN<1> pi = ld1(m, g), pf = ld1(m, g + gs), pg = ld1(m, g + 2 * gs), po = ld1(m, g + 3 * gs);
  if (bias != nullptr) {
    pi = pi + ld1(m, bias);
    pf = pf + ld1(m, bias + gs);
    pg = pg + ld1(m, bias + 2 * gs);
    po = po + ld1(m, bias + 3 * gs);
  }
  rnnext::kernels::lstm_forward_gates_elem(pi, pf, pg, po, ld1(m, cp), i, f, gg, o, c);
}

// One 16-lane vector of the forward step: the activations overwrite the gates, c and h stored.
inline void forward_vec(__mmask16 m, float* g, int64_t gs, const float* bias, const float* cp, float* co,
                        float* cs, float* h, float* y) {
  VN<1> i, f, gg, o, c;
  forward_gates(m, g, gs, bias, cp, i, f, gg, o, c);
  const VN<1> hh = o * tanh_act(c);  // (kernels/lstm.h's h)
  store(m, g, i.v[0]);
  store(m, g + gs, f.v[0]);
  store(m, g + 2 * gs, gg.v[0]);
  store(m, g + 3 * gs, o.v[0]);
  store(m, co, c.v[0]);
  store(m, h, hh.v[0]);
  if (cs != nullptr) store(m, cs, c.v[0]);
  if (y != nullptr) store(m, y, hh.v[0]);
}

// The gate half of forward_vec for a bfloat16 layer (lstm_forward_tile_bf16_avx512): the activations (all four
// written back with keep_acts, else only o, which the second pass reads) and c.
inline void forward_gates_vec(__mmask16 m, float* g, int64_t gs, bool keep_acts, const float* bias, const float* cp,
                              float* co, float* cs) {
  VN<1> i, f, gg, o, c;
  forward_gates(m, g, gs, bias, cp, i, f, gg, o, c);
  if (keep_acts) {
    store(m, g, i.v[0]);
    store(m, g + gs, f.v[0]);
    store(m, g + 2 * gs, gg.v[0]);
  }
  store(m, g + 3 * gs, o.v[0]);
  store(m, co, c.v[0]);
  if (cs != nullptr) store(m, cs, c.v[0]);
}

// One 16-lane vector of the backward step given tc = tanh(c): the activations at a + j * gs, c_prev at cp, dh =
// dha (+ dhb); dc holds the incoming dc and gets dc_prev; the four pre-activation gradients out.
inline void backward_grads(__mmask16 m, const float* a, int64_t gs, const VN<1>& tc, const float* cp,
                           const float* dha, const float* dhb, float* dc, VN<1> (&d)[4]) {
  VN<1> dh = ld1(m, dha);
  if (dhb != nullptr) dh = dh + ld1(m, dhb);
  VN<1> dcp;
  rnnext::kernels::lstm_backward_elem_tc(ld1(m, a), ld1(m, a + gs), ld1(m, a + 2 * gs), ld1(m, a + 3 * gs), tc,
                                         ld1(m, cp), dh, ld1(m, dc), d[0], d[1], d[2], d[3], dcp);
  store(m, dc, dcp.v[0]);
}

inline void backward_vec(__mmask16 m, const float* a, int64_t gs, const float* c, const float* cp, const float* dha,
                         const float* dhb, float* dc, float* dg) {
  VN<1> d[4];
  backward_grads(m, a, gs, tanh_act(ld1(m, c)), cp, dha, dhb, dc, d);  // (kernels/lstm.h's lstm_backward_elem)
  for (int q = 0; q < 4; ++q) store(m, dg + q * gs, d[q].v[0]);
}

// backward_vec for a bfloat16 layer, given tc = tanh(c): the four pre-activation gradients rounded to bfloat16
// into dg16 (gates gs apart) and, in float32, added to bias_acc (same columns).
RNNEXT_NEST_AVX512_BF16
inline void backward_vec_bf16(__mmask16 m, const float* a, int64_t gs, __m512 tc, const float* cp,
                              const float* dha, const float* dhb, float* dc, uint16_t* dg16, float* bias_acc) {
  VN<1> tcv, d[4];
  tcv.v[0] = tc;
  backward_grads(m, a, gs, tcv, cp, dha, dhb, dc, d);
  for (int q = 0; q < 4; ++q) {
    _mm256_mask_storeu_epi16(dg16 + q * gs, m, (__m256i)_mm512_cvtneps_pbh(d[q].v[0]));
    store(m, bias_acc + q * gs, _mm512_add_ps(load(m, bias_acc + q * gs), d[q].v[0]));
  }
}
RNNEXT_UNNEST_AVX512_BF16

// N vectors of a row (units u, u + 16, ...; lanes m[k]) at once: 2N sigmoid chains, then N tanh chains
// (measured per 16 units, L1-resident rows: 30 ns one vector at a time, 21 ns two, 25 ns four). Writes the new
// state h and the saved activations (sv, when not null); returns the new h for the caller's outputs.
template <int N>
inline VN<N> gru_forward_vecs(const __mmask16* m, const float* x, const float* g, int64_t H, float* h, float* sv) {
  VN<N> xr, xz, xn, hr, hz, hn_, hp;
  for (int k = 0; k < N; ++k) {
    const int64_t o = 16 * k;
    xr.v[k] = load(m[k], x + o);
    xz.v[k] = load(m[k], x + H + o);
    xn.v[k] = load(m[k], x + 2 * H + o);
    hr.v[k] = load(m[k], g + o);
    hz.v[k] = load(m[k], g + H + o);
    hn_.v[k] = load(m[k], g + 2 * H + o);
    hp.v[k] = load(m[k], h + o);
  }
  VN<N> r, z, n, hn;
  rnnext::kernels::gru_forward_elem(xr, xz, xn, hr, hz, hn_, hp, r, z, n, hn);
  for (int k = 0; k < N; ++k) {
    const int64_t o = 16 * k;
    store(m[k], h + o, hn.v[k]);
    if (sv != nullptr) {
      store_nt(m[k], sv + o, r.v[k]);
      store_nt(m[k], sv + H + o, z.v[k]);
      store_nt(m[k], sv + 2 * H + o, n.v[k]);
      store_nt(m[k], sv + 3 * H + o, hn_.v[k]);
    }
  }
  return hn;
}

// Rows [0, rows): store_out(mask, unit, row, vector) writes the outputs of each vector of new h.
template <typename StoreOut>
inline void gru_forward_rows_impl(int64_t rows, int64_t H, const float* gx, const float* gh, float* h, float* saved,
                                  StoreOut store_out) {
  for (int64_t j = 0; j < rows; ++j) {
    const float* x = gx + j * 3 * H;
    const float* g = gh + j * 3 * H;
    float* sv = saved != nullptr ? saved + j * 4 * H : nullptr;
    int64_t u = 0;
    for (; u + 32 <= H; u += 32) {
      const __mmask16 m[2] = {__mmask16(0xFFFF), __mmask16(0xFFFF)};
      const VN<2> hn = gru_forward_vecs<2>(m, x + u, g + u, H, h + j * H + u, sv != nullptr ? sv + u : nullptr);
      store_out(m[0], u, j, hn.v[0]);
      store_out(m[1], u + 16, j, hn.v[1]);
    }
    for (; u < H; u += 16) {
      const __mmask16 m[1] = {lanes(H - u)};
      const VN<1> hn = gru_forward_vecs<1>(m, x + u, g + u, H, h + j * H + u, sv != nullptr ? sv + u : nullptr);
      store_out(m[0], u, j, hn.v[0]);
    }
  }
  _mm_sfence();  // (store_nt's stores ordered before whatever follows)
}

// Rows [0, rows): load_prev(mask, unit, row) and load_d(mask, unit, row) read 16 units of the state each row read
// and of the gradient reaching its new state; put(mask, unit, row, d_r, d_z, d_n, d_hn, d_h) writes the results.
template <typename LoadPrev, typename LoadD, typename Put>
inline void gru_backward_rows_impl(int64_t rows, int64_t H, const float* saved, LoadPrev load_prev, LoadD load_d,
                                   Put put) {
  for (int64_t j = 0; j < rows; ++j) {
    const float* sv = saved + j * 4 * H;
    for (int64_t u = 0; u < H; u += 16) {
      const __mmask16 m = lanes(H - u);
      VN<1> hp, d, d_r, d_z, d_n, d_hn, d_h;
      hp.v[0] = load_prev(m, u, j);
      d.v[0] = load_d(m, u, j);
      rnnext::kernels::gru_backward_elem(ld1(m, sv + u), ld1(m, sv + H + u), ld1(m, sv + 2 * H + u),
                                         ld1(m, sv + 3 * H + u), hp, d, d_r, d_z, d_n, d_hn, d_h);
      put(m, u, j, d_r.v[0], d_z.v[0], d_n.v[0], d_hn.v[0], d_h.v[0]);
    }
  }
}

}  // namespace

namespace rnnext::cpu {

void gru_forward_rows_avx512(int64_t rows, int64_t H, const float* gx, const float* gh, float* h, float* h_out,
                             float* saved) {
  gru_forward_rows_impl(rows, H, gx, gh, h, saved, [&](__mmask16 m, int64_t u, int64_t j, __m512 v) {
    store(m, h_out + j * H + u, v);
  });
}

void gru_backward_rows_avx512(int64_t rows, int64_t H, const float* saved, const float* h_prev, const float* dh,
                              float* dgx, float* dgh, float* dh_direct) {
  gru_backward_rows_impl(
      rows, H, saved, [&](__mmask16 m, int64_t u, int64_t j) { return load(m, h_prev + j * H + u); },
      [&](__mmask16 m, int64_t u, int64_t j) { return load(m, dh + j * H + u); },
      [&](__mmask16 m, int64_t u, int64_t j, __m512 d_r, __m512 d_z, __m512 d_n, __m512 d_hn, __m512 d_h) {
        float* gx = dgx + j * 3 * H + u;
        float* gh = dgh + j * 3 * H + u;
        store(m, gx, d_r);
        store(m, gx + H, d_z);
        store(m, gx + 2 * H, d_n);
        store(m, gh, d_r);
        store(m, gh + H, d_z);
        store(m, gh + 2 * H, d_hn);
        store(m, dh_direct + j * H + u, d_h);
      });
}

// (AVX-512F only, so that the conversions inline into the rows loops: round_bits' rounding, vectorized.)
void gru_forward_rows_bf16_avx512(int64_t rows, int64_t H, const float* gx, const float* gh, float* h,
                                  uint16_t* h_out, float* saved) {
  gru_forward_rows_impl(rows, H, gx, gh, h, saved, [&](__mmask16 m, int64_t u, int64_t j, __m512 v) {
    _mm512_mask_cvtepi32_storeu_epi16(h_out + j * H + u, m, round_bf16_bits(v));
  });
}

void gru_backward_rows_bf16_avx512(int64_t rows, int64_t H, const float* saved, const uint16_t* h_prev,
                                   const uint16_t* dy, float* dh, uint16_t* dgx16, uint16_t* dgh16,
                                   float* bias_acc) {
  auto put16 = [](__mmask16 m, uint16_t* p, __m512 v) { _mm512_mask_cvtepi32_storeu_epi16(p, m, round_bf16_bits(v)); };
  auto add = [](__mmask16 m, float* p, __m512 v) { store(m, p, _mm512_add_ps(load(m, p), v)); };
  gru_backward_rows_impl(
      rows, H, saved, [&](__mmask16 m, int64_t u, int64_t j) { return load_bf16(m, h_prev + j * H + u, H - u); },
      [&](__mmask16 m, int64_t u, int64_t j) {
        return _mm512_add_ps(load(m, dh + j * H + u), load_bf16(m, dy + j * H + u, H - u));
      },
      [&](__mmask16 m, int64_t u, int64_t j, __m512 d_r, __m512 d_z, __m512 d_n, __m512 d_hn, __m512 d_h) {
        uint16_t* gx = dgx16 + j * 3 * H + u;
        uint16_t* gh = dgh16 + j * 3 * H + u;
        put16(m, gx, d_r);
        put16(m, gx + H, d_z);
        put16(m, gx + 2 * H, d_n);
        put16(m, gh, d_r);
        put16(m, gh + H, d_z);
        put16(m, gh + 2 * H, d_hn);
        store(m, dh + j * H + u, d_h);
        add(m, bias_acc + u, d_r);
        add(m, bias_acc + H + u, d_z);
        add(m, bias_acc + 2 * H + u, d_n);
        add(m, bias_acc + 3 * H + u, d_hn);
      });
}

void lstm_forward_tile_avx512(GateLayout l, int64_t rows, int64_t k0, int64_t k1, float* gates, int64_t ld_g,
                              const float* bias, const float* c_prev, float* c_out, float* c_save, float* h,
                              int64_t ld_h, float* y, int64_t ld_y) {
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t k = k0; k < k1; ++k) {
      const Block bl = block_of(l, k);
      for (int64_t u = 0; u < bl.width; u += 16) {
        const int64_t cu = b * l.H + bl.unit + u, hu = bl.unit + u;
        forward_vec(lanes(bl.width - u), gates + b * ld_g + bl.col + u, bl.width,
                    bias != nullptr ? bias + bl.col + u : nullptr, c_prev + cu, c_out + cu,
                    c_save != nullptr ? c_save + cu : nullptr, h + b * ld_h + hu,
                    y != nullptr ? y + b * ld_y + hu : nullptr);
      }
    }
}

RNNEXT_NEST_AVX512_BF16
void lstm_forward_tile_bf16_avx512(GateLayout l, int64_t rows, int64_t k0, int64_t k1, float* gates, int64_t ld_g,
                                   bool keep_acts, const float* bias, const float* c_prev, float* c_out,
                                   float* c_save, uint16_t* h, int64_t ld_h, uint16_t* y, int64_t ld_y) {
  // Two passes per row: the gates and c of every vector (four sigmoid chains each), then h = o tanh(c) four
  // vectors at a time (four tanh chains), which keeps the long tanh chain off the critical path of the gates.
  struct Pending {
    __mmask16 m;
    const float* c;
    const float* o;
    int64_t hu;
  };
  for (int64_t b = 0; b < rows; ++b) {
    Pending pend[4];
    int n = 0;
    auto flush = [&]() RNNEXT_AVX512_BF16_LAMBDA {
      VN<4> cc, oo;
      for (int q = 0; q < 4; ++q) {
        const Pending& e = pend[q < n ? q : 0];
        cc.v[q] = load(e.m, e.c);
        oo.v[q] = load(e.m, e.o);
      }
      const VN<4> hh = oo * tanh_act(cc);
      for (int q = 0; q < n; ++q) {
        const __m256i h16 = (__m256i)_mm512_cvtneps_pbh(hh.v[q]);  // (round_to_bf16's rounding)
        _mm256_mask_storeu_epi16(h + b * ld_h + pend[q].hu, pend[q].m, h16);
        if (y != nullptr) _mm256_mask_storeu_epi16(y + b * ld_y + pend[q].hu, pend[q].m, h16);
      }
      n = 0;
    };
    for (int64_t k = k0; k < k1; ++k) {
      const Block bl = block_of(l, k);
      for (int64_t u = 0; u < bl.width; u += 16) {
        const __mmask16 m = lanes(bl.width - u);
        const int64_t cu = b * l.H + bl.unit + u;
        float* g = gates + b * ld_g + bl.col + u;
        forward_gates_vec(m, g, bl.width, keep_acts, bias != nullptr ? bias + bl.col + u : nullptr, c_prev + cu,
                          c_out + cu, c_save != nullptr ? c_save + cu : nullptr);
        pend[n++] = Pending{m, c_out + cu, g + 3 * bl.width, bl.unit + u};
        if (n == 4) flush();
      }
    }
    if (n > 0) flush();
  }
}
RNNEXT_UNNEST_AVX512_BF16

void lstm_backward_tile_avx512(GateLayout l, int64_t rows, int64_t k0, int64_t k1, const float* acts, int64_t ld_g,
                               const float* c, const float* c_prev_a, int64_t n_prev_a, const float* c_prev_b,
                               const float* dh_a, const float* dh_b, int64_t ld_dh, int64_t ld_dhb, float* dc, float* dgates) {
  for (int64_t b = 0; b < rows; ++b) {
    const float* cpr = b < n_prev_a ? c_prev_a : c_prev_b;
    for (int64_t k = k0; k < k1; ++k) {
      const Block bl = block_of(l, k);
      for (int64_t u = 0; u < bl.width; u += 16) {
        const int64_t cu = b * l.H + bl.unit + u, du = b * ld_dh + bl.unit + u, gc = b * ld_g + bl.col + u;
        backward_vec(lanes(bl.width - u), acts + gc, bl.width, c + cu, cpr + cu, dh_a + du,
                     dh_b != nullptr ? dh_b + b * ld_dhb + bl.unit + u : nullptr, dc + cu, dgates + gc);
      }
    }
  }
}

RNNEXT_NEST_AVX512_BF16
void lstm_backward_tile_bf16_avx512(GateLayout l, int64_t rows, int64_t k0, int64_t k1, const float* acts,
                                    int64_t ld_g, const float* c, const float* c_prev_a, int64_t n_prev_a,
                                    const float* c_prev_b, const float* dh_a, const float* dh_b, int64_t ld_dh,
                                    int64_t ld_dhb, float* dc, uint16_t* dg16, float* bias_acc) {
  // Per row, tanh(c) four vectors at a time (four chains in flight), then the gradients vector by vector.
  struct Vec {
    __mmask16 m;
    int64_t unit, col, width;
  } pend[4];
  for (int64_t b = 0; b < rows; ++b) {
    const float* cpr = b < n_prev_a ? c_prev_a : c_prev_b;
    int n = 0;
    auto flush = [&]() RNNEXT_AVX512_BF16_LAMBDA {
      VN<4> cc;
      for (int q = 0; q < 4; ++q) cc.v[q] = load(pend[q < n ? q : 0].m, c + b * l.H + pend[q < n ? q : 0].unit);
      const VN<4> tc = tanh_act(cc);
      for (int q = 0; q < n; ++q) {
        const Vec& e = pend[q];
        const int64_t cu = b * l.H + e.unit, du = b * ld_dh + e.unit, gc = b * ld_g + e.col;
        backward_vec_bf16(e.m, acts + gc, e.width, tc.v[q], cpr + cu, dh_a + du,
                          dh_b != nullptr ? dh_b + b * ld_dhb + e.unit : nullptr, dc + cu, dg16 + gc,
                          bias_acc + e.col);
      }
      n = 0;
    };
    for (int64_t k = k0; k < k1; ++k) {
      const Block bl = block_of(l, k);
      for (int64_t u = 0; u < bl.width; u += 16) {
        pend[n++] = Vec{lanes(bl.width - u), bl.unit + u, bl.col + u, bl.width};
        if (n == 4) flush();
      }
    }
    if (n > 0) flush();
  }
}
RNNEXT_UNNEST_AVX512_BF16

}  // namespace rnnext::cpu

RNNEXT_END_ISA
#else
#include <c10/util/Exception.h>

#include "cpu/pointwise.h"

// Off x86-64 the AVX-512 tiles do not exist; pointwise_has_avx512() is false there, so nothing calls these.
namespace rnnext::cpu {
namespace {
[[noreturn]] void no_avx512(const char* fn) {
  TORCH_CHECK(false, "rnnext: ", fn, " runs on x86-64 CPUs with AVX-512 only (pointwise_has_avx512() is false)");
}
}  // namespace
void gru_forward_rows_avx512(int64_t, int64_t, const float*, const float*, float*, float*, float*) {
  no_avx512("gru_forward_rows_avx512");
}
void gru_backward_rows_avx512(int64_t, int64_t, const float*, const float*, const float*, float*, float*, float*) {
  no_avx512("gru_backward_rows_avx512");
}
void gru_forward_rows_bf16_avx512(int64_t, int64_t, const float*, const float*, float*, uint16_t*, float*) {
  no_avx512("gru_forward_rows_bf16_avx512");
}
void gru_backward_rows_bf16_avx512(int64_t, int64_t, const float*, const uint16_t*, const uint16_t*, float*,
                                   uint16_t*, uint16_t*, float*) {
  no_avx512("gru_backward_rows_bf16_avx512");
}
void lstm_forward_tile_avx512(GateLayout, int64_t, int64_t, int64_t, float*, int64_t, const float*, const float*,
                              float*, float*, float*, int64_t, float*, int64_t) {
  no_avx512("lstm_forward_tile_avx512");
}
void lstm_forward_tile_bf16_avx512(GateLayout, int64_t, int64_t, int64_t, float*, int64_t, bool, const float*,
                                   const float*, float*, float*, uint16_t*, int64_t, uint16_t*, int64_t) {
  no_avx512("lstm_forward_tile_bf16_avx512");
}
void lstm_backward_tile_avx512(GateLayout, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                               const float*, int64_t, const float*, const float*, const float*, int64_t, int64_t,
                               float*, float*) {
  no_avx512("lstm_backward_tile_avx512");
}
void lstm_backward_tile_bf16_avx512(GateLayout, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                                    const float*, int64_t, const float*, const float*, const float*, int64_t, int64_t,
                                    float*, uint16_t*, float*) {
  no_avx512("lstm_backward_tile_bf16_avx512");
}
}  // namespace rnnext::cpu
#endif  // RNNEXT_X86
