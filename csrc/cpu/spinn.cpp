// CPU kernels of the batched shift-reduce stack operator (SPINN's "thin stack") and its backward, and of the
// plan op that exposes the stack layout to Python.
//
// Every stack entry is a reference into one table of [h | c] rows: 0 is the null entry (zeros), 1 + (n B + b)
// is token n of row b in `buffers` (N, B, 2H), and 1 + N B + k is node k, the k-th composition in schedule
// order, stored in the `nodes` workspace (S B, 2H). A plan simulates every row's stack on integers (checking
// the transitions) and lists the compositions with their children; the kernels then run the compositions
// batch by batch: by tree level when there is no tracker (a node needs only its children), by transition
// step with a tracker (its state ties the compositions to the step order).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zero.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/bias.h"
#include "cpu/bf16.h"
#include "cpu/checks.h"
#include "cpu/gemm.h"
#include "cpu/gemm_bf16.h"
#include "cpu/scratch.h"
#include "cpu/pointwise.h"
#include "cpu/spinn_plan.h"

namespace rnnext::cpu {
namespace {

using at::Tensor;

constexpr int64_t kGrain = 8;         // rows per parallel task in gathers
constexpr int64_t kRowsPerTask = 64;  // rows per parallel task in a batch of compositions (GEMM rows)
constexpr int64_t kMinRowsPerThread = 16;  // the by-rows split below gives each thread at least this many rows

// With a tracker, the steps run split by batch rows: a row's stack, tracker state and compositions depend on
// that row alone, so each thread runs every step of its own rows (its tracker GEMM, then its compositions) with
// no barrier between steps; row r of a thread's GEMMs gives the same bits whatever the other rows, so results do
// not depend on the thread count. Threads of the split for B rows:
int64_t row_split_threads(int64_t B) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B / kMinRowsPerThread));
}

// Rows [split_bound(B, j, nt), split_bound(B, j + 1, nt)) are thread j's: boundaries on multiples of kRowBlock.
constexpr int64_t kRowBlock = 8;
int64_t split_bound(int64_t B, int64_t j, int64_t nt) {
  return j == nt ? B : std::min(B, B * j / nt / kRowBlock * kRowBlock);
}

// Calls f(r0, r1) over rows [b0, b1): once for float (its GEMMs give a row the same bits whatever the other
// rows), per kRowBlock-aligned block for double (ATen's double GEMM does not), so that no result depends on
// the thread count.
template <typename scalar_t, typename F>
void over_row_blocks(int64_t b0, int64_t b1, F&& f) {
  if constexpr (!std::is_same_v<scalar_t, double>) {
    f(b0, b1);
  } else {
    for (int64_t r0 = b0; r0 < b1;) {
      const int64_t r1 = std::min(b1, (r0 / kRowBlock + 1) * kRowBlock);
      f(r0, r1);
      r0 = r1;
    }
  }
}

struct SpinnShapes {
  int64_t N, B, S, H, Tt, K;  // K = composition input width: 2H (+ Tt with a tracker)
  bool tracker;
};

// Native bfloat16 (a bfloat16 call on an AVX512-BF16 CPU): the kernels below run in float32 on the bfloat16
// values, with float32 workspace, but their GEMMs take bfloat16 operands on the micro-kernel of cpu/gemm_bf16.h:
// the weights (exact in bfloat16) packed once per call, the float32 left operands (gathered children, tracker
// inputs, gate gradients) rounded to bfloat16 row by row, float32 accumulation; the weight gradients are
// bfloat16 GEMMs too, the bias gradients sums of the float32 gate gradients.

SpinnShapes check_spinn_args(const char* op, const Tensor& buffers, const Tensor& transitions, const Tensor& w_comp,
                             const std::optional<Tensor>& b_comp, const std::optional<Tensor>& t_w_ih,
                             const std::optional<Tensor>& t_w_hh, const std::optional<Tensor>& t_b_ih,
                             const std::optional<Tensor>& t_b_hh) {
  check_float_cpu(op, "buffers", buffers);
  check_dim(op, "buffers", buffers, 3, "(tokens, batch, 2 * hidden_size)");
  check_same(op, "buffers", buffers, "w_comp", w_comp);
  check_dim(op, "w_comp", w_comp, 2, "(5 * hidden_size, 2 * hidden_size [+ tracker_size])");
  SpinnShapes s{};
  s.N = buffers.size(0);
  s.B = buffers.size(1);
  s.S = transitions.dim() == 2 ? transitions.size(0) : 0;
  TORCH_CHECK(w_comp.size(0) % 5 == 0 && w_comp.size(0) > 0, op,
              ": expected w_comp.size(0) to be 5 * hidden_size > 0, got ", w_comp.size(0));
  s.H = w_comp.size(0) / 5;
  TORCH_CHECK(buffers.size(2) == 2 * s.H, op, ": expected buffers rows [h | c] of width 2 * hidden_size = ",
              2 * s.H, ", got ", buffers.size(2));
  s.tracker = t_w_ih.has_value();
  TORCH_CHECK(s.tracker == t_w_hh.has_value(), op, ": give both tracker_w_ih and tracker_w_hh, or neither");
  if (s.tracker) {
    check_same(op, "buffers", buffers, "tracker_w_ih", *t_w_ih);
    check_same(op, "buffers", buffers, "tracker_w_hh", *t_w_hh);
    check_dim(op, "tracker_w_hh", *t_w_hh, 2, "(4 * tracker_size, tracker_size)");
    s.Tt = t_w_hh->size(1);
    check_shape(op, "tracker_w_hh", *t_w_hh, {4 * s.Tt, s.Tt});
    check_shape(op, "tracker_w_ih", *t_w_ih, {4 * s.Tt, 3 * s.H});
    for (const auto& [name, b] : {std::pair<const char*, const std::optional<Tensor>*>{"tracker_b_ih", &t_b_ih},
                                  {"tracker_b_hh", &t_b_hh}})
      if (b->has_value()) {
        check_same(op, "buffers", buffers, name, **b);
        check_shape(op, name, **b, {4 * s.Tt});
      }
  } else {
    TORCH_CHECK(!t_b_ih.has_value() && !t_b_hh.has_value(), op, ": tracker biases given without tracker weights");
  }
  s.K = 2 * s.H + (s.tracker ? s.Tt : 0);
  check_shape(op, "w_comp", w_comp, {5 * s.H, s.K});
  if (b_comp.has_value()) {
    check_same(op, "buffers", buffers, "b_comp", *b_comp);
    check_shape(op, "b_comp", *b_comp, {5 * s.H});
  }
  return s;
}

