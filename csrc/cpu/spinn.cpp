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

// Native bfloat16 (a bfloat16 call on an AVX512-BF16 CPU, spinn_native_bf16): the kernels below take the
// bfloat16 arguments as they are and run their pointwise math in float32, with float32 workspace, but their
// GEMMs take bfloat16 operands on the micro-kernel of cpu/gemm_bf16.h: the weights packed once per call from
// their bfloat16 rows; the left operands gathered from bfloat16 rows (the buffers, each node's and tracker
// step's h rounded once where it is made) or, for gate gradients, rounded row by row; float32 accumulation. The
// weight gradients are bfloat16 GEMMs too (ATen's), the bias gradients sums of the float32 gate gradients.

SpinnShapes check_spinn_args(const char* op, const Tensor& buffers, const Tensor& transitions, const Tensor& w_comp,
                             const std::optional<Tensor>& b_comp, const std::optional<Tensor>& t_w_ih,
                             const std::optional<Tensor>& t_w_hh, const std::optional<Tensor>& t_b_ih,
                             const std::optional<Tensor>& t_b_hh) {
  // (bfloat16 buffers: a native call, from the bfloat16 wrappers below only)
  if (buffers.scalar_type() != at::kBFloat16) check_float_cpu(op, "buffers", buffers);
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

// The sum of n partial rows of width w (in order), as a tensor of `opts`.
template <typename scalar_t>
Tensor sum_parts(const std::vector<scalar_t>& parts, int64_t n, int64_t w, const at::TensorOptions& opts) {
  Tensor out = at::zeros({w}, opts);
  scalar_t* o = out.data_ptr<scalar_t>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < w; ++c) o[c] += parts[i * w + c];
  return out;
}

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

// The h part of node k's composition input row, [h_left | h_right | tracker h at the node's step], into row
// k - k0 of A (leading dimension lda, s.K by default), k in [k0, k1): from the float tables, or (a native
// bfloat16 call) from the bfloat16 ones (RefTable16: the GEMM operand gathered as it is, no rounding).
template <typename Ref, typename T>
void composition_h(const SpinnPlan& plan, const SpinnShapes& s, const Ref& ref, const T* tracker_h, int64_t k0,
                   int64_t k1, T* A, int64_t lda = 0) {
  const int64_t H = s.H, ld = lda > 0 ? lda : s.K;
  at::parallel_for(k0, k1, kGrain, [&](int64_t a0, int64_t a1) {
    for (int64_t k = a0; k < a1; ++k) {
      const T* l = ref(plan.left[k]);
      const T* r = ref(plan.right[k]);
      T* a = A + (k - k0) * ld;
      std::copy(l, l + H, a);
      std::copy(r, r + H, a + H);
      if (s.tracker) {
        const T* th = tracker_h + (plan.step[k] * s.B + plan.row[k]) * s.Tt;
        std::copy(th, th + s.Tt, a + 2 * H);
      }
    }
  });
}

// The tracker input row of (step t, row b), b in [r0, r1), into row b of X: [h of buffer top | h of stack top |
// h of stack second | h_{t-1}] (float or, from RefTable16, bfloat16).
template <typename Ref, typename T>
void tracker_inputs(const SpinnPlan& plan, const SpinnShapes& s, const Ref& ref, const T* h_prev, int64_t t,
                    int64_t r0, int64_t r1, T* X) {
  const int64_t H = s.H, KT = 3 * H + s.Tt;
  at::parallel_for(r0, r1, kGrain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* x = X + b * KT;
      for (const auto& [refs, o] : {std::pair<const std::vector<int64_t>*, int64_t>{&plan.trk_buf, 0},
                                    {&plan.trk_top, H}, {&plan.trk_2nd, 2 * H}}) {
        const T* e = ref((*refs)[t * s.B + b]);
        std::copy(e, e + H, x + o);
      }
      std::copy(h_prev + b * s.Tt, h_prev + (b + 1) * s.Tt, x + 3 * H);
    }
  });
}

// A native bfloat16 call's h rows in bfloat16, the GEMM operands' values: the bfloat16 buffers as given (rows
// [h | c], width 2H) and the nodes' h rounded once where they are made (rows of width H).
struct RefTable16 {
  const uint16_t* buffers;
  const uint16_t* nodes;
  const uint16_t* zeros;
  int64_t NB, H;
  const uint16_t* operator()(int64_t ref) const {
    if (ref == 0) return zeros;
    return ref <= NB ? buffers + (ref - 1) * 2 * H : nodes + (ref - 1 - NB) * H;
  }
};

// Values [o, o + n) of reference r's [h | c] row into dst, as float: from `ref`, or natively (ref16 given, the
// buffers then absent from ref) a token's from its bfloat16 row.
template <typename scalar_t>
void read_row(const RefTable<scalar_t>& ref, const RefTable16* ref16, int64_t r, int64_t o, int64_t n,
              scalar_t* dst) {
  if (ref16 != nullptr && r >= 1 && r <= ref.NB) {
    const uint16_t* src = (*ref16)(r) + o;
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16::value(src[i]);
  } else {
    const scalar_t* src = ref(r) + o;
    std::copy(src, src + n, dst);
  }
}

