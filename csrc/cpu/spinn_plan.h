// The thin stack's plan, shared by the CPU and CUDA kernels: a simulation of every row's stack on integer
// references that checks the transitions and lists the compositions in schedule order.
//
// References index one table of [h | c] rows: 0 is the null entry (zeros), 1 + (n B + b) is token n of row b
// in `buffers` (N, B, 2H), and 1 + N B + k is node k, the k-th composition in schedule order.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <numeric>
#include <optional>
#include <vector>

namespace rnnext::cpu {

constexpr int64_t kSpinnShift = 0, kSpinnReduce = 1, kSpinnPad = -1;

// Rows of the node workspace for N buffer positions and B rows: a row of n <= N tokens makes n - 1 compositions.
inline int64_t max_nodes(int64_t N, int64_t B) { return B * std::max<int64_t>(N - 1, 0); }

struct SpinnPlan {
  int64_t S = 0, B = 0, N = 0, M = 0;             // steps, rows, buffer positions, compositions
  std::vector<int64_t> left, right, row, step;    // per node: children refs, row, transition step
  std::vector<int64_t> batch_start;               // node range of each batch (levels or steps)
  std::vector<int64_t> top;                       // per row: the final stack top
  std::vector<int64_t> trk_buf, trk_top, trk_2nd;  // (S B): what the tracker reads before each step
  int64_t node_ref(int64_t k) const { return 1 + N * B + k; }
};

// Simulates every row's stack. by_level orders the compositions by tree level, else by step (then row).
inline SpinnPlan make_plan(const char* op, const at::Tensor& transitions, int64_t N, int64_t B,
                    const std::optional<at::Tensor>& lengths, bool by_level,
                           bool tracker_reads) {
  TORCH_CHECK(transitions.dim() == 2 && transitions.size(1) == B, op,
              ": expected transitions of shape (steps, batch) = (S, ", B, "), got ", transitions.sizes());
  TORCH_CHECK(transitions.scalar_type() == at::kLong, op, ": expected transitions to be int64, got ",
              transitions.scalar_type());
  TORCH_CHECK(transitions.device().is_cpu(), op, ": expected transitions on the CPU, got ", transitions.device());
  SpinnPlan plan;
  plan.S = transitions.size(0);
  plan.B = B;
  plan.N = N;
  const int64_t S = plan.S;
  const at::Tensor tr_c = transitions.contiguous();
  const int64_t* tr = tr_c.const_data_ptr<int64_t>();
  // Tokens per row = SHIFTs per row (the buffer is empty once they are all shifted).
  std::vector<int64_t> n_tokens(B, 0);
  for (int64_t t = 0; t < S; ++t)
    for (int64_t b = 0; b < B; ++b) {
      const int64_t code = tr[t * B + b];
      TORCH_CHECK(code == kSpinnShift || code == kSpinnReduce || code == kSpinnPad, op, ": transitions[", t, ", ", b, "] = ", code,
                  " (step ", t, ", row ", b, "): expected SHIFT (0), REDUCE (1) or PAD (-1)");
      n_tokens[b] += code == kSpinnShift;
    }
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(n_tokens[b] <= N, op, ": row ", b, " has ", n_tokens[b], " SHIFTs but the buffer holds only ", N,
                " tokens");
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B && lengths->scalar_type() == at::kLong &&
                    lengths->device().is_cpu(),
                op, ": expected lengths to be a 1-D int64 CPU tensor of size ", B, ", got ", lengths->sizes(), " ",
                lengths->scalar_type(), " on ", lengths->device());
    const at::Tensor lc = lengths->contiguous();
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK(lc.const_data_ptr<int64_t>()[b] == n_tokens[b], op, ": row ", b, " has ", n_tokens[b],
                  " SHIFTs but lengths[", b, "] = ", lc.const_data_ptr<int64_t>()[b]);
  }
  std::vector<std::vector<int64_t>> stacks(B, std::vector<int64_t>{0, 0});
  std::vector<int64_t> pos(B, 0), level;
  if (tracker_reads) {
    plan.trk_buf.resize(S * B);
    plan.trk_top.resize(S * B);
    plan.trk_2nd.resize(S * B);
  }
  auto level_of = [&](int64_t ref) { return ref > N * B ? level[ref - 1 - N * B] : int64_t(0); };
  for (int64_t t = 0; t < S; ++t) {
    plan.batch_start.push_back(static_cast<int64_t>(plan.left.size()));
    for (int64_t b = 0; b < B; ++b) {
      auto& st = stacks[b];
      if (tracker_reads) {
        plan.trk_buf[t * B + b] = pos[b] < n_tokens[b] ? 1 + pos[b] * B + b : 0;
        plan.trk_top[t * B + b] = st.back();
        plan.trk_2nd[t * B + b] = st[st.size() - 2];
      }
      const int64_t code = tr[t * B + b];
      if (code == kSpinnShift) {
        st.push_back(1 + pos[b] * B + b);
        ++pos[b];
      } else if (code == kSpinnReduce) {
        TORCH_CHECK(st.size() >= 4, op, ": row ", b, ", step ", t, ": REDUCE needs two entries on the stack, found ",
                    st.size() - 2);
        const int64_t right = st.back();
        st.pop_back();
        const int64_t left = st.back();
        st.pop_back();
        const int64_t k = static_cast<int64_t>(plan.left.size());
        plan.left.push_back(left);
        plan.right.push_back(right);
        plan.row.push_back(b);
        plan.step.push_back(t);
        level.push_back(1 + std::max(level_of(left), level_of(right)));
        st.push_back(plan.node_ref(k));
      }
    }
  }
  plan.M = static_cast<int64_t>(plan.left.size());
  plan.batch_start.push_back(plan.M);
  plan.top.resize(B);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(stacks[b].size() == 3, op, ": row ", b, " ends with ", stacks[b].size() - 2,
                " entries on its stack; a complete parse leaves exactly one");
    plan.top[b] = stacks[b].back();
  }
  if (by_level && plan.M > 0) {
    // Renumber the nodes by (level, creation order) and point every reference at the new numbers.
    std::vector<int64_t> order(plan.M), new_id(plan.M);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return level[a] < level[b]; });
    for (int64_t i = 0; i < plan.M; ++i) new_id[order[i]] = i;
    auto remap = [&](int64_t ref) { return ref > N * B ? plan.node_ref(new_id[ref - 1 - N * B]) : ref; };
    SpinnPlan sorted = plan;
    sorted.batch_start.clear();
    for (int64_t i = 0; i < plan.M; ++i) {
      const int64_t k = order[i];
      sorted.left[i] = remap(plan.left[k]);
      sorted.right[i] = remap(plan.right[k]);
      sorted.row[i] = plan.row[k];
      sorted.step[i] = plan.step[k];
      if (i == 0 || level[k] != level[order[i - 1]]) sorted.batch_start.push_back(i);
    }
    sorted.batch_start.push_back(plan.M);
    for (auto& r : sorted.top) r = remap(r);
    for (auto* v : {&sorted.trk_buf, &sorted.trk_top, &sorted.trk_2nd})
      for (auto& r : *v) r = remap(r);
    return sorted;
  }
  return plan;
}

}  // namespace rnnext::cpu
