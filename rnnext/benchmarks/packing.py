"""Packed sequences (on the CPU or a GPU): the pack + unpack round trip against torch.nn.utils.rnn, and the whole
variable-length LSTM pipeline users write today (sort, pack, torch.nn.LSTM, unpack) against
rnnext.nn.LSTM(padded, lengths=...)."""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.utils.rnn as stock_rnn

import rnnext
from rnnext.utils import rnn as ours_rnn

from .lstm import layer_gflop
from .timing import GemmProbe, Row, resolve_device, time_interleaved

CONFIG = dict(T=64, B=64, features=256, I=128, H=256, min_len=8)


def run(rounds: int = 15, quick: bool = False, device="cpu") -> Dict[str, object]:
    dev = resolve_device(device)
    c = dict(CONFIG)
    T, B = c["T"], c["B"]
    if quick:
        rounds = min(rounds, 7)
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(c["min_len"], T + 1, (B,), generator=g)
    rows: List[Row] = []

    x = torch.randn(T, B, c["features"], generator=g).to(dev)  # lengths stay on the CPU (stock requires it)

    def round_trip(lib):
        def f():
            packed = lib.pack_padded_sequence(x, lengths, enforce_sorted=False)
            lib.pad_packed_sequence(packed, total_length=T)
        return f

    t = time_interleaved({"stock": round_trip(stock_rnn), "rnnext": round_trip(ours_rnn)}, rounds * 4, device=dev)
    rows.append(Row(f"pack+unpack round trip (F={c['features']})", t["stock"], t["rnnext"]))

    torch.manual_seed(0)
    stock = torch.nn.LSTM(c["I"], c["H"]).to(dev)
    ours = rnnext.nn.LSTM(c["I"], c["H"]).to(dev)
    ours.load_state_dict(stock.state_dict())
    xi = torch.randn(T, B, c["I"], generator=g).to(dev).requires_grad_()

    def stock_pipeline():
        packed = stock_rnn.pack_padded_sequence(xi, lengths, enforce_sorted=False)
        y, _ = stock(packed)
        out, _ = stock_rnn.pad_packed_sequence(y, total_length=T)
        out.sum().backward()

    def ours_pipeline():
        out, _ = ours(xi, lengths=lengths)
        out.sum().backward()

    probe = GemmProbe(device=dev)
    gf = layer_gflop([int((lengths > s).sum()) for s in range(T)], c["I"], c["H"], backward=True)
    t = time_interleaved({"stock": stock_pipeline, "rnnext": ours_pipeline, "gemm": probe}, rounds, device=dev)
    rows.append(Row("variable-length LSTM fwd+bwd (pack/unpack vs lengths=)", t["stock"], t["rnnext"],
                    probe.roofline_ms(gf, t["gemm"]), gf, {"real_token_share": float(lengths.sum()) / (T * B)}))
    if dev.type == "cuda":  # lengths already on the GPU: masked mode, no host sync (stock needs them on the CPU)
        dev_lengths = lengths.to(dev)

        def ours_masked():
            out, _ = ours(xi, lengths=dev_lengths)
            out.sum().backward()

        gf_full = layer_gflop([B] * T, c["I"], c["H"], backward=True)  # masked mode runs every entry every step
        t = time_interleaved({"stock": stock_pipeline, "rnnext": ours_masked, "gemm": probe}, rounds, device=dev)
        rows.append(Row("variable-length LSTM fwd+bwd, lengths on the GPU (masked)", t["stock"], t["rnnext"],
                        probe.roofline_ms(gf_full, t["gemm"]), gf_full))
    c["device"] = str(dev)
    return {"config": c, "rows": rows, "gemm_peak_gflops": probe.gflop / t["gemm"] * 1e3}
