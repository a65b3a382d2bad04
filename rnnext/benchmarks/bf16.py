"""bfloat16 on the CPU: rnnext's bfloat16 LSTM and GRU against stock torch.nn in bfloat16 (oneDNN's fused LSTM on
CPUs with AVX-512, ATen's per-step ops elsewhere; GRU as ATen's per-step ops) and against rnnext's own float32,
and SPINN in bfloat16 against rnnext's float32 SPINN (`rnnext bench --dtype bf16`), with the roofline at this
machine's GEMM rate for bfloat16 values: a 1024^3 torch.mm timed between the cases' runs, in bfloat16, or in
float32 where that is faster (CPUs without native bfloat16 arithmetic, AVX2-only ones among them, run ATen's
bfloat16 GEMM many times slower than its float32 one; a product of two bfloat16 numbers is exact in float32, so a
float32 GEMM of the same values is a bfloat16 GEMM with float32 accumulation, and its rate is the limit there)."""

from __future__ import annotations

from typing import Dict, List

import torch

import rnnext

from . import spinn as spinn_bench
from .lstm import layer_gflop
from .timing import (GemmProbe, RooflineTimer, Row, forward_backward, inference, packed_batch, resolve_device,
                     time_interleaved)

CONFIG = dict(T=64, B=64, I=128, H=256, min_len=8)


def _pair(stock_cls, ours_cls, I, H):
    torch.manual_seed(0)
    stock = stock_cls(I, H).to(torch.bfloat16)
    ours = ours_cls(I, H).to(torch.bfloat16)
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def roofline_dtype(n: int = 384, rounds: int = 9) -> torch.dtype:
    """The dtype whose torch.mm multiplies bfloat16 values fastest on this CPU: bfloat16, or float32 where
    ATen's bfloat16 GEMM is slower (GemmProbes of n^3 products in both dtypes, interleaved, medians)."""
    probes = {"bfloat16": GemmProbe(n, dtype=torch.bfloat16), "float32": GemmProbe(n, dtype=torch.float32)}
    t = time_interleaved(probes, rounds=rounds, warmup=1)
    return torch.bfloat16 if t["bfloat16"] <= t["float32"] else torch.float32


def stock_lstm_path() -> str:
    """Which path stock torch.nn.LSTM takes in bfloat16 on this CPU: "oneDNN" (its fused mkldnn_rnn_layer, on
    CPUs with AVX-512) or "ATen ops" (a per-step decomposition into bfloat16 linear and pointwise ops, elsewhere),
    read off the autograd graph of a tiny bfloat16 forward."""
    lstm = torch.nn.LSTM(4, 4).to(torch.bfloat16)
    out = lstm(torch.zeros(2, 1, 4, dtype=torch.bfloat16, requires_grad=True))[0]
    seen, todo = set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if "mkldnnrnn" in type(fn).__name__.lower():
            return "oneDNN"
        todo.extend(f for f, _ in fn.next_functions)
    return "ATen ops"


def run(rounds: int = 15, quick: bool = False, device="cpu") -> Dict[str, object]:
    dev = resolve_device(device)
    c = dict(CONFIG)
    if dev.type != "cpu":  # the suite measures the CPU's bfloat16 path
        return {"config": {**c, "device": str(dev), "skipped": "CPU only"}, "rows": []}
    T, B, I, H = c["T"], c["B"], c["I"], c["H"]
    if quick:
        rounds = min(rounds, 7)
    rows: List[Row] = []
    path = stock_lstm_path()
    c["stock_lstm_path"] = path
    stock, ours = _pair(torch.nn.LSTM, rnnext.nn.LSTM, I, H)
    ours32 = rnnext.nn.LSTM(I, H)
    ours32.load_state_dict({k: v.float() for k, v in ours.state_dict().items()})
    torch.manual_seed(0)
    x32 = torch.randn(T, B, I).bfloat16().float().requires_grad_()
    x = x32.detach().bfloat16().requires_grad_()
    gemm_dtype = roofline_dtype()
    timed = RooflineTimer(rounds, dev, dtype=gemm_dtype)

    gf = layer_gflop([B] * T, I, H, backward=True)
    t, roof = timed({"stock": forward_backward(stock, x), "rnnext": forward_backward(ours, x)}, gf)
    rows.append(Row(f"LSTM bf16 fwd+bwd (stock: bf16 {path})", t["stock"], t["rnnext"], roof, gf))

    gf = layer_gflop([B] * T, I, H, backward=False)
    t, roof = timed({"stock": inference(stock, x), "rnnext": inference(ours, x)}, gf)
    rows.append(Row(f"LSTM bf16 inference (stock: bf16 {path})", t["stock"], t["rnnext"], roof, gf))

    gf = layer_gflop([B] * T, I, H, backward=True)
    t, roof = timed({"stock": forward_backward(ours32, x32), "rnnext": forward_backward(ours, x)}, gf)
    rows.append(Row("LSTM bf16 fwd+bwd (stock: rnnext float32)", t["stock"], t["rnnext"], roof, gf))

    packed, lengths = packed_batch(x, c["min_len"])
    gf = layer_gflop(packed.batch_sizes.tolist(), I, H, backward=True)
    t, roof = timed({"stock": forward_backward(stock, packed), "rnnext": forward_backward(ours, packed)}, gf)
    rows.append(Row(f"packed LSTM bf16 fwd+bwd (stock: bf16 {path})", t["stock"], t["rnnext"], roof, gf))

    gstock, gours = _pair(torch.nn.GRU, rnnext.nn.GRU, I, H)
    gf = layer_gflop([B] * T, I, H, backward=True) * 3 / 4  # three gate blocks
    t, roof = timed({"stock": forward_backward(gstock, x), "rnnext": forward_backward(gours, x)}, gf)
    rows.append(Row("GRU bf16 fwd+bwd (stock: bf16)", t["stock"], t["rnnext"], roof, gf))

    # SPINN H=300, tracker 64, B=128 (the SPINN suite's first case): bfloat16 against rnnext's float32.
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(spinn_bench.CONFIG["min_len"], spinn_bench.CONFIG["max_len"] + 1,
                            (spinn_bench.CONFIG["B"],), generator=g).tolist()
    transitions = spinn_bench.random_trees(lengths, g)
    Hs, Ts = spinn_bench.CASES[0]
    torch.manual_seed(0)
    s32 = rnnext.nn.SPINN(Hs, tracker_size=Ts)
    s16 = rnnext.nn.SPINN(Hs, tracker_size=Ts).to(torch.bfloat16)
    s32.load_state_dict({k: v.float() for k, v in s16.state_dict().items()})
    b16 = torch.randn(max(lengths), len(lengths), 2 * Hs, generator=g).bfloat16()
    b32 = b16.float()

    def spinn_step(model, buffers):
        buffers = buffers.requires_grad_()

        def f():
            model(buffers, transitions).float().sum().backward()
        return f

    gf = spinn_bench.composition_gflop(lengths, Hs, Ts)
    t, roof = timed({"stock": spinn_step(s32, b32), "rnnext": spinn_step(s16, b16)}, gf)
    rows.append(Row(f"SPINN H={Hs} tracker {Ts} bf16 fwd+bwd (stock: rnnext float32)", t["stock"], t["rnnext"], roof,
                    gf))
    c["device"] = str(dev)
    return {"config": c, "rows": rows, "gemm_peak_gflops": timed.median_rate(),
            "gemm_dtype": str(gemm_dtype).replace("torch.", "")}
