// Row-major GEMM entry points for the kernels (see gemm.h).
#include "cpu/gemm.h"

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
