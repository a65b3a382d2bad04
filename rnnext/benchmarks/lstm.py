"""rnnext.nn.LSTM / LSTMCell against torch.nn.LSTM / LSTMCell (on the CPU or a GPU): dense, packed, inference and a
Python loop of cells, with the GEMM-only roofline and the bytes saved for backward."""

from __future__ import annotations

from typing import Dict, List

import torch
from torch.nn.utils.rnn import PackedSequence

import rnnext

from .timing import RooflineTimer, Row, SavedBytes, cell_loop, forward_backward, inference, packed_batch, resolve_device

CONFIG = dict(T=64, B=64, I=128, H=256, min_len=8)


def _lstm_pair(I, H, device="cpu", **kw):
    torch.manual_seed(0)
    stock = torch.nn.LSTM(I, H, **kw).to(device)
    ours = rnnext.nn.LSTM(I, H, **kw).to(device)
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def layer_gflop(rows_per_step: List[int], I: int, H: int, backward: bool) -> float:
    """The unavoidable GEMM work of one LSTM layer: the input and recurrent projections of every real row
    (2 N 4H (I + H) FLOP), three times that with the backward (input, hidden and weight gradients)."""
    N = sum(rows_per_step)
    return 2 * N * 4 * H * (I + H) * (3 if backward else 1) / 1e9


def run(rounds: int = 15, quick: bool = False, device="cpu") -> Dict[str, object]:
    dev = resolve_device(device)
    c = dict(CONFIG)
    T, B, I, H = c["T"], c["B"], c["I"], c["H"]
    if quick:
        rounds = min(rounds, 7)
    torch.manual_seed(0)
    rows: List[Row] = []
    stock, ours = _lstm_pair(I, H, dev)
    x = torch.randn(T, B, I, device=dev, requires_grad=True)

    timed = RooflineTimer(rounds, dev)
    gf = layer_gflop([B] * T, I, H, backward=True)
    t, roof = timed({"stock": forward_backward(stock, x), "rnnext": forward_backward(ours, x)}, gf)
    rows.append(Row("LSTM dense fwd+bwd", t["stock"], t["rnnext"], roof, gf))

    gf = layer_gflop([B] * T, I, H, backward=False)
    t, roof = timed({"stock": inference(stock, x), "rnnext": inference(ours, x)}, gf)
    rows.append(Row("LSTM dense inference", t["stock"], t["rnnext"], roof, gf))

    # Packed: lengths uniform in [min_len, T], the PackedSequence built once (outside the timing).
    packed, lengths = packed_batch(x, c["min_len"])

    gf = layer_gflop(packed.batch_sizes.tolist(), I, H, backward=True)
    t, roof = timed({"stock": forward_backward(stock, packed), "rnnext": forward_backward(ours, packed)}, gf)
    real = float(lengths.sum()) / (T * B)
    rows.append(Row("LSTM packed fwd+bwd", t["stock"], t["rnnext"], roof, gf, {"real_token_share": real}))

    # LSTMCell in a Python loop over T steps, forward + backward.
    torch.manual_seed(0)
    cell_s = torch.nn.LSTMCell(I, H).to(dev)
    cell_r = rnnext.nn.LSTMCell(I, H).to(dev)
    cell_r.load_state_dict(cell_s.state_dict())

    def zeros():
        return torch.zeros(B, H, device=dev), torch.zeros(B, H, device=dev)

    gf = layer_gflop([B] * T, I, H, backward=True)
    t, roof = timed({"stock": cell_loop(cell_s, x, zeros), "rnnext": cell_loop(cell_r, x, zeros)}, gf)
    rows.append(Row(f"LSTMCell {T}-step loop fwd+bwd", t["stock"], t["rnnext"], roof, gf))

    # Bytes kept for backward by one dense forward (inputs and parameters left out).
    saved = {}
    for name, m in (("stock", stock), ("rnnext", ours)):
        with SavedBytes(exclude=[x, *m.parameters()]) as sb:
            y, _ = m(x)
        saved[name] = sb.bytes
        del y
    c["device"] = str(dev)
    return {"config": c, "rows": rows, "saved_bytes": saved, "gemm_peak_gflops": timed.median_rate()}
