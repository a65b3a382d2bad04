"""Training loops behind ``rnnext train``: ListOps with SPINN (a TreeLSTM over the gold parses) or a sequential
LSTM baseline. The clock counts training only: data generation, batching and evaluation are timed apart."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from . import distributed as D
from .data import listops as L
from .models import RNNClassifier, SPINNClassifier

DEFAULT_LISTOPS_TEST = os.path.join("..", "shared", "data", "listops", "test_d20s.tsv")

# --dtype: the compute dtype of training and evaluation. bfloat16 is mixed precision: the parameters and the
# optimizer state stay float32 and the steps run under torch.autocast(dtype=torch.bfloat16), so every rnnext
# module (and nn.Linear) computes in bfloat16 (see the README's bfloat16 section) and the gradients reach the
# parameters in float32.
DTYPES = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def canonical_dtype(name: str) -> str:
    """'float32' or 'bfloat16' for any accepted spelling of --dtype; ValueError otherwise."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return "bfloat16" if DTYPES[name] is not None else "float32"


def compute_context(dtype: str, device: torch.device):
    """The context the training and evaluation steps run in: autocast to bfloat16, or nothing for float32."""
    low = DTYPES[canonical_dtype(dtype)]
    return torch.autocast(torch.device(device).type, dtype=low) if low is not None else contextlib.nullcontext()


@dataclass
class ListOpsConfig:
    model: str = "spinn"            # "spinn" (TreeLSTM on the gold parses) or "lstm"
    minutes: float = 20.0           # training time budget
    max_steps: Optional[int] = None  # stop earlier after this many steps
    hidden: int = 64
    embed: int = 64
    mlp_hidden: int = 128
    batch_size: int = 128
    lr: float = 2e-3                # peak learning rate, decayed to 0 over the time budget (cosine)
    warmup: float = 0.02            # share of the budget spent warming the learning rate up
    clip: float = 5.0               # gradient norm clipping
    train_size: int = 1_000_000     # distinct generated training expressions
    dev_size: int = 5_000
    max_length: int = 100           # tokens per training expression
    eval_every: float = 120.0       # seconds of training between dev evaluations
    seed: int = 0
    device: str = "cpu"
    distributed: bool = False       # DistributedDataParallel over torchrun's processes (see rnnext.distributed)
    test_path: Optional[str] = None  # the released test split; default: ../shared/data/listops/test_d20s.tsv
    dtype: str = "float32"          # "float32" or "bfloat16" (mixed precision, see DTYPES)
    data_cache: bool = True         # cache the generated data (see data_cache_dir) and reuse it


def _quiet(*args, **kwargs) -> None:
    """The log of processes other than the first in distributed training."""


@dataclass
class TrainState:
    step: int = 0
    examples: int = 0
    train_seconds: float = 0.0
    history: List[Dict[str, float]] = field(default_factory=list)


