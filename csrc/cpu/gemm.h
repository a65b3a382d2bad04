// Small row-major GEMMs called from inside the kernels' parallel regions (one thread per call).
#pragma once
#include <cstdint>

namespace rnnext::cpu {

// C[M, N] = (accumulate ? C : 0) + A[M, K] @ B[K, N]; all row-major with leading dimensions lda, ldb, ldc.
// float runs on oneDNN's JIT batch-reduce GEMM micro-kernels (through ATen's cpublas::brgemm, which falls
// back to the BLAS when oneDNN is unavailable); double runs through ATen's mm.
void gemm_rowmajor(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                   float* C, int64_t ldc, bool accumulate);
void gemm_rowmajor(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* B, int64_t ldb,
                   double* C, int64_t ldc, bool accumulate);

}  // namespace rnnext::cpu
