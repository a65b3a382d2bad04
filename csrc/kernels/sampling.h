// Drawing one category from unnormalised weights by inverse CDF, shared by the CPU and CUDA generation kernels:
// the first index whose running sum exceeds u times the total (u uniform in [0, 1)).
#pragma once
#include <cstdint>

#include "kernels/macros.h"

namespace rnnext::kernels {

template <typename T>
RNNEXT_HD int64_t pick_inverse_cdf(const T* weights, int64_t n, T u) {
  T total = T(0);
  for (int64_t i = 0; i < n; ++i) total += weights[i];
  const T target = u * total;
  T acc = T(0);
  int64_t last = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (weights[i] > T(0)) last = i;
    acc += weights[i];
    if (acc > target && weights[i] > T(0)) return i;
  }
  return last;  // rounding left target >= the sum: the last index with weight
}

}  // namespace rnnext::kernels
