// Row-major GEMM entry points for the kernels (see gemm.h).
#include "cpu/gemm.h"
#include "cpu/isa.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zero.h>

#include <algorithm>

namespace rnnext::cpu {

namespace {
constexpr int64_t kTileRows = 64;
}  // namespace

void gemm_rowmajor(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                   float* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + N, 0.0f);
    return;
  }
  // oneDNN JIT-compiles (and keeps, per thread, without bound) a kernel per shape. Row tiles of kTileRows and
  // a remainder split into powers of two (37 = 32 + 4 + 1) keep a varying row count (batch sizes, tree levels,
  // packed steps) to 7 + 1 shapes per (N, K, leading dimensions), without changing any element's arithmetic.
  int64_t m0 = 0;
  for (; M - m0 >= kTileRows; m0 += kTileRows)
    at::native::cpublas::brgemm(kTileRows, N, K, lda, ldb, ldc, accumulate, A + m0 * lda, B, C + m0 * ldc,
                                /*is_vnni=*/false);
  for (int64_t piece = kTileRows / 2; piece >= 1; piece /= 2)
    if (M - m0 >= piece) {
      at::native::cpublas::brgemm(piece, N, K, lda, ldb, ldc, accumulate, A + m0 * lda, B, C + m0 * ldc,
                                  /*is_vnni=*/false);
      m0 += piece;
    }
}

namespace {

// Rows [g0, g1) of Y = bias + X W^T: four rows of W at a time (four independent sums hide the FMA latency).
RNNEXT_CLONES_512 void gemv_block(
    int64_t B, int64_t g0, int64_t g1, int64_t K, const float* __restrict__ X, int64_t ldx,
    const float* __restrict__ W, int64_t ldw, const float* __restrict__ bias, float* __restrict__ Y, int64_t ldy,
    bool accumulate) {
  int64_t g = g0;
  for (; g + 4 <= g1; g += 4) {
    const float *w0 = W + g * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
    for (int64_t b = 0; b < B; ++b) {
      const float* x = X + b * ldx;
      float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t k = 0; k < K; ++k) {
        a0 += w0[k] * x[k];
        a1 += w1[k] * x[k];
        a2 += w2[k] * x[k];
        a3 += w3[k] * x[k];
      }
      float* y = Y + b * ldy + g;
      y[0] = (accumulate ? y[0] : 0.0f) + a0 + (bias != nullptr ? bias[g] : 0.0f);
      y[1] = (accumulate ? y[1] : 0.0f) + a1 + (bias != nullptr ? bias[g + 1] : 0.0f);
      y[2] = (accumulate ? y[2] : 0.0f) + a2 + (bias != nullptr ? bias[g + 2] : 0.0f);
      y[3] = (accumulate ? y[3] : 0.0f) + a3 + (bias != nullptr ? bias[g + 3] : 0.0f);
    }
  }
  for (; g < g1; ++g)
    for (int64_t b = 0; b < B; ++b) {
      const float* w = W + g * ldw;
      const float* x = X + b * ldx;
      float a = 0;
#pragma omp simd reduction(+ : a)
      for (int64_t k = 0; k < K; ++k) a += w[k] * x[k];
      Y[b * ldy + g] = (accumulate ? Y[b * ldy + g] : 0.0f) + a + (bias != nullptr ? bias[g] : 0.0f);
    }
}

}  // namespace

void gemv_rows(int64_t B, int64_t G, int64_t K, const float* X, int64_t ldx, const float* W, int64_t ldw,
               const float* bias, float* Y, int64_t ldy, bool accumulate) {
  // Threads take blocks of 64 rows of W (multiples of 4: the same rows go through the same code path
  // whatever the thread count), when there is enough to share.
  constexpr int64_t kRows = 64;
  const int64_t blocks = (G + kRows - 1) / kRows;
  at::parallel_for(0, blocks, G * K < (1 << 15) ? blocks : 1, [&](int64_t b0, int64_t b1) {
    gemv_block(B, b0 * kRows, std::min(G, b1 * kRows), K, X, ldx, W, ldw, bias, Y, ldy, accumulate);
  });
}

void gemm_rowmajor(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* B, int64_t ldb,
                   double* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (K <= 0) {
    if (!accumulate) c.zero_();
    return;
  }
  at::Tensor a = at::from_blob(const_cast<double*>(A), {M, K}, {lda, 1}, opts);
  at::Tensor b = at::from_blob(const_cast<double*>(B), {K, N}, {ldb, 1}, opts);
  if (accumulate)
    at::addmm_out(c, c, a, b);
  else
    at::mm_out(c, a, b);
}

}  // namespace rnnext::cpu
