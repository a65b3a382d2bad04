// CUDA kernels of the LSTM, GRU and vanilla-RNN layers: the engine of common/rnn_engine.h (cuBLAS GEMMs through
// ATen on the current stream) with the cells' fused pointwise steps (kernels/gru.h, kernels/lstm.h through
// cuda/lstm.cuh) as grid-stride kernels, computed in float for float16/bfloat16 storage.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "common/rnn_engine.h"
#include "cuda/common.cuh"
#include "cuda/lstm.cuh"
#include "kernels/gru.h"

namespace rnnext::cuda {
namespace {

using at::Tensor;
using common::CellKind;

template <typename scalar_t>
__global__ void rnn_forward_kernel(int64_t n, int64_t H, int cell, const scalar_t* gx, const scalar_t* gh,
                                   scalar_t* h, scalar_t* h_out, scalar_t* saved) {
  using acc_t = at::opmath_type<scalar_t>;
  RNNEXT_CUDA_LOOP(i, n * H) {
    const int64_t j = i / H, u = i % H;
    if (cell == static_cast<int>(CellKind::kGRU)) {
      const scalar_t* x = gx + j * 3 * H;
      const scalar_t* r = gh + j * 3 * H;
      acc_t rr, zz, nn, hn;
      kernels::gru_forward_elem<acc_t>(x[u], x[H + u], x[2 * H + u], r[u], r[H + u], r[2 * H + u], h[i], rr, zz, nn,
                                       hn);
      h[i] = hn;
      h_out[i] = hn;
      if (saved != nullptr) {
        scalar_t* row = saved + j * 4 * H;
        row[u] = rr;
        row[H + u] = zz;
        row[2 * H + u] = nn;
        row[3 * H + u] = r[2 * H + u];
      }
    } else {
      const acc_t hn = kernels::rnn_activation<acc_t>(acc_t(gx[i]) + acc_t(gh[i]),
                                                      cell == static_cast<int>(CellKind::kRNNRelu));
      h[i] = hn;
      h_out[i] = hn;
    }
  }
}

template <typename scalar_t>
__global__ void rnn_backward_kernel(int64_t n, int64_t H, int cell, const scalar_t* saved, const scalar_t* h_new,
                                    const scalar_t* h_prev, const scalar_t* dh, scalar_t* dgx, scalar_t* dgh,
                                    scalar_t* dh_direct) {
  using acc_t = at::opmath_type<scalar_t>;
  RNNEXT_CUDA_LOOP(i, n * H) {
    if (cell != static_cast<int>(CellKind::kGRU)) {
      dgx[i] = kernels::rnn_activation_backward<acc_t>(h_new[i], dh[i], cell == static_cast<int>(CellKind::kRNNRelu));
      continue;
    }
    const int64_t j = i / H, u = i % H;
    const scalar_t* row = saved + j * 4 * H;
    acc_t d_r, d_z, d_n, d_hn, d_h;
    kernels::gru_backward_elem<acc_t>(row[u], row[H + u], row[2 * H + u], row[3 * H + u], h_prev[i], dh[i], d_r, d_z,
                                      d_n, d_hn, d_h);
    scalar_t* gx = dgx + j * 3 * H;
    scalar_t* gh = dgh + j * 3 * H;
    gx[u] = d_r;
    gx[H + u] = d_z;
    gx[2 * H + u] = d_n;
    gh[u] = d_r;
    gh[H + u] = d_z;
    gh[2 * H + u] = d_hn;
    dh_direct[i] = d_h;
  }
}

struct CudaPointwise {
  static bool fuses_input(CellKind) { return false; }
  static bool native_bf16(CellKind, const Tensor&) { return false; }
  static common::WeightGrads weight_grads(const common::BackwardSteps& b, const Tensor& x_slots, const Tensor& w_ih,
                                          bool has_bias) {
    return common::aten_weight_grads(b, x_slots, w_ih, has_bias);
  }
  static void linear_out(const Tensor& out, const Tensor& x, const Tensor& w, const std::optional<Tensor>& b) {
    common::aten_linear_out(out, x, w, b);
  }
  static void matmul_out(const Tensor& out, const Tensor& a, const Tensor& w, bool accumulate) {
    common::aten_matmul_out(out, a, w, accumulate);
  }
  static void linear_pair_out(const Tensor& out1, const Tensor& x1, const Tensor& w1, const std::optional<Tensor>& b1,
                              const Tensor& out2, const Tensor& x2, const Tensor& w2,
                              const std::optional<Tensor>& b2) {
    common::aten_linear_out(out1, x1, w1, b1);
    common::aten_linear_out(out2, x2, w2, b2);
  }
  static Tensor weight_grad(const Tensor& dg, const Tensor& x) { return at::mm(dg.t(), x); }
  static void forward_steps(const common::ForwardSteps& f) { common::aten_forward_steps<CudaPointwise>(f); }
  static void backward_steps(const common::BackwardSteps& b) { common::aten_backward_steps<CudaPointwise>(b); }
  static void forward(CellKind cell, int64_t n, int64_t H, const Tensor& gx, const Tensor& gh, const Tensor& h,
                      const Tensor& h_out, const Tensor& saved) {
    if (n * H == 0) return;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gx.scalar_type(), "rnn_forward_step_cuda", [&] {
      rnn_forward_kernel<scalar_t><<<blocks_for(n * H), kThreads, 0, stream()>>>(
          n, H, static_cast<int>(cell), gx.const_data_ptr<scalar_t>(), gh.const_data_ptr<scalar_t>(),
          h.data_ptr<scalar_t>(), h_out.data_ptr<scalar_t>(), saved.defined() ? saved.data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void backward(CellKind cell, int64_t n, int64_t H, const Tensor& saved, const Tensor& h_new,
                       const Tensor& h_prev, const Tensor& dh, const Tensor& dgx, const Tensor& dgh,
                       const Tensor& dh_direct) {
    if (n * H == 0) return;
    const bool gru = cell == CellKind::kGRU;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dh.scalar_type(), "rnn_backward_step_cuda", [&] {
      rnn_backward_kernel<scalar_t><<<blocks_for(n * H), kThreads, 0, stream()>>>(
          n, H, static_cast<int>(cell), gru ? saved.const_data_ptr<scalar_t>() : nullptr,
          h_new.const_data_ptr<scalar_t>(), h_prev.const_data_ptr<scalar_t>(), dh.const_data_ptr<scalar_t>(),
          dgx.data_ptr<scalar_t>(), gru ? dgh.data_ptr<scalar_t>() : nullptr,
          gru ? dh_direct.data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void lstm_forward(int64_t n, int64_t H, const Tensor& pre, const Tensor& c, const Tensor& cells,
                           const Tensor& h) {
    if (n * H == 0) return;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "lstm_forward_step_cuda", [&] {
      lstm_forward_kernel<scalar_t><<<blocks_for(n * H), kThreads, 0, stream()>>>(
          n, H, pre.data_ptr<scalar_t>(), nullptr, c.const_data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
          cells.defined() ? cells.data_ptr<scalar_t>() : nullptr, h.data_ptr<scalar_t>(), H, nullptr, nullptr, 0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void lstm_backward(int64_t n, int64_t H, const Tensor& acts, const Tensor& c, const Tensor& c_prev,
                            const Tensor& dh, const Tensor& dc, const Tensor& dgates) {
    if (n * H == 0) return;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, acts.scalar_type(), "lstm_backward_step_cuda", [&] {
      lstm_backward_kernel<scalar_t><<<blocks_for(n * H), kThreads, 0, stream()>>>(
          n, H, acts.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(), c_prev.const_data_ptr<scalar_t>(), n,
          c_prev.const_data_ptr<scalar_t>(), dh.const_data_ptr<scalar_t>(), H, nullptr, nullptr, 0,
          dc.data_ptr<scalar_t>(), dgates.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

Tensor upload_to(const std::vector<int64_t>& v, const at::Device& device) {
  return upload(v, device).narrow(0, 0, static_cast<int64_t>(v.size()));
}

std::tuple<Tensor, Tensor, Tensor> rnn_layer_cuda(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                                  const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                                  const std::optional<Tensor>& b_hh,
                                                  const std::optional<Tensor>& batch_sizes,
                                                  const std::optional<Tensor>& sorted_indices, bool batch_first,
                                                  bool reverse, bool train, c10::string_view cell,
                                                  const std::optional<Tensor>& lengths) {
  const c10::cuda::CUDAGuard guard(input.device());
  auto up = [&](const std::vector<int64_t>& v) { return upload_to(v, input.device()); };
  return common::rnn_layer_forward<CudaPointwise>("rnnext::rnn_layer", input, hx, w_ih, w_hh, b_ih, b_hh,
                                                  batch_sizes, sorted_indices, batch_first, reverse, train,
                                                  std::string_view(cell.data(), cell.size()), lengths,
                                                  common::Backend::kCUDA, up);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_layer_backward_cuda(
    const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices,
    bool batch_first, bool reverse, const Tensor& output, const Tensor& saved, c10::string_view cell,
    bool has_bias, const std::optional<Tensor>& lengths) {
  const c10::cuda::CUDAGuard guard(input.device());
  auto up = [&](const std::vector<int64_t>& v) { return upload_to(v, input.device()); };
  return common::rnn_layer_backward<CudaPointwise>("rnnext::rnn_layer_backward", grad_output, grad_hy, input, hx,
                                                   w_ih, w_hh, batch_sizes, sorted_indices, batch_first, reverse,
                                                   output, saved, std::string_view(cell.data(), cell.size()),
                                                   has_bias, lengths, common::Backend::kCUDA, up);
}

std::tuple<Tensor, Tensor> rnn_cell_cuda(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                        const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                        const std::optional<Tensor>& b_hh, c10::string_view cell) {
  const c10::cuda::CUDAGuard guard(input.device());
  return common::rnn_cell_forward<CudaPointwise>("rnnext::rnn_cell", input, hx, w_ih, w_hh, b_ih, b_hh,
                                                 std::string_view(cell.data(), cell.size()), common::Backend::kCUDA);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_cell_backward_cuda(
    const Tensor& grad_hy, const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& hy, const Tensor& saved, c10::string_view cell, bool has_bias) {
  const c10::cuda::CUDAGuard guard(input.device());
  return common::rnn_cell_backward<CudaPointwise>("rnnext::rnn_cell_backward", grad_hy, input, hx, w_ih, w_hh, hy,
                                                  saved, std::string_view(cell.data(), cell.size()), has_bias,
                                                  common::Backend::kCUDA);
}

// The LSTM layer: every layout (dense, packed, padded, masked) through the engine. The engine checks every
// argument (the CPU's checks) before anything is launched.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_cuda(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices, bool batch_first,
    bool reverse, bool train, const std::optional<Tensor>& lengths) {
  const c10::cuda::CUDAGuard guard(input.device());
  auto up = [&](const std::vector<int64_t>& v) { return upload_to(v, input.device()); };
  return common::lstm_layer_forward<CudaPointwise>(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                                   sorted_indices, batch_first, reverse, train, lengths,
                                                   common::Backend::kCUDA, up);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward_cuda(
    const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input, const Tensor& hx,
    const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& w_hr,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& sorted_indices, bool batch_first,
    const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse, bool has_bias,
    const std::optional<Tensor>& lengths) {
  const c10::cuda::CUDAGuard guard(input.device());
  auto up = [&](const std::vector<int64_t>& v) { return upload_to(v, input.device()); };
  return common::lstm_layer_backward<CudaPointwise>(grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, w_hr,
                                                    batch_sizes, sorted_indices, batch_first, output, gates, cells,
                                                    reverse, has_bias, lengths, common::Backend::kCUDA, up);
}

}  // namespace

void rnn_cell_step(CellKind cell, const Tensor& x, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                   const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  const c10::cuda::CUDAGuard guard(h.device());
  common::rnn_cell_step<CudaPointwise>(cell, x, h, w_ih, w_hh, b_ih, b_hh);
}

TORCH_LIBRARY_IMPL(rnnext, CUDA, m) {
  m.impl("lstm_layer", &lstm_layer_cuda);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cuda);
  m.impl("rnn_layer", &rnn_layer_cuda);
  m.impl("rnn_layer_backward", &rnn_layer_backward_cuda);
  m.impl("rnn_cell", &rnn_cell_cuda);
  m.impl("rnn_cell_backward", &rnn_cell_backward_cuda);
}

}  // namespace rnnext::cuda
