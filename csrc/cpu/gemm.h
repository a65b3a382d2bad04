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

// Y[b, :] = (accumulate ? Y[b, :] : 0) + bias + W X[b, :] for a few rows b (B <= kGemvMaxRows), W (G, K)
// row-major as a layer stores it: the shape of one step at batch 1..8, where a GEMM is a matrix-vector
// product bound by reading W (measured here: faster than ATen's GEMM and than linear_panels up to about 8
// rows). All threads share W's rows; each row's dot products run in one fixed order (the same bits for the
// same values).
constexpr int64_t kGemvMaxRows = 8;
void gemv_rows(int64_t B, int64_t G, int64_t K, const float* X, int64_t ldx, const float* W, int64_t ldw,
               const float* bias, float* Y, int64_t ldy, bool accumulate = false);

}  // namespace rnnext::cpu

#include <ATen/Parallel.h>

#include <algorithm>
#include <initializer_list>
#include <utility>
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

// One term X W^T of linear_panels: X (B, K) row-major (leading dimension ldx), W (G, K) row-major as a layer
// stores its weights.
template <typename T>
struct LinearTerm {
  const T* X;
  int64_t ldx, K;
  const T* W;
};

// Y (B, G) = sum of the terms' X W^T (+ bias (G) when given), for a small batch (one step of a cell):
// Y^T = W X^T, so the weights are the GEMMs' row-major left operands as they are and only the small
// activations get transposed (the JIT GEMM takes no transposed operand). The batch is cut into panels of
// kPanel columns (the last one padded to a multiple of 16) with a fixed leading dimension: the JIT kernel
// cache, which keeps one kernel per shape, then sees 4 column counts whatever the batch sizes.
template <typename T>
void linear_panels(int64_t B, int64_t G, std::initializer_list<LinearTerm<T>> terms, const T* bias, T* Y,
                   int64_t ldy) {
  constexpr int64_t kPanel = 64;
  if (B <= 0) return;
  const int64_t panels = (B + kPanel - 1) / kPanel;
  std::vector<std::vector<T>> xp;
  for (const auto& t : terms) {
    std::vector<T> p(panels * t.K * kPanel, T(0));
    for (int64_t b = 0; b < B; ++b) {
      T* dst = p.data() + (b / kPanel) * t.K * kPanel + b % kPanel;
      for (int64_t k = 0; k < t.K; ++k) dst[k * kPanel] = t.X[b * t.ldx + k];
    }
    xp.push_back(std::move(p));
  }
  std::vector<T> gp(panels * G * kPanel);
  std::vector<GemmTask<T>> tasks;
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t width = (std::min(kPanel, B - p * kPanel) + 15) / 16 * 16;
    int64_t i = 0;
    // The terms of a panel write the same rows: a thread's row slice of a later term follows its slice of the
    // earlier ones in its own task order, so accumulating is safe.
    for (const auto& t : terms) {
      tasks.push_back({G, width, t.K, t.W, t.K, xp[i].data() + p * t.K * kPanel, kPanel, gp.data() + p * G * kPanel,
                       kPanel, /*accumulate=*/i > 0, /*split_rows=*/true});
      ++i;
    }
  }
  gemm_tasks_parallel<T>(tasks);
  at::parallel_for(0, B, B * G < (1 << 15) ? B : 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* src = gp.data() + (b / kPanel) * G * kPanel + b % kPanel;
      T* y = Y + b * ldy;
      for (int64_t g = 0; g < G; ++g) y[g] = src[g * kPanel] + (bias != nullptr ? bias[g] : T(0));
    }
  });
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