def scheduled_lr(peak: float, progress: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` of training, then cosine decay to 0 at the end of the budget."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return peak * progress / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / (1.0 - warmup)))


def build_listops_model(cfg: ListOpsConfig) -> torch.nn.Module:
    if cfg.model == "spinn":
        return SPINNClassifier(L.VOCAB_SIZE, cfg.embed, cfg.hidden, L.NUM_CLASSES, mlp_hidden=cfg.mlp_hidden)
    if cfg.model == "lstm":
        return RNNClassifier(L.VOCAB_SIZE, cfg.embed, cfg.hidden, L.NUM_CLASSES, cell="lstm")
    raise ValueError(f"unknown model {cfg.model!r}: expected 'spinn' or 'lstm'")


def data_cache_dir() -> str:
    """Where generated ListOps data is cached: $RNNEXT_CACHE_DIR, else $XDG_CACHE_HOME/rnnext or ~/.cache/rnnext."""
    if os.environ.get("RNNEXT_CACHE_DIR"):
        return os.environ["RNNEXT_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rnnext")


def _listops_data(cfg: ListOpsConfig, progress: bool, log):
    """(dev, train, from_cache): the generated data, from the cache when it holds the same (seed, sizes, max
    length), else generated (with a progress bar) and cached. The cache holds int tensors (weights_only loads);
    an unreadable cache file is regenerated."""
    key = f"listops-v1-seed{cfg.seed}-train{cfg.train_size}-dev{cfg.dev_size}-len{cfg.max_length}.pt"
    path = os.path.join(data_cache_dir(), key) if cfg.data_cache else None
    if path and os.path.isfile(path):
        try:
            d = torch.load(path, weights_only=True)
            return L.examples_from_tensors(d["dev"]), L.examples_from_tensors(d["train"]), True
        except Exception as e:  # a truncated or foreign file: regenerate
            log(f"ignoring the unreadable data cache {path} ({type(e).__name__}); regenerating")
    dev = L.generate_listops(cfg.dev_size, seed=cfg.seed + 1, max_length=cfg.max_length)
    train = L.generate_listops(cfg.train_size, seed=cfg.seed + 2, max_length=cfg.max_length,
                               exclude={tuple(e.tokens) for e in dev}, progress=progress)
    if path:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            torch.save({"dev": L.examples_to_tensors(dev), "train": L.examples_to_tensors(train)}, tmp)
            os.replace(tmp, path)
        except OSError as e:  # a read-only home: train anyway
            log(f"could not cache the generated data at {path}: {e}")
    return dev, train, False


def _logits(model, batch: L.Batch, kind: str, device: torch.device) -> torch.Tensor:
    if kind == "spinn":
        return model(batch.tokens.to(device), batch.transitions, batch.lengths)
    return model(batch.tokens.t().to(device), batch.lengths)


@torch.no_grad()
def evaluate(model, examples: List[L.Example], kind: str, device: torch.device, batch_size: int = 256,
             dtype: str = "float32") -> float:
    """Accuracy on examples, batched by length, computed in ``dtype`` (as trained)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].tokens))
    correct = 0
    for i in range(0, len(order), batch_size):
        batch = L.collate([examples[j] for j in order[i:i + batch_size]])
        with compute_context(dtype, device):
            logits = _logits(model, batch, kind, device)
        pred = logits.argmax(1).cpu()
        correct += int((pred == batch.labels).sum())
    model.train(was_training)
    return correct / max(len(examples), 1)


def _save(path: str, model, opt, cfg: ListOpsConfig, state: TrainState) -> None:
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "config": asdict(cfg),
                "state": asdict(state), "task": "listops"}, tmp)
    os.replace(tmp, path)


def train_listops(cfg: ListOpsConfig, out: Optional[str] = None, resume: Optional[str] = None,
                  progress: bool = True, log=print) -> Dict[str, object]:
    """Trains on generated ListOps until the time budget (or max_steps) is spent; returns the results
    (dev and test accuracy, throughput, the history of dev evaluations)."""
    from tqdm import tqdm

    cfg.dtype = canonical_dtype(cfg.dtype)  # checked before any long work
    if cfg.test_path and not os.path.exists(cfg.test_path):
        raise FileNotFoundError(f"test split not found: {cfg.test_path}")
    ctx = D.init_from_env(cfg.device) if cfg.distributed else None
    device = ctx.device if ctx else torch.device(cfg.device)
    main = ctx is None or ctx.is_main
    if not main:
        progress, log = False, _quiet
    torch.manual_seed(cfg.seed)  # the same initial parameters on every process (DDP also broadcasts rank 0's)
    rng = random.Random(cfg.seed)
    t0 = time.time()
    dev, train, cached = _listops_data(cfg, progress and main, log)
    batches = list(L.bucketed_batches(train, cfg.batch_size, rng, shuffle=True))
    if ctx:  # every process generates the same data and trains on its own share of the batches
        batches = batches[ctx.rank::ctx.world_size]
        rng = random.Random(cfg.seed * 1000 + ctx.rank)
    del train
    gc.collect()
    gc.freeze()  # the dataset's many small objects would otherwise be traversed by every collection
    log(f"{'loaded (cache)' if cached else 'generated'} {cfg.train_size} training and {cfg.dev_size} dev expressions "
        f"(<= {cfg.max_length} tokens) and {len(batches)} batches in {time.time() - t0:.0f} s")

    model = build_listops_model(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type == "cpu")
    state = TrainState()
    if resume:
        ckpt = torch.load(resume, map_location=device, weights_only=True)
        if ckpt.get("task") != "listops":
            raise ValueError(f"{resume}: not a ListOps checkpoint")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = TrainState(**{k: v for k, v in ckpt["state"].items()})
        log(f"resumed from {resume}: step {state.step}, {state.train_seconds:.0f} s trained")
    net = D.wrap(model, ctx) if ctx else model  # the module the training steps run
    budget = cfg.minutes * 60.0
    bar = tqdm(total=int(budget), unit="s", disable=not progress, desc=f"listops/{cfg.model}",
               initial=int(min(state.train_seconds, budget)), mininterval=2.0)
    next_eval = state.train_seconds + cfg.eval_every
    epoch_order = list(range(len(batches)))
    position = len(epoch_order)
    model.train()
    with StopOnInterrupt() as stop:
        _listops_steps(cfg, net, model, opt, batches, epoch_order, position, rng, state, budget, bar, next_eval,
                       dev, device, ctx, main, out, stop)
    bar.close()
    del net  # DistributedDataParallel holds the process group: release it before leaving the group
    if stop.agreed:
        return _interrupted(out, state, lambda: _save(out, model, opt, cfg, state), ctx, main, log)
    if not main:
        D.shutdown(ctx)
        return {"rank": ctx.rank, "steps": state.step}
    return _listops_results(cfg, model, opt, state, dev, device, ctx, out)


class StopOnInterrupt:
    """Within the block (a training loop), the first Ctrl-C (SIGINT) asks the loop to stop after the step it is
    running, so that the checkpoint written then holds whole steps; a second Ctrl-C interrupts at once. With
    several processes the request travels with the per-step agreement on the clock (``step_done``), so that
    every process stops after the same step."""

    def __enter__(self) -> "StopOnInterrupt":
        self.requested = self.agreed = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> bool:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False

    def step_done(self, train_seconds: float, ctx) -> float:
        """The agreed clock after a step (the slowest process's); sets ``agreed`` once any process was asked to
        stop."""
        seconds, stop = D.agree_max((train_seconds, float(self.requested)), ctx)
        self.agreed = stop > 0
        return seconds


def _interrupted(out: Optional[str], state: "TrainState", save, ctx, main: bool, log) -> Dict[str, object]:
    """After Ctrl-C: the first process writes the checkpoint (the weights of the last finished step), every
    process leaves the group, and the results say so."""
    if main and out:
        save()
        log(f"interrupted at step {state.step}; checkpoint written to {out} (continue with --resume {out})")
    elif main:
        log(f"interrupted at step {state.step}; nothing saved (no --out)")
    try:
        D.shutdown(ctx)
    except Exception:  # the other processes may be gone already
        pass
    return {"interrupted": True, "steps": state.step, "checkpoint": out if main else None}


def _listops_steps(cfg, net, model, opt, batches, epoch_order, position, rng, state, budget, bar, next_eval, dev,
                   device, ctx, main, out, stop: StopOnInterrupt) -> None:
    """The training loop of train_listops, until the budget, max_steps or Ctrl-C."""
    while (state.train_seconds < budget and (cfg.max_steps is None or state.step < cfg.max_steps)
           and not stop.agreed):
        if position >= len(epoch_order):
            rng.shuffle(epoch_order)
            position = 0
        batch = batches[epoch_order[position]]
        position += 1
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = scheduled_lr(cfg.lr, state.train_seconds / budget, cfg.warmup)
        with compute_context(cfg.dtype, device):
            loss = F.cross_entropy(_logits(net, batch, cfg.model, device), batch.labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        elapsed = time.perf_counter() - start
        state.step += 1
        state.examples += batch.labels.numel()
        # with several processes, the slowest one's clock decides, so that all stop on the same step
        state.train_seconds = stop.step_done(state.train_seconds + elapsed, ctx)
        bar.update(int(min(state.train_seconds, budget)) - bar.n)
        if state.step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", ex_s=f"{state.examples / state.train_seconds:.0f}")
        if state.train_seconds >= next_eval:
            next_eval += cfg.eval_every
            if not main:
                continue
            acc = evaluate(model, dev, cfg.model, device, dtype=cfg.dtype)
            state.history.append({"train_seconds": state.train_seconds, "step": state.step, "dev_accuracy": acc,
                                  "loss": loss.item()})
            bar.write(f"  {state.train_seconds / 60:5.1f} min  step {state.step}  dev accuracy {acc:.4f}  "
                      f"({state.examples / state.train_seconds:.0f} examples/s{' per process' if ctx else ''})")
            if out:
                _save(out, model, opt, cfg, state)


def _listops_results(cfg, model, opt, state, dev, device, ctx, out) -> Dict[str, object]:
    """The end of train_listops on the first process: the final checkpoint, dev and test accuracy."""
    if out:  # the final checkpoint first: an evaluation that fails must not cost the training
        _save(out, model, opt, cfg, state)
    results: Dict[str, object] = {
        "model": cfg.model, "dtype": cfg.dtype, "steps": state.step, "train_seconds": state.train_seconds,
        "examples_per_second": state.examples / max(state.train_seconds, 1e-9),
        "dev_accuracy": evaluate(model, dev, cfg.model, device, dtype=cfg.dtype), "history": state.history,
    }
    if ctx:
        results["world_size"] = ctx.world_size
        results["examples_per_second"] *= ctx.world_size
    test_path = cfg.test_path or DEFAULT_LISTOPS_TEST
    if os.path.exists(test_path):
        test = L.read_listops_tsv(test_path)
        t1 = time.time()
        results["test_accuracy"] = evaluate(model, test, cfg.model, device, dtype=cfg.dtype)
        results["test_examples"] = len(test)
        results["test_seconds"] = time.time() - t1
    elif cfg.test_path:
        raise FileNotFoundError(f"test split not found: {cfg.test_path}")
    if out:
        with open(out + ".json", "w") as f:
            json.dump(results, f, indent=2)
    D.shutdown(ctx)
    return results


# ---------------------------------------------------------------------------------------------------------
# Character language model


@dataclass
class CharsConfig:
    text: Optional[str] = None       # a text file; default: the Python standard library's own sources
    max_chars: int = 5_000_000      # characters of the default corpus to use
    minutes: float = 5.0
    max_steps: Optional[int] = None
    embed: int = 64
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    cell: str = "lstm"              # "lstm", "gru" or "rnn"
    seq_len: int = 128
    batch_size: int = 64
    lr: float = 2e-3
    vocab_size: int = 128
    val_fraction: float = 0.05
    eval_every: float = 60.0
    seed: int = 0
    device: str = "cpu"
    distributed: bool = False
    dtype: str = "float32"          # "float32" or "bfloat16" (mixed precision, see DTYPES)


def default_corpus(max_chars: int) -> str:
    """Python source files of the running interpreter's standard library, in a fixed order, up to max_chars."""
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    parts, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "test", "tests", "__pycache__"))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError):
                continue
            parts.append(text)
            total += len(text)
            if total >= max_chars:
                return "\n".join(parts)[:max_chars]
    if not parts:
        raise OSError(f"no Python sources found under {root}")
    return "\n".join(parts)


def unigram_entropy(ids: torch.Tensor, vocab_size: int) -> float:
    """Entropy (nats per character) of the characters' frequencies: the loss of a model that ignores context."""
    p = torch.bincount(ids, minlength=vocab_size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def train_chars(cfg: CharsConfig, out: Optional[str] = None, resume: Optional[str] = None, progress: bool = True,
                log=print) -> Dict[str, object]:
    """Teacher-forced training of a CharGenerator on random windows of the text; returns the results (train and
    validation loss in nats per character, the corpus's unigram entropy, a sample)."""
    from tqdm import tqdm

    from .models import CharGenerator, CharVocab

    cfg.dtype = canonical_dtype(cfg.dtype)  # checked before any long work
    ctx = D.init_from_env(cfg.device) if cfg.distributed else None
    device = ctx.device if ctx else torch.device(cfg.device)
    main = ctx is None or ctx.is_main
    if not main:
        progress, log = False, _quiet
    torch.manual_seed(cfg.seed)
    if cfg.text is not None:
        if not os.path.isfile(cfg.text):
            raise OSError(f"no such text file: {cfg.text}")
        with open(cfg.text, encoding="utf-8", errors="replace") as f:
            text = f.read(cfg.max_chars)  # bounded: --max-chars characters at most, whatever the file's size
    else:
        text = default_corpus(cfg.max_chars)
    if len(text) < 4 * (cfg.seq_len + 1):
        raise ValueError(f"the text has {len(text)} characters; at least {4 * (cfg.seq_len + 1)} are needed")
    state = TrainState()
    ckpt = None
    if resume:
        ckpt = torch.load(resume, map_location=device, weights_only=True)
        if ckpt.get("task") != "chars":
            raise ValueError(f"{resume}: not a character-model checkpoint")
        if ckpt["config"].get("cell", "lstm") != cfg.cell:
            raise ValueError(f"{resume}: a {ckpt['config'].get('cell', 'lstm')} model; resume it with --cell "
                             f"{ckpt['config'].get('cell', 'lstm')} (got --cell {cfg.cell})")
        vocab = CharVocab.from_state_dict(ckpt["vocab"])
    else:
        vocab = CharVocab.from_text(text, max_size=cfg.vocab_size)
    ids = torch.tensor(vocab.encode(text), dtype=torch.int64)
    split = int(len(ids) * (1 - cfg.val_fraction))
    train_ids, val_ids = ids[:split], ids[split:]
    entropy = unigram_entropy(train_ids, len(vocab))
    log(f"corpus: {len(text)} characters, vocabulary {len(vocab)}, unigram entropy {entropy:.3f} nats/char")
    model = CharGenerator(len(vocab), cfg.embed, cfg.hidden, cfg.layers, cfg.dropout, cell=cfg.cell).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type == "cpu")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = TrainState(**ckpt["state"])
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * (ctx.rank if ctx else 0))  # each process its windows
    net = D.wrap(model, ctx) if ctx else model
    L = cfg.seq_len

    def windows(source: torch.Tensor, n: int, g: Optional[torch.Generator]):
        starts = torch.randint(0, len(source) - L - 1, (n,), generator=g)
        idx = starts.unsqueeze(1) + torch.arange(L + 1)
        w = source[idx]
        return w[:, :-1].to(device), w[:, 1:].to(device)

    val_batches = [windows(val_ids, cfg.batch_size, torch.Generator().manual_seed(1000 + i)) for i in range(8)]

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        with compute_context(cfg.dtype, device):
            losses = [F.cross_entropy(model(x)[0].reshape(-1, len(vocab)), y.reshape(-1)).item()
                      for x, y in val_batches]
        model.train()
        return sum(losses) / len(losses)

    def save():
        if out:
            tmp = out + ".tmp"
            torch.save({"task": "chars", "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "vocab": vocab.state_dict(), "config": asdict(cfg), "state": asdict(state)}, tmp)
            os.replace(tmp, out)

    budget = cfg.minutes * 60.0
    bar = tqdm(total=int(budget), unit="s", disable=not progress, desc="chars", mininterval=2.0,
               initial=int(min(state.train_seconds, budget)))
    next_eval = state.train_seconds + cfg.eval_every
    loss = torch.tensor(float("nan"))
    model.train()
    with StopOnInterrupt() as stop:
        while (state.train_seconds < budget and (cfg.max_steps is None or state.step < cfg.max_steps)
               and not stop.agreed):
            loss = _chars_step(net, opt, windows(train_ids, cfg.batch_size, gen), len(vocab), cfg, device, state,
                               stop, ctx)
            bar.update(int(min(state.train_seconds, budget)) - bar.n)
            if state.step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if state.train_seconds >= next_eval:
                next_eval += cfg.eval_every
                if not main:
                    continue
                v = val_loss()
                state.history.append({"train_seconds": state.train_seconds, "step": state.step, "val_loss": v,
                                      "train_loss": loss.item()})
                bar.write(f"  {state.train_seconds / 60:5.1f} min  step {state.step}  train {loss.item():.3f}  "
                          f"val {v:.3f} nats/char")
                save()
    bar.close()
    del net  # DistributedDataParallel holds the process group: release it before leaving the group
    if stop.agreed:
        return _interrupted(out, state, save, ctx, main, log)
    if not main:
        D.shutdown(ctx)
        return {"rank": ctx.rank, "steps": state.step}
    save()
    prime = torch.tensor([vocab.encode("def ")], device=device)
    sample = vocab.decode(model.generate(prime, 300, temperature=0.8, generator=torch.Generator().manual_seed(0))[0].tolist())
    results = {"dtype": cfg.dtype, "steps": state.step, "train_seconds": state.train_seconds, "train_loss": loss.item(),
               "val_loss": val_loss(), "unigram_entropy": entropy, "vocab_size": len(vocab),
               "characters_per_second": state.examples / max(state.train_seconds, 1e-9), "sample": "def " + sample,
               "history": state.history}
    if ctx:
        results["world_size"] = ctx.world_size
        results["characters_per_second"] *= ctx.world_size
    if out:
        with open(out + ".json", "w") as f:
            json.dump(results, f, indent=2)
    D.shutdown(ctx)
    return results


def _chars_step(net, opt, batch, vocab_size: int, cfg: CharsConfig, device, state: TrainState,
                stop: StopOnInterrupt, ctx) -> torch.Tensor:
    """One teacher-forced training step of train_chars; returns its loss."""
    x, y = batch
    start = time.perf_counter()
    with compute_context(cfg.dtype, device):
        logits, _ = net(x)
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    state.step += 1
    state.examples += x.numel()
    state.train_seconds = stop.step_done(state.train_seconds + time.perf_counter() - start, ctx)
    return loss
