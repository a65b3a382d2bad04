// The masked (full-batch) LSTM layer step, per element, shared by the CPU and CUDA kernels. A padded batch
// (T, B) with per-entry lengths read where the kernel runs (so a GPU never waits for the host to learn them)
// runs every entry at every step; entry b is active at time t when t < len(b), len clamped to [0, T].
// An inactive entry keeps its state, its output is zero, its gate gradients are zero and the gradients of its
// state pass through unchanged. Workspace rows (gates, cells) are time-major: t * B + b. A cell row of an
// inactive step holds the carried state, so the cell state a step read is always the previous step's row (or
// c0 at the first processed step).
#pragma once
#include <cstdint>

#include "kernels/lstm.h"

namespace rnnext::kernels {

RNNEXT_HD int64_t masked_length(int64_t len, int64_t T) { return len < 0 ? 0 : (len > T ? T : len); }

// Row of (t, b) in a (T, B, *) input or output, or a (B, T, *) one when batch_first.
RNNEXT_HD int64_t padded_row(int64_t t, int64_t b, int64_t T, int64_t B, bool batch_first) {
  return batch_first ? b * T + t : t * B + b;
}

// Forward, entry b and unit u of the step at time t. g: the entry's workspace row (4H, gate order i f g o)
// holding the recurrent pre-activations h W_hh^T, overwritten with the activations (zeros when inactive);
// xp: the input projection row of (t, b); bias (4H) or null; c_state: the entry's cell state (updated in
// place); c_save: the entry's cells row of this step or null; y: the output row, or null with a projection;
// h_dst: where h goes (without a projection the state, with one (y null) the unprojected h: zero when inactive).
template <typename T, typename Acc>
RNNEXT_HD void lstm_masked_forward_point(bool active, int64_t H, int64_t u, T* g, const T* xp, const T* bias,
                                         T* c_state, T* c_save, T* h_dst, T* y) {
  if (active) {
    Acc p[4];
    for (int k = 0; k < 4; ++k)
      p[k] = static_cast<Acc>(g[k * H + u]) + static_cast<Acc>(xp[k * H + u]) +
             (bias ? static_cast<Acc>(bias[k * H + u]) : Acc(0));
    Acc i, f, gg, o, c, h;
    lstm_forward_elem<Acc>(p[0], p[1], p[2], p[3], static_cast<Acc>(c_state[u]), i, f, gg, o, c, h);
    g[u] = static_cast<T>(i);
    g[H + u] = static_cast<T>(f);
    g[2 * H + u] = static_cast<T>(gg);
    g[3 * H + u] = static_cast<T>(o);
    c_state[u] = static_cast<T>(c);
    h_dst[u] = static_cast<T>(h);
    if (y) y[u] = static_cast<T>(h);
  } else {
    for (int k = 0; k < 4; ++k) g[k * H + u] = T(0);
    if (y)
      y[u] = T(0);
    else
      h_dst[u] = T(0);
  }
  if (c_save) c_save[u] = c_state[u];
}

// With a projection: unit q of the projected h of an entry becomes its state and output when active.
template <typename T>
RNNEXT_HD void lstm_masked_projection_point(bool active, int64_t q, const T* h_proj, T* h_state, T* y) {
  if (active) h_state[q] = h_proj[q];
  y[q] = active ? h_proj[q] : T(0);
}

// Backward, entry b and unit u of the step at time t. a, c: the step's activations and cell rows; c_prev: the
// cell state the step read; dh = dh_a[u] (+ dy[u] when dy is given); dc_state: the gradient of the entry's cell
// state after the step, replaced by that before it; dg: the entry's gate-gradient row (zeros when inactive).
template <typename T, typename Acc>
RNNEXT_HD void lstm_masked_backward_point(bool active, int64_t H, int64_t u, const T* a, const T* c,
                                          const T* c_prev, const T* dh_a, const T* dy, T* dc_state, T* dg) {
  if (!active) {
    for (int k = 0; k < 4; ++k) dg[k * H + u] = T(0);
    return;
  }
  const Acc dh = static_cast<Acc>(dh_a[u]) + (dy ? static_cast<Acc>(dy[u]) : Acc(0));
  Acc di, df, dgg, dout, dcp;
  lstm_backward_elem<Acc>(static_cast<Acc>(a[u]), static_cast<Acc>(a[H + u]), static_cast<Acc>(a[2 * H + u]),
                          static_cast<Acc>(a[3 * H + u]), static_cast<Acc>(c[u]), static_cast<Acc>(c_prev[u]), dh,
                          static_cast<Acc>(dc_state[u]), di, df, dgg, dout, dcp);
  dg[u] = static_cast<T>(di);
  dg[H + u] = static_cast<T>(df);
  dg[2 * H + u] = static_cast<T>(dgg);
  dg[3 * H + u] = static_cast<T>(dout);
  dc_state[u] = static_cast<T>(dcp);
}

// With a projection: the gradient (unit q) reaching the projected h of an active step, zero otherwise (an
// inactive step did not use the projection).
template <typename T, typename Acc>
RNNEXT_HD void lstm_masked_projection_grad_point(bool active, int64_t q, const T* dh_state, const T* dy, T* dh_proj) {
  dh_proj[q] = active ? static_cast<T>(static_cast<Acc>(dh_state[q]) + static_cast<Acc>(dy[q])) : T(0);
}

// The recurrent gradient: an active entry's state gradient becomes dgates W_hh (unit q); an inactive one
// carries its own.
template <typename T>
RNNEXT_HD void lstm_masked_carry_point(bool active, int64_t q, const T* dh_recurrent, T* dh_state) {
  if (active) dh_state[q] = dh_recurrent[q];
}

// The h a step read (for the gradient of W_hh), unit q: the output of the previously processed step when the
// entry was active there, else h0 (the entry's first step; or an inactive step, whose gate gradients are zero).
template <typename T>
RNNEXT_HD void lstm_masked_h_prev_point(bool prev_active, int64_t q, const T* y_prev, const T* h0, T* h_prev) {
  h_prev[q] = prev_active ? y_prev[q] : h0[q];
}

}  // namespace rnnext::kernels
