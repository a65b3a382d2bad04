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

// Y[b, :] = (accumulate ? Y[b, :] : 0) + bias + W X[b, :] for a few rows b (B <= kGemvMaxRows), W (G, K) row-major as a layer stores it:
// the shape of one step at batch 1..4, where a GEMM is a matrix-vector product bound by reading W. All threads
// share W's rows; each row's dot products run in one fixed order (the same bits for the same values).
constexpr int64_t kGemvMaxRows = 4;
void gemv_rows(int64_t B, int64_t G, int64_t K, const float* X, int64_t ldx, const float* W, int64_t ldw,
               const float* bias, float* Y, int64_t ldy, bool accumulate = false);

}  // namespace rnnext::cpu

#include <ATen/Parallel.h>

#include <algorithm>
#include <initializer_list>
#include <vector>

namespace rnnext::cpu {

// One GEMM of a batch run by gemm_batch_parallel: C = (accumulate ? C : 0) + A[M, K] @ B[K, N], row-major.
template <typename T>
struct GemmTask {
  int64_t M, N, K;
  const T* A;
  int64_t lda;
  const T* B;
  int64_t ldb;
  T* C;
  int64_t ldc;
  bool accumulate;
  bool split_rows;  // threads share the work by rows of C (else by columns)
};

// Runs every task with all threads in one parallel region: each thread takes its slice (rows or columns,
// in multiples of 16) of every task.
template <typename T, typename Tasks>
void gemm_tasks_parallel(const Tasks& tasks) {
  int64_t work = 0;
  for (const auto& t : tasks) work += t.M * t.N * t.K;
  const int64_t nt = work < (1 << 16) ? 1 : at::get_num_threads();
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t th = t0; th < t1; ++th)
      for (const auto& t : tasks) {
        const int64_t len = t.split_rows ? t.M : t.N;
        const int64_t chunks = (len + 15) / 16;
        const int64_t a = std::min(len, chunks * th / nt * 16), b = std::min(len, chunks * (th + 1) / nt * 16);
        if (a >= b) continue;
        if (t.split_rows)
          gemm_rowmajor(b - a, t.N, t.K, t.A + a * t.lda, t.lda, t.B, t.ldb, t.C + a * t.ldc, t.ldc, t.accumulate);
        else
          gemm_rowmajor(t.M, b - a, t.K, t.A, t.lda, t.B + a, t.ldb, t.C + a, t.ldc, t.accumulate);
      }
  });
}

template <typename T>
void gemm_batch_parallel(std::initializer_list<GemmTask<T>> tasks) {
  gemm_tasks_parallel<T>(tasks);
}

}  // namespace rnnext::cpu

namespace rnnext::cpu {

// C[M, N] = X^T Y for X (K, M) and Y (K, N), row-major (leading dimensions ldx, ldy, ldc), all threads:
// the weight-gradient shape, sum over many rows K. Threads share the rows of C; K is taken in chunks whose
// transposed slice of X and rows of Y stay in cache for the JIT GEMM.
template <typename T>
void gemm_tn_parallel(int64_t M, int64_t N, int64_t K, const T* X, int64_t ldx, const T* Y, int64_t ldy, T* C,
                      int64_t ldc) {
  constexpr int64_t kChunk = 256;
  if (M <= 0 || N <= 0) return;
  const int64_t nt = M * N * K < (1 << 18) ? 1 : at::get_num_threads();
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t th = t0; th < t1; ++th) {
      const int64_t chunks = (M + 15) / 16;
      const int64_t i0 = std::min(M, chunks * th / nt * 16), i1 = std::min(M, chunks * (th + 1) / nt * 16);
      const int64_t m = i1 - i0;
      if (m <= 0) continue;
      if (K <= 0) {
        gemm_rowmajor(m, N, 0, X, 1, Y, ldy, C + i0 * ldc, ldc, false);
        continue;
      }
      std::vector<T> xt(m * std::min(K, kChunk));
      // Chunks of kChunk rows, the remainder in powers of two: K (the number of nodes or rows, which varies
      // from call to call) then creates a bounded set of GEMM shapes (see gemm_rowmajor).
      for (int64_t k0 = 0, kc = 0; k0 < K; k0 += kc) {
        kc = kChunk;
        while (kc > K - k0) kc /= 2;
        for (int64_t k = 0; k < kc; ++k) {
          const T* row = X + (k0 + k) * ldx + i0;
          for (int64_t i = 0; i < m; ++i) xt[i * kc + k] = row[i];
        }
        gemm_rowmajor(m, N, kc, xt.data(), kc, Y + k0 * ldy, ldy, C + i0 * ldc, ldc, /*accumulate=*/k0 > 0);
      }
    }
  });
}

}  // namespace rnnext::cpu
