// bfloat16 GEMM with float32 accumulation on AVX512-BF16 (vdpbf16ps): C[M, N] (float) = (accumulate ? C : 0) +
// A[M, K] (bfloat16, row-major) @ B (bfloat16, K x N, packed in k-pairs: see gemm_bf16.h). The whole file is
// compiled for AVX-512 BF16 and is only entered on CPUs that have it (gemm_bf16_available).
#include "cpu/bf16.h"
#include "cpu/gemm_bf16.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include "cpu/isa.h"
#if RNNEXT_X86
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace rnnext::cpu {

bool gemm_bf16_available() {
  static const bool has = cpu_has_avx512bf16();
  return has;
}

namespace {
void round_to_bf16_avx512(int64_t n, const float* src, uint16_t* dst);
}  // namespace

// gemm_bf16_packed with A given as A^T (K x M, M = lda) packed in k-pairs by pack_bf16: row r's pair p at
// Ap + (p * lda + r) * 2 (pass Ap + 2 * r0 for rows from r0, Ap + p0 * lda * 2 for pairs from p0).
void gemm_bf16_packed_a(int64_t M, int64_t N, int64_t K, const uint16_t* Ap, int64_t lda, const uint16_t* Bp,
                        int64_t ldb, float* C, int64_t ldc, bool accumulate);

void round_to_bf16(int64_t n, const float* src, uint16_t* dst) {
  if (gemm_bf16_available()) return round_to_bf16_avx512(n, src, dst);
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16::round_bits(src[i]);
}

namespace {
void interleave_rows_avx512(int64_t n, const float* r0, const float* r1, uint16_t* out);
void interleave_rows_avx512(int64_t n, const uint16_t* r0, const uint16_t* r1, uint16_t* out);
void transpose_pairs_avx512(int64_t n0, int64_t n1, int64_t N, int64_t Kb, const uint16_t* src, uint16_t* out);

// B in bfloat16 packed in k-pairs (gemm_bf16.h's layout) from src, float32 (rounded as round_to_bf16 does:
// exact for bfloat16 values) or bfloat16: B = src (Kb x N), or with `transposed` B = src^T (src N x Kb).
// Into out (packed_size values), or into a new vector when out is null.
std::vector<uint16_t> pack_pairs_from(const at::Tensor& src, bool transposed, uint16_t* into = nullptr) {
  const at::Tensor c = src.scalar_type() == at::kBFloat16 ? src.contiguous() : src.contiguous().to(at::kFloat);
  const int64_t rows = c.size(0), cols = c.size(1);
  const int64_t Kb = transposed ? cols : rows, N = transposed ? rows : cols, pairs = (Kb + 1) / 2;
  std::vector<uint16_t> own(into == nullptr ? static_cast<size_t>(pairs * N * 2) : 0);
  uint16_t* const out = into == nullptr ? own.data() : into;
  const bool bf = c.scalar_type() == at::kBFloat16;
  const uint16_t* s16 = bf ? reinterpret_cast<const uint16_t*>(c.const_data_ptr<c10::BFloat16>()) : nullptr;
  const float* s32 = bf ? nullptr : c.const_data_ptr<float>();
  if (!transposed) {
    // Rows 2p and 2p + 1 of B interleaved (a zero row completing an odd Kb).
    const std::vector<float> zf(bf ? 0 : N, 0.0f);
    const std::vector<uint16_t> z16(bf ? N : 0, 0);
    at::parallel_for(0, pairs, 8, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        uint16_t* o = out + p * N * 2;
        const bool whole = 2 * p + 1 < Kb;
        if (!gemm_bf16_available()) {
          for (int64_t n = 0; n < N; ++n) {
            o[2 * n] = bf ? s16[2 * p * N + n] : bf16::round_bits(s32[2 * p * N + n]);
            const int64_t i1 = (2 * p + 1) * N + n;
            o[2 * n + 1] = !whole ? uint16_t(0) : bf ? s16[i1] : bf16::round_bits(s32[i1]);
          }
        } else if (bf) {
          interleave_rows_avx512(N, s16 + 2 * p * N, whole ? s16 + (2 * p + 1) * N : z16.data(), o);
        } else {
          interleave_rows_avx512(N, s32 + 2 * p * N, whole ? s32 + (2 * p + 1) * N : zf.data(), o);
        }
      }
    });
    return own;
  }
  // B = src^T: pair p of column n is elements 2p, 2p + 1 of src's row n, one 32-bit word once the row is in
  // bfloat16: a transpose of 32-bit words. From bfloat16 on AVX-512, 16 x 16 blocks of words in registers;
  // otherwise rows in groups of 64 (rounded into a buffer), their words scattered pair by pair.
  if (bf && gemm_bf16_available()) {
    at::parallel_for(0, (N + 15) / 16, 4, [&](int64_t g0, int64_t g1) {
      transpose_pairs_avx512(g0 * 16, std::min(N, g1 * 16), N, Kb, s16, out);
    });
    return own;
  }
  at::parallel_for(0, (N + 63) / 64, 1, [&](int64_t g0, int64_t g1) {
    std::vector<uint16_t> buf(static_cast<size_t>(64 * pairs * 2));
    for (int64_t n0 = g0 * 64; n0 < std::min(N, g1 * 64); n0 += 64) {
      const int64_t nn = std::min<int64_t>(64, N - n0);
      for (int64_t r = 0; r < nn; ++r) {
        uint16_t* b = buf.data() + r * pairs * 2;
        if (bf)
          std::copy(s16 + (n0 + r) * Kb, s16 + (n0 + r + 1) * Kb, b);
        else
          round_to_bf16(Kb, s32 + (n0 + r) * Kb, b);
        if (Kb % 2 != 0) b[Kb] = 0;
      }
      for (int64_t p = 0; p < pairs; ++p)
        for (int64_t r = 0; r < nn; ++r) std::memcpy(out + (p * N + n0 + r) * 2, buf.data() + (r * pairs + p) * 2, 4);
    }
  });
  return own;
}
}  // namespace

