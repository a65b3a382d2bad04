"""rnnext.nn.SPINN against the seed-style SPINN (per-example Python lists, rnnext/benchmarks/seed_spinn.py) on
the CPU or a GPU: B=128, sentence lengths uniform in [5, 30], random binary trees, forward + backward, float32."""

from __future__ import annotations

from typing import Dict, List

import torch

import rnnext

from .seed_spinn import SeedSPINN
from .timing import GemmProbe, Row, resolve_device, time_interleaved

CASES = [(300, 64), (64, 64), (64, None)]  # (hidden, tracker)
CONFIG = dict(B=128, min_len=5, max_len=30)


def random_trees(lengths: List[int], g: torch.Generator) -> torch.Tensor:
    """Random valid shift-reduce sequences, left-padded with PAD, (S, B)."""
    seqs = []
    for n in lengths:
        seq, stack, shifted = [], 0, 0
        while shifted < n or stack > 1:
            if shifted < n and (stack < 2 or torch.rand((), generator=g) < 0.5):
                seq.append(0)
                stack, shifted = stack + 1, shifted + 1
            else:
                seq.append(1)
                stack -= 1
        seqs.append(seq)
    S = max(len(s) for s in seqs)
    out = torch.full((S, len(seqs)), -1, dtype=torch.int64)
    for b, s in enumerate(seqs):
        out[S - len(s):, b] = torch.tensor(s)
    return out


def composition_gflop(lengths: List[int], H: int, tracker) -> float:
    """GEMM work of forward + backward: each composition (2H (+ Tt) -> 5H) and each tracker step (3H + Tt -> 4Tt),
    three times over (forward, input gradient, weight gradient)."""
    nodes = sum(n - 1 for n in lengths)
    flop = 2 * nodes * (2 * H + (tracker or 0)) * 5 * H
    if tracker:
        steps = 2 * max(lengths) - 1
        flop += 2 * steps * len(lengths) * (3 * H + tracker) * 4 * tracker
    return 3 * flop / 1e9


def run(rounds: int = 15, quick: bool = False, device="cpu") -> Dict[str, object]:
    dev = resolve_device(device)
    c = dict(CONFIG)
    B = c["B"]
    if quick:
        rounds = min(rounds, 5)
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(c["min_len"], c["max_len"] + 1, (B,), generator=g).tolist()
    transitions = random_trees(lengths, g)
    rows: List[Row] = []
    probe = GemmProbe(device=dev)
    rates = []
    for H, tracker in CASES:
        torch.manual_seed(0)
        seed = SeedSPINN(H, tracker).to(dev)
        ours = rnnext.nn.SPINN(H, tracker_size=tracker).to(dev)
        ours.load_state_dict(seed.state_dict())
        buffers = torch.randn(max(lengths), B, 2 * H, generator=g).to(dev).requires_grad_()
        # Transitions stay on the CPU for both sides: the seed-style model reads them as Python lists, and
        # rnnext plans the stacks on the host (a GPU copy would cost a synchronization).

        def step(model):
            def f():
                model(buffers, transitions).sum().backward()
            return f

        gf = composition_gflop(lengths, H, tracker)
        t = time_interleaved({"stock": step(seed), "rnnext": step(ours), "gemm": probe}, rounds, warmup=2, device=dev)
        rates.append(probe.gflop / t["gemm"] * 1e3)
        name = f"SPINN H={H} " + (f"tracker {tracker}" if tracker else "no tracker") + " fwd+bwd"
        rows.append(Row(name, t["stock"], t["rnnext"], probe.roofline_ms(gf, t["gemm"]), gf))
    c["device"] = str(dev)
    return {"config": c, "rows": rows, "gemm_peak_gflops": sorted(rates)[len(rates) // 2]}
