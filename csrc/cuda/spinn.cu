// CUDA kernels of the thin stack (SPINN): the plan is simulated on the host from the (CPU) transitions and
// uploaded once per call; each batch of compositions is a gather kernel, one cuBLAS GEMM and the fused TreeLSTM
// kernel, with no host synchronization between batches. The tracker runs its LSTMCell step per transition step.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cpu/bias.h"
#include "cpu/checks.h"
#include "cpu/spinn_plan.h"
#include "cuda/common.cuh"
#include "cuda/lstm.cuh"
#include "cuda/treelstm.cuh"

namespace rnnext::cuda {
namespace {

using at::Tensor;
using cpu::SpinnPlan;
using cpu::max_nodes;
using cpu::sum_biases;

// The plan's per-node arrays on the device: left, right, row, step (each M), tracker reads (3 x S B), tops (B).
struct DevicePlan {
  Tensor left, right, row, step, trk, top;
};

DevicePlan upload_plan(const SpinnPlan& p, const at::Device& dev) {
  std::vector<int64_t> trk(p.trk_buf);
  trk.insert(trk.end(), p.trk_top.begin(), p.trk_top.end());
  trk.insert(trk.end(), p.trk_2nd.begin(), p.trk_2nd.end());
  return {upload(p.left, dev), upload(p.right, dev), upload(p.row, dev), upload(p.step, dev), upload(trk, dev),
          upload(p.top, dev)};
}

template <typename scalar_t>
__device__ __forceinline__ const scalar_t* ref_row(int64_t ref, const scalar_t* buffers, const scalar_t* nodes,
                                                   int64_t NB, int64_t W) {
  return ref == 0 ? nullptr : (ref <= NB ? buffers + (ref - 1) * W : nodes + (ref - 1 - NB) * W);
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t* grad_row(int64_t ref, scalar_t* gbuf, scalar_t* gnodes, int64_t NB, int64_t W) {
  return ref == 0 ? nullptr : (ref <= NB ? gbuf + (ref - 1) * W : gnodes + (ref - 1 - NB) * W);
}

// Composition inputs of nodes [k0, k0 + m): A rows [h_left | h_right | tracker h] (width K), CL, CR.
template <typename scalar_t>
__global__ void composition_inputs_kernel(int64_t k0, int64_t m, int64_t H, int64_t Tt, int64_t B, int64_t NB,
                                          const int64_t* left, const int64_t* right, const int64_t* row,
                                          const int64_t* step, const scalar_t* buffers, const scalar_t* nodes,
                                          const scalar_t* tracker_h, scalar_t* A, scalar_t* CL, scalar_t* CR) {
  const int64_t K = 2 * H + Tt, W = 2 * H;
  RNNEXT_CUDA_LOOP(idx, m * (K + 2 * H)) {
    const int64_t r = idx / (K + 2 * H), col = idx % (K + 2 * H), k = k0 + r;
    const scalar_t* l = ref_row(left[k], buffers, nodes, NB, W);
    const scalar_t* rr = ref_row(right[k], buffers, nodes, NB, W);
    if (col < H) {
      if (A) A[r * K + col] = l[col];
    } else if (col < 2 * H) {
      if (A) A[r * K + col] = rr[col - H];
    } else if (col < K) {
      if (A) A[r * K + col] = tracker_h[(step[k] * B + row[k]) * Tt + col - 2 * H];
    } else if (col < K + H) {
      if (CL) CL[r * H + col - K] = l[H + col - K];
    } else {
      if (CR) CR[r * H + col - K - H] = rr[H + col - K - H];
    }
  }
}

// Tracker inputs of step t: rows [h buffer top | h stack top | h stack second | h_prev] (width 3H + Tt).
template <typename scalar_t>
__global__ void tracker_inputs_kernel(int64_t t, int64_t B, int64_t H, int64_t Tt, int64_t NB, const int64_t* trk,
                                      int64_t SB, const scalar_t* buffers, const scalar_t* nodes,
                                      const scalar_t* h_prev, scalar_t* X) {
  const int64_t KT = 3 * H + Tt;
  RNNEXT_CUDA_LOOP(idx, B * KT) {
    const int64_t b = idx / KT, col = idx % KT;
    scalar_t v;
    if (col < 3 * H) {
      const int64_t which = col / H;
      const scalar_t* e = ref_row(trk[which * SB + t * B + b], buffers, nodes, NB, 2 * H);
      v = e ? e[col % H] : scalar_t(0);
    } else {
      v = h_prev ? h_prev[b * Tt + col - 3 * H] : scalar_t(0);
    }
    X[idx] = v;
  }
}

// Adds the composition backward's input gradients of nodes [k0, k0 + m) to their children (each node is the
// child of one composition only, so no two threads add to the same element) and to the tracker's h.
template <typename scalar_t>
__global__ void composition_grads_kernel(int64_t k0, int64_t m, int64_t H, int64_t Tt, int64_t B, int64_t NB,
                                         const int64_t* left, const int64_t* right, const int64_t* row,
                                         const int64_t* step, const scalar_t* dA, const scalar_t* dCL,
                                         const scalar_t* dCR, scalar_t* gbuf, scalar_t* gnodes, scalar_t* dtrk) {
  const int64_t K = 2 * H + Tt, W = 2 * H;
  RNNEXT_CUDA_LOOP(idx, m * (K + 2 * H)) {
    const int64_t r = idx / (K + 2 * H), col = idx % (K + 2 * H), k = k0 + r;
    scalar_t* l = grad_row(left[k], gbuf, gnodes, NB, W);
    scalar_t* rr = grad_row(right[k], gbuf, gnodes, NB, W);
    if (col < H) {
      l[col] += dA[r * K + col];
    } else if (col < 2 * H) {
      rr[col - H] += dA[r * K + col];
    } else if (col < K) {
      dtrk[(step[k] * B + row[k]) * Tt + col - 2 * H] += dA[r * K + col];
    } else if (col < K + H) {
      l[H + col - K] += dCL[r * H + col - K];
    } else {
      rr[H + col - K - H] += dCR[r * H + col - K - H];
    }
  }
}

// Adds the tracker input gradients of step t to the three entries each row read (distinct per row).
template <typename scalar_t>
__global__ void tracker_grads_kernel(int64_t t, int64_t B, int64_t H, int64_t Tt, int64_t NB, const int64_t* trk,
                                     int64_t SB, const scalar_t* dX, scalar_t* gbuf, scalar_t* gnodes,
                                     scalar_t* dh_rec) {
  const int64_t KT = 3 * H + Tt;
  RNNEXT_CUDA_LOOP(idx, B * KT) {
    const int64_t b = idx / KT, col = idx % KT;
    if (col < 3 * H) {
      scalar_t* e = grad_row(trk[(col / H) * SB + t * B + b], gbuf, gnodes, NB, 2 * H);
      if (e) e[col % H] += dX[idx];
    } else {
      dh_rec[b * Tt + col - 3 * H] = dX[idx];
    }
  }
}

template <typename scalar_t>
__global__ void top_kernel(int64_t B, int64_t H, int64_t NB, const int64_t* top, const scalar_t* buffers,
                           const scalar_t* nodes, scalar_t* out, const scalar_t* grad, scalar_t* gbuf, scalar_t* gnodes) {
  RNNEXT_CUDA_LOOP(idx, B * H) {
    const int64_t b = idx / H, u = idx % H;
    if (out) out[idx] = ref_row(top[b], buffers, nodes, NB, 2 * H)[u];
    if (grad) grad_row(top[b], gbuf, gnodes, NB, 2 * H)[u] += grad[idx];
  }
}

struct Shapes {
  int64_t N, B, S, H, Tt, K;
  bool tracker;
};

Shapes check_args(const char* op, const Tensor& buffers, const Tensor& transitions, const Tensor& w_comp,
                  const std::optional<Tensor>& t_w_ih, const std::optional<Tensor>& t_w_hh) {
  check_cuda(op, "w_comp", w_comp, buffers);
  TORCH_CHECK(buffers.dim() == 3 && w_comp.dim() == 2 && w_comp.size(0) % 5 == 0, op,
              ": expected buffers (N, B, 2H) and w_comp (5H, K)");
  Shapes s{buffers.size(0), buffers.size(1), transitions.size(0), w_comp.size(0) / 5, 0, 0, t_w_ih.has_value()};
  TORCH_CHECK(buffers.size(2) == 2 * s.H, op, ": expected buffer rows of width 2 * hidden_size = ", 2 * s.H);
  if (s.tracker) {
    check_cuda(op, "tracker_w_ih", *t_w_ih, buffers);
    check_cuda(op, "tracker_w_hh", *t_w_hh, buffers);
    s.Tt = t_w_hh->size(1);
    TORCH_CHECK(t_w_ih->sizes() == at::IntArrayRef({4 * s.Tt, 3 * s.H}), op, ": expected tracker_w_ih (",
                4 * s.Tt, ", ", 3 * s.H, ")");
  }
  s.K = 2 * s.H + s.Tt;
  TORCH_CHECK(w_comp.size(1) == s.K, op, ": expected w_comp of ", s.K, " columns");
  return s;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spinn_encode_cuda(
    const Tensor& buffers, const Tensor& transitions, const std::optional<Tensor>& lengths, const Tensor& w_comp,
    const std::optional<Tensor>& b_comp, const std::optional<Tensor>& t_w_ih, const std::optional<Tensor>& t_w_hh,
    const std::optional<Tensor>& t_b_ih, const std::optional<Tensor>& t_b_hh, bool train) {
  const char* op = "rnnext::spinn_encode";
  const Shapes s = check_args(op, buffers, transitions, w_comp, t_w_ih, t_w_hh);
  const c10::cuda::CUDAGuard guard(buffers.device());
  const SpinnPlan plan = cpu::make_plan(op, transitions, s.N, s.B, lengths, !s.tracker, s.tracker);
  const DevicePlan dp = upload_plan(plan, buffers.device());
  const int64_t H = s.H, K = s.K, Tt = s.Tt, B = s.B, S = s.S, G = 5 * H, NB = s.N * B, M_max = max_nodes(s.N, s.B);
  const auto opts = buffers.options();
  const Tensor buf = buffers.contiguous(), wc_t = w_comp.t().contiguous();
  const Tensor bias = b_comp.has_value() ? b_comp->contiguous() : Tensor();
  Tensor top = at::empty({B, H}, opts), nodes = at::zeros({M_max, 2 * H}, opts);
  Tensor acts = at::zeros({train ? M_max : std::max<int64_t>(plan.M, 1), G}, opts);
  Tensor tracker_h = s.tracker ? at::empty({S, B, Tt}, opts) : at::empty({0}, opts);
  Tensor tracker_acts = s.tracker && train ? at::empty({S, B, 4 * Tt}, opts) : at::empty({0}, opts);
  Tensor tracker_c = s.tracker && train ? at::empty({S, B, Tt}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, buffers.scalar_type(), "spinn_encode_cuda", [&] {
    const int64_t* L = dp.left.const_data_ptr<int64_t>();
    const int64_t* R = dp.right.const_data_ptr<int64_t>();
    const int64_t* RW = dp.row.const_data_ptr<int64_t>();
    const int64_t* ST = dp.step.const_data_ptr<int64_t>();
    scalar_t* nd = nodes.data_ptr<scalar_t>();
    auto compose = [&](int64_t k0, int64_t k1) {
      const int64_t m = k1 - k0;
      if (m == 0) return;
      Tensor A = at::empty({m, K}, opts), CL = at::empty({m, H}, opts), CR = at::empty({m, H}, opts);
      composition_inputs_kernel<scalar_t><<<blocks_for(m * (K + 2 * H)), kThreads, 0, stream()>>>(
          k0, m, H, Tt, B, NB, L, R, RW, ST, buf.const_data_ptr<scalar_t>(), nd,
          s.tracker ? tracker_h.const_data_ptr<scalar_t>() : nullptr, A.data_ptr<scalar_t>(), CL.data_ptr<scalar_t>(),
          CR.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      Tensor pre = train ? acts.narrow(0, k0, m) : acts.narrow(0, 0, m);
      at::mm_out(pre, A, wc_t);
      treelstm_forward_kernel<scalar_t><<<blocks_for(m * H), kThreads, 0, stream()>>>(
          m, H, pre.const_data_ptr<scalar_t>(), bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
          CL.const_data_ptr<scalar_t>(), CR.const_data_ptr<scalar_t>(), H, pre.data_ptr<scalar_t>(),
          nd + k0 * 2 * H, nd + k0 * 2 * H + H, 2 * H);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (!s.tracker) {
      for (size_t i = 0; i + 1 < plan.batch_start.size(); ++i) compose(plan.batch_start[i], plan.batch_start[i + 1]);
    } else {
      const int64_t KT = 3 * H + Tt;
      const Tensor wt_t = at::cat({*t_w_ih, *t_w_hh}, 1).t().contiguous();
      const std::optional<Tensor> tb = sum_biases(t_b_ih, t_b_hh);
      Tensor X = at::empty({B, KT}, opts), gates = at::empty({B, 4 * Tt}, opts), c_state = at::zeros({B, Tt}, opts);
      scalar_t* th = tracker_h.data_ptr<scalar_t>();
      for (int64_t t = 0; t < S; ++t) {
        tracker_inputs_kernel<scalar_t><<<blocks_for(B * KT), kThreads, 0, stream()>>>(
            t, B, H, Tt, NB, dp.trk.const_data_ptr<int64_t>(), S * B, buf.const_data_ptr<scalar_t>(), nd,
            t == 0 ? nullptr : th + (t - 1) * B * Tt, X.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        Tensor g = train ? tracker_acts[t] : gates;
        at::mm_out(g, X, wt_t);
        const scalar_t* c_in = train ? (t == 0 ? c_state.const_data_ptr<scalar_t>() : tracker_c[t - 1].const_data_ptr<scalar_t>())
                                     : c_state.const_data_ptr<scalar_t>();
        scalar_t* c_out = train ? tracker_c[t].data_ptr<scalar_t>() : c_state.data_ptr<scalar_t>();
        lstm_forward_kernel<scalar_t><<<blocks_for(B * Tt), kThreads, 0, stream()>>>(
            B, Tt, g.data_ptr<scalar_t>(), tb.has_value() ? tb->const_data_ptr<scalar_t>() : nullptr, c_in, c_out,
            nullptr, th + t * B * Tt, Tt, nullptr, nullptr, 0);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        compose(plan.batch_start[t], plan.batch_start[t + 1]);
      }
    }
    top_kernel<scalar_t><<<blocks_for(B * H), kThreads, 0, stream()>>>(
        B, H, NB, dp.top.const_data_ptr<int64_t>(), buf.const_data_ptr<scalar_t>(), nd, top.data_ptr<scalar_t>(),
        nullptr, nullptr, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!train) acts = at::empty({0}, opts);
  return {top, tracker_h, nodes, acts, tracker_acts, tracker_c};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spinn_encode_backward_cuda(
    const Tensor& grad_top, const Tensor& grad_tracker_h, const Tensor& buffers, const Tensor& transitions,
    const std::optional<Tensor>& lengths, const Tensor& w_comp, const std::optional<Tensor>& b_comp,
    const std::optional<Tensor>& t_w_ih, const std::optional<Tensor>& t_w_hh, const std::optional<Tensor>& t_b_ih,
    const std::optional<Tensor>& t_b_hh, const Tensor& nodes, const Tensor& node_acts, const Tensor& tracker_h,
    const Tensor& tracker_acts, const Tensor& tracker_c) {
  const char* op = "rnnext::spinn_encode_backward";
  const Shapes s = check_args(op, buffers, transitions, w_comp, t_w_ih, t_w_hh);
  const c10::cuda::CUDAGuard guard(buffers.device());
  const SpinnPlan plan = cpu::make_plan(op, transitions, s.N, s.B, lengths, !s.tracker, s.tracker);
  const DevicePlan dp = upload_plan(plan, buffers.device());
  const int64_t H = s.H, K = s.K, Tt = s.Tt, B = s.B, S = s.S, G = 5 * H, NB = s.N * B, M = plan.M;
  const auto opts = buffers.options();
  // The same checks as the CPU kernel, before any pointer is read.
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_top", &grad_top}, {"nodes", &nodes},
                                {"node_acts", &node_acts}})
    check_cuda(op, name, *t, buffers);
  cpu::check_shape(op, "grad_top", grad_top, {B, H});
  cpu::check_shape(op, "nodes", nodes, {cpu::max_nodes(s.N, B), 2 * H});
  cpu::check_shape(op, "node_acts", node_acts, {cpu::max_nodes(s.N, B), G});
  if (s.tracker) {
    for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_tracker_h", &grad_tracker_h},
                                  {"tracker_h", &tracker_h}, {"tracker_c", &tracker_c}}) {
      check_cuda(op, name, *t, buffers);
      cpu::check_shape(op, name, *t, {S, B, Tt});
    }
    check_cuda(op, "tracker_acts", tracker_acts, buffers);
    cpu::check_shape(op, "tracker_acts", tracker_acts, {S, B, 4 * Tt});
  }
  const Tensor trk_h = s.tracker ? tracker_h.contiguous() : Tensor();
  const Tensor trk_acts = s.tracker ? tracker_acts.contiguous() : Tensor();
  const Tensor trk_c = s.tracker ? tracker_c.contiguous() : Tensor();
  const Tensor buf = buffers.contiguous(), nd = nodes.contiguous(), ac = node_acts.contiguous(), w = w_comp.contiguous();
  Tensor grad_buffers = at::zeros({s.N, B, 2 * H}, opts);
  Tensor d_nodes = at::zeros({std::max<int64_t>(M, 1), 2 * H}, opts);
  Tensor D = at::empty({std::max<int64_t>(M, 1), G}, opts);
  Tensor grad_b = at::empty({0}, opts), grad_tih = at::empty({0}, opts), grad_thh = at::empty({0}, opts),
         grad_tb = at::empty({0}, opts);
  Tensor d_trk = s.tracker ? grad_tracker_h.contiguous().clone() : Tensor();
  Tensor A_all = at::empty({std::max<int64_t>(M, 1), K}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, buffers.scalar_type(), "spinn_encode_backward_cuda", [&] {
    const int64_t* L = dp.left.const_data_ptr<int64_t>();
    const int64_t* R = dp.right.const_data_ptr<int64_t>();
    const int64_t* RW = dp.row.const_data_ptr<int64_t>();
    const int64_t* ST = dp.step.const_data_ptr<int64_t>();
    const scalar_t* th = s.tracker ? trk_h.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* gb = grad_buffers.data_ptr<scalar_t>();
    scalar_t* gn = d_nodes.data_ptr<scalar_t>();
    const Tensor gt = grad_top.contiguous();
    top_kernel<scalar_t><<<blocks_for(B * H), kThreads, 0, stream()>>>(
        B, H, NB, dp.top.const_data_ptr<int64_t>(), nullptr, nullptr, nullptr, gt.const_data_ptr<scalar_t>(), gb, gn);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto decompose = [&](int64_t k0, int64_t k1) {
      const int64_t m = k1 - k0;
      if (m == 0) return;
      Tensor CL = at::empty({m, H}, opts), CR = at::empty({m, H}, opts), dCL = at::empty({m, H}, opts),
             dCR = at::empty({m, H}, opts);
      composition_inputs_kernel<scalar_t><<<blocks_for(m * (K + 2 * H)), kThreads, 0, stream()>>>(
          k0, m, H, Tt, B, NB, L, R, RW, ST, buf.const_data_ptr<scalar_t>(), nd.const_data_ptr<scalar_t>(), th,
          A_all.data_ptr<scalar_t>() + k0 * K, CL.data_ptr<scalar_t>(), CR.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      treelstm_backward_kernel<scalar_t><<<blocks_for(m * H), kThreads, 0, stream()>>>(
          m, H, ac.const_data_ptr<scalar_t>() + k0 * G, nd.const_data_ptr<scalar_t>() + k0 * 2 * H + H, 2 * H,
          CL.const_data_ptr<scalar_t>(), CR.const_data_ptr<scalar_t>(), H, gn + k0 * 2 * H, gn + k0 * 2 * H + H,
          2 * H, D.data_ptr<scalar_t>() + k0 * G, dCL.data_ptr<scalar_t>(), dCR.data_ptr<scalar_t>(), H);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const Tensor dA = at::mm(D.narrow(0, k0, m), w);
      composition_grads_kernel<scalar_t><<<blocks_for(m * (K + 2 * H)), kThreads, 0, stream()>>>(
          k0, m, H, Tt, B, NB, L, R, RW, ST, dA.const_data_ptr<scalar_t>(), dCL.const_data_ptr<scalar_t>(),
          dCR.const_data_ptr<scalar_t>(), gb, gn, s.tracker ? d_trk.data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (!s.tracker) {
      for (int64_t i = static_cast<int64_t>(plan.batch_start.size()) - 2; i >= 0; --i)
        decompose(plan.batch_start[i], plan.batch_start[i + 1]);
    } else {
      const int64_t KT = 3 * H + Tt, GT = 4 * Tt;
      const Tensor wt = at::cat({*t_w_ih, *t_w_hh}, 1).contiguous();
      Tensor d_gates = at::empty({S * B, GT}, opts), X_all = at::empty({S * B, KT}, opts);
      Tensor dh = at::empty({B, Tt}, opts), dc = at::zeros({B, Tt}, opts), dh_rec = at::zeros({B, Tt}, opts);
      Tensor zeros = at::zeros({B, Tt}, opts);
      for (int64_t t = S - 1; t >= 0; --t) {
        decompose(plan.batch_start[t], plan.batch_start[t + 1]);
        at::add_out(dh, d_trk[t], dh_rec);
        lstm_backward_kernel<scalar_t><<<blocks_for(B * Tt), kThreads, 0, stream()>>>(
            B, Tt, trk_acts[t].const_data_ptr<scalar_t>(), trk_c[t].const_data_ptr<scalar_t>(),
            t == 0 ? zeros.const_data_ptr<scalar_t>() : trk_c[t - 1].const_data_ptr<scalar_t>(), B, nullptr,
            dh.const_data_ptr<scalar_t>(), Tt, nullptr, nullptr, 0, dc.data_ptr<scalar_t>(),
            d_gates.data_ptr<scalar_t>() + t * B * GT);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const Tensor dX = at::mm(d_gates.narrow(0, t * B, B), wt);
        tracker_grads_kernel<scalar_t><<<blocks_for(B * KT), kThreads, 0, stream()>>>(
            t, B, H, Tt, NB, dp.trk.const_data_ptr<int64_t>(), S * B, dX.const_data_ptr<scalar_t>(), gb, gn,
            dh_rec.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        tracker_inputs_kernel<scalar_t><<<blocks_for(B * KT), kThreads, 0, stream()>>>(
            t, B, H, Tt, NB, dp.trk.const_data_ptr<int64_t>(), S * B, buf.const_data_ptr<scalar_t>(),
            nd.const_data_ptr<scalar_t>(), t == 0 ? nullptr : th + (t - 1) * B * Tt,
            X_all.data_ptr<scalar_t>() + t * B * KT);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      const Tensor dW = at::mm(d_gates.t(), X_all);
      grad_tih = dW.narrow(1, 0, 3 * H).contiguous();
      grad_thh = dW.narrow(1, 3 * H, Tt).contiguous();
      if (t_b_ih.has_value() || t_b_hh.has_value()) grad_tb = at::sum(d_gates, {0});
    }
  });
  Tensor grad_w = M > 0 ? at::mm(D.narrow(0, 0, M).t(), A_all.narrow(0, 0, M)) : at::zeros({G, K}, opts);
  if (b_comp.has_value()) grad_b = M > 0 ? at::sum(D.narrow(0, 0, M), {0}) : at::zeros({G}, opts);
  return {grad_buffers, grad_w, grad_b, grad_tih, grad_thh, grad_tb};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CUDA, m) {
  m.impl("spinn_encode", &spinn_encode_cuda);
  m.impl("spinn_encode_backward", &spinn_encode_backward_cuda);
}

}  // namespace rnnext::cuda
