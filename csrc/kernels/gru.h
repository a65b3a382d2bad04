// The GRU and vanilla RNN cells' per-element math, forward and backward, shared by the CPU and CUDA kernels.
// PyTorch's GRU (gate order r, z, n; gx = x W_ih^T + b_ih and gh = h W_hh^T + b_hh per gate):
//   r = sigmoid(gx_r + gh_r),  z = sigmoid(gx_z + gh_z),  n = tanh(gx_n + r * gh_n),  h' = (1 - z) n + z h.
// The recurrent part of n (gh_n, with b_hn) stays apart from the input part: the reset gate scales it alone.
// RNN: h' = act(gx + gh), act = tanh or relu.
#pragma once
#include "kernels/activations.h"

namespace rnnext::kernels {

template <typename T>
RNNEXT_HD void gru_forward_elem(T gx_r, T gx_z, T gx_n, T gh_r, T gh_z, T gh_n, T h, T& r, T& z, T& n, T& h_new) {
  r = sigmoid(gx_r + gh_r);
  z = sigmoid(gx_z + gh_z);
  n = tanh_act(gx_n + r * gh_n);
  h_new = n + z * (h - n);
}

// Given dh (the gradient into h'), the saved r, z, n, gh_n and the previous h: the gradients of the input and
// recurrent pre-activations (they differ only in n: d gh_n = d gx_n * r) and the direct part of d h.
template <typename T>
RNNEXT_HD void gru_backward_elem(T r, T z, T n, T gh_n, T h, T dh, T& dgx_r, T& dgx_z, T& dgx_n, T& dgh_n,
                                 T& dh_direct) {
  const T dn = dh * (T(1) - z);
  const T dz = dh * (h - n);
  dh_direct = dh * z;
  dgx_n = dn * (T(1) - n * n);
  dgh_n = dgx_n * r;
  const T dr = dgx_n * gh_n;
  dgx_r = dr * r * (T(1) - r);
  dgx_z = dz * z * (T(1) - z);
}

template <typename T>
RNNEXT_HD T rnn_activation(T pre, bool relu) {
  return relu ? (pre > T(0) || pre != pre ? pre : T(0)) : tanh_act(pre);  // NaN propagates, as in torch.relu
}

// The gradient of the pre-activation from dh and the output h' = act(pre). ReLU's is torch's
// threshold_backward(dh, h', 0): zero where h' <= 0, dh elsewhere, so a NaN h' passes dh (and its NaN) on.
template <typename T>
RNNEXT_HD T rnn_activation_backward(T h_new, T dh, bool relu) {
  return relu ? (h_new <= T(0) ? T(0) : dh) : dh * (T(1) - h_new * h_new);
}

}  // namespace rnnext::kernels