// The children's c of nodes [k0, k1) into CL, CR (row k - k0, width s.H).
template <typename scalar_t>
void composition_c(const SpinnPlan& plan, const SpinnShapes& s, const RefTable<scalar_t>& ref,
                   const RefTable16* ref16, int64_t k0, int64_t k1, scalar_t* CL, scalar_t* CR) {
  const int64_t H = s.H;
  at::parallel_for(k0, k1, kGrain, [&](int64_t a0, int64_t a1) {
    for (int64_t k = a0; k < a1; ++k) {
      read_row(ref, ref16, plan.left[k], H, H, CL + (k - k0) * H);
      read_row(ref, ref16, plan.right[k], H, H, CR + (k - k0) * H);
    }
  });
}

// Rows [r0, r1) of src (width n, row stride lds) rounded to bfloat16 into dst (width n, row stride ldd); for
// the native (float32) instantiation of the kernels, never reached from the float64 one.
inline void round_rows(int64_t r0, int64_t r1, int64_t n, const float* src, int64_t lds, uint16_t* dst, int64_t ldd) {
  for (int64_t r = r0; r < r1; ++r) round_to_bf16(n, src + r * lds, dst + r * ldd);
}
inline void round_rows(int64_t, int64_t, int64_t, const double*, int64_t, uint16_t*, int64_t) {
  TORCH_CHECK(false, "rnnext::spinn_encode: a bfloat16 operand from float64 values (internal error)");
}

// C[M, N] = A16[M, K] @ B (Bp: B packed in k-pairs, N columns) on bfloat16 operands, float32 accumulation: the
// native (float32) instantiation's GEMM; never reached from the float64 one.
inline void gemm_native(int64_t M, int64_t N, int64_t K, const uint16_t* A16, const uint16_t* Bp, float* C) {
  gemm_bf16_packed(M, N, K, A16, K, Bp, N, C, N, false);
}
inline void gemm_native(int64_t, int64_t, int64_t, const uint16_t*, const uint16_t*, double*) {
  TORCH_CHECK(false, "rnnext::spinn_encode: a bfloat16 GEMM on float64 values (internal error)");
}

// The raw bfloat16 values of a tensor.
inline const uint16_t* u16c(const Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.const_data_ptr<c10::BFloat16>());
}

// w (transposed: w^T) packed in k-pairs for the bfloat16 GEMMs, in `slot`'s scratch memory.
inline Tensor packed_weights(ScratchSlot slot, const Tensor& w, bool transposed) {
  const int64_t K = w.size(transposed ? 1 : 0), N = w.size(transposed ? 0 : 1);
  Tensor p = scratch(slot, {packed_size(K, N)}, at::kBFloat16);
  uint16_t* out = reinterpret_cast<uint16_t*>(p.data_ptr<c10::BFloat16>());
  transposed ? pack_bf16_t_into(w, out) : pack_bf16_into(w, out);
  return p;
}

// A value argument in the kernels' dtype (natively float32, exact), contiguous.
inline Tensor to_values(const Tensor& t, bool native) {
  return native ? t.to(at::kFloat).contiguous() : t.contiguous();
}
inline std::optional<Tensor> to_values(const std::optional<Tensor>& t, bool native) {
  return t.has_value() ? std::optional<Tensor>(to_values(*t, native)) : std::nullopt;
}

// The bfloat16 view of a native call's buffers (its bfloat16 tensor, contiguous), nodes' h (written by the
// caller) and zeros.
RefTable16 make_ref16(const Tensor& buffers16, const Tensor& nodes16, const std::vector<uint16_t>& zeros,
                      const SpinnShapes& s) {
  return {u16c(buffers16), u16c(nodes16), zeros.data(), s.N * s.B, s.H};
}

