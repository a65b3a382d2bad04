// A group of N 16-lane float vectors for the AVX-512 pointwise kernels (include only where AVX-512 code is
// enabled: see pointwise_avx512.cpp). Each operation acts on the N vectors one after another, so N
// independent dependency chains are in flight: the activations are latency-bound otherwise. Its arithmetic
// lets the cell formulas of kernels/*.h be instantiated on whole groups; sigmoid and tanh_act are the vector
// activations (exp by range reduction + polynomial + scalef, 1/x by rcp14 + one Newton step; about 1e-7
// relative error; NaN propagates and +-inf saturate).
#pragma once
#include <immintrin.h>

template <int N>
struct VN {
  __m512 v[N];
  VN() = default;
  VN(float x) {
    for (int k = 0; k < N; ++k) v[k] = _mm512_set1_ps(x);
  }
};

#define RNNEXT_VN_BINARY(op, intrinsic)                             \
  template <int N>                                                  \
  inline VN<N> operator op(const VN<N>& a, const VN<N>& b) {        \
    VN<N> r;                                                        \
    for (int k = 0; k < N; ++k) r.v[k] = intrinsic(a.v[k], b.v[k]); \
    return r;                                                       \
  }
RNNEXT_VN_BINARY(+, _mm512_add_ps)
RNNEXT_VN_BINARY(-, _mm512_sub_ps)
RNNEXT_VN_BINARY(*, _mm512_mul_ps)
#undef RNNEXT_VN_BINARY

template <int N>
inline VN<N> exp_vn(VN<N> x) {
  const __m512 hi = _mm512_set1_ps(89.0f), lo = _mm512_set1_ps(-104.0f), log2e = _mm512_set1_ps(1.44269504088896341f);
  const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
  VN<N> n, r, p;
  for (int k = 0; k < N; ++k) {
    // Clamp with the operand order that keeps NaN (vminps/vmaxps return the second operand on NaN).
    x.v[k] = _mm512_max_ps(lo, _mm512_min_ps(hi, x.v[k]));
    n.v[k] = _mm512_roundscale_ps(_mm512_mul_ps(x.v[k], log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  for (int k = 0; k < N; ++k) r.v[k] = _mm512_fnmadd_ps(n.v[k], ln2_hi, x.v[k]);
  for (int k = 0; k < N; ++k) r.v[k] = _mm512_fnmadd_ps(n.v[k], ln2_lo, r.v[k]);
  const float coef[] = {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
  for (int k = 0; k < N; ++k) p.v[k] = _mm512_set1_ps(1.9875691500e-4f);
  for (float c : coef)
    for (int k = 0; k < N; ++k) p.v[k] = _mm512_fmadd_ps(p.v[k], r.v[k], _mm512_set1_ps(c));
  for (int k = 0; k < N; ++k)
    p.v[k] = _mm512_fmadd_ps(p.v[k], _mm512_mul_ps(r.v[k], r.v[k]), _mm512_add_ps(r.v[k], _mm512_set1_ps(1.0f)));
  for (int k = 0; k < N; ++k) p.v[k] = _mm512_scalef_ps(p.v[k], n.v[k]);  // p 2^n: overflow to inf, underflow to 0
  return p;
}

template <int N>
inline VN<N> sigmoid(const VN<N>& x) {
  VN<N> neg;
  for (int k = 0; k < N; ++k) neg.v[k] = _mm512_sub_ps(_mm512_setzero_ps(), x.v[k]);
  VN<N> d = exp_vn(neg), r;
  for (int k = 0; k < N; ++k) d.v[k] = _mm512_add_ps(_mm512_set1_ps(1.0f), d.v[k]);
  for (int k = 0; k < N; ++k) r.v[k] = _mm512_rcp14_ps(d.v[k]);
  for (int k = 0; k < N; ++k)  // Newton: r (2 - d r)
    r.v[k] = _mm512_mul_ps(r.v[k], _mm512_fnmadd_ps(d.v[k], r.v[k], _mm512_set1_ps(2.0f)));
  // d = inf (x < -88) makes the Newton step NaN; the exact answer there is 0.
  for (int k = 0; k < N; ++k)
    r.v[k] = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x.v[k], _mm512_set1_ps(-88.0f), _CMP_NLT_UQ), r.v[k]);
  return r;
}

// tanh for |x| < 0.625 as an odd polynomial (the scalar header's coefficients): relative error ~1e-7 down to
// the smallest normals, where 2 sigmoid(2x) - 1 cancels (relative error 0.2 at 4e-7, exactly 0 below 4e-8).
template <int N>
inline VN<N> tanh_small_blend(const VN<N>& x, VN<N> big) {
  const float coef[] = {2.06390887954e-2f, -5.37397155531e-2f, 1.33314422036e-1f, -3.33332819422e-1f};
  for (int k = 0; k < N; ++k) {
    const __m512 s = _mm512_mul_ps(x.v[k], x.v[k]);
    __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
    for (float c : coef) p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(c));
    const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, s), x.v[k], x.v[k]);
    const __mmask16 is_small = _mm512_cmp_ps_mask(_mm512_abs_ps(x.v[k]), _mm512_set1_ps(0.625f), _CMP_LT_OQ);
    big.v[k] = _mm512_mask_blend_ps(is_small, big.v[k], small);
  }
  return big;
}

template <int N>
inline VN<N> tanh_act(const VN<N>& x) {
  // |x| >= 0.625: tanh(x) = 2 sigmoid(2x) - 1, exactly +-1 at +-inf; small |x|: the polynomial.
  VN<N> x2;
  for (int k = 0; k < N; ++k) x2.v[k] = _mm512_add_ps(x.v[k], x.v[k]);
  VN<N> s = sigmoid(x2);
  for (int k = 0; k < N; ++k) s.v[k] = _mm512_fmsub_ps(_mm512_set1_ps(2.0f), s.v[k], _mm512_set1_ps(1.0f));
  return tanh_small_blend(x, s);
}

// The four LSTM gate activations of N vectors as one group of 4N independent sigmoids
// (tanh(x) = 2 sigmoid(2x) - 1), which keeps more work in flight than four separate calls.
template <int N>
inline void lstm_gate_activations(const VN<N>& pi, const VN<N>& pf, const VN<N>& pg, const VN<N>& po, VN<N>& i,
                                  VN<N>& f, VN<N>& g, VN<N>& o) {
  VN<4 * N> z;
  for (int k = 0; k < N; ++k) {
    z.v[k] = pi.v[k];
    z.v[N + k] = pf.v[k];
    z.v[2 * N + k] = _mm512_add_ps(pg.v[k], pg.v[k]);
    z.v[3 * N + k] = po.v[k];
  }
  const VN<4 * N> s = sigmoid(z);
  for (int k = 0; k < N; ++k) {
    i.v[k] = s.v[k];
    f.v[k] = s.v[N + k];
    g.v[k] = _mm512_fmsub_ps(_mm512_set1_ps(2.0f), s.v[2 * N + k], _mm512_set1_ps(1.0f));
    o.v[k] = s.v[3 * N + k];
  }
  g = tanh_small_blend(pg, g);
}
