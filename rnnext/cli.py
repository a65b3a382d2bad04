"""The `rnnext` command (also `python -m rnnext`).

    rnnext bench [--full | --only SUITE] [--json F]     benchmarks of rnnext against stock torch.nn (default:
                                                       the main suites, quick: a few minutes)
    rnnext train listops --model {spinn,lstm} [...]    train on generated ListOps, evaluate on the released test
    rnnext train chars [--text FILE] [...]             train a character LSTM (default: Python's own sources)
    rnnext generate CKPT --prime TEXT --steps N ...    sample from a character-model checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional


def _plot(rows, path: str, machine: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ValueError("--plot needs matplotlib (pip install 'rnnext[plot]')") from e
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    names = [r.case for r in rows][::-1]
    ratios = [r.speedup for r in rows][::-1]
    ax.barh(names, ratios, color=["tab:green" if x >= 1 else "tab:red" for x in ratios])
    ax.axvline(1.0, color="black", linewidth=1)
    for i, x in enumerate(ratios):
        ax.text(x, i, f" {x:.2f}x", va="center")
    ax.set_xlabel("speedup over stock PyTorch (higher is better)")
    ax.set_title(f"rnnext bench: {machine}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bench_suites():
    from .benchmarks import bf16, cells, generation, gru_rnn, listops_training, lstm, packing, spinn

    return [("LSTM", lstm.run), ("GRU and RNN", gru_rnn.run), ("Cells in Python loops", cells.run),
            ("Packed sequences", packing.run), ("SPINN", spinn.run), ("Generation", generation.run),
            ("ListOps training", listops_training.run), ("bfloat16", bf16.run)]


# `rnnext bench` without --only/--full: these suites at their quick sizes (a few minutes on 2 cores).
_DEFAULT_SUITES = ("LSTM", "GRU and RNN", "Packed sequences", "SPINN", "Generation")


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from tqdm import tqdm

    from .benchmarks.timing import format_table, machine_description, round_callback

    from .benchmarks.timing import resolve_device

    _check_out(args.json, "--json")  # before the benchmarks, not after
    _check_out(args.plot, "--plot")
    device = resolve_device(args.device)
    torch.manual_seed(0)
    machine = machine_description(device)
    print(f"rnnext bench on {machine}", flush=True)
    out = {"machine": machine, "suites": {}}
    suites = _bench_suites()
    if args.dtype in ("bfloat16", "bf16"):
        if args.only and not "bfloat16".startswith(args.only.lower()):
            raise ValueError(f"--dtype {args.dtype} runs the bfloat16 suite; --only {args.only!r} names a float32 "
                             "suite (drop one of the two)")
        args.only = "bfloat16"
    quick = args.quick
    if args.only:
        suites = [(t, r) for t, r in suites if t.lower().startswith(args.only.lower())]
        if not suites:
            raise ValueError(f"--only {args.only!r} matches no suite ({', '.join(t for t, _ in _bench_suites())})")
    elif not args.full:  # the default: the main suites at their quick sizes
        suites = [(t, r) for t, r in suites if t in _DEFAULT_SUITES]
        quick = True
    else:  # --full: every float32 suite at full size
        suites = [(t, r) for t, r in suites if t != "bfloat16"]
    if args.full and args.quick:
        raise ValueError("--full and --quick contradict each other (drop one)")
    all_rows = []
    for k, (title, run) in enumerate(suites, 1):
        # A bar per suite (on stderr, where it is a terminal; --no-progress: none) that counts the interleaved
        # rounds as they finish, so a long suite is visibly alive.
        with tqdm(desc=f"bench [{k}/{len(suites)}] {title}", unit=" rounds",
                  disable=True if args.no_progress else None, leave=False, file=sys.stderr) as bar, \
                round_callback(lambda: bar.update(1)):
            res = run(rounds=args.rounds, quick=quick, device=device)
        all_rows += res["rows"]
        print(f"\n{title}: {res['config']}")
        if "gemm_peak_gflops" in res:
            n = 4096 if device.type == "cuda" else 1024
            dt = res.get("gemm_dtype", "float32")
            print(f"GEMM roofline: {res['gemm_peak_gflops']:.0f} GFLOP/s (torch.mm of {n}x{n} {dt} matrices, "
                  "timed between the cases' runs)")
        print(format_table(res["rows"]), flush=True)
        if "saved_bytes" in res:
            s = res["saved_bytes"]
            print(f"bytes saved for backward by one dense LSTM forward: stock {s['stock'] / 2**20:.1f} MiB, "
                  f"rnnext {s['rnnext'] / 2**20:.1f} MiB")
        out["suites"][title] = {k: v for k, v in res.items() if k != "rows"}
        out["suites"][title]["rows"] = [r.as_dict() for r in res["rows"]]
        for r in res["rows"]:
            if "rnnext_chars_per_s" in r.extra:
                print(f"  {r.case}: stock {r.extra['stock_chars_per_s']:.0f} chars/s, rnnext "
                      f"{r.extra['rnnext_chars_per_s']:.0f} chars/s")
            if "rnnext_examples_per_s" in r.extra:
                print(f"  {r.case}: stock {r.extra['stock_examples_per_s']:.0f} examples/s, rnnext "
                      f"{r.extra['rnnext_examples_per_s']:.0f} examples/s")
    if len(suites) > 1:
        print(f"\nSummary ({machine}; medians of interleaved runs, stock torch.nn time over rnnext's):")
        width = max(len(r.case) for r in all_rows)
        for r in all_rows:
            print(f"  {r.case:<{width}}  {r.speedup:6.2f}x")
        if quick:
            print("(quick sizes and rounds; `rnnext bench --full` runs every suite at full size, `--only SUITE` one)")
    if args.plot:
        _plot(all_rows, args.plot, machine)
        print(f"wrote {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _int_at_least(low: int):
    """argparse type: an integer >= low (checked when the command line is read, before any work)."""
    what = "a positive integer" if low == 1 else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


_positive_int, _nonneg_int = _int_at_least(1), _int_at_least(0)


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return v


_MAX_MINUTES = 10_000_000.0  # about 19 years: a budget in seconds stays a finite number


def _minutes(text: str) -> float:
    """argparse type: a training time budget in minutes, > 0 and at most _MAX_MINUTES."""
    v = _positive_float(text)
    if v > _MAX_MINUTES:
        raise argparse.ArgumentTypeError(f"expected at most {_MAX_MINUTES:.0e} minutes, got {text}")
    return v


def _check_resume(path: Optional[str], task: str, args: Optional[argparse.Namespace] = None) -> None:
    """--resume: a readable checkpoint of this task, whose model-shaping options (the model, --hidden, ...) are
    those given (a checkpoint cannot be loaded into a model of another shape), checked before the data and the
    model are built."""
    if not path:
        return
    import torch

    if not os.path.isfile(path):
        raise OSError(f"--resume {path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: one line, not an unpickling traceback
        raise ValueError(f"--resume {path}: not a checkpoint (torch.load: {type(e).__name__})") \
            from None
    if not isinstance(ckpt, dict) or ckpt.get("task") != task:
        made_by = ckpt.get("task") if isinstance(ckpt, dict) else None
        raise ValueError(f"--resume {path}: not a {task} checkpoint (made by `rnnext train {task} --out`)"
                         + (f"; it is a {made_by} checkpoint" if made_by else ""))
    needed = ("model", "optimizer", "config", "state") + (("vocab",) if task == "chars" else ())
    missing = [k for k in needed if not isinstance(ckpt.get(k), dict)]
    if missing:
        raise ValueError(f"--resume {path}: the checkpoint lacks its {', '.join(missing)} (not written by "
                         f"`rnnext train {task} --out`, or damaged)")
    if args is None:
        return
    shaping = {"listops": {"model": "--model", "hidden": "--hidden"},
               "chars": {"hidden": "--hidden", "layers": "--layers", "cell": "--cell"}}[task]
    defaults = {"cell": "lstm"}
    for key, flag in shaping.items():
        saved, given = ckpt["config"].get(key, defaults.get(key)), getattr(args, key)
        if saved != given:
            raise ValueError(f"--resume {path}: the checkpoint's model has {flag} {saved}, the command line "
                             f"{flag} {given}; resume with {flag} {saved}")


# The shortest ListOps expression ("[MAX 2 ]") has 3 tokens.
_LISTOPS_MIN_TOKENS = 3


def _check_out(path: Optional[str], flag: str = "--out") -> None:
    """An output path can be written (--out, bench's --json and --plot): not a directory, in a folder that exists
    and takes a new file (tried for real: permissions, a read-only mount). Checked before any long work, so that
    a typo does not cost the training or the benchmarks."""
    if not path:
        return
    import tempfile

    if os.path.isdir(path):
        raise OSError(f"{flag} {path}: is a directory; give a file name (e.g. {os.path.join(path, 'model.pt')})")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OSError(f"{flag} {path}: folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".rnnext-write-check-")
    except OSError as e:
        raise OSError(f"{flag} {path}: cannot write in folder {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.remove(probe)


def _check_device(device: str) -> None:
    """--device names a device this torch can use (checked before the data is generated)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device}: not a device (expected cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
            raise ValueError(f"--device {device}: CUDA is not available ({why})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"--device {device}: rnnext trains on cpu or cuda")


def _cmd_train_listops(args: argparse.Namespace) -> int:
    from .train import ListOpsConfig, train_listops

    _check_device(args.device)
    _check_resume(args.resume, "listops", args)
    if args.test and not os.path.exists(args.test):
        raise OSError(f"--test {args.test}: no such file (checked before training)")
    if args.max_length < _LISTOPS_MIN_TOKENS:
        raise ValueError(f"--max-length {args.max_length}: a ListOps expression has at least {_LISTOPS_MIN_TOKENS} "
                         "tokens")
    _check_out(args.out)
    cfg = ListOpsConfig(model=args.model, minutes=args.minutes, max_steps=args.max_steps, hidden=args.hidden,
                        batch_size=args.batch_size, lr=args.lr, train_size=args.train_size, dev_size=args.dev_size,
                        max_length=args.max_length, eval_every=args.eval_every, seed=args.seed, device=args.device,
                        test_path=args.test, distributed=args.distributed, dtype=args.dtype,
                        data_cache=not args.no_data_cache)
    res = train_listops(cfg, out=args.out, resume=args.resume, progress=not args.no_progress)
    if res.get("interrupted"):  # Ctrl-C: train_listops saved and said so
        return _INTERRUPTED
    if "rank" in res:  # a distributed worker other than the first: the first reports
        return 0
    print(f"trained {res['steps']} steps in {res['train_seconds'] / 60:.1f} min "
          f"({res['examples_per_second']:.0f} examples/s); dev accuracy {res['dev_accuracy']:.4f}")
    if "test_accuracy" in res:
        print(f"test accuracy {res['test_accuracy']:.4f} on {res['test_examples']} released test examples")
    else:
        print("released test split not found (give --test PATH); test accuracy not measured")
    return 0


def _cmd_train_chars(args: argparse.Namespace) -> int:
    from .train import CharsConfig, train_chars

    _check_device(args.device)
    _check_resume(args.resume, "chars", args)
    if args.text and not os.path.isfile(args.text):
        raise OSError(f"no such text file: {args.text}")
    _check_out(args.out)
    cfg = CharsConfig(text=args.text, minutes=args.minutes, max_steps=args.max_steps, hidden=args.hidden,
                      layers=args.layers, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
                      eval_every=args.eval_every, seed=args.seed, device=args.device, max_chars=args.max_chars,
                      distributed=args.distributed, cell=args.cell, dtype=args.dtype)
    res = train_chars(cfg, out=args.out, resume=args.resume, progress=not args.no_progress)
    if res.get("interrupted"):
        return _INTERRUPTED
    if "rank" in res:
        return 0
    print(f"trained {res['steps']} steps in {res['train_seconds'] / 60:.1f} min; validation loss "
          f"{res['val_loss']:.3f} nats/char (unigram entropy of the corpus {res['unigram_entropy']:.3f})")
    print("sample:\n" + res["sample"])
    return 0


def _check_char_sizes(path: str, cfg, state, vocab_size: int) -> None:
    """The sizes a character checkpoint's config claims agree with the tensors it holds, checked before the
    model is built (a small file claiming a huge model must not allocate it)."""
    import torch

    if not isinstance(cfg, dict) or not isinstance(state, dict):
        raise ValueError(f"{path} is not a character-model checkpoint (no config or weights)")
    sizes = {k: cfg.get(k) for k in ("embed", "hidden", "layers")}
    for k, v in sizes.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{path}: config {k} must be a positive integer, got {v!r}")
    emb, whh = state.get("embedding.weight"), state.get("rnn.weight_hh_l0")
    layers = sum(1 for k in state if k.startswith("rnn.weight_hh_l") and not k.endswith("_reverse"))
    if not isinstance(emb, torch.Tensor) or not isinstance(whh, torch.Tensor) or emb.dim() != 2 or whh.dim() != 2:
        raise ValueError(f"{path} is not a character-model checkpoint (no embedding or recurrent weights)")
    found = {"embed": emb.shape[1], "hidden": whh.shape[1], "layers": layers}
    for k, v in sizes.items():
        if found[k] != v:
            raise ValueError(f"{path}: config says {k} {v} but the weights have {k} {found[k]}")
    if emb.shape[0] != vocab_size:
        raise ValueError(f"{path}: the vocabulary has {vocab_size} characters but the embedding {emb.shape[0]} rows")


def _load_char_checkpoint(path: str):
    import torch

    from .models import CharGenerator, CharVocab

    if not os.path.isfile(path):
        raise OSError(f"no such checkpoint: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say so in one line
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("task") != "chars":
        raise ValueError(f"{path} is not a character-model checkpoint (made by `rnnext train chars --out`)")
    missing = [k for k in ("model", "vocab", "config") if not isinstance(ckpt.get(k), dict)]
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks its {', '.join(missing)} (not written by `rnnext train "
                         "chars --out`, or damaged)")
    try:
        vocab = CharVocab.from_state_dict(ckpt["vocab"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: the checkpoint's vocabulary cannot be read ({type(e).__name__}: {e})") from None
    cfg = ckpt["config"]
    _check_char_sizes(path, cfg, ckpt.get("model"), len(vocab))
    model = CharGenerator(len(vocab), cfg["embed"], cfg["hidden"], cfg["layers"], cell=cfg.get("cell", "lstm"))
    model.load_state_dict(ckpt["model"])
    return model.eval(), vocab


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if not args.prime:
        raise ValueError("--prime must not be empty")
    model, vocab = _load_char_checkpoint(args.checkpoint)
    missing = vocab.unknown(args.prime)
    if missing:
        raise ValueError(f"the prime has characters the model's vocabulary lacks: {''.join(missing)!r}")
    g = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    prime = torch.tensor([vocab.encode(args.prime)])
    # Streamed in pieces: bounded memory and output as it comes, whatever --steps is.
    sys.stdout.write(args.prime)
    for piece in model.generate_chunks(prime, args.steps, temperature=args.temperature, top_k=args.top_k,
                                       generator=g, chunk_size=_GENERATE_CHUNK):
        sys.stdout.write(vocab.decode(piece[0].tolist()))
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


_GENERATE_CHUNK = 65536  # steps per piece of rnnext generate (a piece's uniforms and ids: 768 KiB)


class _HELP_FORMAT(argparse.HelpFormatter):
    """--help shows every option's default (see _show_defaults)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default is not argparse.SUPPRESS and "default" not in text:
            text += (" " if text else "") + "(default: %(default)s)"
        return text


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Gives every option of parser and its subcommands a help text, so that _HELP_FORMAT prints its default."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)
        elif action.option_strings and action.help is None:
            action.help = "(default: %(default)s)"
_DTYPE_CHOICES = ["float32", "bfloat16", "bf16", "fp32"]
_DTYPE_HELP = ("compute dtype (default float32); bfloat16 (or bf16): mixed precision, float32 parameters and "
               "optimizer, the steps under torch.autocast")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rnnext", description="Fused recurrent and tree-structured networks for PyTorch.",
                                formatter_class=_HELP_FORMAT)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="benchmark rnnext against stock torch.nn on this machine", formatter_class=_HELP_FORMAT)
    b.add_argument("--quick", action="store_true",
                   help="fewer rounds and shorter cases (what the default run does; with --only, that suite quick)")
    b.add_argument("--full", action="store_true",
                   help="every float32 suite (cells and ListOps training too) at full size and rounds: about "
                        "20-60 minutes on 2 cores")
    b.add_argument("--rounds", type=_positive_int, default=15,
                   help="interleaved timing rounds (the quick sizes cap them); medians are reported")
    b.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    b.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    b.add_argument("--plot", metavar="FILE.png", help="also draw a bar chart of the speedups (needs matplotlib)")
    b.add_argument("--only", metavar="SUITE", help="run one suite: lstm, gru, cells, packed, spinn, generation, listops "
                   "or bfloat16 (prefixes do: bf)")
    b.add_argument("--dtype", default="float32", choices=_DTYPE_CHOICES,
                   help="float32 (default): every suite; bfloat16 (or bf16): the bfloat16 suite (LSTM, packed LSTM, "
                        "GRU and SPINN in bfloat16 against stock's bfloat16 and rnnext's float32)")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where both sides run (cuda: cuDNN nn.LSTM and stock code on the GPU against rnnext's kernels)")
    b.set_defaults(func=_cmd_bench)

    t = sub.add_parser("train", help="train a model", formatter_class=_HELP_FORMAT)
    tsub = t.add_subparsers(dest="task", required=True)
    lo = tsub.add_parser("listops", help="ListOps (generated) with SPINN or an LSTM baseline", formatter_class=_HELP_FORMAT)
    lo.add_argument("--model", choices=["spinn", "lstm"], default="spinn")
    lo.add_argument("--minutes", type=_minutes, default=20.0, help="training time budget")
    lo.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this many steps")
    lo.add_argument("--hidden", type=_positive_int, default=64)
    lo.add_argument("--batch-size", type=_positive_int, default=128)
    lo.add_argument("--lr", type=_positive_float, default=2e-3)
    lo.add_argument("--train-size", type=_positive_int, default=1_000_000, help="distinct generated training expressions")
    lo.add_argument("--dev-size", type=_positive_int, default=5_000)
    lo.add_argument("--max-length", type=_positive_int, default=100, help="tokens per training expression")
    lo.add_argument("--eval-every", type=_positive_float, default=120.0, help="seconds of training between dev evaluations")
    lo.add_argument("--test", metavar="TSV", default=None,
                    help="released test split (default: ../shared/data/listops/test_d20s.tsv when present)")
    lo.add_argument("--out", metavar="CKPT", help="write a checkpoint here (and CKPT.json with the results)")
    lo.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint")
    lo.add_argument("--seed", type=int, default=0)
    lo.add_argument("--device", default="cpu")
    lo.add_argument("--dtype", default="float32", choices=_DTYPE_CHOICES, help=_DTYPE_HELP)
    lo.add_argument("--no-data-cache", action="store_true",
                    help="generate the data afresh, neither reading nor writing the cache ($RNNEXT_CACHE_DIR, "
                         "else ~/.cache/rnnext)")
    lo.add_argument("--no-progress", action="store_true", help="no progress bar")
    lo.add_argument("--distributed", action="store_true",
                    help="DistributedDataParallel over the processes torchrun starts (gloo on CPU, NCCL on CUDA); "
                         "e.g. torchrun --nproc-per-node 2 -m rnnext train ... --distributed")
    lo.set_defaults(func=_cmd_train_listops)
    ch = tsub.add_parser("chars", help="a character-level LSTM (or GRU, RNN) language model", formatter_class=_HELP_FORMAT)
    ch.add_argument("--text", metavar="FILE", help="training text (default: the Python standard library's sources)")
    ch.add_argument("--max-chars", type=_positive_int, default=5_000_000, help="characters of the text (--text or the default corpus) to use")
    ch.add_argument("--minutes", type=_minutes, default=5.0, help="training time budget")
    ch.add_argument("--max-steps", type=_positive_int, default=None)
    ch.add_argument("--hidden", type=_positive_int, default=256)
    ch.add_argument("--layers", type=_positive_int, default=2)
    ch.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm", help="the recurrent cell")
    ch.add_argument("--seq-len", type=_positive_int, default=128)
    ch.add_argument("--batch-size", type=_positive_int, default=64)
    ch.add_argument("--lr", type=_positive_float, default=2e-3)
    ch.add_argument("--eval-every", type=_positive_float, default=60.0)
    ch.add_argument("--out", metavar="CKPT", help="write a checkpoint here (and CKPT.json with the results)")
    ch.add_argument("--resume", metavar="CKPT")
    ch.add_argument("--seed", type=int, default=0)
    ch.add_argument("--device", default="cpu")
    ch.add_argument("--dtype", default="float32", choices=_DTYPE_CHOICES, help=_DTYPE_HELP)
    ch.add_argument("--no-progress", action="store_true")
    ch.add_argument("--distributed", action="store_true",
                    help="DistributedDataParallel over the processes torchrun starts (gloo on CPU, NCCL on CUDA); "
                         "e.g. torchrun --nproc-per-node 2 -m rnnext train ... --distributed")
    ch.set_defaults(func=_cmd_train_chars)

    gn = sub.add_parser("generate", help="sample text from a character-model checkpoint", formatter_class=_HELP_FORMAT)
    gn.add_argument("checkpoint")
    gn.add_argument("--prime", default="def ", help="text to start from")
    gn.add_argument("--steps", type=_nonneg_int, default=500, help="characters to generate")
    gn.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    gn.add_argument("--top-k", type=_positive_int, default=None)
    gn.add_argument("--seed", type=int, default=None)
    gn.set_defaults(func=_cmd_generate)
    _show_defaults(p)
    return p


_INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as e:
        print(f"rnnext {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves and stops by itself)
        print(f"rnnext {args.command}: interrupted", file=sys.stderr)
        return _INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