// Pointers to the [h | c] row of a reference, for reading (null: zeros) and for accumulating gradients (null:
// a scratch row nobody reads).
template <typename scalar_t>
struct RefTable {
  const scalar_t* buffers;
  const scalar_t* nodes;
  const scalar_t* zeros;
  int64_t NB, W;  // N * B, row width 2H
  const scalar_t* operator()(int64_t ref) const {
    if (ref == 0) return zeros;
    return ref <= NB ? buffers + (ref - 1) * W : nodes + (ref - 1 - NB) * W;
  }
};

template <typename scalar_t>
struct GradTable {
  scalar_t* buffers;
  scalar_t* nodes;
  int64_t NB, W;
  scalar_t* operator()(int64_t ref) const {
    if (ref == 0) return nullptr;
    return ref <= NB ? buffers + (ref - 1) * W : nodes + (ref - 1 - NB) * W;
  }
};

// The nodes of step t (a by-step plan lists them in row order) whose row lies in [b0, b1).
std::pair<int64_t, int64_t> step_nodes(const SpinnPlan& plan, int64_t t, int64_t b0, int64_t b1) {
  const auto first = plan.row.begin() + plan.batch_start[t], last = plan.row.begin() + plan.batch_start[t + 1];
  return {std::lower_bound(first, last, b0) - plan.row.begin(), std::lower_bound(first, last, b1) - plan.row.begin()};
}

template <typename scalar_t>
void add_row(scalar_t* dst, const scalar_t* src, int64_t n) {
  if (dst != nullptr)
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

// The composition input row of node k: [h_left | h_right | tracker h at the node's step] (into A unless null),
// and the children's c (into CL, CR unless null).
template <typename scalar_t>
void composition_inputs(const SpinnPlan& plan, const SpinnShapes& s, const RefTable<scalar_t>& ref,
                        const scalar_t* tracker_h, int64_t k0, int64_t k1, scalar_t* A, scalar_t* CL, scalar_t* CR) {
  const int64_t H = s.H, K = s.K;
  at::parallel_for(k0, k1, kGrain, [&](int64_t a0, int64_t a1) {
    for (int64_t k = a0; k < a1; ++k) {
      const scalar_t* l = ref(plan.left[k]);
      const scalar_t* r = ref(plan.right[k]);
      if (A != nullptr) {
        scalar_t* a = A + (k - k0) * K;
        std::copy(l, l + H, a);
        std::copy(r, r + H, a + H);
        if (s.tracker) {
          const scalar_t* th = tracker_h + (plan.step[k] * s.B + plan.row[k]) * s.Tt;
          std::copy(th, th + s.Tt, a + 2 * H);
        }
      }
      if (CL != nullptr) {
        std::copy(l + H, l + 2 * H, CL + (k - k0) * H);
        std::copy(r + H, r + 2 * H, CR + (k - k0) * H);
      }
    }
  });
}

// The tracker input row of (step t, row b): [h of buffer top | h of stack top | h of stack second | h_{t-1}].
template <typename scalar_t>
void tracker_inputs(const SpinnPlan& plan, const SpinnShapes& s, const RefTable<scalar_t>& ref,
                    const scalar_t* h_prev, int64_t t, int64_t r0, int64_t r1, scalar_t* X) {
  const int64_t H = s.H, KT = 3 * H + s.Tt;
  at::parallel_for(r0, r1, kGrain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      scalar_t* x = X + b * KT;
      for (const auto& [refs, o] : {std::pair<const std::vector<int64_t>*, int64_t>{&plan.trk_buf, 0},
                                    {&plan.trk_top, H}, {&plan.trk_2nd, 2 * H}}) {
        const scalar_t* e = ref((*refs)[t * s.B + b]);
        std::copy(e, e + H, x + o);
      }
      std::copy(h_prev + b * s.Tt, h_prev + (b + 1) * s.Tt, x + 3 * H);
    }
  });
}