std::vector<uint16_t> pack_bf16(const at::Tensor& b) { return pack_pairs_from(b, false); }
std::vector<uint16_t> pack_bf16_t(const at::Tensor& w) { return pack_pairs_from(w, true); }
int64_t packed_size(int64_t K, int64_t N) { return (K + 1) / 2 * N * 2; }
void pack_bf16_into(const at::Tensor& b, uint16_t* out) { pack_pairs_from(b, false, out); }
void pack_bf16_t_into(const at::Tensor& w, uint16_t* out) { pack_pairs_from(w, true, out); }

at::Tensor mm_bf16(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0) && a.scalar_type() == at::kBFloat16 &&
                  b.scalar_type() == at::kBFloat16,
              "rnnext: mm_bf16 expects bfloat16 matrices (M, K) and (K, N), got ", a.sizes(), " ", a.scalar_type(),
              " and ", b.sizes(), " ", b.scalar_type());
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (!gemm_bf16_available() || M == 0 || N == 0 || K == 0)  // float32's GEMM on the same values: same numerics
    return at::mm(a.to(at::kFloat), b.to(at::kFloat)).to(at::kBFloat16);
  // A weight gradient's A is dg^T, a transposed view of the (rows, M) gate gradients: pack dg in k-pairs as B is
  // (rows 2p and 2p + 1 interleaved: one vectorized pass) and read A's pairs from there, instead of a transposed
  // copy of 2-byte elements.
  const bool transposed = a.stride(0) == 1 && a.stride(1) == M;
  const at::Tensor A = transposed ? at::Tensor() : a.contiguous();
  const std::vector<uint16_t> ap = transposed ? pack_bf16(a.t()) : std::vector<uint16_t>();
  const uint16_t* a16 = transposed ? ap.data() : reinterpret_cast<const uint16_t*>(A.const_data_ptr<c10::BFloat16>());
  const std::vector<uint16_t> bp = pack_bf16(b);
  // (float32 sums, every element written by the first K chunk: no zero fill)
  const at::Tensor sums = at::empty({M, N}, a.options().dtype(at::kFloat));
  float* c = sums.data_ptr<float>();
  at::Tensor out = at::empty({M, N}, a.options());
  uint16_t* o16 = reinterpret_cast<uint16_t*>(out.data_ptr<c10::BFloat16>());
  // K in chunks whose packed B (kChunk x N) stays in cache while a thread's rows pass over it; each element's sum
  // runs over K in the same order whatever the row split (the same bits for any thread count).
  constexpr int64_t kChunk = 256, kRowGrain = 16;
  at::parallel_for(0, M, kRowGrain, [&](int64_t m0, int64_t m1) {
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
      const int64_t kk = std::min(kChunk, K - k0);
      if (transposed)  // pair p of row m at ap + ((k0 / 2 + p) * M + m) * 2
        gemm_bf16_packed_a(m1 - m0, N, kk, a16 + (k0 / 2 * M + m0) * 2, M, bp.data() + k0 * N, N,
                           c + m0 * N, N, /*accumulate=*/k0 > 0);
      else
        gemm_bf16_packed(m1 - m0, N, kk, a16 + m0 * K + k0, K, bp.data() + k0 * N, N, c + m0 * N, N,
                         /*accumulate=*/k0 > 0);
    }
    round_to_bf16((m1 - m0) * N, c + m0 * N, o16 + m0 * N);
  });
  return out;
}

