// bfloat16 GEMM with float32 accumulation for the CPU kernels' inner loops (csrc/cpu/gemm_bf16.cpp), on
// AVX512-BF16's dot-product instruction. bfloat16 values are passed as their raw 16-bit patterns.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/gemm.h"

namespace rnnext::cpu {

// Whether this CPU runs gemm_bf16_packed (AVX512-BF16 and AVX512-BW).
bool gemm_bf16_available();

// B (K x N) packed in k-pairs: Bp[(p * N + n) * 2 + i] = B[2p + i][n], a zero row completing an odd K;
// ceil(K / 2) * N * 2 values (pack_bf16, pack_bf16_t below).
//
// C[M, N] (float, leading dimension ldc) = (accumulate ? C : 0) + A[M, K] @ B, A row-major bfloat16 (leading
// dimension lda), Bp B packed in k-pairs, its packed rows holding ldb columns (the product uses the first N
// of them: pass Bp + 2 * n0 for columns starting at n0). Products are exact in float32 and summed in float32,
// in a fixed order for given sizes. Only on CPUs where gemm_bf16_available().
void gemm_bf16_packed(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const uint16_t* Bp,
                      int64_t ldb, float* C, int64_t ldc, bool accumulate);

// a (M, K) @ b (K, N), both bfloat16 (any strides), as a bfloat16 (M, N): products exact, sums in float32, one
// rounding at the end (what ATen's bfloat16 mm computes). Unlike ATen's mm, whose oneDNN matmul keeps state for
// every shape it meets (about 0.65 MiB each, without bound: a training run over varying lengths grew by GBs),
// it keeps nothing between calls: on rnnext's micro-kernel where gemm_bf16_available(), else float32's GEMM on the
// same values.
at::Tensor mm_bf16(const at::Tensor& a, const at::Tensor& b);
// a @ b: mm_bf16 for two bfloat16 matrices, ATen's mm otherwise (float32 and float64 keep no per-shape state).
at::Tensor mm_any(const at::Tensor& a, const at::Tensor& b);

// dst[i] = src[i] rounded to bfloat16 (nearest, ties to even; NaN stays NaN; float32 denormals become zero, as
// AVX512-BF16's conversion makes them), i < n: vectorized where gemm_bf16_available(), else scalar (the same
// results).
void round_to_bf16(int64_t n, const float* src, uint16_t* dst);

// C[M, N] = (accumulate ? C : 0) + round_bf16(A[M, K]) @ B: a float32 left operand (leading dimension lda)
// rounded to bfloat16 row by row into a16 (M x K, for a caller that keeps the rounded rows; nullptr: a
// per-thread buffer), then gemm_bf16_packed with Bp, B packed in k-pairs with packed rows of N columns.
// Only on CPUs where gemm_bf16_available().
void gemm_bf16_rounded(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* Bp, float* C,
                       int64_t ldc, bool accumulate, uint16_t* a16 = nullptr);

// b (K, N), float32 holding bfloat16 values or bfloat16, any strides, in bfloat16 packed in k-pairs for
// gemm_bf16_packed (float32 values rounded as round_to_bf16 does; read in place, no converted copy).
std::vector<uint16_t> pack_bf16(const at::Tensor& b);

// w^T (w: (N, K), float32 holding bfloat16 values or bfloat16, any strides) in bfloat16 packed in k-pairs for
// gemm_bf16_packed, read straight from w's rows (no transposed copy): pack_bf16(w.t()) without the copies.
std::vector<uint16_t> pack_bf16_t(const at::Tensor& w);

// pack_bf16 / pack_bf16_t into caller memory of packed_size(K, N) values (B: K x N), e.g. scratch memory kept
// mapped between calls (no zero-filled fresh pages for a large B).
int64_t packed_size(int64_t K, int64_t N);
void pack_bf16_into(const at::Tensor& b, uint16_t* out);
void pack_bf16_t_into(const at::Tensor& w, uint16_t* out);

// C[M, N] = (accumulate ? C : 0) + A[M, K] @ B (B row-major, leading dimension N) by the float GEMM; or, given
// Bp (B packed by pack_bf16: a native bfloat16 call, float only), on bfloat16 operands (gemm_bf16_rounded, A's
// rounded rows left in a16 when given).
template <typename T>
void gemm_rows_maybe_bf16(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, const uint16_t* Bp,
                          T* C, int64_t ldc, bool accumulate, uint16_t* a16 = nullptr) {
  if constexpr (std::is_same_v<T, float>) {
    if (Bp != nullptr) return gemm_bf16_rounded(M, N, K, A, lda, Bp, C, ldc, accumulate, a16);
  }
  gemm_rowmajor(M, N, K, A, lda, B, N, C, ldc, accumulate);
}

}  // namespace rnnext::cpu
