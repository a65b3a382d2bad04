"""Packed sequences against torch.nn.utils.rnn on the CPU (T=64, B=64, lengths uniform in [8, 64], float32):
the pack + unpack round trip (features 256) and the variable-length LSTM pipeline (input 128, hidden 256).

    python benchmarks/bench_packing.py [--rounds 15] [--json out.json]
"""

import argparse
import json

import torch

from rnnext.benchmarks import packing
from rnnext.benchmarks.timing import format_table, machine_description


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (median reported)")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = ap.parse_args()
    res = packing.run(rounds=args.rounds)
    print(machine_description())
    print(f"config: {res['config']}")
    print(format_table(res["rows"]))
    if args.json:
        out = {"machine": machine_description(), "config": res["config"],
               "rows": [r.as_dict() for r in res["rows"]]}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
