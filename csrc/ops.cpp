// The rnnext op catalogue: every schema, in one TORCH_LIBRARY block. Kernels register per backend in
// cpu/<topic>.cpp and cuda/<topic>.cu; fake (meta) kernels and autograd are registered in rnnext/_ops.py, except
// the one-step cells' autograd (lstm_cell, rnn_cell: csrc/autograd/cells.cpp, for their per-call cost).
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
  // lengths (B) int64 on the input's device, instead of batch_sizes: masked mode for a padded input, every entry
  // runs at every step and entry b is active while t < lengths[b] (clamped to [0, T]; never read on the host
  // of a GPU input), keeping its state and giving zero output elsewhere; workspace rows are t * B + b, gates in
  // PyTorch's i f g o order (csrc/common/rnn_engine.h: masked mode is the engine's, every device).
  m.def("lstm_layer(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh,"
        " Tensor? w_hr, Tensor? batch_sizes, Tensor? sorted_indices, bool batch_first, bool reverse, bool train,"
        " Tensor? lengths=None) -> (Tensor output, Tensor hy, Tensor cy, Tensor gates, Tensor cells)", fixed);
  // -> (grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias or [0], grad_w_hr or [0]).
  m.def("lstm_layer_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor hx,"
        " Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor? batch_sizes, Tensor? sorted_indices,"
        " bool batch_first, Tensor output, Tensor gates, Tensor cells, bool reverse, bool has_bias,"
        " Tensor? lengths=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", fixed);

  // ---- GRU and vanilla RNN (csrc/common/rnn_engine.h, csrc/cpu/rnn_layer.cpp, csrc/kernels/gru.h) ----
  // One layer, one direction, of the cell "gru" (gates r, z, n; n = tanh(gx_n + r * (h W_hn^T + b_hn))),
  // "rnn_tanh" or "rnn_relu" (h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)), in PyTorch's parameter layout. The
  // input layouts are lstm_layer's: dense (T, B, I) ((B, T, I) with batch_first), packed (N, I) with
  // batch_sizes, padded with batch_sizes (and sorted_indices), and lstm_layer's masked mode (lengths on the
  // input's device, never read by the host). With train, GRU also returns what the backward
  // needs per workspace row (rows, 4H: r, z, n, h W_hn^T + b_hn); otherwise, and for RNN, that is empty.
  m.def("rnn_layer(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh,"
        " Tensor? batch_sizes, Tensor? sorted_indices, bool batch_first, bool reverse, bool train, str cell,"
        " Tensor? lengths=None) -> (Tensor output, Tensor hy, Tensor saved)", fixed);
  // -> (grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh (both [0] when has_bias is false)).
  m.def("rnn_layer_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor hx, Tensor w_ih,"
        " Tensor w_hh, Tensor? batch_sizes, Tensor? sorted_indices, bool batch_first, bool reverse, Tensor output,"
        " Tensor saved, str cell, bool has_bias, Tensor? lengths=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor,"
        " Tensor)", fixed);

  // One step of one layer (GRUCell / RNNCell): input (B, I), hx (B, H) -> (hy, saved). A pair of its own
  // beside rnn_layer: a step per call is the hot path of users' decoder loops, and the op's fixed cost (its
  // argument count included: torch.library's autograd binds every argument per call) is what they pay.
  m.def("rnn_cell(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, str cell)"
        " -> (Tensor hy, Tensor saved)", fixed);
  // -> (grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh (both [0] when has_bias is false)).
  m.def("rnn_cell_backward(Tensor grad_hy, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor hy,"
        " Tensor saved, str cell, bool has_bias) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", fixed);

  // ---- Packed sequences (csrc/cpu/packing.cpp) ----
  // Padded (T, B, *) (or (B, T, *) with batch_first) -> PackedSequence data (total_rows, *): step t takes the
  // batch entries sorted_indices[0 .. batch_sizes[t]) (identity when absent). Its backward is packed_scatter.
  m.def("packed_gather(Tensor input, Tensor batch_sizes, Tensor? sorted_indices, bool batch_first,"
        " SymInt total_rows) -> Tensor", fixed);
  // PackedSequence data (N, *) -> padded (total_length, batch, *) (or batch-first), padding_value elsewhere.
  // Its backward is packed_gather.
  m.def("packed_scatter(Tensor data, Tensor batch_sizes, Tensor? sorted_indices, bool batch_first,"
        " Scalar padding_value, SymInt batch, SymInt total_length) -> Tensor", fixed);

  // ---- Tree-structured models (csrc/cpu/treelstm.cpp, csrc/cpu/spinn.cpp, csrc/kernels/treelstm.h) ----
  // TreeLSTM composition: lstm_in (M, 5H) in chunks a, i, f1, f2, o -> (h, c, activations (M, 5H)).
  m.def("treelstm_cell(Tensor lstm_in, Tensor c_left, Tensor c_right) -> (Tensor h, Tensor c, Tensor acts)", fixed);
  // -> (grad_lstm_in, grad_c_left, grad_c_right).
  m.def("treelstm_cell_backward(Tensor grad_h, Tensor grad_c, Tensor acts, Tensor c, Tensor c_left,"
        " Tensor c_right) -> (Tensor, Tensor, Tensor)", fixed);
  // The thin stack: a batch of shift-reduce transition sequences (S, B) (SHIFT 0, REDUCE 1, PAD -1) over
  // buffers (N, B, 2H) of [h | c] token states, composing with a TreeLSTM whose input is
  // [h_left h_right (tracker h)] w_comp^T + b_comp, w_comp (5H, 2H [+ Tt]); with tracker weights (an LSTMCell of
  // input 3H: buffer top, stack top, stack second) the tracker steps at every step and feeds each REDUCE.
  // -> (final stack top h (B, H), tracker h (S, B, Tt) or [0], and the workspace for the backward:
  //     nodes (B (N - 1), 2H), node activations, tracker activations, tracker c; the last three [0] unless
  //     train).
  m.def("spinn_encode(Tensor buffers, Tensor transitions, Tensor? lengths, Tensor w_comp, Tensor? b_comp,"
        " Tensor? tracker_w_ih, Tensor? tracker_w_hh, Tensor? tracker_b_ih, Tensor? tracker_b_hh, bool train)"
        " -> (Tensor top, Tensor tracker_h, Tensor nodes, Tensor node_acts, Tensor tracker_acts, Tensor tracker_c)",
        fixed);
  // -> (grad_buffers, grad_w_comp, grad_b_comp or [0], grad_tracker_w_ih, grad_tracker_w_hh, grad_tracker_b);
  // the tracker gradients are [0] without a tracker.
  m.def("spinn_encode_backward(Tensor grad_top, Tensor grad_tracker_h, Tensor buffers, Tensor transitions,"
        " Tensor? lengths, Tensor w_comp, Tensor? b_comp, Tensor? tracker_w_ih, Tensor? tracker_w_hh,"
        " Tensor? tracker_b_ih, Tensor? tracker_b_hh, Tensor nodes, Tensor node_acts, Tensor tracker_h,"
        " Tensor tracker_acts, Tensor tracker_c) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", fixed);
  // The thin-stack layout for compositions run from Python: per (step, row) the references of a REDUCE's left
  // and right children and of the node it creates (-1 elsewhere), and of the tracker's reads (buffer top,
  // stack top, stack second); and each row's final top. References index
  // cat([zeros(1, D), buffers.flatten(0, 1), nodes]), nodes in (step, row) order.
  m.def("thin_stack_plan(Tensor transitions, int num_tokens, Tensor? lengths) -> (Tensor left, Tensor right,"
        " Tensor node, Tensor buffer_top, Tensor stack_top, Tensor stack_second, Tensor final_top)");

  // ---- Generation (csrc/cpu/generate.cpp, csrc/kernels/sampling.h) ----
  // The sampling loop of a character LSTM: from the logits (B, V) after the prime and the state (L, B, H) of
  // every layer, draws `steps` tokens per stream: argmax when temperature == 0, else from
  // softmax(logits / temperature) over the top_k largest (all when top_k <= 0) by inverse CDF on uniforms
  // (steps, B); each draw is embedded, run through every layer and projected by head_weight (V, H) + head_bias.
  m.def("lstm_generate(Tensor logits, Tensor h0, Tensor c0, Tensor embedding, Tensor[] w_ih, Tensor[] w_hh,"
        " Tensor?[] b_ih, Tensor?[] b_hh, Tensor head_weight, Tensor? head_bias, Tensor uniforms,"
        " float temperature, int top_k) -> Tensor", fixed);
  // The same loop for a GRU or RNN generator (cell "gru", "rnn_tanh" or "rnn_relu"; no cell state): every
  // layer's step is rnn_layer's cell step.
  m.def("rnn_generate(Tensor logits, Tensor h0, Tensor embedding, Tensor[] w_ih, Tensor[] w_hh, Tensor?[] b_ih,"
        " Tensor?[] b_hh, Tensor head_weight, Tensor? head_bias, Tensor uniforms, float temperature, int top_k,"
        " str cell) -> Tensor", fixed);
}
