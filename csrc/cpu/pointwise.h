// Vectorized pointwise loops of the CPU kernels. They live in their own translation unit, free of ATen
// headers, and are compiled for several instruction sets (AVX-512, AVX2, baseline), the best one picked at
// load time. Each call covers a tile (rows x unit blocks) so that the call overhead is paid once per tile.
#pragma once
#include <cstdint>

namespace rnnext::cpu {

// Where the gates of unit block k sit in a row of 4H gate columns. Blocked: the layout of
// kernels/lstm_layout.h (blocks of kUnitBlock units, a block's four gates adjacent). Standard: PyTorch's
// (one block of all H units, gate g at column g * H).
struct GateLayout {
  int64_t H;
  bool blocked;
};

// LSTM forward over rows [0, rows) and unit blocks [k0, k1). `gates` (row stride ld_g) holds the gate
// pre-activations, without the bias when `bias` (4H, same layout) is given, and is overwritten with the
// activations. c_prev and c_out (row stride H) may alias. c_save (row stride H) and y (row stride ld_y) may
// be null; h has row stride ld_h.
template <typename T>
void lstm_forward_tile(GateLayout layout, int64_t rows, int64_t k0, int64_t k1, T* gates, int64_t ld_g,
                       const T* bias, const T* c_prev, T* c_out, T* c_save, T* h, int64_t ld_h, T* y, int64_t ld_y);

// LSTM backward over rows [0, rows) and unit blocks [k0, k1). acts (ld_g) and c (row stride H) are the saved
// activations and cell states of the step; row b's previous cell state is row b of c_prev_a if b < n_prev_a,
// else row b of c_prev_b (both row stride H). dh = dh_a (row stride ld_dh) + dh_b (row stride ld_dhb, may be null). dc (row stride
// H) holds the incoming dc and is overwritten with dc_prev; dgates (ld_g) receives the pre-activation grads.
template <typename T>
void lstm_backward_tile(GateLayout layout, int64_t rows, int64_t k0, int64_t k1, const T* acts, int64_t ld_g,
                        const T* c, const T* c_prev_a, int64_t n_prev_a, const T* c_prev_b, const T* dh_a,
                        const T* dh_b, int64_t ld_dh, int64_t ld_dhb, T* dc, T* dgates);

// h = o * tanh(c) over rows [0, rows), all units (recomputes the unprojected h when proj_size > 0).
template <typename T>
void lstm_hidden_tile(GateLayout layout, int64_t rows, const T* acts, int64_t ld_g, const T* c, T* h);

// TreeLSTM composition over rows [0, rows): pre (row stride 5H) holds the pre-activations a, i, f1, f2, o
// (bias added when given); acts (row stride 5H, may be pre itself) receives the activations; c_left and c_right
// have row stride ld_cc; h and c are written with row strides ld_hc.
template <typename T>
void treelstm_forward_rows(int64_t rows, int64_t H, const T* pre, const T* bias, const T* c_left, const T* c_right,
                           int64_t ld_cc, T* acts, T* h, T* c, int64_t ld_hc);

// TreeLSTM backward over rows [0, rows): from the activations, c (stride ld_hc), the children's c (stride
// ld_cc), dh and dc (stride ld_d), writes the pre-activation gradients (stride 5H) and the children's c
// gradients (stride ld_dcc).
template <typename T>
void treelstm_backward_rows(int64_t rows, int64_t H, const T* acts, const T* c, int64_t ld_hc, const T* c_left,
                            const T* c_right, int64_t ld_cc, const T* dh, const T* dc, int64_t ld_d, T* dpre,
                            T* dc_left, T* dc_right, int64_t ld_dcc);

// lstm_forward_tile for a bfloat16 layer on AVX-512 (only where pointwise_has_avx512() and the CPU has
// AVX512-BF16): float32 gates and cell state, h rounded to bfloat16 (nearest, ties to even) into h and y
// (raw 16-bit patterns; y may be null); the activations overwrite the gates only with keep_acts.
void lstm_forward_tile_bf16_avx512(GateLayout layout, int64_t rows, int64_t k0, int64_t k1, float* gates,
                                   int64_t ld_g, bool keep_acts, const float* bias, const float* c_prev,
                                   float* c_out, float* c_save, uint16_t* h, int64_t ld_h, uint16_t* y,
                                   int64_t ld_y);

// lstm_backward_tile for a bfloat16 layer on AVX-512 (where lstm_forward_tile_bf16_avx512 runs): the
// pre-activation gradients rounded to bfloat16 into dg16 (raw 16-bit patterns, row stride ld_g) and added, in
// float32 and row by row, to bias_acc (G, the gate columns).
void lstm_backward_tile_bf16_avx512(GateLayout layout, int64_t rows, int64_t k0, int64_t k1, const float* acts,
                                    int64_t ld_g, const float* c, const float* c_prev_a, int64_t n_prev_a,
                                    const float* c_prev_b, const float* dh_a, const float* dh_b, int64_t ld_dh,
                                    int64_t ld_dhb, float* dc, uint16_t* dg16, float* bias_acc);

// Whether the AVX-512 versions run (the CPU has AVX-512F and RNNEXT_DISABLE_AVX512 is not 1).
bool pointwise_has_avx512();

// GRU forward/backward over rows [0, rows) of H units, on AVX-512 (only where pointwise_has_avx512()): the
// per-element math of kernels/gru.h; the layouts of cpu/rnn_layer.cpp's gru_forward_rows/gru_backward_rows.
void gru_forward_rows_avx512(int64_t rows, int64_t H, const float* gx, const float* gh, float* h, float* h_out,
                             float* saved);
void gru_backward_rows_avx512(int64_t rows, int64_t H, const float* saved, const float* h_prev, const float* dh,
                              float* dgx, float* dgh, float* dh_direct);
// Their versions for a native bfloat16 layer (AVX-512F instructions only): the outputs h_out and the states read
// h_prev in bfloat16 (raw 16-bit patterns, rounded as round_to_bf16 does), the state h float32. The backward
// reads the gradient reaching each new state as dh + dy (dy bfloat16; dh in place: it receives the direct part of the
// gradient into the previous state), writes the gate gradients rounded to bfloat16 (dgx16, dgh16: (rows, 3H))
// and adds them, in float32 and row by row, to bias_acc (4H: dgx's 3H columns, then dgh's n part).
void gru_forward_rows_bf16_avx512(int64_t rows, int64_t H, const float* gx, const float* gh, float* h,
                                  uint16_t* h_out, float* saved);
void gru_backward_rows_bf16_avx512(int64_t rows, int64_t H, const float* saved, const uint16_t* h_prev,
                                   const uint16_t* dy, float* dh, uint16_t* dgx16, uint16_t* dgh16,
                                   float* bias_acc);

}  // namespace rnnext::cpu
