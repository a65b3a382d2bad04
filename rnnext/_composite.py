"""Plain-PyTorch twins of the differentiable rnnext ops, with the ops' exact semantics (layouts, lengths,
reverse direction, projection, the thin stack).

They are what the ops' backward runs when autograd records the backward itself (``create_graph=True``: a
gradient penalty, a Hessian-vector product, ``gradgradcheck``): the fused backward kernels compute numbers,
not a graph, so the backward then recomputes the forward with these differentiable functions and
differentiates that. Slower than the kernels, and only used in that case. (The one-step cells, whose autograd is
in C++, recompute with ATen's own cells instead: csrc/autograd/cells.cpp. ``rnn_cell`` stays as a test oracle.)
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor


def _bias(b_ih: Optional[Tensor], b_hh: Optional[Tensor]):
    if b_ih is None:
        return b_hh
    return b_ih if b_hh is None else b_ih + b_hh


def lstm_step(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor]):
    gates = x @ w_ih.t() + h @ w_hh.t()
    if bias is not None:
        gates = gates + bias
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def treelstm_cell(lstm_in: Tensor, c_left: Tensor, c_right: Tensor) -> Tuple[Tensor, Tensor]:
    a, i, f1, f2, o = lstm_in.chunk(5, 1)
    c = torch.tanh(a) * torch.sigmoid(i) + torch.sigmoid(f1) * c_left + torch.sigmoid(f2) * c_right
    return torch.sigmoid(o) * torch.tanh(c), c


def lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, sorted_indices, batch_first, reverse,
               lengths=None) -> Tuple[Tensor, Tensor, Tensor]:
    """rnnext::lstm_layer's (output, hy, cy): every layout is run as a padded (T, B, I) batch with one length
    per batch entry (slot order for packed data), masked past each length."""
    x, lens, restore = _padded_view(input, hx, batch_sizes, sorted_indices, batch_first, lengths)
    bias = _bias(b_ih, b_hh)
    P = hx.size(1)

    def step(xt, hc):  # h and c side by side, so that one masked recurrence carries both
        h_new, c_new = lstm_step(xt, hc[:, :P], hc[:, P:], w_ih, w_hh, bias)
        if w_hr is not None:
            h_new = h_new @ w_hr.t()
        return torch.cat([h_new, c_new], 1)

    out, hc = _masked_recurrence(x, lens, torch.cat([hx, cx], 1), step, reverse)
    return restore(out[..., :P]), hc[:, :P], hc[:, P:]


def _padded_view(input, hx, batch_sizes, sorted_indices, batch_first, lengths=None):
    """Any layer layout as a padded (T, B, I) batch, each batch entry's length (slot order for packed data) and
    a function putting a (T, B, F) result back in the input's layout."""
    if input.dim() == 2:  # packed
        bs = batch_sizes.to("cpu", torch.int64)
        T = bs.numel()
        B = int(bs[0]) if T > 0 else hx.size(0)
        valid = (torch.arange(B).unsqueeze(0) < bs.unsqueeze(1)).reshape(-1)  # (T * B), packed row order
        rows = valid.nonzero().squeeze(1).to(input.device)
        x = input.new_zeros(T * B, input.size(1)).index_copy(0, rows, input).view(T, B, -1)
        lens = bs.new_zeros(B) if T == 0 else (torch.arange(B).unsqueeze(0) < bs.unsqueeze(1)).sum(0)
        return x, lens.to(input.device), lambda out: out.reshape(T * B, -1).index_select(0, rows)
    x = input.transpose(0, 1) if batch_first else input
    T, B = x.size(0), x.size(1)
    if lengths is not None:
        lens = lengths.to(torch.int64).clamp(0, T)
    elif batch_sizes is not None:
        bs = batch_sizes.to("cpu", torch.int64)
        slot_len = (torch.arange(B).unsqueeze(1) < bs.unsqueeze(0)).sum(1)
        order = sorted_indices.cpu() if sorted_indices is not None else torch.arange(B)
        lens = torch.empty(B, dtype=torch.int64).index_copy_(0, order, slot_len)
    else:
        lens = torch.full((B,), T, dtype=torch.int64)
    return x, lens.to(x.device), (lambda out: out.transpose(0, 1)) if batch_first else (lambda out: out)


