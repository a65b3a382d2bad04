// The TreeLSTM composition (SPINN's Reduce) per element, forward and backward, shared by the CPU and CUDA
// kernels. The five chunks of lstm_in are, in order, a, i, f1, f2, o:
//   c = tanh(a) sigmoid(i) + sigmoid(f1) c_left + sigmoid(f2) c_right,   h = sigmoid(o) tanh(c).
#pragma once
#include "kernels/activations.h"

namespace rnnext::kernels {

template <typename T>
RNNEXT_HD void treelstm_forward_elem(T pa, T pi, T pf1, T pf2, T po, T c_left, T c_right, T& a, T& i, T& f1, T& f2,
                                     T& o, T& c, T& h) {
  a = tanh_act(pa);
  i = sigmoid(pi);
  f1 = sigmoid(pf1);
  f2 = sigmoid(pf2);
  o = sigmoid(po);
  c = a * i + f1 * c_left + f2 * c_right;
  h = o * tanh_act(c);
}

// Gradients of the five pre-activations and of both children's c, given dh and dc of the result.
template <typename T>
RNNEXT_HD void treelstm_backward_elem(T a, T i, T f1, T f2, T o, T c, T c_left, T c_right, T dh, T dc_in, T& dpa,
                                      T& dpi, T& dpf1, T& dpf2, T& dpo, T& dc_left, T& dc_right) {
  const T tc = tanh_act(c);
  const T dc = dc_in + dh * o * (T(1) - tc * tc);
  dpo = dh * tc * o * (T(1) - o);
  dpa = dc * i * (T(1) - a * a);
  dpi = dc * a * i * (T(1) - i);
  dpf1 = dc * c_left * f1 * (T(1) - f1);
  dpf2 = dc * c_right * f2 * (T(1) - f2);
  dc_left = dc * f1;
  dc_right = dc * f2;
}

}  // namespace rnnext::kernels
