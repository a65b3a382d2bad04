// The LSTM cell's per-element math, forward and backward, shared by the CPU and CUDA kernels.
// Gate order is PyTorch's: input, forget, cell (g), output.
#pragma once
#include "kernels/activations.h"

namespace rnnext::kernels {

// The four gate activations. (A vector type may overload this to evaluate the four together.)
template <typename T>
RNNEXT_HD void lstm_gate_activations(T pi, T pf, T pg, T po, T& i, T& f, T& g, T& o) {
  i = sigmoid(pi);
  f = sigmoid(pf);
  g = tanh_act(pg);
  o = sigmoid(po);
}

// Pre-activations (pi, pf, pg, po) and the previous cell state in; activations and c out.
template <typename T>
RNNEXT_HD void lstm_forward_gates_elem(T pi, T pf, T pg, T po, T c_prev, T& i, T& f, T& g, T& o, T& c) {
  lstm_gate_activations(pi, pf, pg, po, i, f, g, o);
  c = f * c_prev + i * g;
}

// The same and h.
template <typename T>
RNNEXT_HD void lstm_forward_elem(T pi, T pf, T pg, T po, T c_prev, T& i, T& f, T& g, T& o, T& c, T& h) {
  lstm_forward_gates_elem(pi, pf, pg, po, c_prev, i, f, g, o, c);
  h = o * tanh_act(c);
}

// Gradients with respect to the four pre-activations and to c_prev, given tc = tanh(c), dh and the incoming dc.
template <typename T>
RNNEXT_HD void lstm_backward_elem_tc(T i, T f, T g, T o, T tc, T c_prev, T dh, T dc_in, T& dpi, T& dpf, T& dpg,
                                     T& dpo, T& dc_prev) {
  const T dc = dc_in + dh * o * (T(1) - tc * tc);
  dpo = dh * tc * o * (T(1) - o);
  dpi = dc * g * i * (T(1) - i);
  dpf = dc * c_prev * f * (T(1) - f);
  dpg = dc * i * (T(1) - g * g);
  dc_prev = dc * f;
}

// The same given c.
template <typename T>
RNNEXT_HD void lstm_backward_elem(T i, T f, T g, T o, T c, T c_prev, T dh, T dc_in, T& dpi, T& dpf, T& dpg,
                                  T& dpo, T& dc_prev) {
  lstm_backward_elem_tc(i, f, g, o, tanh_act(c), c_prev, dh, dc_in, dpi, dpf, dpg, dpo, dc_prev);
}

}  // namespace rnnext::kernels