def _masked_recurrence(x, lens, h, step, reverse):
    """Runs step(x_t, h) -> h' over a padded (T, B, I) batch, each entry only while t < its length; returns the
    (T, B, H) outputs (zero past each length) and the final h."""
    T = x.size(0)
    outs: List[Optional[Tensor]] = [None] * T
    for p in range(T):
        t = T - 1 - p if reverse else p
        h_new = step(x[t], h)
        active = (lens > t).unsqueeze(1)
        h = torch.where(active, h_new, h)
        outs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
    out = torch.stack(outs) if T > 0 else x.new_zeros(0, x.size(1), h.size(1))
    return out, h


def rnn_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
             cell: str) -> Tensor:
    """One GRU / RNN step (PyTorch's gate order and reset-gate placement)."""
    gx = x @ w_ih.t() + (b_ih if b_ih is not None else 0)
    gh = h @ w_hh.t() + (b_hh if b_hh is not None else 0)
    if cell == "gru":
        xr, xz, xn = gx.chunk(3, 1)
        hr, hz, hn = gh.chunk(3, 1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h
    return torch.relu(gx + gh) if cell == "rnn_relu" else torch.tanh(gx + gh)


def rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, cell) -> Tuple[Tensor]:
    """rnnext::rnn_cell's (hy,)."""
    return (rnn_step(input, hx, w_ih, w_hh, b_ih, b_hh, cell),)


def rnn_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, sorted_indices, batch_first, reverse, cell,
              lengths=None):
    """rnnext::rnn_layer's (output, hy) for cell "gru", "rnn_tanh" or "rnn_relu"."""
    x, lens, restore = _padded_view(input, hx, batch_sizes, sorted_indices, batch_first, lengths)
    out, h = _masked_recurrence(x, lens, hx, lambda xt, h: rnn_step(xt, h, w_ih, w_hh, b_ih, b_hh, cell), reverse)
    return restore(out), h


def spinn_encode(buffers, transitions, lengths, w_comp, b_comp, t_w_ih, t_w_hh, t_b_ih, t_b_hh):
    """rnnext::spinn_encode's (top, tracker_h), from the thin stack's plan and a Python loop over steps."""
    N, B, W = buffers.shape
    H = W // 2
    S = transitions.size(0)
    left, right, node, trk_buf, trk_top, trk_2nd, final_top = torch.ops.rnnext.thin_stack_plan(
        transitions.cpu(), N, lengths.cpu() if lengths is not None else None)
    table = torch.cat([buffers.new_zeros(1, W), buffers.reshape(N * B, W)])
    tracker = t_w_hh is not None
    dev = buffers.device
    trk_h: List[Tensor] = []
    if tracker:
        Tt = t_w_hh.size(1)
        h = buffers.new_zeros(B, Tt)
        c = buffers.new_zeros(B, Tt)
        t_bias = _bias(t_b_ih, t_b_hh)
    for t in range(S):
        if tracker:
            xt = torch.cat([table[trk_buf[t].to(dev), :H], table[trk_top[t].to(dev), :H],
                            table[trk_2nd[t].to(dev), :H]], 1)
            h, c = lstm_step(xt, h, c, t_w_ih, t_w_hh, t_bias)
            trk_h.append(h)
        rows = (node[t] >= 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        lt, rt = table[left[t, rows].to(dev)], table[right[t, rows].to(dev)]
        parts = [lt[:, :H], rt[:, :H]] + ([h[rows.to(dev)]] if tracker else [])
        lstm_in = torch.cat(parts, 1) @ w_comp.t()
        if b_comp is not None:
            lstm_in = lstm_in + b_comp
        nh, nc = treelstm_cell(lstm_in, lt[:, H:], rt[:, H:])
        table = torch.cat([table, torch.cat([nh, nc], 1)])  # node k is row 1 + N B + k: (step, row) order
    top = table[final_top.to(dev), :H]
    tracker_h = torch.stack(trk_h) if tracker and S > 0 else buffers.new_zeros(
        (S, B, t_w_hh.size(1)) if tracker else (0,))
    return top, tracker_h


def differentiate(fn, inputs: Sequence, outputs_grads: Sequence[Optional[Tensor]]) -> List[Optional[Tensor]]:
    """Gradients of fn(*inputs) (a tuple of tensors) against every input that requires grad, given the
    gradients of its outputs, as a differentiable graph (for double backward). Other entries are None."""
    with torch.enable_grad():
        outs = fn(*inputs)
        pairs = [(o, g) for o, g in zip(outs, outputs_grads) if g is not None and o.requires_grad]
        wanted = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
        result: List[Optional[Tensor]] = [None] * len(inputs)
        if not pairs or not wanted:
            return result
        grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
                                    create_graph=True, allow_unused=True)
    for i, g in zip(wanted, grads):
        result[i] = g
    return result
