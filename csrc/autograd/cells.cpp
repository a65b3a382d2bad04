// Autograd of the one-step cell ops (lstm_cell, rnn_cell), registered in C++ for every device.
//
// These ops run once per step in users' Python loops (decoders, char-RNNs, time_sequence_prediction), where a
// call's fixed cost decides the speed. torch.library's Python autograd costs 25-35 us per call, even under
// no_grad (it binds every argument in Python); this kernel costs a few. The layer, TreeLSTM and SPINN ops,
// called once per sequence or batch, keep their autograd in rnnext/_ops.py. Fake kernels stay there for all.
//
// The backward runs the backward op below autograd. With create_graph=True (double backward) it recomputes the
// step with ATen's differentiable cells (at::lstm_cell, at::gru_cell, at::rnn_*_cell: the same math) and
// differentiates that, as rnnext/_composite.py does for the other ops.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/gru_cell.h>
#include <ATen/ops/lstm_cell.h>
#include <ATen/ops/rnn_relu_cell.h>
#include <ATen/ops/rnn_tanh_cell.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace rnnext::autograd {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<Tensor>;

const Tensor& or_undefined(const OptTensor& t) {
  static const Tensor undefined;
  return t.has_value() ? *t : undefined;
}
OptTensor defined_or_none(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

const Tensor* opt_ptr(const OptTensor& t) { return t.has_value() ? &*t : nullptr; }

// Whether autograd has anything to record: grad mode on and some input requiring grad. Otherwise the kernel is
// called directly, as ATen's generated autograd kernels do, without building a graph node.
bool any_requires_grad(std::initializer_list<const Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : ts)
    if (t != nullptr && t->defined() && t->requires_grad()) return true;
  return false;
}

// Gradients of outputs (given grads) against those of inputs that require grad, as a differentiable graph;
// undefined where an input does not require grad.
variable_list differentiate(const variable_list& outputs, const variable_list& grads, const variable_list& inputs) {
  variable_list outs, gs, wanted;
  for (size_t i = 0; i < outputs.size(); ++i)
    if (grads[i].defined() && outputs[i].requires_grad()) {
      outs.push_back(outputs[i]);
      gs.push_back(grads[i]);
    }
  std::vector<size_t> index;
  for (size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i].defined() && inputs[i].requires_grad()) {
      wanted.push_back(inputs[i]);
      index.push_back(i);
    }
  variable_list result(inputs.size());
  if (outs.empty() || wanted.empty()) return result;
  const variable_list g = torch::autograd::grad(outs, wanted, gs, /*retain_graph=*/true, /*create_graph=*/true,
                                                /*allow_unused=*/true);
  for (size_t k = 0; k < index.size(); ++k) result[index[k]] = g[k];
  return result;
}

// ---------------------------------------------------------------------------------------------------------
// lstm_cell(input, hx, cx, w_ih, w_hh, b_ih?, b_hh?) -> (hy, cy, gates)

class LstmCellFunction : public torch::autograd::Function<LstmCellFunction> {
 public:
  // The op below autograd (the device kernel), called as a function.
  static auto op() {
    static const auto handle = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow("rnnext::lstm_cell", "")
                                   .typed<std::tuple<Tensor, Tensor, Tensor>(
                                       const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                       const OptTensor&, const OptTensor&)>();
    return [](auto&&... a) { return handle.call(a...); };
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx, const Tensor& cx,
                               const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh) {
    Tensor hy, cy, gates;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(hy, cy, gates) = op()(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
    }
    ctx->save_for_backward({input, hx, cx, w_ih, w_hh, or_undefined(b_ih), or_undefined(b_hh), gates, cy});
    ctx->mark_non_differentiable({gates});
    ctx->set_materialize_grads(false);
    return {hy, cy, gates};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("rnnext::lstm_cell_backward", "")
            .typed<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
                const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                const Tensor&, const Tensor&, const Tensor&, bool)>();
    const variable_list s = ctx->get_saved_variables();
    const Tensor &input = s[0], &hx = s[1], &cx = s[2], &w_ih = s[3], &w_hh = s[4], &b_ih = s[5], &b_hh = s[6];
    const Tensor &gates = s[7], &cy = s[8];
    Tensor grad_hy = grads[0], grad_cy = grads[1];
    variable_list result(7);
    if (!grad_hy.defined() && !grad_cy.defined()) return result;
    if (at::GradMode::is_enabled()) {  // create_graph=True: a differentiable backward
      auto [h1, c1] = at::lstm_cell(input, {hx, cx}, w_ih, w_hh, defined_or_none(b_ih), defined_or_none(b_hh));
      return differentiate({h1, c1}, {grad_hy, grad_cy}, {input, hx, cx, w_ih, w_hh, b_ih, b_hh});
    }
    if (!grad_hy.defined()) grad_hy = at::zeros_like(cy);
    if (!grad_cy.defined()) grad_cy = at::zeros_like(cy);
    const bool has_bias = b_ih.defined() || b_hh.defined();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [g_in, g_hx, g_cx, g_wih, g_whh, g_b] =
        op.call(grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, gates, cy, has_bias);
    result = {g_in, g_hx, g_cx, g_wih, g_whh, b_ih.defined() ? g_b : Tensor(), b_hh.defined() ? g_b : Tensor()};
    return result;
  }
};

