"""rnnext.nn.LSTM / LSTMCell against torch.nn on the CPU (T=64, B=64, input 128, hidden 256, float32).

    python benchmarks/bench_lstm.py [--rounds 15] [--json out.json]
"""

import argparse
import json

import torch

from rnnext.benchmarks import lstm
from rnnext.benchmarks.timing import format_table, machine_description


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (median reported)")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = ap.parse_args()
    res = lstm.run(rounds=args.rounds)
    print(machine_description())
    print(f"config: {res['config']}")
    print(f"GEMM roofline: {res['gemm_peak_gflops']:.0f} GFLOP/s (torch.mm of 1024x1024 float32 matrices, timed between the cases' runs; median over cases)")
    print(format_table(res["rows"]))
    s = res["saved_bytes"]
    print(f"bytes saved for backward (dense forward): stock {s['stock'] / 2**20:.1f} MiB, "
          f"rnnext {s['rnnext'] / 2**20:.1f} MiB")
    if args.json:
        out = {"machine": machine_description(), "config": res["config"], "saved_bytes": s, "gemm_peak_gflops": res["gemm_peak_gflops"],
               "rows": [r.as_dict() for r in res["rows"]]}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
