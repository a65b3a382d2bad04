// How the CPU layers share one direction's recurrence among threads (the LSTM layer and the GRU/RNN engine):
//  - by slots (batch entries): the entries of a batch never interact, so each thread runs the whole sequence
//    for its own slots with no synchronization at all (when every thread gets kMinRowsPerThread slots);
//  - otherwise all threads work on every step (by hidden units, or inside ATen's GEMMs), one barrier per step.
#pragma once
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

#include "common/layer_schedule.h"

namespace rnnext::cpu {

// Rows per thread below which the threads share each step instead of the batch.
constexpr int64_t kMinRowsPerThread = 16;

// The number of threads of a slot split of B slots, or 0 when the batch is too small for one.
inline int64_t slot_split_threads(int64_t B) {
  const int64_t nt = at::get_num_threads();
  return B >= kMinRowsPerThread * nt ? nt : 0;
}

// Splits the slots [0, B) into nt contiguous ranges of about equal work (a slot's work is its number of steps):
// thread th takes slots [bounds[th], bounds[th + 1]).
inline std::vector<int64_t> balanced_slot_split(const common::Steps& st, int64_t B, int64_t nt) {
  std::vector<int64_t> steps_of_slot(B, 0);
  for (int64_t t = 0; t < st.T; ++t)
    for (int64_t b = 0; b < st.rows[t]; ++b) ++steps_of_slot[b];
  int64_t total = 0;
  for (int64_t v : steps_of_slot) total += v;
  std::vector<int64_t> bounds{0};
  int64_t acc = 0, b = 0;
  for (int64_t th = 1; th < nt; ++th) {
    while (b < B && acc * nt < total * th) acc += steps_of_slot[b++];
    bounds.push_back(b);
  }
  bounds.push_back(B);
  return bounds;
}

}  // namespace rnnext::cpu