// The forward in float32/float64, or natively in bfloat16 (bfloat16 arguments; see above): outputs in the
// arguments' dtype but for the workspace, float32 natively (top and tracker h are returned in float32 and
// rounded by the caller).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spinn_encode_impl(
    const Tensor& buffers, const Tensor& transitions, const std::optional<Tensor>& lengths, const Tensor& w_comp,
    const std::optional<Tensor>& b_comp, const std::optional<Tensor>& t_w_ih, const std::optional<Tensor>& t_w_hh,
    const std::optional<Tensor>& t_b_ih, const std::optional<Tensor>& t_b_hh, bool train) {
  const char* op = "rnnext::spinn_encode";
  const SpinnShapes s = check_spinn_args(op, buffers, transitions, w_comp, b_comp, t_w_ih, t_w_hh, t_b_ih, t_b_hh);
  const SpinnPlan plan = make_plan(op, transitions, s.N, s.B, lengths, !s.tracker, s.tracker);
  const int64_t H = s.H, K = s.K, Tt = s.Tt, S = s.S, B = s.B, G = 5 * H;
  const bool native = buffers.scalar_type() == at::kBFloat16;
  const auto opts = buffers.options().dtype(native ? at::kFloat : buffers.scalar_type());
  const Tensor buf = buffers.contiguous();
  // (K, 5H): float32 for the float GEMMs; natively, packed from w_comp's rows.
  const Tensor wc_t = native ? Tensor() : w_comp.t().contiguous();
  const Tensor wc_packed = native ? packed_weights(ScratchSlot::kSpinnPackedComp, w_comp, true) : Tensor();
  const uint16_t* wc_p = native ? u16c(wc_packed) : nullptr;
  const Tensor bc = b_comp.has_value() ? to_values(*b_comp, native) : Tensor();
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
  // Natively: the nodes' and the tracker's h in bfloat16 (the next GEMMs' operands).
  const Tensor nodes16 =
      native ? scratch(ScratchSlot::kSpinnNodesBf16, {std::max<int64_t>(plan.M, 1), H}, at::kBFloat16) : Tensor();
  const Tensor th16 =
      native && s.tracker ? scratch(ScratchSlot::kSpinnTrackerHBf16, {S * B, Tt}, at::kBFloat16) : Tensor();
  const std::vector<uint16_t> zeros16(native ? 2 * H : 0, 0);
  const RefTable16 ref16 = native ? make_ref16(buf, nodes16, zeros16, s) : RefTable16{};
  uint16_t* n16 = native ? reinterpret_cast<uint16_t*>(nodes16.data_ptr<c10::BFloat16>()) : nullptr;
  uint16_t* th16p = th16.defined() ? reinterpret_cast<uint16_t*>(th16.data_ptr<c10::BFloat16>()) : nullptr;
  AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "spinn_encode", [&] {
    std::vector<scalar_t> zeros(2 * H, scalar_t(0));
    // (Natively, the tokens' rows are read from ref16 only.)
    const RefTable<scalar_t> ref{native ? nullptr : buf.const_data_ptr<scalar_t>(), nodes.const_data_ptr<scalar_t>(),
                                 zeros.data(), s.N * B, 2 * H};
    scalar_t* nd = nodes.data_ptr<scalar_t>();
    scalar_t* ac = acts.data_ptr<scalar_t>();
    const scalar_t* bias = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
    // Compositions of nodes [k0, k1) by the calling thread alone, into its buffers (a or, natively, a16: the
    // GEMM's left operand; cl, cr: the children's c; pre: the gate pre-activations, rows k0.. of the workspace
    // when training): their GEMM, then the fused pointwise step.
    auto compose_rows = [&](int64_t k0, int64_t k1, const scalar_t* trk, scalar_t* a, uint16_t* a16, scalar_t* cl,
                            scalar_t* cr, scalar_t* pre) {
      if (native) {
        composition_h(plan, s, ref16, th16p, k0, k1, a16);
        gemm_native(k1 - k0, G, K, a16, wc_p, pre);
      } else {
        composition_h(plan, s, ref, trk, k0, k1, a);
        gemm_rowmajor(k1 - k0, G, K, a, K, wc_t.const_data_ptr<scalar_t>(), G, pre, G, false);
      }
      composition_c<scalar_t>(plan, s, ref, native ? &ref16 : nullptr, k0, k1, cl, cr);
      treelstm_forward_rows<scalar_t>(k1 - k0, H, pre, bias, cl, cr, H, pre, nd + k0 * 2 * H, nd + k0 * 2 * H + H,
                                      2 * H);
      if (native) round_rows(k0, k1, H, nd, 2 * H, n16, H);
    };
    // Buffers for up to m compositions (rows from r on: row(r)).
    struct RowBuffers {
      std::vector<scalar_t> a, cl, cr;
      std::vector<uint16_t> a16;
      int64_t K, H;
      RowBuffers(int64_t m, int64_t K, int64_t H, bool native)
          : a(native ? 0 : m * K), cl(m * H), cr(m * H), a16(native ? m * K : 0), K(K), H(H) {}
      std::tuple<scalar_t*, uint16_t*, scalar_t*, scalar_t*> row(int64_t r) {
        return {a.empty() ? nullptr : a.data() + r * K, a16.empty() ? nullptr : a16.data() + r * K,
                cl.data() + r * H, cr.data() + r * H};
      }
    };
    if (!s.tracker) {
      // By tree level: each batch's compositions split across the threads (a task per kRowsPerTask rows), in
      // buffers for the largest batch.
      int64_t m_max = 0;
      for (size_t i = 0; i + 1 < plan.batch_start.size(); ++i)
        m_max = std::max(m_max, plan.batch_start[i + 1] - plan.batch_start[i]);
      RowBuffers rb(m_max, K, H, native);
      for (size_t i = 0; i + 1 < plan.batch_start.size(); ++i) {
        const int64_t k0 = plan.batch_start[i], m = plan.batch_start[i + 1] - k0;
        scalar_t* pre = train ? ac + k0 * G : ac;
        at::parallel_for(0, m, kRowsPerTask, [&](int64_t r0, int64_t r1) {
          const auto [a, a16, cl, cr] = rb.row(r0);
          compose_rows(k0 + r0, k0 + r1, nullptr, a, a16, cl, cr, pre + r0 * G);
        });
      }
    } else {
      const int64_t KT = 3 * H + Tt;
      const Tensor wt_cat = at::cat({*t_w_ih, *t_w_hh}, 1);  // (4Tt, 3H + Tt)
      const Tensor wt_t = native ? Tensor() : wt_cat.t().contiguous();
      const Tensor wt_packed = native ? packed_weights(ScratchSlot::kSpinnPackedTracker, wt_cat, true) : Tensor();
      const uint16_t* wt_p = native ? u16c(wt_packed) : nullptr;
      const std::optional<Tensor> tb = sum_biases(to_values(t_b_ih, native), to_values(t_b_hh, native));
      const scalar_t* tbias = tb.has_value() ? tb->const_data_ptr<scalar_t>() : nullptr;
      std::vector<scalar_t> X(native ? 0 : B * KT), gates(B * 4 * Tt), h0(B * Tt, scalar_t(0)),
          c_state(B * Tt, scalar_t(0));
      std::vector<uint16_t> X16(native ? B * KT : 0), h0_16(native ? B * Tt : 0, 0);
      scalar_t* th = tracker_h.data_ptr<scalar_t>();
      const int64_t nt = row_split_threads(B);
      at::parallel_for(0, nt, 1, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t b0 = split_bound(B, j, nt), b1 = split_bound(B, j + 1, nt);
          // This thread's buffers: at most one composition per row and step.
          RowBuffers rb(b1 - b0, K, H, native);
          std::vector<scalar_t> pre(train ? 0 : (b1 - b0) * G);
          for (int64_t t = 0; t < S; ++t) {
            scalar_t* g = train ? tracker_acts.data_ptr<scalar_t>() + t * B * 4 * Tt : gates.data();
            scalar_t* c_out = train ? tracker_c.data_ptr<scalar_t>() + t * B * Tt : c_state.data();
            const scalar_t* c_in = train ? (t == 0 ? h0.data() : c_out - B * Tt) : c_state.data();
            // The tracker step of rows [b0, b1): their inputs, GEMM and LSTM pointwise step.
            if (native) {
              const uint16_t* h_prev = t == 0 ? h0_16.data() : th16p + (t - 1) * B * Tt;
              tracker_inputs(plan, s, ref16, h_prev, t, b0, b1, X16.data());
              gemm_native(b1 - b0, 4 * Tt, KT, X16.data() + b0 * KT, wt_p, g + b0 * 4 * Tt);
            } else {
              const scalar_t* h_prev = t == 0 ? h0.data() : th + (t - 1) * B * Tt;
              tracker_inputs(plan, s, ref, h_prev, t, b0, b1, X.data());
              over_row_blocks<scalar_t>(b0, b1, [&](int64_t r0, int64_t r1) {
                gemm_rowmajor(r1 - r0, 4 * Tt, KT, X.data() + r0 * KT, KT, wt_t.const_data_ptr<scalar_t>(), 4 * Tt,
                              g + r0 * 4 * Tt, 4 * Tt, false);
              });
            }
            lstm_forward_tile<scalar_t>(GateLayout{Tt, false}, b1 - b0, 0, 1, g + b0 * 4 * Tt, 4 * Tt, tbias,
                                        c_in + b0 * Tt, c_out + b0 * Tt, nullptr, th + (t * B + b0) * Tt, Tt,
                                        nullptr, 0);
            if (native) round_rows(t * B + b0, t * B + b1, Tt, th, Tt, th16p, Tt);
            // Then the compositions of these rows at step t.
            over_row_blocks<scalar_t>(b0, b1, [&](int64_t r0, int64_t r1) {
              const auto [k0, k1] = step_nodes(plan, t, r0, r1);
              if (k1 > k0) {
                const auto [a, a16, cl, cr] = rb.row(0);
                compose_rows(k0, k1, th, a, a16, cl, cr, train ? ac + k0 * G : pre.data());
              }
            });
          }
        }
      });
    }
    scalar_t* tp = top.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) read_row(ref, native ? &ref16 : nullptr, plan.top[b], 0, H, tp + b * H);
  });
  if (!train) acts = at::empty({0}, opts);
  return {top, tracker_h, nodes, acts, tracker_acts, tracker_c};
}