at::Tensor mm_any(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16) return mm_bf16(a, b);
  return at::mm(a, b);
}

void gemm_bf16_rounded(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* Bp, float* C,
                       int64_t ldc, bool accumulate, uint16_t* a16) {
  thread_local std::vector<uint16_t> own;
  if (a16 == nullptr) {
    own.resize(static_cast<size_t>(M * K));
    a16 = own.data();
  }
  for (int64_t i = 0; i < M; ++i) round_to_bf16(K, A + i * lda, a16 + i * K);
  gemm_bf16_packed(M, N, K, a16, K, Bp, N, C, ldc, accumulate);
}

#if RNNEXT_X86
RNNEXT_BEGIN_AVX512_BF16

namespace {

// A pair of bfloat16 values of row r of A at k-pair p, broadcast to every lane (the last pair of an odd K gets
// a zero partner, matching the zero row that completes a packed B).
inline __m512bh a_pair(const uint16_t* a, int64_t p, int64_t K) {
  uint32_t v;
  if (2 * p + 1 < K)
    std::memcpy(&v, a + 2 * p, 4);
  else
    v = a[2 * p];
  return (__m512bh)_mm512_set1_epi32(static_cast<int>(v));
}

// Where row r's k-pair p of A is: row-major A (kPacked false: a + 2p, the last pair of an odd K completed by a
// zero), or A packed in k-pairs as B is (kPacked true: pairs `pstride` elements apart, an odd K's zero partner
// stored; A = dg^T read from dg packed by pack_bf16, with no transposed copy).
template <bool kPacked>
inline __m512bh a_pair_at(const uint16_t* a, int64_t p, int64_t K, int64_t pstride) {
  if constexpr (kPacked) {
    uint32_t v;
    std::memcpy(&v, a + p * pstride, 4);
    return (__m512bh)_mm512_set1_epi32(static_cast<int>(v));
  } else {
    return a_pair(a, p, K);
  }
}

// 16 columns of B at k-pair p (32 bfloat16), the first `cols` of them (masked beyond).
inline __m512bh b_load(const uint16_t* b, __mmask32 m) {
  return (__m512bh)(m == __mmask32(0xFFFFFFFFu) ? _mm512_loadu_si512(b) : _mm512_maskz_loadu_epi16(m, b));
}

inline __mmask32 pair_mask(int64_t cols) {
  return cols >= 16 ? __mmask32(0xFFFFFFFFu) : __mmask32((1ull << (2 * cols)) - 1ull);
}
inline __mmask16 col_mask(int64_t cols) {
  return cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1u);
}

// A tile of MR rows x NV * 16 columns (the last vector masked to `cols_last`).
template <int MR, int NV, bool kPacked = false>
inline void tile(int64_t K, const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb2, float* C, int64_t ldc,
                 bool accumulate, int64_t cols_last, int64_t pstride = 2) {
  __m512 acc[MR][NV];
  const __mmask16 cm = col_mask(cols_last);
  const __mmask32 pm = pair_mask(cols_last);
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? cm : __mmask16(0xFFFF);
      acc[r][v] = accumulate ? _mm512_maskz_loadu_ps(m, C + r * ldc + v * 16) : _mm512_setzero_ps();
    }
  const int64_t pairs = (K + 1) / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    const uint16_t* bp = B + p * ldb2;
    __m512bh b[NV];
    for (int v = 0; v < NV; ++v) b[v] = b_load(bp + v * 32, v == NV - 1 ? pm : __mmask32(0xFFFFFFFFu));
    for (int r = 0; r < MR; ++r) {
      const __m512bh a = a_pair_at<kPacked>(A + r * lda, p, K, pstride);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      float* c = C + r * ldc + v * 16;
      if (v == NV - 1 && cm != __mmask16(0xFFFF))
        _mm512_mask_storeu_ps(c, cm, acc[r][v]);
      else
        _mm512_storeu_ps(c, acc[r][v]);
    }
}

