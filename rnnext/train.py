"""Training loops behind ``rnnext train``: ListOps with SPINN (a TreeLSTM over the gold parses) or a sequential
LSTM baseline. The clock counts training only: data generation, batching and evaluation are timed apart."""

from __future__ import annotations

import gc
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from .data import listops as L
from .models import RNNClassifier, SPINNClassifier

DEFAULT_LISTOPS_TEST = os.path.join("..", "shared", "data", "listops", "test_d20s.tsv")


@dataclass
class ListOpsConfig:
    model: str = "spinn"            # "spinn" (TreeLSTM on the gold parses) or "lstm"
    minutes: float = 20.0           # training time budget
    max_steps: Optional[int] = None  # stop earlier after this many steps
    hidden: int = 64
    embed: int = 64
    mlp_hidden: int = 128
    batch_size: int = 128
    lr: float = 2e-3
    train_size: int = 1_000_000     # distinct generated training expressions
    dev_size: int = 5_000
    max_length: int = 100           # tokens per training expression
    eval_every: float = 120.0       # seconds of training between dev evaluations
    seed: int = 0
    device: str = "cpu"
    test_path: Optional[str] = None  # the released test split; default: ../shared/data/listops/test_d20s.tsv


@dataclass
class TrainState:
    step: int = 0
    examples: int = 0
    train_seconds: float = 0.0
    history: List[Dict[str, float]] = field(default_factory=list)


def build_listops_model(cfg: ListOpsConfig) -> torch.nn.Module:
    if cfg.model == "spinn":
        return SPINNClassifier(L.VOCAB_SIZE, cfg.embed, cfg.hidden, L.NUM_CLASSES, mlp_hidden=cfg.mlp_hidden)
    if cfg.model == "lstm":
        return RNNClassifier(L.VOCAB_SIZE, cfg.embed, cfg.hidden, L.NUM_CLASSES, cell="lstm")
    raise ValueError(f"unknown model {cfg.model!r}: expected 'spinn' or 'lstm'")


def _logits(model, batch: L.Batch, kind: str, device: torch.device) -> torch.Tensor:
    if kind == "spinn":
        return model(batch.tokens.to(device), batch.transitions, batch.lengths)
    return model(batch.tokens.t().to(device), batch.lengths)


@torch.no_grad()
def evaluate(model, examples: List[L.Example], kind: str, device: torch.device, batch_size: int = 256) -> float:
    """Accuracy on examples, batched by length."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].tokens))
    correct = 0
    for i in range(0, len(order), batch_size):
        batch = L.collate([examples[j] for j in order[i:i + batch_size]])
        pred = _logits(model, batch, kind, device).argmax(1).cpu()
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

    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    t0 = time.time()
    dev = L.generate_listops(cfg.dev_size, seed=cfg.seed + 1, max_length=cfg.max_length)
    train = L.generate_listops(cfg.train_size, seed=cfg.seed + 2, max_length=cfg.max_length,
                               exclude={tuple(e.tokens) for e in dev})
    batches = list(L.bucketed_batches(train, cfg.batch_size, rng, shuffle=True))
    del train
    gc.collect()
    gc.freeze()  # the dataset's many small objects would otherwise be traversed by every collection
    log(f"generated {cfg.train_size} training and {cfg.dev_size} dev expressions (<= {cfg.max_length} tokens) and "
        f"{len(batches)} batches in {time.time() - t0:.0f} s")

    model = build_listops_model(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type == "cpu")
    state = TrainState()
    if resume:
        ckpt = torch.load(resume, map_location=device, weights_only=False)
        if ckpt.get("task") != "listops":
            raise ValueError(f"{resume}: not a ListOps checkpoint")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = TrainState(**{k: v for k, v in ckpt["state"].items()})
        log(f"resumed from {resume}: step {state.step}, {state.train_seconds:.0f} s trained")
    budget = cfg.minutes * 60.0
    bar = tqdm(total=int(budget), unit="s", disable=not progress, desc=f"listops/{cfg.model}",
               initial=int(min(state.train_seconds, budget)), mininterval=2.0)
    next_eval = state.train_seconds + cfg.eval_every
    epoch_order = list(range(len(batches)))
    position = len(epoch_order)
    model.train()
    while state.train_seconds < budget and (cfg.max_steps is None or state.step < cfg.max_steps):
        if position >= len(epoch_order):
            rng.shuffle(epoch_order)
            position = 0
        batch = batches[epoch_order[position]]
        position += 1
        start = time.perf_counter()
        loss = F.cross_entropy(_logits(model, batch, cfg.model, device), batch.labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        elapsed = time.perf_counter() - start
        state.train_seconds += elapsed
        state.step += 1
        state.examples += batch.labels.numel()
        bar.update(int(min(state.train_seconds, budget)) - bar.n)
        if state.step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", ex_s=f"{state.examples / state.train_seconds:.0f}")
        if state.train_seconds >= next_eval:
            acc = evaluate(model, dev, cfg.model, device)
            state.history.append({"train_seconds": state.train_seconds, "step": state.step, "dev_accuracy": acc,
                                  "loss": loss.item()})
            bar.write(f"  {state.train_seconds / 60:5.1f} min  step {state.step}  dev accuracy {acc:.4f}  "
                      f"({state.examples / state.train_seconds:.0f} examples/s)")
            next_eval += cfg.eval_every
            if out:
                _save(out, model, opt, cfg, state)
    bar.close()
    results: Dict[str, object] = {
        "model": cfg.model, "steps": state.step, "train_seconds": state.train_seconds,
        "examples_per_second": state.examples / max(state.train_seconds, 1e-9),
        "dev_accuracy": evaluate(model, dev, cfg.model, device), "history": state.history,
    }
    test_path = cfg.test_path or DEFAULT_LISTOPS_TEST
    if os.path.exists(test_path):
        test = L.read_listops_tsv(test_path)
        t1 = time.time()
        results["test_accuracy"] = evaluate(model, test, cfg.model, device)
        results["test_examples"] = len(test)
        results["test_seconds"] = time.time() - t1
    elif cfg.test_path:
        raise FileNotFoundError(f"test split not found: {cfg.test_path}")
    if out:
        _save(out, model, opt, cfg, state)
        with open(out + ".json", "w") as f:
            json.dump(results, f, indent=2)
    return results
