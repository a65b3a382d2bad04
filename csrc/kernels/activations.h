// Sigmoid and tanh shared by every kernel. float on the host uses a branch-free polynomial exp
// (Cephes-style, ~1 ulp) that compilers vectorize; double and device code use the libm functions.
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
#endif

RNNEXT_HD float sigmoid(float x) {
#if defined(__CUDA_ARCH__)
  return 1.0f / (1.0f + expf(-x));
#else
  return 1.0f / (1.0f + exp_poly(-x));
#endif
}

RNNEXT_HD double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

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

RNNEXT_HD double tanh_act(double x) { return std::tanh(x); }

}  // namespace rnnext::kernels
