// Column layout of the gate buffers inside the fused LSTM layer. Hidden units are grouped in blocks of
// kUnitBlock; a block's four gates are adjacent ([i f g o] of its units), so a thread that owns a range of
// blocks finds all four gates of its units in one contiguous column range and runs its recurrent GEMM
// and its pointwise step without waiting for the other threads. The layout depends on H only.
#pragma once
#include <cstdint>

#include "kernels/macros.h"

namespace rnnext::kernels {

constexpr int64_t kUnitBlock = 16;

RNNEXT_HD int64_t num_unit_blocks(int64_t H) { return (H + kUnitBlock - 1) / kUnitBlock; }
RNNEXT_HD int64_t block_first_unit(int64_t k) { return k * kUnitBlock; }
RNNEXT_HD int64_t block_width(int64_t k, int64_t H) {
  const int64_t rest = H - k * kUnitBlock;
  return rest < kUnitBlock ? rest : kUnitBlock;
}
// First gate column of block k (its gates follow at stride block_width(k, H)).
RNNEXT_HD int64_t block_first_col(int64_t k) { return 4 * k * kUnitBlock; }

// Row of PyTorch's weight_ih/weight_hh (gate-major: i, f, g, o) that lands in blocked column `col`.
RNNEXT_HD int64_t blocked_col_to_torch_row(int64_t col, int64_t H) {
  const int64_t k = col / (4 * kUnitBlock);
  const int64_t w = block_width(k, H);
  const int64_t within = col - block_first_col(k);
  const int64_t gate = within / w;
  const int64_t unit = within - gate * w;
  return gate * H + block_first_unit(k) + unit;
}

}  // namespace rnnext::kernels
