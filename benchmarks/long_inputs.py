"""Long inputs and memory: time per step of rnnext.nn.LSTM at 1k, 10k and 100k steps (forward + backward, and
inference), a SPINN tree of 5,000 tokens (right-branching: 4,999 nested compositions), and the resident memory
of 1,000 training steps of each model.

    python benchmarks/long_inputs.py
"""

import os
import random
import time

import torch
import torch.nn.functional as F

import rnnext
from rnnext.data import listops as L
from rnnext.models import CharGenerator, RNNClassifier, SPINNClassifier


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def lstm_steps(B=8, I=32, H=64):
    torch.manual_seed(0)
    m = rnnext.nn.LSTM(I, H)
    print(f"rnnext.nn.LSTM({I}, {H}), batch {B}: microseconds per step")
    print(f"{'steps':>8} {'inference':>10} {'fwd+bwd':>10}")
    for T in (1_000, 10_000, 100_000):
        x = torch.randn(T, B, I, requires_grad=True)
        inf, fb = [], []
        for _ in range(2):  # the better of two runs: the first also pays the page faults of fresh memory
            t0 = time.perf_counter()
            with torch.no_grad():
                m(x)
            inf.append((time.perf_counter() - t0) / T * 1e6)
            t0 = time.perf_counter()
            y, _ = m(x)
            y.sum().backward()
            fb.append((time.perf_counter() - t0) / T * 1e6)
            del y
        print(f"{T:>8} {min(inf):>10.2f} {min(fb):>10.2f}")


def deep_tree(N=5000, H=64):
    torch.manual_seed(0)
    spinn = rnnext.nn.SPINN(H)
    tr = torch.tensor([rnnext.SHIFT] * N + [rnnext.REDUCE] * (N - 1)).unsqueeze(1)
    buffers = (0.5 * torch.randn(N, 1, 2 * H)).requires_grad_()
    t0 = time.perf_counter()
    spinn(buffers, tr).sum().backward()
    dt = time.perf_counter() - t0
    print(f"SPINN H={H}, one right-branching tree of {N} tokens: {dt * 1e3:.1f} ms forward + backward "
          f"({dt / (N - 1) * 1e6:.1f} us per composition)")


def memory(steps=1000):
    torch.manual_seed(0)
    data = L.generate_listops(64 * 20, seed=3, max_length=60)
    batches = list(L.bucketed_batches(data, 64, random.Random(0)))

    def char_loss(m, s):
        x = torch.randint(0, 96, (32, 65))
        logits, _ = m(x[:, :-1])
        return F.cross_entropy(logits.reshape(-1, 96), x[:, 1:].reshape(-1))

    def listops_loss(fwd):
        def loss(m, s):
            b = batches[s % len(batches)]
            return F.cross_entropy(fwd(m, b), b.labels)
        return loss

    models = {  # name: (model, loss of training step s)
        "RNNClassifier": (RNNClassifier(L.VOCAB_SIZE, 64, 128, L.NUM_CLASSES, bidirectional=True),
                          listops_loss(lambda m, b: m(b.tokens.t(), b.lengths))),
        "SPINNClassifier": (SPINNClassifier(L.VOCAB_SIZE, 64, 64, L.NUM_CLASSES),
                            listops_loss(lambda m, b: m(b.tokens, b.transitions, b.lengths))),
        "CharGenerator": (CharGenerator(96, 32, 128, 2), char_loss),
    }
    print(f"resident memory over {steps} training steps (MiB at step 100 / {steps})")
    for name, (model, loss_of) in models.items():
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        marks = {}
        for s in range(steps):
            loss = loss_of(model, s)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if s + 1 in (100, steps):
                marks[s + 1] = rss_mib()
        print(f"  {name:<16} {marks[100]:8.1f} {marks[steps]:8.1f}  (growth {marks[steps] - marks[100]:+.1f})")


if __name__ == "__main__":
    lstm_steps()
    deep_tree()
    memory()
