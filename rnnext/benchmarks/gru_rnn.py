"""rnnext.nn.GRU / RNN / GRUCell against torch.nn.GRU / RNN / GRUCell (on the CPU or a GPU): dense forward +
backward, inference, packed, and a Python loop of cells, with the GEMM-only roofline."""

from __future__ import annotations

from typing import Dict, List

import torch

import rnnext

from .timing import RooflineTimer, Row, cell_loop, forward_backward, inference, packed_batch, resolve_device

CONFIG = dict(T=64, B=64, I=128, H=256, min_len=8)


def layer_gflop(rows_per_step: List[int], I: int, H: int, gates: int, backward: bool) -> float:
    """The unavoidable GEMM work of one layer: the input and recurrent projections of every real row
    (2 N G H (I + H) FLOP, G = 3 for GRU, 1 for RNN), three times that with the backward."""
    N = sum(rows_per_step)
    return 2 * N * gates * H * (I + H) * (3 if backward else 1) / 1e9


def one_step_rows(dev, timed, steps: int = 1000, width: int = 256, layers: int = 2) -> List[Row]:
    """A decoder / char-RNN loop of users' own code: one module call per step (T=1), `steps` steps of a
    2-layer, 256-wide LSTM and GRU, inference, at batch 1 and 32. The per-call cost is the workload here."""
    rows = []
    for label, stock_cls, ours_cls, gates in (("LSTM", torch.nn.LSTM, rnnext.nn.LSTM, 4),
                                              ("GRU", torch.nn.GRU, rnnext.nn.GRU, 3)):
        torch.manual_seed(0)
        stock = stock_cls(width, width, num_layers=layers).to(dev).eval()
        ours = ours_cls(width, width, num_layers=layers).to(dev).eval()
        ours.load_state_dict(stock.state_dict())
        for batch in (1, 32):
            xs = torch.randn(steps, 1, batch, width, device=dev)

            def loop(m, xs=xs):
                def f():
                    with torch.no_grad():
                        state = None
                        for x_t in xs:
                            _, state = m(x_t, state)
                return f

            gf = layer_gflop([batch] * steps, width, width, gates, backward=False) * layers
            t, roof = timed({"stock": loop(stock), "rnnext": loop(ours)}, gf)
            rows.append(Row(f"{label} one step x{steps}, batch {batch}", t["stock"], t["rnnext"], roof, gf))
    return rows


def run(rounds: int = 15, quick: bool = False, device="cpu") -> Dict[str, object]:
    dev = resolve_device(device)
    c = dict(CONFIG)
    T, B, I, H = c["T"], c["B"], c["I"], c["H"]
    if quick:
        rounds = min(rounds, 7)
    rows: List[Row] = []
    x = torch.randn(T, B, I, device=dev, requires_grad=True)
    packed, lengths = packed_batch(x, c["min_len"])
    timed = RooflineTimer(rounds, dev)

    for label, stock_cls, ours_cls, gates in (("GRU", torch.nn.GRU, rnnext.nn.GRU, 3),
                                              ("RNN (tanh)", torch.nn.RNN, rnnext.nn.RNN, 1)):
        torch.manual_seed(0)
        stock = stock_cls(I, H).to(dev)
        ours = ours_cls(I, H).to(dev)
        ours.load_state_dict(stock.state_dict())
        gf = layer_gflop([B] * T, I, H, gates, backward=True)
        t, roof = timed({"stock": forward_backward(stock, x), "rnnext": forward_backward(ours, x)}, gf)
        rows.append(Row(f"{label} dense fwd+bwd", t["stock"], t["rnnext"], roof, gf))
        gf = layer_gflop(packed.batch_sizes.tolist(), I, H, gates, backward=True)
        t, roof = timed({"stock": forward_backward(stock, packed), "rnnext": forward_backward(ours, packed)}, gf)
        rows.append(Row(f"{label} packed fwd+bwd", t["stock"], t["rnnext"], roof, gf))
        if gates == 3:
            gf = layer_gflop([B] * T, I, H, gates, backward=False)
            t, roof = timed({"stock": inference(stock, x), "rnnext": inference(ours, x)}, gf)
            rows.append(Row(f"{label} dense inference", t["stock"], t["rnnext"], roof, gf))

    torch.manual_seed(0)
    cell_s = torch.nn.GRUCell(I, H).to(dev)
    cell_r = rnnext.nn.GRUCell(I, H).to(dev)
    cell_r.load_state_dict(cell_s.state_dict())

    def zeros():
        return torch.zeros(B, H, device=dev)

    gf = layer_gflop([B] * T, I, H, 3, backward=True)
    t, roof = timed({"stock": cell_loop(cell_s, x, zeros), "rnnext": cell_loop(cell_r, x, zeros)}, gf)
    rows.append(Row(f"GRUCell {T}-step loop fwd+bwd", t["stock"], t["rnnext"], roof, gf))
    rows += one_step_rows(dev, timed, steps=200 if quick else 1000)
    c["device"] = str(dev)
    return {"config": c, "rows": rows, "gemm_peak_gflops": timed.median_rate()}
