"""DistributedDataParallel equivalence worker (tests/test_distributed.py runs it under torchrun with 2
processes, and in-process as the single-process reference): a few SGD steps of the classifier or SPINN on
fixed global batches, each process taking its half of every batch; writes the final parameters."""

import argparse
import os
import random
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rnnext.distributed  # noqa: E402
from rnnext.data import listops as L  # noqa: E402
from rnnext.models import RNNClassifier, SPINNClassifier  # noqa: E402

GLOBAL_BATCH, STEPS = 16, 4


def build(model: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if model == "classifier":
        return RNNClassifier(L.VOCAB_SIZE, 8, 12, L.NUM_CLASSES, num_layers=2, bidirectional=True, pooling="mean")
    return SPINNClassifier(L.VOCAB_SIZE, 8, 12, L.NUM_CLASSES, tracker_size=None)


def global_batches():
    data = L.generate_listops(GLOBAL_BATCH * STEPS, seed=5, max_length=40)
    rng = random.Random(0)
    rng.shuffle(data)
    return [data[i * GLOBAL_BATCH:(i + 1) * GLOBAL_BATCH] for i in range(STEPS)]


def train(model_name: str, rank: int = 0, world: int = 1) -> dict:
    model = build(model_name)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for examples in global_batches():
        share = GLOBAL_BATCH // world
        b = L.collate(examples[rank * share:(rank + 1) * share])  # this process's half of the global batch
        if model_name == "classifier":
            logits = net(b.tokens.t(), b.lengths)
        else:
            logits = net(b.tokens, b.transitions, b.lengths)
        loss = F.cross_entropy(logits, b.labels)  # the mean over the share; DDP averages over processes
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["classifier", "spinn"], required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    params = train(args.model, rank, world)
    torch.save(params, f"{args.out}.rank{rank}")
    # Leave together, the group destroyed while the interpreter is alive (rnnext.distributed._leave_group says why).
    rnnext.distributed.shutdown(rnnext.distributed.Context(rank, world, rank, torch.device("cpu")))
