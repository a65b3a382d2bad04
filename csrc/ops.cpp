// The rnnext op catalogue: every schema, in one TORCH_LIBRARY block. Kernels register per backend in
// cpu/<topic>.cpp and cuda/<topic>.cu; autograd and fake (meta) kernels are registered in rnnext/_ops.py.
#include <torch/library.h>

#include <vector>

TORCH_LIBRARY(rnnext, m) {
  // Inductor must hand the ops their inputs with the strides seen when tracing (autograd saves some inputs
  // for the backward op, whose graph is compiled separately).
  const std::vector<at::Tag> fixed = {at::Tag::needs_fixed_stride_order};
  // ---- LSTM (csrc/cpu/lstm_cell.cpp, csrc/cpu/lstm_layer.cpp, csrc/kernels/lstm.h) ----
  // One step: gates = input W_ih^T + b_ih + hx W_hh^T + b_hh -> (hy, cy, gate activations [B, 4H]).
  m.def("lstm_cell(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh)"
        " -> (Tensor hy, Tensor cy, Tensor gates)", fixed);
  // -> (grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias ([4H], or [0] when has_bias is false)).
  m.def("lstm_cell_backward(Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor hx, Tensor cx, Tensor w_ih,"
        " Tensor w_hh, Tensor gates, Tensor cy, bool has_bias)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", fixed);
  // One layer, one direction over a whole sequence. input is dense (T, B, I) ((B, T, I) with batch_first),
  // packed data (N, I) with batch_sizes, or padded (T, B, I) with batch_sizes: variable lengths without
  // packing, step t running the entries sorted_indices[0 .. batch_sizes[t]) (identity when absent), the output
  // zero at the padding. hx, cx, hy, cy are in batch order (packed: the packed order). With train, also returns
  // what the backward needs: gate activations (rows, 4H, blocked layout) and cell states (rows, H), rows =
  // N packed or T * B; otherwise those two are empty.
  m.def("lstm_layer(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh,"
        " Tensor? w_hr, Tensor? batch_sizes, Tensor? sorted_indices, bool batch_first, bool reverse, bool train)"
        " -> (Tensor output, Tensor hy, Tensor cy, Tensor gates, Tensor cells)", fixed);
  // -> (grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias or [0], grad_w_hr or [0]).
  m.def("lstm_layer_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor hx,"
        " Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor? batch_sizes, Tensor? sorted_indices,"
        " bool batch_first, Tensor output, Tensor gates, Tensor cells, bool reverse, bool has_bias)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", fixed);

  // ---- Packed sequences (csrc/cpu/packing.cpp) ----
  // Padded (T, B, *) (or (B, T, *) with batch_first) -> PackedSequence data (total_rows, *): step t takes the
  // batch entries sorted_indices[0 .. batch_sizes[t]) (identity when absent). Its backward is packed_scatter.
  m.def("packed_gather(Tensor input, Tensor batch_sizes, Tensor? sorted_indices, bool batch_first,"
        " SymInt total_rows) -> Tensor", fixed);
  // PackedSequence data (N, *) -> padded (total_length, batch, *) (or batch-first), padding_value elsewhere.
  // Its backward is packed_gather.
  m.def("packed_scatter(Tensor data, Tensor batch_sizes, Tensor? sorted_indices, bool batch_first,"
        " Scalar padding_value, SymInt batch, SymInt total_length) -> Tensor", fixed);
}