// Whether a bfloat16 call runs natively (spinn_encode_impl); else on float32 copies, at the float32 GEMM rate.
bool spinn_native_bf16() { return gemm_bf16_available() && !bf16::upcast_forced(); }

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spinn_encode_cpu(
    const Tensor& buffers, const Tensor& transitions, const std::optional<Tensor>& lengths, const Tensor& w_comp,
    const std::optional<Tensor>& b_comp, const std::optional<Tensor>& t_w_ih, const std::optional<Tensor>& t_w_hh,
    const std::optional<Tensor>& t_b_ih, const std::optional<Tensor>& t_b_hh, bool train) {
  const char* op = "rnnext::spinn_encode";
  if (bf16::active(buffers)) {
    auto run = [&](auto&& value) {
      auto [top, th, nodes, node_acts, t_acts, t_c] =
          spinn_encode_impl(value("buffers", buffers), transitions, lengths, value("w_comp", w_comp),
                            value("b_comp", b_comp), value("tracker_w_ih", t_w_ih), value("tracker_w_hh", t_w_hh),
                            value("tracker_b_ih", t_b_ih), value("tracker_b_hh", t_b_hh), train);
      return std::make_tuple(bf16::down(top), bf16::down(th), nodes, node_acts, t_acts, t_c);
    };
    // Natively the bfloat16 arguments as they are (checked bfloat16), else float32 copies.
    if (spinn_native_bf16()) return run(bf16::Checked{op});
    return run(bf16::Up{op});
  }
  return spinn_encode_impl(buffers, transitions, lengths, w_comp, b_comp, t_w_ih, t_w_hh, t_b_ih, t_b_hh, train);
}

