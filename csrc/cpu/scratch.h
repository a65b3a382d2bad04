// Reusable scratch tensors for a CPU op's large temporaries (never returned, never saved for a backward).
//
// A temporary of several MB allocated fresh on every call gets fresh pages from the OS whenever the allocator
// has returned the previous one (glibc's malloc does for large blocks, and more often when another large user
// of memory runs in between, e.g. stock's oneDNN RNN): page faults that measured 30% of a bfloat16 LSTM layer's
// forward+backward (42-45 ms interleaved with stock's LSTM against 32.6 ms with freed memory kept). Each thread
// keeps one tensor per slot and hands it out again once nothing refers to its storage any more, so a slot's
// memory stays mapped between calls (at most the largest request per slot and thread).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <array>

namespace rnnext::cpu {

enum class ScratchSlot : int {
  kGateGrads = 0,
  kGateGradsH,   // GRU's recurrent gate gradients (dgh)
  kInputGates,   // a GRU/RNN layer's input projection (gx)
  kInputGrads,   // a native bfloat16 GRU/RNN layer's input gradient before rounding
  kGateGradsBf16,
  kOutputGrad,
  kWeightGradOperand,
  kPackedWeights,  // a bfloat16 layer's [W_ih W_hh]^T, blocked and packed in k-pairs, for one call
  // SPINN's backward: node gradients, composition pre-activation gradients, the weight gradients' operand, the
  // tracker's gate gradients and inputs.
  kSpinnNodeGrads,
  kSpinnPreGrads,
  kSpinnOperand,
  kSpinnTrackerGrads,
  kSpinnTrackerInputs,
  // Their bfloat16 versions (a native bfloat16 call): the pre-activation gradients, the tracker's gate gradients
  // and inputs, the weight gradients' operand, the nodes' and the tracker's h.
  kSpinnPreGradsBf16,
  kSpinnTrackerGradsBf16,
  kSpinnTrackerInputsBf16,
  kSpinnOperandBf16,
  kSpinnNodesBf16,
  kSpinnBufferGrads,
  kSpinnPackedComp,     // a native call's composition weights, packed for the bfloat16 GEMMs
  kSpinnPackedTracker,  // and its tracker's  // a native bfloat16 call's buffers gradient, accumulated in float32
  kSpinnTrackerHBf16,
  kCount
};

// A contiguous tensor of `sizes` and `dtype` on the CPU whose values are undefined, from `slot`'s cache when
// that is free and large enough (otherwise freshly allocated and, when the cache is free, cached).
inline at::Tensor scratch(ScratchSlot slot, at::IntArrayRef sizes, at::ScalarType dtype) {
  thread_local std::array<at::Tensor, static_cast<int>(ScratchSlot::kCount)> cache;
  at::Tensor& c = cache[static_cast<int>(slot)];
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const bool free = !c.defined() || c.storage().use_count() == 1;
  if (free && c.defined() && c.scalar_type() == dtype && c.numel() >= numel)
    return c.narrow(0, 0, numel).view(sizes);
  at::Tensor t = at::empty({numel}, at::TensorOptions().dtype(dtype));
  if (free) c = t;
  return t.view(sizes);
}

}  // namespace rnnext::cpu
