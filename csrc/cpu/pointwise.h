// Vectorized pointwise loops of the CPU kernels (one row of one block of units at a time). They live in
// their own translation unit, free of ATen headers, and are compiled for several instruction sets
// (AVX-512, AVX2, baseline) with the best one picked at load time.
#pragma once
#include <cstdint>

namespace rnnext::cpu {

// LSTM forward for w units of one row. `gates` holds the four pre-activations at stride gs (i at 0, f at gs,
// g at 2 gs, o at 3 gs) and is overwritten with the activations. c_out may alias c_prev.
// c_save and h_out2 may be null.
template <typename T>
void lstm_pointwise_forward(int64_t w, int64_t gs, T* gates, const T* c_prev, T* c_out, T* c_save, T* h_out,
                            T* h_out2);

// LSTM backward for w units of one row: dh = dh_a + dh_b (dh_b may be null); dc holds the incoming dc and
// is overwritten with dc_prev; dgates receives the four pre-activation gradients at stride gs.
template <typename T>
void lstm_pointwise_backward(int64_t w, int64_t gs, const T* acts, const T* c, const T* c_prev, const T* dh_a,
                             const T* dh_b, T* dc, T* dgates);

// h = o * tanh(c) from saved activations (for recomputing the unprojected h of an LSTM with proj_size).
template <typename T>
void lstm_pointwise_hidden(int64_t w, int64_t gs, const T* acts, const T* c, T* h);

}  // namespace rnnext::cpu
