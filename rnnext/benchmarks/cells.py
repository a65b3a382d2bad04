"""Cells called step by step from a Python loop (time_sequence_prediction, decoders, char-RNNs): LSTMCell,
GRUCell and RNNCell against stock at batch 1, 3, 32 and 97, hidden 51 and 256 (input size = hidden size),
float32 and float64, with and without autograd. At these sizes a call's fixed cost (Python, dispatch,
allocation) is most of the time, so there is no GEMM roofline column: the GEMMs are a few microseconds."""

from __future__ import annotations

from typing import Callable, Dict, List

import torch

import rnnext

from .timing import Row, resolve_device, time_interleaved

CELLS = (("LSTMCell", torch.nn.LSTMCell, rnnext.nn.LSTMCell), ("GRUCell", torch.nn.GRUCell, rnnext.nn.GRUCell),
         ("RNNCell", torch.nn.RNNCell, rnnext.nn.RNNCell))
BATCHES = (1, 3, 32, 97)
HIDDEN = (51, 256)
DTYPES = (torch.float32, torch.float64)


def step_loop(cell, xs: torch.Tensor, state, grad: bool) -> Callable[[], None]:
    """A closure: one cell call per step over xs (steps, B, I) from `state`; with grad, the backward of the sum
    of every step's h (time_sequence_prediction's training loop), else under no_grad (its prediction)."""
    steps = xs.unbind(0)

    def f():
        with torch.set_grad_enabled(grad):
            s = state
            total = 0
            for x_t in steps:
                s = cell(x_t, s)
                if grad:
                    total = total + (s[0] if isinstance(s, tuple) else s).sum()
            if grad:
                total.backward()
    return f


def run(rounds: int = 7, quick: bool = False, device="cpu") -> Dict[str, object]:
    dev = resolve_device(device)
    steps = 100 if quick else 1000
    # quick: float32 at batch 1 and 97 only (a quarter of the grid), 100 steps, 3 rounds.
    batches, dtypes = ((1, 97), (torch.float32,)) if quick else (BATCHES, DTYPES)
    if quick:
        rounds = min(rounds, 3)
    rows: List[Row] = []
    for name, stock_cls, ours_cls in CELLS:
        for dtype in dtypes:
            for H in HIDDEN:
                torch.manual_seed(0)
                stock = stock_cls(H, H).to(dev, dtype)
                ours = ours_cls(H, H).to(dev, dtype)
                ours.load_state_dict(stock.state_dict())
                for B in batches:
                    xs = torch.randn(steps, B, H, device=dev, dtype=dtype)
                    h0 = torch.zeros(B, H, device=dev, dtype=dtype)
                    state = (h0, h0) if name == "LSTMCell" else h0
                    for grad in (False, True):
                        x_in = xs.clone().requires_grad_(grad)
                        t = time_interleaved({"stock": step_loop(stock, x_in, state, grad),
                                              "rnnext": step_loop(ours, x_in, state, grad)}, rounds, device=dev)
                        case = (f"{name} {str(dtype)[6:]} B={B} H={H} {'fwd+bwd' if grad else 'no-grad'} "
                                f"x{steps}")
                        rows.append(Row(case, t["stock"], t["rnnext"],
                                        extra={"us_per_step_stock": t["stock"] * 1e3 / steps,
                                               "us_per_step_rnnext": t["rnnext"] * 1e3 / steps}))
    return {"config": {"steps": steps, "rounds": rounds, "device": str(dev), "input_size": "= hidden"},
            "rows": rows}
