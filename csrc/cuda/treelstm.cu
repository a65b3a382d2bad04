// CUDA kernels of the fused TreeLSTM cell (math: csrc/kernels/treelstm.h, in float for half types).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/common.cuh"
#include "cuda/treelstm.cuh"

namespace rnnext::cuda {
namespace {

using at::Tensor;

int64_t check_cell(const char* op, const Tensor& lstm_in, const Tensor& c_left, const Tensor& c_right) {
  check_cuda(op, "c_left", c_left, lstm_in);
  check_cuda(op, "c_right", c_right, lstm_in);
  TORCH_CHECK(lstm_in.dim() == 2 && lstm_in.size(1) % 5 == 0, op,
              ": expected lstm_in of shape (rows, 5 * hidden_size), got ", lstm_in.sizes());
  const int64_t M = lstm_in.size(0), H = lstm_in.size(1) / 5;
  TORCH_CHECK(c_left.sizes() == at::IntArrayRef({M, H}) && c_right.sizes() == at::IntArrayRef({M, H}), op,
              ": expected c_left and c_right of shape (", M, ", ", H, ")");
  return H;
}

std::tuple<Tensor, Tensor, Tensor> treelstm_cell_cuda(const Tensor& lstm_in, const Tensor& c_left,
                                                      const Tensor& c_right) {
  const int64_t H = check_cell("rnnext::treelstm_cell", lstm_in, c_left, c_right);
  const int64_t M = lstm_in.size(0);
  const c10::cuda::CUDAGuard guard(lstm_in.device());
  const Tensor pre = lstm_in.contiguous(), cl = c_left.contiguous(), cr = c_right.contiguous();
  Tensor h = at::empty({M, H}, pre.options()), c = at::empty({M, H}, pre.options());
  Tensor acts = at::empty({M, 5 * H}, pre.options());
  if (M * H > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "treelstm_cell_cuda", [&] {
      treelstm_forward_kernel<scalar_t><<<blocks_for(M * H), kThreads, 0, stream()>>>(
          M, H, pre.const_data_ptr<scalar_t>(), nullptr, cl.const_data_ptr<scalar_t>(),
          cr.const_data_ptr<scalar_t>(), H, acts.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
          c.data_ptr<scalar_t>(), H);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {h, c, acts};
}

std::tuple<Tensor, Tensor, Tensor> treelstm_cell_backward_cuda(const Tensor& grad_h, const Tensor& grad_c,
                                                               const Tensor& acts, const Tensor& c,
                                                               const Tensor& c_left, const Tensor& c_right) {
  const char* op = "rnnext::treelstm_cell_backward";
  const int64_t H = check_cell(op, acts, c_left, c_right);
  const int64_t M = acts.size(0);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_h", &grad_h}, {"grad_c", &grad_c},
                                {"c", &c}}) {
    check_cuda(op, name, *t, acts);
    TORCH_CHECK(t->sizes() == at::IntArrayRef({M, H}), op, ": expected ", name, " of shape (", M, ", ", H, "), got ",
                t->sizes());
  }
  const c10::cuda::CUDAGuard guard(acts.device());
  const Tensor a = acts.contiguous(), cc = c.contiguous(), cl = c_left.contiguous(), cr = c_right.contiguous();
  const Tensor dh = grad_h.contiguous(), dc = grad_c.contiguous();
  Tensor dpre = at::empty({M, 5 * H}, a.options());
  Tensor dcl = at::empty({M, H}, a.options()), dcr = at::empty({M, H}, a.options());
  if (M * H > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "treelstm_cell_backward_cuda", [&] {
      treelstm_backward_kernel<scalar_t><<<blocks_for(M * H), kThreads, 0, stream()>>>(
          M, H, a.const_data_ptr<scalar_t>(), cc.const_data_ptr<scalar_t>(), H, cl.const_data_ptr<scalar_t>(),
          cr.const_data_ptr<scalar_t>(), H, dh.const_data_ptr<scalar_t>(), dc.const_data_ptr<scalar_t>(), H,
          dpre.data_ptr<scalar_t>(), dcl.data_ptr<scalar_t>(), dcr.data_ptr<scalar_t>(), H);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {dpre, dcl, dcr};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CUDA, m) {
  m.impl("treelstm_cell", &treelstm_cell_cuda);
  m.impl("treelstm_cell_backward", &treelstm_cell_backward_cuda);
}

}  // namespace rnnext::cuda