std::tuple<Tensor, Tensor, Tensor> lstm_cell_autograd(const Tensor& input, const Tensor& hx, const Tensor& cx,
                                                      const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                                      const OptTensor& b_hh) {
  if (!any_requires_grad({&input, &hx, &cx, &w_ih, &w_hh, opt_ptr(b_ih), opt_ptr(b_hh)})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return LstmCellFunction::op()(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  }
  const variable_list out = LstmCellFunction::apply(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  return {out[0], out[1], out[2]};
}

// ---------------------------------------------------------------------------------------------------------
// rnn_cell(input, hx, w_ih, w_hh, b_ih?, b_hh?, cell) -> (hy, saved)

class RnnCellFunction : public torch::autograd::Function<RnnCellFunction> {
 public:
  static auto op() {
    static const auto handle = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow("rnnext::rnn_cell", "")
                                   .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                     const Tensor&, const OptTensor&,
                                                                     const OptTensor&, c10::string_view)>();
    return [](auto&&... a) { return handle.call(a...); };
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                               const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                               c10::string_view cell) {
    Tensor hy, saved;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(hy, saved) = op()(input, hx, w_ih, w_hh, b_ih, b_hh, cell);
    }
    ctx->save_for_backward({input, hx, w_ih, w_hh, or_undefined(b_ih), or_undefined(b_hh), hy, saved});
    ctx->saved_data["cell"] = std::string(cell.data(), cell.size());
    ctx->mark_non_differentiable({saved});
    ctx->set_materialize_grads(false);
    return {hy, saved};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("rnnext::rnn_cell_backward", "")
            .typed<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
                const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                const Tensor&, c10::string_view, bool)>();
    const variable_list s = ctx->get_saved_variables();
    const Tensor &input = s[0], &hx = s[1], &w_ih = s[2], &w_hh = s[3], &b_ih = s[4], &b_hh = s[5];
    const Tensor &hy = s[6], &saved = s[7];
    const std::string cell = ctx->saved_data["cell"].toStringRef();
    const Tensor& grad_hy = grads[0];
    variable_list result(7);
    if (!grad_hy.defined()) return result;
    if (at::GradMode::is_enabled()) {  // create_graph=True: a differentiable backward
      const OptTensor bi = defined_or_none(b_ih), bh = defined_or_none(b_hh);
      const Tensor h1 = cell == "gru"        ? at::gru_cell(input, hx, w_ih, w_hh, bi, bh)
                        : cell == "rnn_relu" ? at::rnn_relu_cell(input, hx, w_ih, w_hh, bi, bh)
                                             : at::rnn_tanh_cell(input, hx, w_ih, w_hh, bi, bh);
      result = differentiate({h1}, {grad_hy}, {input, hx, w_ih, w_hh, b_ih, b_hh});
      result.emplace_back();
      return result;
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [g_in, g_hx, g_wih, g_whh, g_bih, g_bhh] =
        op.call(grad_hy, input, hx, w_ih, w_hh, hy, saved, cell, b_ih.defined() || b_hh.defined());
    return {g_in, g_hx, g_wih, g_whh, b_ih.defined() ? g_bih : Tensor(), b_hh.defined() ? g_bhh : Tensor(),
            Tensor()};
  }
};

std::tuple<Tensor, Tensor> rnn_cell_autograd(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                             const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                             c10::string_view cell) {
  if (!any_requires_grad({&input, &hx, &w_ih, &w_hh, opt_ptr(b_ih), opt_ptr(b_hh)})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return RnnCellFunction::op()(input, hx, w_ih, w_hh, b_ih, b_hh, cell);
  }
  const variable_list out = RnnCellFunction::apply(input, hx, w_ih, w_hh, b_ih, b_hh, cell);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnext, Autograd, m) {
  m.impl("lstm_cell", &lstm_cell_autograd);
  m.impl("rnn_cell", &rnn_cell_autograd);
}

}  // namespace rnnext::autograd