// round_to_bf16 for the native (float32) instantiation of the kernels; never reached from the float64 one.
inline void round_native(int64_t n, const float* src, uint16_t* dst) { round_to_bf16(n, src, dst); }
inline void round_native(int64_t, const double*, uint16_t*) {
  TORCH_CHECK(false, "rnnext::spinn_encode_backward: a bfloat16 operand from float64 values (internal error)");
}

// The forward in float32/float64; `native`: the float32 values are bfloat16 ones and the GEMMs run in bfloat16.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spinn_encode_impl(
    const Tensor& buffers, const Tensor& transitions, const std::optional<Tensor>& lengths, const Tensor& w_comp,
    const std::optional<Tensor>& b_comp, const std::optional<Tensor>& t_w_ih, const std::optional<Tensor>& t_w_hh,
    const std::optional<Tensor>& t_b_ih, const std::optional<Tensor>& t_b_hh, bool train, bool native) {
  const char* op = "rnnext::spinn_encode";
  const SpinnShapes s = check_spinn_args(op, buffers, transitions, w_comp, b_comp, t_w_ih, t_w_hh, t_b_ih, t_b_hh);
  const SpinnPlan plan = make_plan(op, transitions, s.N, s.B, lengths, !s.tracker, s.tracker);
  const int64_t H = s.H, K = s.K, Tt = s.Tt, S = s.S, B = s.B, G = 5 * H;
  const auto opts = buffers.options();
  const Tensor buf = buffers.contiguous();
  // (K, 5H): float32 for the float GEMMs; natively, packed from w_comp's rows.
  const Tensor wc_t = native ? Tensor() : w_comp.t().contiguous();
  const std::vector<uint16_t> wc_p = native ? pack_bf16_t(w_comp) : std::vector<uint16_t>();
  const Tensor bc = b_comp.has_value() ? b_comp->contiguous() : Tensor();
  Tensor top = at::empty({B, H}, opts);
  // Workspace rows: at most N - 1 compositions per row; the rows past the plan's M are zeroed (kept defined).
  const int64_t M_max = max_nodes(s.N, s.B);
  Tensor nodes = at::empty({M_max, 2 * H}, opts);
  nodes.narrow(0, plan.M, M_max - plan.M).zero_();
  Tensor acts = train ? at::empty({M_max, G}, opts) : at::empty({std::max<int64_t>(plan.M, 1), G}, opts);
  if (train) acts.narrow(0, plan.M, M_max - plan.M).zero_();
  Tensor tracker_h = s.tracker ? at::empty({S, B, Tt}, opts) : at::empty({0}, opts);
  Tensor tracker_acts = s.tracker && train ? at::empty({S, B, 4 * Tt}, opts) : at::empty({0}, opts);
  Tensor tracker_c = s.tracker && train ? at::empty({S, B, Tt}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(buffers.scalar_type(), "spinn_encode", [&] {
    std::vector<scalar_t> zeros(2 * H, scalar_t(0));
    const RefTable<scalar_t> ref{buf.const_data_ptr<scalar_t>(), nodes.const_data_ptr<scalar_t>(), zeros.data(),
                                 s.N * B, 2 * H};
    scalar_t* nd = nodes.data_ptr<scalar_t>();
    scalar_t* ac = acts.data_ptr<scalar_t>();
    const scalar_t* bias = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
    std::vector<scalar_t> A, CL, CR;
    // Compositions of nodes [k0, k1): one GEMM for their gate pre-activations, then the fused pointwise step.
    // Compositions of nodes [k0, k1): each task gathers its rows' children, runs their GEMM (gate
    // pre-activations) and the fused pointwise step, so a batch costs one parallel region.
    // Nodes [k0, k1) by the calling thread alone, into its buffers (rows r0.. of pre when not training).
    auto compose_rows = [&](int64_t k0, int64_t k1, const scalar_t* trk, scalar_t* a, scalar_t* cl, scalar_t* cr,
                            scalar_t* pre) {
      composition_inputs<scalar_t>(plan, s, ref, trk, k0, k1, a, cl, cr);
      gemm_rows_maybe_bf16<scalar_t>(k1 - k0, G, K, a, K, native ? nullptr : wc_t.const_data_ptr<scalar_t>(),
                                     native ? &wc_p : nullptr, pre, G, false);
      treelstm_forward_rows<scalar_t>(k1 - k0, H, pre, bias, cl, cr, H, pre, nd + k0 * 2 * H, nd + k0 * 2 * H + H,
                                      2 * H);
    };
    auto compose = [&](int64_t k0, int64_t k1, const scalar_t* trk) {
      const int64_t m = k1 - k0;
      if (m == 0) return;
      A.resize(m * K);
      CL.resize(m * H);
      CR.resize(m * H);
      scalar_t* pre = train ? ac + k0 * G : ac;
      at::parallel_for(0, m, kRowsPerTask, [&](int64_t r0, int64_t r1) {
        compose_rows(k0 + r0, k0 + r1, trk, A.data() + r0 * K, CL.data() + r0 * H, CR.data() + r0 * H,
                     pre + r0 * G);
      });
    };
    if (!s.tracker) {
      for (size_t i = 0; i + 1 < plan.batch_start.size(); ++i) compose(plan.batch_start[i], plan.batch_start[i + 1], nullptr);
    } else {
      const int64_t KT = 3 * H + Tt;
      const Tensor wt_cat = at::cat({*t_w_ih, *t_w_hh}, 1);  // (4Tt, 3H + Tt)
      const Tensor wt_t = native ? Tensor() : wt_cat.t().contiguous();
      const std::vector<uint16_t> wt_p = native ? pack_bf16_t(wt_cat) : std::vector<uint16_t>();
      const std::optional<Tensor> tb = sum_biases(t_b_ih, t_b_hh);
      const scalar_t* tbias = tb.has_value() ? tb->const_data_ptr<scalar_t>() : nullptr;
      std::vector<scalar_t> X(B * KT), gates(B * 4 * Tt), h0(B * Tt, scalar_t(0)), c_state(B * Tt, scalar_t(0));
      scalar_t* th = tracker_h.data_ptr<scalar_t>();
      const int64_t nt = row_split_threads(B);
      at::parallel_for(0, nt, 1, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t b0 = split_bound(B, j, nt), b1 = split_bound(B, j + 1, nt);
          // This thread's buffers: at most one composition per row and step.
          std::vector<scalar_t> a((b1 - b0) * K), cl((b1 - b0) * H), cr((b1 - b0) * H),
              pre(train ? 0 : (b1 - b0) * G);
          for (int64_t t = 0; t < S; ++t) {
            const scalar_t* h_prev = t == 0 ? h0.data() : th + (t - 1) * B * Tt;
            scalar_t* g = train ? tracker_acts.data_ptr<scalar_t>() + t * B * 4 * Tt : gates.data();
            scalar_t* c_out = train ? tracker_c.data_ptr<scalar_t>() + t * B * Tt : c_state.data();
            const scalar_t* c_in = train ? (t == 0 ? h0.data() : c_out - B * Tt) : c_state.data();
            // The tracker step of rows [b0, b1): their inputs, GEMM and LSTM pointwise step.
            tracker_inputs<scalar_t>(plan, s, ref, h_prev, t, b0, b1, X.data());
            over_row_blocks<scalar_t>(b0, b1, [&](int64_t r0, int64_t r1) {
              gemm_rows_maybe_bf16<scalar_t>(r1 - r0, 4 * Tt, KT, X.data() + r0 * KT, KT,
                                             native ? nullptr : wt_t.const_data_ptr<scalar_t>(),
                                             native ? &wt_p : nullptr, g + r0 * 4 * Tt, 4 * Tt, false);
            });
            lstm_forward_tile<scalar_t>(GateLayout{Tt, false}, b1 - b0, 0, 1, g + b0 * 4 * Tt, 4 * Tt, tbias,
                                        c_in + b0 * Tt, c_out + b0 * Tt, nullptr, th + (t * B + b0) * Tt, Tt,
                                        nullptr, 0);
            // Then the compositions of these rows at step t.
            over_row_blocks<scalar_t>(b0, b1, [&](int64_t r0, int64_t r1) {
              const auto [k0, k1] = step_nodes(plan, t, r0, r1);
              if (k1 > k0)
                compose_rows(k0, k1, th, a.data(), cl.data(), cr.data(), train ? ac + k0 * G : pre.data());
            });
          }
        }
      });
    }
    scalar_t* tp = top.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) std::copy(ref(plan.top[b]), ref(plan.top[b]) + H, tp + b * H);
  });
  if (!train) acts = at::empty({0}, opts);
  return {top, tracker_h, nodes, acts, tracker_acts, tracker_c};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spinn_encode_cpu(
    const Tensor& buffers, const Tensor& transitions, const std::optional<Tensor>& lengths, const Tensor& w_comp,
    const std::optional<Tensor>& b_comp, const std::optional<Tensor>& t_w_ih, const std::optional<Tensor>& t_w_hh,
    const std::optional<Tensor>& t_b_ih, const std::optional<Tensor>& t_b_hh, bool train) {
  const char* op = "rnnext::spinn_encode";
  if (bf16::active(buffers)) {
    auto [top, th, nodes, node_acts, t_acts, t_c] = spinn_encode_impl(
        bf16::up(op, "buffers", buffers), transitions, lengths, bf16::up(op, "w_comp", w_comp),
        bf16::up(op, "b_comp", b_comp), bf16::up(op, "tracker_w_ih", t_w_ih), bf16::up(op, "tracker_w_hh", t_w_hh),
        bf16::up(op, "tracker_b_ih", t_b_ih), bf16::up(op, "tracker_b_hh", t_b_hh), train, gemm_bf16_available());
    return {bf16::down(top), bf16::down(th), nodes, node_acts, t_acts, t_c};
  }
  return spinn_encode_impl(buffers, transitions, lengths, w_comp, b_comp, t_w_ih, t_w_hh, t_b_ih, t_b_hh, train,
                           false);
}