template <int MR, bool kPacked = false>
void rows(int64_t N, int64_t K, const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb2, float* C,
          int64_t ldc, bool accumulate, int64_t pstride = 2) {
  int64_t n = 0;
  for (; n + 64 <= N; n += 64)
    tile<MR, 4, kPacked>(K, A, lda, B + 2 * n, ldb2, C + n, ldc, accumulate, 16, pstride);
  const int64_t rest = N - n;
  if (rest > 48)
    tile<MR, 4, kPacked>(K, A, lda, B + 2 * n, ldb2, C + n, ldc, accumulate, rest - 48, pstride);
  else if (rest > 32)
    tile<MR, 3, kPacked>(K, A, lda, B + 2 * n, ldb2, C + n, ldc, accumulate, rest - 32, pstride);
  else if (rest > 16)
    tile<MR, 2, kPacked>(K, A, lda, B + 2 * n, ldb2, C + n, ldc, accumulate, rest - 16, pstride);
  else if (rest > 0)
    tile<MR, 1, kPacked>(K, A, lda, B + 2 * n, ldb2, C + n, ldc, accumulate, rest, pstride);
}

}  // namespace

namespace {
void interleave_rows_avx512(int64_t n, const float* r0, const float* r1, uint16_t* out) {
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = n - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - c)) - 1u);
    const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, r0 + c)));
    const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, r1 + c)));
    _mm512_mask_storeu_epi32(out + 2 * c, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
}
void interleave_rows_avx512(int64_t n, const uint16_t* r0, const uint16_t* r1, uint16_t* out) {
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = n - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - c)) - 1u);
    const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r0 + c));
    const __m512i hi = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r1 + c));
    _mm512_mask_storeu_epi32(out + 2 * c, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
}
// Columns [n0, n1) of B = src^T packed in k-pairs (src: N x Kb bfloat16, row-major): out word (p, n) = src's
// row n, elements 2p, 2p + 1 (a zero partner completing an odd Kb). 16 x 16 blocks of words transposed in
// registers (three rounds of unpacks and lane shuffles), the edges word by word.
void transpose_pairs_avx512(int64_t n0, int64_t n1, int64_t N, int64_t Kb, const uint16_t* src, uint16_t* out) {
  const int64_t pairs = (Kb + 1) / 2, full = Kb / 2 / 16 * 16;  // pairs in whole 16 x 16 blocks
  auto word = [&](int64_t n, int64_t p) {
    uint32_t v;
    if (2 * p + 1 < Kb)
      std::memcpy(&v, src + n * Kb + 2 * p, 4);
    else
      v = src[n * Kb + 2 * p];
    std::memcpy(out + (p * N + n) * 2, &v, 4);
  };
  int64_t n = n0;
  for (; n + 16 <= n1; n += 16) {
    for (int64_t p0 = 0; p0 < full; p0 += 16) {
      __m512i r[16], t[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(src + (n + i) * Kb + 2 * p0);
      for (int i = 0; i < 8; ++i) {  // lane L: rows 2i, 2i + 1 of words 4L, 4L + 1 | 4L + 2, 4L + 3
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
      }
      for (int i = 0; i < 4; ++i) {  // r[4i + j], lane L: rows 4i..4i + 3 of word 4L + j
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
      }
      for (int j = 0; j < 4; ++j) {
        const __m512i a = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44), b = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xEE);
        const __m512i c = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44);
        const __m512i d = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xEE);
        t[j] = _mm512_shuffle_i32x4(a, c, 0x88);       // word j: rows 0..15
        t[4 + j] = _mm512_shuffle_i32x4(a, c, 0xDD);   // word 4 + j
        t[8 + j] = _mm512_shuffle_i32x4(b, d, 0x88);   // word 8 + j
        t[12 + j] = _mm512_shuffle_i32x4(b, d, 0xDD);  // word 12 + j
      }
      for (int w = 0; w < 16; ++w) _mm512_storeu_si512(out + ((p0 + w) * N + n) * 2, t[w]);
    }
    for (int64_t p = full; p < pairs; ++p)
      for (int64_t i = 0; i < 16; ++i) word(n + i, p);
  }
  for (; n < n1; ++n)
    for (int64_t p = 0; p < pairs; ++p) word(n, p);
}

