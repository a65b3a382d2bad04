"""rnnext.nn.LSTM / LSTMCell against torch.nn.LSTM / LSTMCell on the CPU: dense, packed, inference and a
Python loop of cells, with the GEMM-only roofline and the bytes saved for backward."""

from __future__ import annotations

from typing import Dict, List

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnext

from .timing import Row, SavedBytes, time_interleaved

CONFIG = dict(T=64, B=64, I=128, H=256, min_len=8)


def _lstm_pair(I, H, **kw):
    torch.manual_seed(0)
    stock = torch.nn.LSTM(I, H, **kw)
    ours = rnnext.nn.LSTM(I, H, **kw)
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def _gemm_roofline_layer(rows_per_step: List[int], I: int, H: int, backward: bool):
    """Callable running the unavoidable GEMMs of one LSTM layer (torch.mm into preallocated outputs), and their
    GFLOP: input projection for all rows; per step h W_hh^T; backward: dgates W_hh per step, dX, dW_ih, dW_hh."""
    N, Bmax, G = sum(rows_per_step), max(rows_per_step), 4 * H
    X, W_ih, W_hh = torch.randn(N, I), torch.randn(G, I), torch.randn(G, H)
    h, gates = torch.randn(Bmax, H), torch.empty(N, G)
    dG, dh, dX = torch.randn(N, G), torch.empty(Bmax, H), torch.empty(N, I)
    dW_ih, dW_hh, Hall = torch.empty(G, I), torch.empty(G, H), torch.randn(N, H)
    offs = [0]
    for n in rows_per_step:
        offs.append(offs[-1] + n)

    def run():
        torch.mm(X, W_ih.t(), out=gates)
        for t, n in enumerate(rows_per_step):
            torch.mm(h[:n], W_hh.t(), out=gates[offs[t]:offs[t + 1]])
        if backward:
            for t, n in enumerate(rows_per_step):
                torch.mm(dG[offs[t]:offs[t + 1]], W_hh, out=dh[:n])
            torch.mm(dG, W_ih, out=dX)
            torch.mm(dG.t(), X, out=dW_ih)
            torch.mm(dG.t(), Hall, out=dW_hh)

    flop = 2 * N * G * (I + H) * (3 if backward else 1)
    return run, flop / 1e9


def _gemm_roofline_cell_loop(T, B, I, H):
    G = 4 * H
    x, h, W_ih, W_hh = torch.randn(B, I), torch.randn(B, H), torch.randn(G, I), torch.randn(G, H)
    g, dG = torch.empty(B, G), torch.randn(B, G)
    dx, dh, dW_ih, dW_hh = torch.empty(B, I), torch.empty(B, H), torch.empty(G, I), torch.empty(G, H)

    def run():
        for _ in range(T):
            torch.mm(x, W_ih.t(), out=g)
            torch.addmm(g, h, W_hh.t(), out=g)
        for _ in range(T):
            torch.mm(dG, W_ih, out=dx)
            torch.mm(dG, W_hh, out=dh)
            torch.mm(dG.t(), x, out=dW_ih)
            torch.mm(dG.t(), h, out=dW_hh)

    return run, 3 * 2 * T * B * G * (I + H) / 1e9


def run(rounds: int = 15, quick: bool = False) -> Dict[str, object]:
    c = dict(CONFIG)
    T, B, I, H = c["T"], c["B"], c["I"], c["H"]
    if quick:
        rounds = min(rounds, 7)
    torch.manual_seed(0)
    rows: List[Row] = []
    stock, ours = _lstm_pair(I, H)
    x = torch.randn(T, B, I, requires_grad=True)

    def fwd_bwd(m):
        def f():
            y, (h, cc) = m(x)
            y.sum().backward()
        return f

    def infer(m):
        def f():
            with torch.no_grad():
                m(x)
        return f

    roof_fb, gf_fb = _gemm_roofline_layer([B] * T, I, H, backward=True)
    t = time_interleaved({"stock": fwd_bwd(stock), "rnnext": fwd_bwd(ours), "gemm": roof_fb}, rounds)
    rows.append(Row("LSTM dense fwd+bwd", t["stock"], t["rnnext"], t["gemm"], gf_fb))

    roof_inf, gf_inf = _gemm_roofline_layer([B] * T, I, H, backward=False)
    t = time_interleaved({"stock": infer(stock), "rnnext": infer(ours), "gemm": roof_inf}, rounds)
    rows.append(Row("LSTM dense inference", t["stock"], t["rnnext"], t["gemm"], gf_inf))

    # Packed: lengths uniform in [min_len, T], the PackedSequence built once (outside the timing).
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(c["min_len"], T + 1, (B,), generator=g)
    lengths[0] = T
    packed0 = pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)
    data = packed0.data.clone().requires_grad_()
    packed = PackedSequence(data, packed0.batch_sizes, packed0.sorted_indices, packed0.unsorted_indices)

    def packed_fb(m):
        def f():
            y, _ = m(packed)
            y.data.sum().backward()
        return f

    roof_p, gf_p = _gemm_roofline_layer(packed0.batch_sizes.tolist(), I, H, backward=True)
    t = time_interleaved({"stock": packed_fb(stock), "rnnext": packed_fb(ours), "gemm": roof_p}, rounds)
    real = float(lengths.sum()) / (T * B)
    rows.append(Row("LSTM packed fwd+bwd", t["stock"], t["rnnext"], t["gemm"], gf_p, {"real_token_share": real}))

    # LSTMCell in a Python loop over T steps, forward + backward.
    torch.manual_seed(0)
    cell_s = torch.nn.LSTMCell(I, H)
    cell_r = rnnext.nn.LSTMCell(I, H)
    cell_r.load_state_dict(cell_s.state_dict())

    def cell_loop(cell):
        def f():
            h = torch.zeros(B, H)
            cc = torch.zeros(B, H)
            total = 0
            for step in range(T):
                h, cc = cell(x[step], (h, cc))
                total = total + h.sum()
            total.backward()
        return f

    roof_c, gf_c = _gemm_roofline_cell_loop(T, B, I, H)
    t = time_interleaved({"stock": cell_loop(cell_s), "rnnext": cell_loop(cell_r), "gemm": roof_c}, rounds)
    rows.append(Row(f"LSTMCell {T}-step loop fwd+bwd", t["stock"], t["rnnext"], t["gemm"], gf_c))

    # Bytes kept for backward by one dense forward (inputs and parameters left out).
    saved = {}
    for name, m in (("stock", stock), ("rnnext", ours)):
        with SavedBytes(exclude=[x, *m.parameters()]) as sb:
            y, _ = m(x)
        saved[name] = sb.bytes
        del y
    return {"config": c, "rows": rows, "saved_bytes": saved}