// The backward in float32/float64; `native` as for spinn_encode_impl (the weight gradients then come back in
// bfloat16 already).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spinn_encode_backward_impl(
    const Tensor& grad_top, const Tensor& grad_tracker_h, const Tensor& buffers, const Tensor& transitions,
    const std::optional<Tensor>& lengths, const Tensor& w_comp, const std::optional<Tensor>& b_comp,
    const std::optional<Tensor>& t_w_ih, const std::optional<Tensor>& t_w_hh, const std::optional<Tensor>& t_b_ih,
    const std::optional<Tensor>& t_b_hh, const Tensor& nodes, const Tensor& node_acts, const Tensor& tracker_h,
    const Tensor& tracker_acts, const Tensor& tracker_c, bool native) {
  const char* op = "rnnext::spinn_encode_backward";
  const SpinnShapes s = check_spinn_args(op, buffers, transitions, w_comp, b_comp, t_w_ih, t_w_hh, t_b_ih, t_b_hh);
  const SpinnPlan plan = make_plan(op, transitions, s.N, s.B, lengths, !s.tracker, s.tracker);
  const int64_t H = s.H, K = s.K, Tt = s.Tt, S = s.S, B = s.B, G = 5 * H, M = plan.M;
  const auto opts = buffers.options();
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_top", &grad_top}, {"nodes", &nodes},
                                {"node_acts", &node_acts}})
    check_same(op, "buffers", buffers, name, *t);
  check_shape(op, "grad_top", grad_top, {B, H});
  check_shape(op, "nodes", nodes, {max_nodes(s.N, s.B), 2 * H});
  check_shape(op, "node_acts", node_acts, {max_nodes(s.N, s.B), G});
  if (s.tracker) {
    for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_tracker_h", &grad_tracker_h},
                                  {"tracker_h", &tracker_h}, {"tracker_c", &tracker_c}}) {
      check_same(op, "buffers", buffers, name, *t);
      check_shape(op, name, *t, {S, B, Tt});
    }
    check_same(op, "buffers", buffers, "tracker_acts", tracker_acts);
    check_shape(op, "tracker_acts", tracker_acts, {S, B, 4 * Tt});
  }
  const Tensor buf = buffers.contiguous(), nd = nodes.contiguous(), ac = node_acts.contiguous();
  // Read through raw pointers below: any layout (expanded, transposed) is made contiguous first.
  const Tensor trk_h = s.tracker ? tracker_h.contiguous() : Tensor();
  const Tensor trk_acts = s.tracker ? tracker_acts.contiguous() : Tensor();
  const Tensor trk_c = s.tracker ? tracker_c.contiguous() : Tensor();
  const Tensor w = w_comp.contiguous();
  const std::vector<uint16_t> w_p = native ? pack_bf16(w) : std::vector<uint16_t>();  // (5H, K)
  Tensor grad_buffers = at::zeros({s.N, B, 2 * H}, opts);
  // (The temporaries from cpu/scratch.h: memory kept mapped between calls.)
  Tensor d_nodes = scratch(ScratchSlot::kSpinnNodeGrads, {std::max<int64_t>(M, 1), 2 * H}, buffers.scalar_type());
  d_nodes.zero_();
  // composition pre-activation gradients
  Tensor D = scratch(ScratchSlot::kSpinnPreGrads, {std::max<int64_t>(M, 1), G}, buffers.scalar_type());
  // Natively, the weight gradients' operands are made in bfloat16 where their rows are computed: D's rows as the
  // input-gradient GEMM rounds them, the tracker's gate gradients likewise, its inputs and the composition inputs
  // rounded row by row (was: float32 copies, converted whole before ATen's bfloat16 GEMM).
  auto u16 = [](const Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<c10::BFloat16>()); };
  const Tensor D16 = native ? scratch(ScratchSlot::kSpinnPreGradsBf16, {std::max<int64_t>(M, 1), G}, at::kBFloat16)
                            : Tensor();
  uint16_t* d16 = native ? u16(D16) : nullptr;
  Tensor grad_w_comp, grad_b_comp = at::empty({0}, opts);
  Tensor grad_tw_ih = at::empty({0}, opts), grad_tw_hh = at::empty({0}, opts), grad_tb = at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(buffers.scalar_type(), "spinn_encode_backward", [&] {
    std::vector<scalar_t> zeros(2 * H, scalar_t(0));
    const RefTable<scalar_t> ref{buf.const_data_ptr<scalar_t>(), nd.const_data_ptr<scalar_t>(), zeros.data(),
                                 s.N * B, 2 * H};
    const GradTable<scalar_t> dref{grad_buffers.data_ptr<scalar_t>(), d_nodes.data_ptr<scalar_t>(), s.N * B, 2 * H};
    const Tensor gt = grad_top.contiguous();
    for (int64_t b = 0; b < B; ++b) add_row(dref(plan.top[b]), gt.const_data_ptr<scalar_t>() + b * H, H);
    const scalar_t* th = s.tracker ? trk_h.const_data_ptr<scalar_t>() : nullptr;
    Tensor d_trk = s.tracker ? grad_tracker_h.contiguous().clone() : Tensor();  // gradient into tracker h (S, B, Tt)
    scalar_t* dt = s.tracker ? d_trk.data_ptr<scalar_t>() : nullptr;
    scalar_t* Dp = D.data_ptr<scalar_t>();
    std::vector<scalar_t> A, CL, CR, dA, dCL, dCR;
    // Backward of the compositions of nodes [k0, k1), whose gradients are complete.
    // Backward of the compositions of nodes [k0, k1), whose gradients are complete: each task runs the pointwise
    // backward of its rows, their GEMM (children's input gradients) and adds them to the children. Each node is
    // the child of one composition only, so the tasks never write the same row.
    // Nodes [k0, k1) by the calling thread alone, into its buffers (m = k1 - k0 rows each).
    auto decompose_rows = [&](int64_t k0, int64_t k1, scalar_t* cl, scalar_t* cr, scalar_t* da, scalar_t* dcl,
                              scalar_t* dcr) {
      const scalar_t* dn = d_nodes.const_data_ptr<scalar_t>();
      composition_inputs<scalar_t>(plan, s, ref, th, k0, k1, nullptr, cl, cr);
      treelstm_backward_rows<scalar_t>(k1 - k0, H, ac.const_data_ptr<scalar_t>() + k0 * G,
                                       nd.const_data_ptr<scalar_t>() + k0 * 2 * H + H, 2 * H, cl, cr, H,
                                       dn + k0 * 2 * H, dn + k0 * 2 * H + H, 2 * H, Dp + k0 * G, dcl, dcr, H);
      gemm_rows_maybe_bf16<scalar_t>(k1 - k0, K, G, Dp + k0 * G, G, w.const_data_ptr<scalar_t>(),
                                     native ? &w_p : nullptr, da, K, false, d16 != nullptr ? d16 + k0 * G : nullptr);
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t r = k - k0;
        scalar_t* l = dref(plan.left[k]);
        scalar_t* rr = dref(plan.right[k]);
        add_row(l, da + r * K, H);
        add_row(l != nullptr ? l + H : nullptr, dcl + r * H, H);
        add_row(rr, da + r * K + H, H);
        add_row(rr != nullptr ? rr + H : nullptr, dcr + r * H, H);
        if (s.tracker) add_row(dt + (plan.step[k] * B + plan.row[k]) * Tt, da + r * K + 2 * H, Tt);
      }
    };
    auto decompose = [&](int64_t k0, int64_t k1) {
      const int64_t m = k1 - k0;
      if (m == 0) return;
      CL.resize(m * H);
      CR.resize(m * H);
      dA.resize(m * K);
      dCL.resize(m * H);
      dCR.resize(m * H);
      at::parallel_for(0, m, kRowsPerTask, [&](int64_t r0, int64_t r1) {
        decompose_rows(k0 + r0, k0 + r1, CL.data() + r0 * H, CR.data() + r0 * H, dA.data() + r0 * K,
                       dCL.data() + r0 * H, dCR.data() + r0 * H);
      });
    };
    if (!s.tracker) {
      for (int64_t i = static_cast<int64_t>(plan.batch_start.size()) - 2; i >= 0; --i)
        decompose(plan.batch_start[i], plan.batch_start[i + 1]);
    } else {
      const int64_t KT = 3 * H + Tt, GT = 4 * Tt;
      const Tensor wt = at::cat({*t_w_ih, *t_w_hh}, 1).contiguous();  // (4Tt, 3H + Tt)
      const std::vector<uint16_t> wt_p = native ? pack_bf16(wt) : std::vector<uint16_t>();
      const scalar_t* ta = trk_acts.const_data_ptr<scalar_t>();
      const scalar_t* tc = trk_c.const_data_ptr<scalar_t>();
      Tensor d_gates = scratch(ScratchSlot::kSpinnTrackerGrads, {S * B, GT}, buffers.scalar_type());
      Tensor X_all = native ? Tensor() : scratch(ScratchSlot::kSpinnTrackerInputs, {S * B, KT}, buffers.scalar_type());
      const Tensor dg16 = native ? scratch(ScratchSlot::kSpinnTrackerGradsBf16, {S * B, GT}, at::kBFloat16) : Tensor();
      const Tensor X16 = native ? scratch(ScratchSlot::kSpinnTrackerInputsBf16, {S * B, KT}, at::kBFloat16) : Tensor();
      uint16_t* dg16p = native ? u16(dg16) : nullptr;
      uint16_t* x16p = native ? u16(X16) : nullptr;
      scalar_t* dg = d_gates.data_ptr<scalar_t>();
      std::vector<scalar_t> zero_state(B * Tt, scalar_t(0)), dh(B * Tt), dc(B * Tt, scalar_t(0)), dX(B * KT),
          dh_rec(B * Tt, scalar_t(0));
      // By rows (see row_split_threads): each thread walks every step of its own rows backwards.
      const int64_t nt = row_split_threads(B);
      at::parallel_for(0, nt, 1, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t b0 = split_bound(B, j, nt), b1 = split_bound(B, j + 1, nt), n = b1 - b0;
          std::vector<scalar_t> cl(n * H), cr(n * H), da(n * K), dcl(n * H), dcr(n * H);
          std::vector<scalar_t> xt(native ? B * KT : 0);  // (native: this thread's rows of a step's inputs)
          for (int64_t t = S - 1; t >= 0; --t) {
            over_row_blocks<scalar_t>(b0, b1, [&](int64_t r0, int64_t r1) {
              const auto [k0, k1] = step_nodes(plan, t, r0, r1);
              if (k1 > k0) decompose_rows(k0, k1, cl.data(), cr.data(), da.data(), dcl.data(), dcr.data());
            });
            for (int64_t i = b0 * Tt; i < b1 * Tt; ++i) dh[i] = dt[t * B * Tt + i] + dh_rec[i];
            const scalar_t* c_prev = t == 0 ? zero_state.data() : tc + (t - 1) * B * Tt;
            lstm_backward_tile<scalar_t>(GateLayout{Tt, false}, n, 0, 1, ta + (t * B + b0) * GT, GT,
                                         tc + (t * B + b0) * Tt, c_prev + b0 * Tt, n, nullptr, dh.data() + b0 * Tt,
                                         nullptr, Tt, 0, dc.data() + b0 * Tt, dg + (t * B + b0) * GT);
            over_row_blocks<scalar_t>(b0, b1, [&](int64_t r0, int64_t r1) {
              gemm_rows_maybe_bf16<scalar_t>(r1 - r0, KT, GT, dg + (t * B + r0) * GT, GT,
                                             wt.const_data_ptr<scalar_t>(), native ? &wt_p : nullptr,
                                             dX.data() + r0 * KT, KT, false,
                                             dg16p != nullptr ? dg16p + (t * B + r0) * GT : nullptr);
            });
            for (int64_t b = b0; b < b1; ++b) {
              const scalar_t* dx = dX.data() + b * KT;
              add_row(dref(plan.trk_buf[t * B + b]), dx, H);
              add_row(dref(plan.trk_top[t * B + b]), dx + H, H);
              add_row(dref(plan.trk_2nd[t * B + b]), dx + 2 * H, H);
              std::copy(dx + 3 * H, dx + KT, dh_rec.data() + b * Tt);
            }
            const scalar_t* h_prev = t == 0 ? zero_state.data() : th + (t - 1) * B * Tt;
            if (!native) {
              tracker_inputs<scalar_t>(plan, s, ref, h_prev, t, b0, b1, X_all.data_ptr<scalar_t>() + t * B * KT);
            } else {
              tracker_inputs<scalar_t>(plan, s, ref, h_prev, t, b0, b1, xt.data());
              round_native(n * KT, xt.data() + b0 * KT, x16p + (t * B + b0) * KT);
            }
          }
        }
      });
      // (4Tt, 3H + Tt); natively in bfloat16, the gradients' final dtype.
      const Tensor dW = native ? at::mm(dg16.t(), X16) : at::mm(d_gates.t(), X_all);
      grad_tw_ih = dW.narrow(1, 0, 3 * H).contiguous();
      grad_tw_hh = dW.narrow(1, 3 * H, Tt).contiguous();
      if (t_b_ih.has_value() || t_b_hh.has_value()) grad_tb = at::sum(d_gates, {0});
    }
    // Composition weights: dW = D^T [h_left | h_right | tracker h] over all nodes.
    if (M > 0) {
      // [h_left | h_right | tracker h | 1] per node (the column of ones gives the bias gradient), then
      // [dW^T; db^T] = A^T D.
      if (native) {  // [h_left | h_right | tracker h] rounded, then [dW^T] = A^T D on the rounded D
        const Tensor A16 = scratch(ScratchSlot::kSpinnOperandBf16, {M, K}, at::kBFloat16);
        uint16_t* a16 = u16(A16);
        at::parallel_for(0, M, 64, [&](int64_t k0, int64_t k1) {
          for (int64_t k = k0; k < k1; ++k) {
            uint16_t* a = a16 + k * K;
            round_native(H, ref(plan.left[k]), a);
            round_native(H, ref(plan.right[k]), a + H);
            if (s.tracker) round_native(Tt, th + (plan.step[k] * B + plan.row[k]) * Tt, a + 2 * H);
          }
        });
        // (bfloat16, the gradient's final dtype: the bfloat16 wrapper's conversion is then a no-op.)
        grad_w_comp = at::mm(D16.narrow(0, 0, M).t(), A16);
        if (b_comp.has_value()) grad_b_comp = at::sum(D.narrow(0, 0, M), {0});
        return;
      }
      Tensor A_all = scratch(ScratchSlot::kSpinnOperand, {M, K + 1}, buffers.scalar_type());
      scalar_t* ap = A_all.data_ptr<scalar_t>();
      at::parallel_for(0, M, 64, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
          const scalar_t* l = ref(plan.left[k]);
          const scalar_t* r = ref(plan.right[k]);
          scalar_t* a = ap + k * (K + 1);
          std::copy(l, l + H, a);
          std::copy(r, r + H, a + H);
          if (s.tracker) {
            const scalar_t* h = th + (plan.step[k] * B + plan.row[k]) * Tt;
            std::copy(h, h + Tt, a + 2 * H);
          }
          a[K] = scalar_t(1);
        }
      });
      Tensor grad_cat_t = at::empty({K + 1, G}, opts);
      gemm_tn_parallel<scalar_t>(K + 1, G, M, ap, K + 1, Dp, G, grad_cat_t.data_ptr<scalar_t>(), G);
      grad_w_comp = grad_cat_t.narrow(0, 0, K).t().contiguous();
      if (b_comp.has_value()) grad_b_comp = grad_cat_t.select(0, K).clone();  // own storage: outputs must not alias
    } else {
      grad_w_comp = at::zeros({G, K}, opts);
      if (b_comp.has_value()) grad_b_comp = at::zeros({G}, opts);
    }
  });
  return {grad_buffers, grad_w_comp, grad_b_comp, grad_tw_ih, grad_tw_hh, grad_tb};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spinn_encode_backward_cpu(
    const Tensor& grad_top, const Tensor& grad_tracker_h, const Tensor& buffers, const Tensor& transitions,
    const std::optional<Tensor>& lengths, const Tensor& w_comp, const std::optional<Tensor>& b_comp,
    const std::optional<Tensor>& t_w_ih, const std::optional<Tensor>& t_w_hh, const std::optional<Tensor>& t_b_ih,
    const std::optional<Tensor>& t_b_hh, const Tensor& nodes, const Tensor& node_acts, const Tensor& tracker_h,
    const Tensor& tracker_acts, const Tensor& tracker_c) {
  const char* op = "rnnext::spinn_encode_backward";
  if (bf16::active(buffers)) {
    auto [gb, gw, gbc, gti, gth, gtb] = spinn_encode_backward_impl(
        bf16::up(op, "grad_top", grad_top), bf16::up(op, "grad_tracker_h", grad_tracker_h),
        bf16::up(op, "buffers", buffers), transitions, lengths, bf16::up(op, "w_comp", w_comp),
        bf16::up(op, "b_comp", b_comp), bf16::up(op, "tracker_w_ih", t_w_ih), bf16::up(op, "tracker_w_hh", t_w_hh),
        bf16::up(op, "tracker_b_ih", t_b_ih), bf16::up(op, "tracker_b_hh", t_b_hh), bf16::workspace(op, "nodes", nodes),
        bf16::workspace(op, "node_acts", node_acts), bf16::up(op, "tracker_h", tracker_h),
        bf16::workspace(op, "tracker_acts", tracker_acts), bf16::workspace(op, "tracker_c", tracker_c),
        gemm_bf16_available());
    return {bf16::down(gb), bf16::down(gw), bf16::down(gbc), bf16::down(gti), bf16::down(gth), bf16::down(gtb)};
  }
  return spinn_encode_backward_impl(grad_top, grad_tracker_h, buffers, transitions, lengths, w_comp, b_comp, t_w_ih,
                                    t_w_hh, t_b_ih, t_b_hh, nodes, node_acts, tracker_h, tracker_acts, tracker_c,
                                    false);
}