void round_to_bf16_avx512(int64_t n, const float* src, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm256_mask_storeu_epi16(dst + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i)));
  }
}
}  // namespace

void gemm_bf16_packed(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const uint16_t* Bp,
                      int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  const int64_t ldb2 = 2 * ldb;  // bfloat16 elements per k-pair row of the packed B
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) rows<4>(N, K, A + m * lda, lda, Bp, ldb2, C + m * ldc, ldc, accumulate);
  switch (M - m) {
    case 3: rows<3>(N, K, A + m * lda, lda, Bp, ldb2, C + m * ldc, ldc, accumulate); break;
    case 2: rows<2>(N, K, A + m * lda, lda, Bp, ldb2, C + m * ldc, ldc, accumulate); break;
    case 1: rows<1>(N, K, A + m * lda, lda, Bp, ldb2, C + m * ldc, ldc, accumulate); break;
    default: break;
  }
}

void gemm_bf16_packed_a(int64_t M, int64_t N, int64_t K, const uint16_t* Ap, int64_t lda, const uint16_t* Bp,
                        int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  const int64_t ldb2 = 2 * ldb;
  const int64_t pstride = 2 * lda;  // (A^T packed in k-pairs: pair p of row r at Ap + (p * lda + r) * 2)
  // Column panels of 64 outside, row tiles inside: a panel of B (K x 64) stays in L1 while every row tile of
  // the block passes over it (a weight gradient's M is large; the panel is read once per block, not per tile).
  for (int64_t n = 0; n < N; n += 64) {
    const int64_t nn = std::min<int64_t>(64, N - n);
    int64_t m = 0;
    for (; m + 6 <= M; m += 6)  // (6 x 64: 24 accumulators, 4 B vectors, a broadcast: 29 of the 32 registers)
      rows<6, true>(nn, K, Ap + 2 * m, 2, Bp + 2 * n, ldb2, C + m * ldc + n, ldc, accumulate, pstride);
    for (; m + 4 <= M; m += 4)
      rows<4, true>(nn, K, Ap + 2 * m, 2, Bp + 2 * n, ldb2, C + m * ldc + n, ldc, accumulate, pstride);
    switch (M - m) {
      case 3: rows<3, true>(nn, K, Ap + 2 * m, 2, Bp + 2 * n, ldb2, C + m * ldc + n, ldc, accumulate, pstride); break;
      case 2: rows<2, true>(nn, K, Ap + 2 * m, 2, Bp + 2 * n, ldb2, C + m * ldc + n, ldc, accumulate, pstride); break;
      case 1: rows<1, true>(nn, K, Ap + 2 * m, 2, Bp + 2 * n, ldb2, C + m * ldc + n, ldc, accumulate, pstride); break;
      default: break;
    }
  }
}

RNNEXT_END_ISA
#else
// Off x86-64 the AVX-512 kernels do not exist; gemm_bf16_available() is false there, so nothing calls these.
namespace {
[[noreturn]] void no_avx512(const char* fn) {
  TORCH_CHECK(false, "rnnext: ", fn, " runs on x86-64 CPUs with AVX512-BF16 only (gemm_bf16_available() is false)");
}
void interleave_rows_avx512(int64_t, const float*, const float*, uint16_t*) { no_avx512("interleave_rows"); }
void interleave_rows_avx512(int64_t, const uint16_t*, const uint16_t*, uint16_t*) { no_avx512("interleave_rows"); }
void transpose_pairs_avx512(int64_t, int64_t, int64_t, int64_t, const uint16_t*, uint16_t*) {
  no_avx512("transpose_pairs");
}
void round_to_bf16_avx512(int64_t, const float*, uint16_t*) { no_avx512("round_to_bf16"); }
}  // namespace

void gemm_bf16_packed(int64_t, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*, int64_t, float*, int64_t,
                      bool) {
  no_avx512("gemm_bf16_packed");
}
void gemm_bf16_packed_a(int64_t, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*, int64_t, float*,
                        int64_t, bool) {
  no_avx512("gemm_bf16_packed_a");
}
#endif  // RNNEXT_X86

}  // namespace rnnext::cpu
