"""The `rnnext` command (also `python -m rnnext`).

    rnnext bench [--quick] [--rounds N] [--json FILE]   benchmarks of rnnext against stock torch.nn
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _bench_suites():
    from .benchmarks import lstm, packing

    return [("LSTM", lstm.run), ("Packed sequences", packing.run)]


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .benchmarks.timing import format_table, machine_description

    torch.manual_seed(0)
    machine = machine_description()
    print(f"rnnext bench on {machine}", flush=True)
    out = {"machine": machine, "suites": {}}
    for title, run in _bench_suites():
        res = run(rounds=args.rounds, quick=args.quick)
        print(f"\n{title}: {res['config']}")
        if "gemm_peak_gflops" in res:
            print(f"GEMM roofline: {res['gemm_peak_gflops']:.0f} GFLOP/s (torch.mm of 1024x1024 float32 matrices, "
                  "timed between the cases' runs)")
        print(format_table(res["rows"]), flush=True)
        if "saved_bytes" in res:
            s = res["saved_bytes"]
            print(f"bytes saved for backward by one dense LSTM forward: stock {s['stock'] / 2**20:.1f} MiB, "
                  f"rnnext {s['rnnext'] / 2**20:.1f} MiB")
        out["suites"][title] = {k: v for k, v in res.items() if k != "rows"}
        out["suites"][title]["rows"] = [r.as_dict() for r in res["rows"]]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rnnext", description="Fused recurrent and tree-structured networks for PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="benchmark rnnext against stock torch.nn on this machine")
    b.add_argument("--quick", action="store_true", help="fewer timing rounds")
    b.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds; medians are reported")
    b.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as e:
        print(f"rnnext {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