// The stack layout for Python-side compositions: per step and row, the references of the children a REDUCE
// composes (-1 when the row does not reduce), the node it creates, and what a tracker reads. References index
// the table cat([zeros(1, D), buffers.flatten(0, 1), nodes]) with nodes in step order (node k is the k-th
// REDUCE in (step, row) order).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> thin_stack_plan_cpu(
    const Tensor& transitions, int64_t num_tokens, const std::optional<Tensor>& lengths) {
  const char* op = "rnnext::thin_stack_plan";
  TORCH_CHECK(transitions.dim() == 2, op, ": expected transitions of shape (steps, batch), got ", transitions.sizes());
  const int64_t S = transitions.size(0), B = transitions.size(1);
  TORCH_CHECK(num_tokens >= 0, op, ": expected num_tokens >= 0, got ", num_tokens);
  // References reach 1 + num_tokens * B + (compositions): they must fit in int64 (and index real memory).
  TORCH_CHECK(B == 0 || num_tokens <= (std::numeric_limits<int64_t>::max() / 4) / B / 2, op,
              ": num_tokens = ", num_tokens, " is too large for ", B, " rows (the references would overflow int64)");
  const SpinnPlan plan = make_plan(op, transitions, num_tokens, B, lengths, false, true);
  const auto lopt = at::TensorOptions().dtype(at::kLong);
  Tensor left = at::full({S, B}, -1, lopt), right = at::full({S, B}, -1, lopt), node = at::full({S, B}, -1, lopt);
  int64_t* l = left.data_ptr<int64_t>();
  int64_t* r = right.data_ptr<int64_t>();
  int64_t* n = node.data_ptr<int64_t>();
  for (int64_t k = 0; k < plan.M; ++k) {
    const int64_t i = plan.step[k] * B + plan.row[k];
    l[i] = plan.left[k];
    r[i] = plan.right[k];
    n[i] = plan.node_ref(k);
  }
  auto to_tensor = [&](const std::vector<int64_t>& v, std::vector<int64_t> shape) {
    Tensor t = at::empty(shape, lopt);
    std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
    return t;
  };
  return {left, right, node, to_tensor(plan.trk_buf, {S, B}), to_tensor(plan.trk_top, {S, B}),
          to_tensor(plan.trk_2nd, {S, B}), to_tensor(plan.top, {B})};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CPU, m) {
  m.impl("spinn_encode", &spinn_encode_cpu);
  m.impl("spinn_encode_backward", &spinn_encode_backward_cpu);
  m.impl("thin_stack_plan", &thin_stack_plan_cpu);
}

}  // namespace rnnext::cpu
