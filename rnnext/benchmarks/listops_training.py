"""ListOps training throughput: rnnext's SPINNClassifier against a plain-PyTorch TreeLSTM that batches all
ready nodes level by level (torch autograd for the backward), the same model, data and optimizer, timed
step by step in one process with the two sides alternating."""

from __future__ import annotations

import random
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data import listops as L
from ..models import SPINNClassifier
from .timing import Row, resolve_device, time_interleaved

CONFIG = dict(hidden=64, embed=64, batch=128, max_length=100, batches=60)


def level_schedule(transitions: torch.Tensor, num_tokens: int) -> Tuple[List[Tuple[torch.Tensor, ...]], torch.Tensor]:
    """Per tree level: (node references, left references, right references), with references indexing
    cat([zero row, tokens (N B), nodes]); and each row's final top. Computed once per batch (data preparation)."""
    plan = torch.ops.rnnext.thin_stack_plan(transitions, num_tokens, None)
    left, right, node, final = plan[0], plan[1], plan[2], plan[6]
    first_node = 1 + num_tokens * transitions.size(1)
    mask = node >= 0
    nodes, lefts, rights = node[mask].tolist(), left[mask].tolist(), right[mask].tolist()
    level: Dict[int, int] = {}
    for n, l, r in zip(nodes, lefts, rights):  # nodes appear after their children in step order
        level[n] = 1 + max(level.get(l, 0) if l >= first_node else 0, level.get(r, 0) if r >= first_node else 0)
    by_level: Dict[int, List[Tuple[int, int, int]]] = {}
    for n, l, r in zip(nodes, lefts, rights):
        by_level.setdefault(level[n], []).append((n, l, r))
    out = []
    for lv in sorted(by_level):
        n, l, r = zip(*by_level[lv])
        out.append((torch.tensor(n), torch.tensor(l), torch.tensor(r)))
    return out, final


class LevelTreeLSTM(nn.Module):
    """The reference: embedding -> [h | c] projection -> TreeLSTM level by level -> MLP, in plain PyTorch."""

    def __init__(self, ours: SPINNClassifier):
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(ours.embedding.weight.detach().clone(), freeze=False)
        self.projection = nn.Linear(ours.projection.in_features, ours.projection.out_features)
        self.left = nn.Linear(ours.spinn.hidden_size, 5 * ours.spinn.hidden_size)
        self.right = nn.Linear(ours.spinn.hidden_size, 5 * ours.spinn.hidden_size, bias=False)
        self.mlp = nn.Sequential(*[type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear) else type(m)()
                                   for m in ours.mlp])
        self.load_state_dict({**{k: v for k, v in ours.state_dict().items() if k.startswith(("projection", "mlp"))},
                              "embedding.weight": ours.embedding.weight, "left.weight": ours.spinn.reduce.left.weight,
                              "left.bias": ours.spinn.reduce.left.bias, "right.weight": ours.spinn.reduce.right.weight})
        self.H = ours.spinn.hidden_size

    def forward(self, tokens, schedule, final):
        N, B = tokens.shape
        H = self.H
        # The same vocabulary-level projection as SPINNClassifier, so that only the tree machinery differs.
        leaves = F.embedding(tokens, self.projection(self.embedding.weight)).reshape(N * B, 2 * H)
        num_nodes = sum(len(n) for n, _, _ in schedule)
        table = torch.cat([leaves.new_zeros(1, 2 * H), leaves, leaves.new_zeros(num_nodes, 2 * H)])
        for nodes, lefts, rights in schedule:
            l, r = table[lefts], table[rights]
            a, i, f1, f2, o = (self.left(l[:, :H]) + self.right(r[:, :H])).chunk(5, 1)
            c = a.tanh() * i.sigmoid() + f1.sigmoid() * l[:, H:] + f2.sigmoid() * r[:, H:]
            table = table.index_put((nodes,), torch.cat([o.sigmoid() * c.tanh(), c], 1))
        return self.mlp(table[final, :H])


def run(rounds: int = 1, quick: bool = False, device="cpu") -> Dict[str, object]:
    """Training steps of both sides, alternating, over the prepared batches (quick: one pass over 20)."""
    dev = resolve_device(device)
    c = dict(CONFIG)
    # `rnnext bench` passes its timing rounds (15 by default); here each round is a pass over 60 batches.
    passes = 1 if quick else max(1, rounds // 5)
    if quick:
        c["batches"] = 20
    torch.manual_seed(0)
    data = L.generate_listops(c["batches"] * c["batch"], seed=11, max_length=c["max_length"])
    batches = list(L.bucketed_batches(data, c["batch"], random.Random(0)))
    prepared = []
    for b in batches:  # data preparation, outside the timing; transitions stay on the CPU (host-side plans)
        schedule, final = level_schedule(b.transitions, b.tokens.size(0))
        prepared.append(((b.tokens.to(dev), b.transitions, b.lengths, b.labels.to(dev)),
                         [tuple(t.to(dev) for t in level) for level in schedule], final.to(dev)))
    ours = SPINNClassifier(L.VOCAB_SIZE, c["embed"], c["hidden"], L.NUM_CLASSES).to(dev)
    ref = LevelTreeLSTM(ours).to(dev)
    opts = {"rnnext": torch.optim.Adam(ours.parameters(), lr=1e-3), "stock": torch.optim.Adam(ref.parameters(), lr=1e-3)}
    position = {"rnnext": 0, "stock": 0}

    def step(name):
        def f():
            (tokens, transitions, lengths, labels), schedule, final = prepared[position[name] % len(prepared)]
            position[name] += 1
            logits = ours(tokens, transitions, lengths) if name == "rnnext" else ref(tokens, schedule, final)
            loss = F.cross_entropy(logits, labels)
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
        return f

    examples = sum(b[3].numel() for b, _, _ in prepared) / len(prepared)
    t = time_interleaved({"stock": step("stock"), "rnnext": step("rnnext")}, rounds=len(prepared) * passes,
                         warmup=3, device=dev)
    row = Row("ListOps training step (level-by-level PyTorch vs rnnext)", t["stock"], t["rnnext"],
              extra={"stock_examples_per_s": examples / t["stock"] * 1e3,
                     "rnnext_examples_per_s": examples / t["rnnext"] * 1e3})
    c["device"] = str(dev)
    return {"config": c, "rows": [row]}
