// CPU kernels of the fused TreeLSTM cell: (lstm_in (M, 5H), c_left, c_right) -> (h, c), and its backward.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/bf16.h"
#include "cpu/checks.h"
#include "cpu/pointwise.h"

namespace rnnext::cpu {
namespace {

using at::Tensor;

constexpr int64_t kRowGrain = 16;

int64_t check_cell(const char* op, const Tensor& lstm_in, const Tensor& c_left, const Tensor& c_right) {
  check_float_cpu(op, "lstm_in", lstm_in);
  check_same(op, "lstm_in", lstm_in, "c_left", c_left);
  check_same(op, "lstm_in", lstm_in, "c_right", c_right);
  check_dim(op, "lstm_in", lstm_in, 2, "(rows, 5 * hidden_size)");
  TORCH_CHECK(lstm_in.size(1) % 5 == 0, op, ": expected lstm_in.size(1) to be 5 * hidden_size, got ",
              lstm_in.size(1));
  const int64_t M = lstm_in.size(0), H = lstm_in.size(1) / 5;
  check_shape(op, "c_left", c_left, {M, H});
  check_shape(op, "c_right", c_right, {M, H});
  return H;
}

std::tuple<Tensor, Tensor, Tensor> treelstm_cell_cpu(const Tensor& lstm_in, const Tensor& c_left,
                                                     const Tensor& c_right) {
  if (bf16::active(lstm_in)) {
    const char* op = "rnnext::treelstm_cell";
    auto [h, c, acts] = treelstm_cell_cpu(bf16::up(op, "lstm_in", lstm_in), bf16::up(op, "c_left", c_left),
                                          bf16::up(op, "c_right", c_right));
    return {bf16::down(h), bf16::down(c), acts};
  }
  const int64_t H = check_cell("rnnext::treelstm_cell", lstm_in, c_left, c_right);
  const int64_t M = lstm_in.size(0);
  const Tensor pre = lstm_in.contiguous(), cl = c_left.contiguous(), cr = c_right.contiguous();
  Tensor h = at::empty({M, H}, pre.options()), c = at::empty({M, H}, pre.options());
  Tensor acts = at::empty({M, 5 * H}, pre.options());
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "treelstm_cell", [&] {
    at::parallel_for(0, M, kRowGrain, [&](int64_t r0, int64_t r1) {
      treelstm_forward_rows<scalar_t>(r1 - r0, H, pre.const_data_ptr<scalar_t>() + r0 * 5 * H, nullptr,
                                      cl.const_data_ptr<scalar_t>() + r0 * H, cr.const_data_ptr<scalar_t>() + r0 * H,
                                      H, acts.data_ptr<scalar_t>() + r0 * 5 * H, h.data_ptr<scalar_t>() + r0 * H,
                                      c.data_ptr<scalar_t>() + r0 * H, H);
    });
  });
  return {h, c, acts};
}

std::tuple<Tensor, Tensor, Tensor> treelstm_cell_backward_cpu(const Tensor& grad_h, const Tensor& grad_c,
                                                              const Tensor& acts, const Tensor& c,
                                                              const Tensor& c_left, const Tensor& c_right) {
  const char* op = "rnnext::treelstm_cell_backward";
  if (bf16::active(c_left)) {
    auto [gi, gl, gr] = treelstm_cell_backward_cpu(bf16::up(op, "grad_h", grad_h), bf16::up(op, "grad_c", grad_c),
                                                   bf16::workspace(op, "acts", acts), bf16::up(op, "c", c),
                                                   bf16::up(op, "c_left", c_left), bf16::up(op, "c_right", c_right));
    return {bf16::down(gi), bf16::down(gl), bf16::down(gr)};
  }
  const int64_t H = check_cell(op, acts, c_left, c_right);
  const int64_t M = acts.size(0);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_h", &grad_h}, {"grad_c", &grad_c},
                                {"c", &c}}) {
    check_same(op, "acts", acts, name, *t);
    check_shape(op, name, *t, {M, H});
  }
  const Tensor a = acts.contiguous(), cc = c.contiguous(), cl = c_left.contiguous(), cr = c_right.contiguous();
  const Tensor dh = grad_h.contiguous(), dc = grad_c.contiguous();
  Tensor dpre = at::empty({M, 5 * H}, a.options());
  Tensor dcl = at::empty({M, H}, a.options()), dcr = at::empty({M, H}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "treelstm_cell_backward", [&] {
    at::parallel_for(0, M, kRowGrain, [&](int64_t r0, int64_t r1) {
      treelstm_backward_rows<scalar_t>(
          r1 - r0, H, a.const_data_ptr<scalar_t>() + r0 * 5 * H, cc.const_data_ptr<scalar_t>() + r0 * H, H,
          cl.const_data_ptr<scalar_t>() + r0 * H, cr.const_data_ptr<scalar_t>() + r0 * H, H,
          dh.const_data_ptr<scalar_t>() + r0 * H, dc.const_data_ptr<scalar_t>() + r0 * H, H,
          dpre.data_ptr<scalar_t>() + r0 * 5 * H, dcl.data_ptr<scalar_t>() + r0 * H, dcr.data_ptr<scalar_t>() + r0 * H,
          H);
    });
  });
  return {dpre, dcl, dcr};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, CPU, m) {
  m.impl("treelstm_cell", &treelstm_cell_cpu);
  m.impl("treelstm_cell_backward", &treelstm_cell_backward_cpu);
}

}  // namespace rnnext::cpu
