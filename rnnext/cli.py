"""The `rnnext` command (also `python -m rnnext`).

    rnnext bench [--quick] [--rounds N] [--json FILE]   benchmarks of rnnext against stock torch.nn
    rnnext train listops --model {spinn,lstm} [...]    train on generated ListOps, evaluate on the released test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional


def _bench_suites():
    from .benchmarks import lstm, packing, spinn

    return [("LSTM", lstm.run), ("Packed sequences", packing.run), ("SPINN", spinn.run)]


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


def _cmd_train_listops(args: argparse.Namespace) -> int:
    from .train import ListOpsConfig, train_listops

    if args.resume and not os.path.exists(args.resume):
        raise OSError(f"no checkpoint at {args.resume}")
    cfg = ListOpsConfig(model=args.model, minutes=args.minutes, max_steps=args.max_steps, hidden=args.hidden,
                        batch_size=args.batch_size, lr=args.lr, train_size=args.train_size, dev_size=args.dev_size,
                        max_length=args.max_length, eval_every=args.eval_every, seed=args.seed, device=args.device,
                        test_path=args.test)
    res = train_listops(cfg, out=args.out, resume=args.resume, progress=not args.no_progress)
    print(f"trained {res['steps']} steps in {res['train_seconds'] / 60:.1f} min "
          f"({res['examples_per_second']:.0f} examples/s); dev accuracy {res['dev_accuracy']:.4f}")
    if "test_accuracy" in res:
        print(f"test accuracy {res['test_accuracy']:.4f} on {res['test_examples']} released test examples")
    else:
        print("released test split not found (give --test PATH); test accuracy not measured")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rnnext", description="Fused recurrent and tree-structured networks for PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="benchmark rnnext against stock torch.nn on this machine")
    b.add_argument("--quick", action="store_true", help="fewer timing rounds")
    b.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds; medians are reported")
    b.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    b.set_defaults(func=_cmd_bench)

    t = sub.add_parser("train", help="train a model")
    tsub = t.add_subparsers(dest="task", required=True)
    lo = tsub.add_parser("listops", help="ListOps (generated) with SPINN or an LSTM baseline")
    lo.add_argument("--model", choices=["spinn", "lstm"], default="spinn")
    lo.add_argument("--minutes", type=float, default=20.0, help="training time budget (default 20)")
    lo.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    lo.add_argument("--hidden", type=int, default=64)
    lo.add_argument("--batch-size", type=int, default=128)
    lo.add_argument("--lr", type=float, default=2e-3)
    lo.add_argument("--train-size", type=int, default=1_000_000, help="distinct generated training expressions")
    lo.add_argument("--dev-size", type=int, default=5_000)
    lo.add_argument("--max-length", type=int, default=100, help="tokens per training expression")
    lo.add_argument("--eval-every", type=float, default=120.0, help="seconds of training between dev evaluations")
    lo.add_argument("--test", metavar="TSV", default=None,
                    help="released test split (default: ../shared/data/listops/test_d20s.tsv when present)")
    lo.add_argument("--out", metavar="CKPT", help="write a checkpoint here (and CKPT.json with the results)")
    lo.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint")
    lo.add_argument("--seed", type=int, default=0)
    lo.add_argument("--device", default="cpu")
    lo.add_argument("--no-progress", action="store_true", help="no progress bar")
    lo.set_defaults(func=_cmd_train_listops)
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
