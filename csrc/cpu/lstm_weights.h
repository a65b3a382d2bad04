// LSTM weights rearranged for the CPU kernels: gate columns in the blocked layout of kernels/lstm_layout.h,
// transposed where a kernel multiplies by them from the right. Shared by the layer and generation kernels.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/index_copy.h>
#include <ATen/ops/index_select.h>

#include <optional>
#include <tuple>

#include "cpu/bias.h"
#include "kernels/lstm_layout.h"

namespace rnnext::cpu {

// Unit blocks whose gate columns one GEMM call produces before the pointwise step consumes them. The layer
// and the generation kernels share it, so that both sum the gates in the same order (greedy generation
// equals a loop over the layer exactly).
constexpr int64_t kBlocksPerChunk = 4;

// Permutation from the blocked gate layout to PyTorch's rows: perm[col] = torch row.
inline at::Tensor blocked_gate_perm(int64_t H) {
  at::Tensor perm = at::empty({4 * H}, at::TensorOptions().dtype(at::kLong));
  int64_t* p = perm.data_ptr<int64_t>();
  for (int64_t col = 0; col < 4 * H; ++col) p[col] = kernels::blocked_col_to_torch_row(col, H);
  return perm;
}

// Gradient rows computed in the blocked layout, put back in PyTorch's row order.
inline at::Tensor unblock_rows(const at::Tensor& blocked, const at::Tensor& perm) {
  return at::empty_like(blocked).index_copy_(0, perm, blocked);
}

// [w_ih w_hh]^T, (I + P, 4H), with its columns in the blocked gate layout (w_ih and w_hh are PyTorch's
// gate-major (4H, I) and (4H, P) weights).
inline at::Tensor blocked_transpose(const at::Tensor& w_ih, const at::Tensor& w_hh) {
  using namespace kernels;
  const at::Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  const int64_t G = wi.size(0), H = G / 4, I = wi.size(1), P = wh.size(1), NB = num_unit_blocks(H);
  at::Tensor out = at::empty({I + P, G}, wi.options());
  AT_DISPATCH_FLOATING_TYPES(wi.scalar_type(), "blocked_transpose", [&] {
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, NB, G * (I + P) < (1 << 16) ? NB : 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t w = block_width(k, H);
        for (int64_t g = 0; g < 4; ++g) {
          const int64_t row0 = g * H + block_first_unit(k);
          scalar_t* cols = dst + block_first_col(k) + g * w;
          for (const auto& [src, K, kofs] : {std::make_tuple(wi.const_data_ptr<scalar_t>(), I, int64_t(0)),
                                             std::make_tuple(wh.const_data_ptr<scalar_t>(), P, I)}) {
            const scalar_t* rows = src + row0 * K;
            for (int64_t kk = 0; kk < K; ++kk)
              for (int64_t u = 0; u < w; ++u) cols[(kofs + kk) * G + u] = rows[u * K + kk];
          }
        }
      }
    });
  });
  return out;
}

// Weights of one layer rearranged for the forward kernels.
struct BlockedWeights {
  at::Tensor perm;  // blocked column -> PyTorch row
  at::Tensor w_t;   // (I + P, 4H) = [W_ih W_hh]^T, blocked columns
  at::Tensor bias;  // (4H) blocked, b_ih + b_hh, or undefined
};

inline BlockedWeights block_weights(const at::Tensor& w_ih, const at::Tensor& w_hh,
                                    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  BlockedWeights bw;
  bw.perm = blocked_gate_perm(w_hh.size(0) / 4);
  bw.w_t = blocked_transpose(w_ih, w_hh);
  if (const auto bias = sum_biases(b_ih, b_hh)) bw.bias = bias->index_select(0, bw.perm).contiguous();
  return bw;
}

}  // namespace rnnext::cpu