// The backward in float32/float64, or natively in bfloat16 (bfloat16 value arguments, float32 workspace) as
// spinn_encode_impl runs: the buffers' gradient then accumulated in float32 scratch memory and returned in
// bfloat16, the weight gradients in bfloat16 too, the bias gradients in float32 (rounded by the caller).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spinn_encode_backward_impl(
    const Tensor& grad_top, const Tensor& grad_tracker_h, const Tensor& buffers, const Tensor& transitions,
    const std::optional<Tensor>& lengths, const Tensor& w_comp, const std::optional<Tensor>& b_comp,
    const std::optional<Tensor>& t_w_ih, const std::optional<Tensor>& t_w_hh, const std::optional<Tensor>& t_b_ih,
    const std::optional<Tensor>& t_b_hh, const Tensor& nodes, const Tensor& node_acts, const Tensor& tracker_h,
    const Tensor& tracker_acts, const Tensor& tracker_c) {
  const char* op = "rnnext::spinn_encode_backward";
  const bool native = buffers.scalar_type() == at::kBFloat16;
  const SpinnShapes s = check_spinn_args(op, buffers, transitions, w_comp, b_comp, t_w_ih, t_w_hh, t_b_ih, t_b_hh);
  const SpinnPlan plan = make_plan(op, transitions, s.N, s.B, lengths, !s.tracker, s.tracker);
  const int64_t H = s.H, K = s.K, Tt = s.Tt, S = s.S, B = s.B, G = 5 * H, M = plan.M;
  const at::ScalarType vt = native ? at::kFloat : buffers.scalar_type();  // the kernels' and workspace's dtype
  const auto opts = buffers.options().dtype(vt);
  // The value arguments have the buffers' dtype, the workspace the kernels' (natively: checked by the caller).
  check_same(op, "buffers", buffers, "grad_top", grad_top);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"nodes", &nodes}, {"node_acts", &node_acts}})
    if (!native) check_same(op, "buffers", buffers, name, *t);
  check_shape(op, "grad_top", grad_top, {B, H});
  check_shape(op, "nodes", nodes, {max_nodes(s.N, s.B), 2 * H});
  check_shape(op, "node_acts", node_acts, {max_nodes(s.N, s.B), G});
  if (s.tracker) {
    for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_tracker_h", &grad_tracker_h},
                                  {"tracker_h", &tracker_h}, {"tracker_c", &tracker_c}}) {
      if (!native || t != &tracker_c) check_same(op, "buffers", buffers, name, *t);
      check_shape(op, name, *t, {S, B, Tt});
    }
    if (!native) check_same(op, "buffers", buffers, "tracker_acts", tracker_acts);
    check_shape(op, "tracker_acts", tracker_acts, {S, B, 4 * Tt});
  }
  const Tensor buf = buffers.contiguous(), nd = nodes.contiguous(), ac = node_acts.contiguous();
  // Read through raw pointers below: any layout (expanded, transposed) is made contiguous first.
  const Tensor trk_h = s.tracker ? tracker_h.contiguous() : Tensor();
  const Tensor trk_acts = s.tracker ? tracker_acts.contiguous() : Tensor();
  const Tensor trk_c = s.tracker ? tracker_c.contiguous() : Tensor();
  const Tensor w = w_comp.contiguous();
  const Tensor w_packed = native ? packed_weights(ScratchSlot::kSpinnPackedComp, w, false) : Tensor();  // (5H, K)
  const uint16_t* w_p = native ? u16c(w_packed) : nullptr;
  // (The temporaries from cpu/scratch.h: memory kept mapped between calls.) The buffers' gradient, accumulated
  // in float32 (natively in scratch memory, returned in bfloat16).
  Tensor grad_buffers = native ? scratch(ScratchSlot::kSpinnBufferGrads, {s.N, B, 2 * H}, at::kFloat).zero_()
                               : at::zeros({s.N, B, 2 * H}, opts);
  Tensor d_nodes = scratch(ScratchSlot::kSpinnNodeGrads, {std::max<int64_t>(M, 1), 2 * H}, vt);
  d_nodes.zero_();
  // composition pre-activation gradients
  // Natively with a tracker, the by-rows backward keeps a step's pre-activation gradients in its buffers (below).
  const bool step_grads = native && s.tracker;
  Tensor D = step_grads ? Tensor() : scratch(ScratchSlot::kSpinnPreGrads, {std::max<int64_t>(M, 1), G}, vt);
  // Natively, the weight gradients' operands are made in bfloat16 where their rows are computed: D's rows as the
  // input-gradient GEMM rounds them, the tracker's gate gradients likewise; the tracker's inputs and the
  // composition inputs gathered from bfloat16 rows (below).
  auto u16 = [](const Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<c10::BFloat16>()); };
  const Tensor D16 = native ? scratch(ScratchSlot::kSpinnPreGradsBf16, {std::max<int64_t>(M, 1), G}, at::kBFloat16)
                            : Tensor();
  uint16_t* d16 = native ? u16(D16) : nullptr;
  // Natively, the bfloat16 rows the weight gradients' operands are gathered from: the buffers and the tracker's h
  // as given, the nodes' h rounded as the forward rounded them.
  const Tensor nodes16 =
      native ? scratch(ScratchSlot::kSpinnNodesBf16, {std::max<int64_t>(M, 1), H}, at::kBFloat16) : Tensor();
  const std::vector<uint16_t> zeros16(native ? std::max(2 * H, B * Tt) : 0, 0);
  const RefTable16 ref16 = native ? make_ref16(buf, nodes16, zeros16, s) : RefTable16{};
  const uint16_t* th16 = native && s.tracker ? u16c(trk_h) : nullptr;
  Tensor grad_w_comp, grad_b_comp = at::empty({0}, opts);
  Tensor grad_tw_ih = at::empty({0}, opts), grad_tw_hh = at::empty({0}, opts), grad_tb = at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(vt, "spinn_encode_backward", [&] {
    std::vector<scalar_t> zeros(2 * H, scalar_t(0));
    // (Natively, the tokens' rows are read from ref16 only.)
    const RefTable<scalar_t> ref{native ? nullptr : buf.const_data_ptr<scalar_t>(), nd.const_data_ptr<scalar_t>(),
                                 zeros.data(), s.N * B, 2 * H};
    if (native)
      at::parallel_for(0, M, 64, [&](int64_t k0, int64_t k1) {
        round_rows(k0, k1, H, nd.const_data_ptr<scalar_t>(), 2 * H, u16(nodes16), H);
      });
    const GradTable<scalar_t> dref{grad_buffers.data_ptr<scalar_t>(), d_nodes.data_ptr<scalar_t>(), s.N * B, 2 * H};
    const Tensor gt = to_values(grad_top, native);
    for (int64_t b = 0; b < B; ++b) add_row(dref(plan.top[b]), gt.const_data_ptr<scalar_t>() + b * H, H);
    const scalar_t* th = s.tracker && !native ? trk_h.const_data_ptr<scalar_t>() : nullptr;
    // The gradient into tracker h (S, B, Tt), accumulated in place: a copy.
    Tensor d_trk = !s.tracker ? Tensor()
                   : native   ? to_values(grad_tracker_h, true)
                              : grad_tracker_h.contiguous().clone();
    scalar_t* dt = s.tracker ? d_trk.data_ptr<scalar_t>() : nullptr;
    scalar_t* Dp = D.defined() ? D.data_ptr<scalar_t>() : nullptr;
    std::vector<scalar_t> A, CL, CR, dA, dCL, dCR;
    // Backward of the compositions of nodes [k0, k1), whose gradients are complete.
    // Backward of the compositions of nodes [k0, k1), whose gradients are complete: each task runs the pointwise
    // backward of its rows, their GEMM (children's input gradients) and adds them to the children. Each node is
    // the child of one composition only, so the tasks never write the same row.
    // Nodes [k0, k1) by the calling thread alone, into its buffers (m = k1 - k0 rows each); their pre-activation
    // gradients into d (row k - k0), added to the bias gradient's partial sum of their row block when bias_parts
    // is given (row blocks of kRowBlock batch rows: each a thread's alone, so that the sums' order does not
    // depend on the thread count).
    auto decompose_rows = [&](int64_t k0, int64_t k1, scalar_t* cl, scalar_t* cr, scalar_t* da, scalar_t* dcl,
                              scalar_t* dcr, scalar_t* d, scalar_t* bias_parts) {
      const scalar_t* dn = d_nodes.const_data_ptr<scalar_t>();
      composition_c<scalar_t>(plan, s, ref, native ? &ref16 : nullptr, k0, k1, cl, cr);
      treelstm_backward_rows<scalar_t>(k1 - k0, H, ac.const_data_ptr<scalar_t>() + k0 * G,
                                       nd.const_data_ptr<scalar_t>() + k0 * 2 * H + H, 2 * H, cl, cr, H,
                                       dn + k0 * 2 * H, dn + k0 * 2 * H + H, 2 * H, d, dcl, dcr, H);
      gemm_rows_maybe_bf16<scalar_t>(k1 - k0, K, G, d, G, native ? nullptr : w.const_data_ptr<scalar_t>(),
                                     w_p, da, K, false, d16 != nullptr ? d16 + k0 * G : nullptr);
      if (bias_parts != nullptr)
        for (int64_t k = k0; k < k1; ++k) add_row(bias_parts + plan.row[k] / kRowBlock * G, d + (k - k0) * G, G);
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
                       dCL.data() + r0 * H, dCR.data() + r0 * H, Dp + (k0 + r0) * G, nullptr);
      });
    };
    if (!s.tracker) {
      for (int64_t i = static_cast<int64_t>(plan.batch_start.size()) - 2; i >= 0; --i)
        decompose(plan.batch_start[i], plan.batch_start[i + 1]);
    } else {
      const int64_t KT = 3 * H + Tt, GT = 4 * Tt;
      const Tensor wt = at::cat({*t_w_ih, *t_w_hh}, 1).contiguous();  // (4Tt, 3H + Tt)
      const Tensor wt_packed = native ? packed_weights(ScratchSlot::kSpinnPackedTracker, wt, false) : Tensor();
      const uint16_t* wt_p = native ? u16c(wt_packed) : nullptr;
      const scalar_t* ta = trk_acts.const_data_ptr<scalar_t>();
      const scalar_t* tc = trk_c.const_data_ptr<scalar_t>();
      const bool trk_bias = t_b_ih.has_value() || t_b_hh.has_value();
      // (float32 gate gradients of every step: the float path's weight-gradient operand)
      Tensor d_gates = step_grads ? Tensor() : scratch(ScratchSlot::kSpinnTrackerGrads, {S * B, GT}, vt);
      Tensor X_all = native ? Tensor() : scratch(ScratchSlot::kSpinnTrackerInputs, {S * B, KT}, vt);
      const Tensor dg16 = native ? scratch(ScratchSlot::kSpinnTrackerGradsBf16, {S * B, GT}, at::kBFloat16) : Tensor();
      const Tensor X16 = native ? scratch(ScratchSlot::kSpinnTrackerInputsBf16, {S * B, KT}, at::kBFloat16) : Tensor();
      uint16_t* dg16p = native ? u16(dg16) : nullptr;
      uint16_t* x16p = native ? u16(X16) : nullptr;
      scalar_t* dg = step_grads ? nullptr : d_gates.data_ptr<scalar_t>();
      std::vector<scalar_t> zero_state(B * Tt, scalar_t(0)), dh(B * Tt), dc(B * Tt, scalar_t(0)), dX(B * KT),
          dh_rec(B * Tt, scalar_t(0));
      // By rows (see row_split_threads): each thread walks every step of its own rows backwards.
      const int64_t nt = row_split_threads(B);
      // Natively, the pre-activation gradients of a thread's compositions and tracker gates at one step stay in
      // its buffers (their bfloat16 rounding is what the weight gradients take) and the bias gradients are sums of
      // per-row-block partials.
      const int64_t n_blocks = (B + kRowBlock - 1) / kRowBlock;
      std::vector<scalar_t> comp_bias_parts(step_grads && b_comp.has_value() ? n_blocks * G : 0, scalar_t(0));
      std::vector<scalar_t> trk_bias_parts(step_grads && trk_bias ? n_blocks * GT : 0, scalar_t(0));
      at::parallel_for(0, nt, 1, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t b0 = split_bound(B, j, nt), b1 = split_bound(B, j + 1, nt), n = b1 - b0;
          std::vector<scalar_t> cl(n * H), cr(n * H), da(n * K), dcl(n * H), dcr(n * H);
          std::vector<scalar_t> d_step(step_grads ? n * G : 0), dg_step(step_grads ? n * GT : 0);
          for (int64_t t = S - 1; t >= 0; --t) {
            over_row_blocks<scalar_t>(b0, b1, [&](int64_t r0, int64_t r1) {
              const auto [k0, k1] = step_nodes(plan, t, r0, r1);
              if (k1 > k0)
                decompose_rows(k0, k1, cl.data(), cr.data(), da.data(), dcl.data(), dcr.data(),
                               step_grads ? d_step.data() : Dp + k0 * G,
                               comp_bias_parts.empty() ? nullptr : comp_bias_parts.data());
            });
            // This step's gate gradients of rows [b0, b1).
            scalar_t* dg_rows = step_grads ? dg_step.data() : dg + (t * B + b0) * GT;
            for (int64_t i = b0 * Tt; i < b1 * Tt; ++i) dh[i] = dt[t * B * Tt + i] + dh_rec[i];
            const scalar_t* c_prev = t == 0 ? zero_state.data() : tc + (t - 1) * B * Tt;
            lstm_backward_tile<scalar_t>(GateLayout{Tt, false}, n, 0, 1, ta + (t * B + b0) * GT, GT,
                                         tc + (t * B + b0) * Tt, c_prev + b0 * Tt, n, nullptr, dh.data() + b0 * Tt,
                                         nullptr, Tt, 0, dc.data() + b0 * Tt, dg_rows);
            if (!trk_bias_parts.empty())
              for (int64_t b = b0; b < b1; ++b)
                add_row(trk_bias_parts.data() + b / kRowBlock * GT, dg_rows + (b - b0) * GT, GT);
            over_row_blocks<scalar_t>(b0, b1, [&](int64_t r0, int64_t r1) {
              gemm_rows_maybe_bf16<scalar_t>(r1 - r0, KT, GT, dg_rows + (r0 - b0) * GT, GT,
                                             native ? nullptr : wt.const_data_ptr<scalar_t>(),
                                             wt_p,
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
            if (native)
              tracker_inputs(plan, s, ref16, t == 0 ? zeros16.data() : th16 + (t - 1) * B * Tt, t, b0, b1,
                             x16p + t * B * KT);
            else
              tracker_inputs(plan, s, ref, t == 0 ? zero_state.data() : th + (t - 1) * B * Tt, t, b0, b1,
                             X_all.data_ptr<scalar_t>() + t * B * KT);
          }
        }
      });
      // (4Tt, 3H + Tt); natively in bfloat16, the gradients' final dtype.
      const Tensor dW = native ? mm_bf16(dg16.t(), X16) : at::mm(d_gates.t(), X_all);
      grad_tw_ih = dW.narrow(1, 0, 3 * H).contiguous();
      grad_tw_hh = dW.narrow(1, 3 * H, Tt).contiguous();
      if (trk_bias) grad_tb = step_grads ? sum_parts(trk_bias_parts, n_blocks, GT, opts) : at::sum(d_gates, {0});
      if (step_grads && b_comp.has_value()) grad_b_comp = sum_parts(comp_bias_parts, n_blocks, G, opts);
    }
    // Composition weights: dW = D^T [h_left | h_right | tracker h] over all nodes.
    if (M > 0) {
      // [h_left | h_right | tracker h | 1] per node (the column of ones gives the bias gradient), then
      // [dW^T; db^T] = A^T D.
      if (native) {  // [h_left | h_right | tracker h] in bfloat16, then [dW^T] = A^T D on the rounded D
        const Tensor A16 = scratch(ScratchSlot::kSpinnOperandBf16, {M, K}, at::kBFloat16);
        composition_h(plan, s, ref16, th16, 0, M, u16(A16));
        // (bfloat16, the gradient's final dtype: the bfloat16 wrapper's conversion is then a no-op.)
        grad_w_comp = mm_bf16(D16.narrow(0, 0, M).t(), A16);
        if (b_comp.has_value() && !step_grads) grad_b_comp = at::sum(D.narrow(0, 0, M), {0});
        return;
      }
      Tensor A_all = scratch(ScratchSlot::kSpinnOperand, {M, K + 1}, buffers.scalar_type());
      scalar_t* ap = A_all.data_ptr<scalar_t>();
      composition_h(plan, s, ref, th, 0, M, ap, K + 1);
      for (int64_t k = 0; k < M; ++k) ap[k * (K + 1) + K] = scalar_t(1);
      Tensor grad_cat_t = at::empty({K + 1, G}, opts);
      gemm_tn_parallel<scalar_t>(K + 1, G, M, ap, K + 1, Dp, G, grad_cat_t.data_ptr<scalar_t>(), G);
      grad_w_comp = grad_cat_t.narrow(0, 0, K).t().contiguous();
      if (b_comp.has_value()) grad_b_comp = grad_cat_t.select(0, K).clone();  // own storage: outputs must not alias
    } else {
      grad_w_comp = at::zeros({G, K}, opts);
      if (b_comp.has_value()) grad_b_comp = at::zeros({G}, opts);
    }
  });
  return {native ? bf16::down(grad_buffers) : grad_buffers, grad_w_comp, grad_b_comp, grad_tw_ih, grad_tw_hh,
          grad_tb};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spinn_encode_backward_cpu(
    const Tensor& grad_top, const Tensor& grad_tracker_h, const Tensor& buffers, const Tensor& transitions,
    const std::optional<Tensor>& lengths, const Tensor& w_comp, const std::optional<Tensor>& b_comp,
    const std::optional<Tensor>& t_w_ih, const std::optional<Tensor>& t_w_hh, const std::optional<Tensor>& t_b_ih,
    const std::optional<Tensor>& t_b_hh, const Tensor& nodes, const Tensor& node_acts, const Tensor& tracker_h,
    const Tensor& tracker_acts, const Tensor& tracker_c) {
  const char* op = "rnnext::spinn_encode_backward";
  if (bf16::active(buffers)) {
    auto run = [&](auto&& value) {
      auto [gb, gw, gbc, gti, gth, gtb] = spinn_encode_backward_impl(
          value("grad_top", grad_top), value("grad_tracker_h", grad_tracker_h), value("buffers", buffers),
          transitions, lengths, value("w_comp", w_comp), value("b_comp", b_comp), value("tracker_w_ih", t_w_ih),
          value("tracker_w_hh", t_w_hh), value("tracker_b_ih", t_b_ih), value("tracker_b_hh", t_b_hh),
          bf16::workspace(op, "nodes", nodes), bf16::workspace(op, "node_acts", node_acts),
          value("tracker_h", tracker_h), bf16::workspace(op, "tracker_acts", tracker_acts),
          bf16::workspace(op, "tracker_c", tracker_c));
      return std::make_tuple(bf16::down(gb), bf16::down(gw), bf16::down(gbc), bf16::down(gti), bf16::down(gth),
                             bf16::down(gtb));
    };
    if (spinn_native_bf16()) return run(bf16::Checked{op});
    return run(bf16::Up{op});
  }
  return spinn_encode_backward_impl(grad_top, grad_tracker_h, buffers, transitions, lengths, w_comp, b_comp, t_w_ih,
                                    t_w_hh, t_b_ih, t_b_hh, nodes, node_acts, tracker_h, tracker_acts, tracker_c);
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
