// Sigmoid and tanh shared by every kernel. On the host, float and double use branch-free polynomial or rational
// exp and tanh (Cephes, ~1-2 ulp) that compilers vectorize; device code uses the libm functions.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/macros.h"

namespace rnnext::kernels {

#if !defined(__CUDA_ARCH__)
// exp(x) for float with no libm call, so that loops over it auto-vectorize. NaN propagates,
// overflow gives +inf, underflow gives 0, as std::exp does.
RNNEXT_HD float exp_poly(float x) {
  const float hi = 88.3762626647949f, lo = -87.3365447504019f;
  const float xc = x > hi ? hi : (x < lo ? lo : x);  // comparisons are false for NaN ...
  const float xs = xc == xc ? xc : 0.0f;              // ... so NaN is kept out of the int conversion
  const float n = std::floor(xs * 1.44269504088896341f + 0.5f);
  float r = xs - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  float y = p * scale;
  y = x > hi ? INFINITY : y;
  y = x < lo ? 0.0f : y;
  return x == x ? y : x;
}

// exp(x) for double, Cephes' rational form (about 1 ulp), branch-free for vectorized loops. Used by the
// activations only: it saturates to +inf above 709 and to 0 below -708 (where exp is within 1e-307 of its
// limit for sigmoid and tanh); NaN propagates.
RNNEXT_HD double exp_poly(double x) {
  const double hi = 709.0, lo = -708.0;
  const double xc = x > hi ? hi : (x < lo ? lo : x);
  const double xs = xc == xc ? xc : 0.0;
  const double n = std::floor(xs * 1.4426950408889634073599 + 0.5);
  double r = xs - n * 6.93145751953125E-1;
  r = r - n * 1.42860682030941723212E-6;
  const double z = r * r;
  const double px = r * ((1.26177193074810590878E-4 * z + 3.02994407707441961300E-2) * z + 9.99999999999999999910E-1);
  const double qx = ((3.00198505138664455042E-6 * z + 2.52448340349684104192E-3) * z + 2.27265548208155028766E-1) * z +
                    2.00000000000000000009E0;
  const double p = 1.0 + 2.0 * (px / (qx - px));
  // 2^n without a double -> int64 conversion (AVX-512 only, which would keep AVX2 loops scalar): adding
  // 1.5 * 2^52 puts n in the low mantissa bits; the shift keeps the low 11 bits of n + 1023.
  const double shifted = n + 6755399441055744.0;
  uint64_t bits;  // unsigned: the shift drops the high bits by definition
  std::memcpy(&bits, &shifted, sizeof(bits));
  bits = (bits + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  double y = p * scale;
  y = x > hi ? INFINITY : y;
  y = x < lo ? 0.0 : y;
  return x == x ? y : x;
}
#endif

RNNEXT_HD float sigmoid(float x) {
#if defined(__CUDA_ARCH__)
  return 1.0f / (1.0f + expf(-x));
#else
  return 1.0f / (1.0f + exp_poly(-x));
#endif
}

RNNEXT_HD double sigmoid(double x) {
#if defined(__CUDA_ARCH__)
  return 1.0 / (1.0 + exp(-x));
#else
  return 1.0 / (1.0 + exp_poly(-x));
#endif
}

RNNEXT_HD float tanh_act(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  // Small |x|: odd polynomial (no cancellation); otherwise 1 - 2 / (exp(2|x|) + 1).
  const float ax = x < 0.0f ? -x : x;
  const float s = x * x;
  float p = -5.70498872745e-3f;
  p = p * s + 2.06390887954e-2f;
  p = p * s - 5.37397155531e-2f;
  p = p * s + 1.33314422036e-1f;
  p = p * s - 3.33332819422e-1f;
  const float small = p * s * x + x;
  const float big = 1.0f - 2.0f / (exp_poly(2.0f * ax) + 1.0f);
  const float signed_big = x < 0.0f ? -big : big;
  return ax < 0.625f ? small : (x == x ? signed_big : x);
#endif
}

RNNEXT_HD double tanh_act(double x) {
#if defined(__CUDA_ARCH__)
  return tanh(x);
#else
  // Cephes: |x| < 0.625, x + x^3 P(x^2) / Q(x^2); otherwise 1 - 2 / (exp(2|x|) + 1).
  const double ax = x < 0.0 ? -x : x;
  const double s = x * x;
  const double p = (-9.64399179425052238628E-1 * s - 9.92877231001918586564E1) * s - 1.61468768441708447952E3;
  const double q = ((s + 1.12811678491632931402E2) * s + 2.23548839060100448583E3) * s + 4.84406305325125486048E3;
  const double small = x + x * s * (p / q);
  const double big = 1.0 - 2.0 / (exp_poly(2.0 * ax) + 1.0);
  const double signed_big = x < 0.0 ? -big : big;
  return ax < 0.625 ? small : (x == x ? signed_big : x);
#endif
}

}  // namespace rnnext::kernels
