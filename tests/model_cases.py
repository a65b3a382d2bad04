"""Every rnnext module and model in a small configuration, with a seeded input builder and a scalar loss:
shared by the hardening tests (checkpoints, determinism, threads, memory) and the checkpoint artifact."""

import random
from typing import Callable, Dict, List, NamedTuple

import torch

import rnnext
from rnnext.data import listops as L
from rnnext.models import CharGenerator, RNNClassifier, SPINNClassifier
from spinn_oracle import random_transitions

H = 8


class Case(NamedTuple):
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int], List[object]]  # seed -> positional arguments
    loss: Callable[[object], torch.Tensor]


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _lstm_inputs(seed):
    return [torch.randn(7, 4, 6, generator=_g(seed))]


def _lstm_lengths_inputs(seed):
    return [torch.randn(4, 7, 6, generator=_g(seed))]


def _tree_inputs(seed, B=5, N=6):
    g = _g(seed)
    lengths = torch.randint(1, N + 1, (B,), generator=g).tolist()
    return [torch.randn(N, B, 2 * H, generator=g), random_transitions(lengths, g)]


def _tokens_lengths(seed, vocab=20, B=5, T=9):
    g = _g(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    return [torch.randint(0, vocab, (B, T), generator=g), lengths]


def _listops_inputs(seed, B=6):
    data = L.generate_listops(B, seed=seed, max_length=30)
    batch = next(iter(L.bucketed_batches(data, B, random.Random(0), shuffle=False)))
    return [batch.tokens, batch.transitions, batch.lengths]


def _out0(out):
    return out[0] if isinstance(out, tuple) else out


def tensors_of(out) -> List[torch.Tensor]:
    """Every tensor in a (nested) tuple/list output, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in tensors_of(o)]
    return []


def _sum_all(out):
    """A loss that touches every output tensor (outputs and final states) with different weights."""
    return sum((t.float() * (i + 1)).sin().sum() for i, t in enumerate(tensors_of(out)) if t.is_floating_point())


CASES: Dict[str, Case] = {
    "LSTM": Case(lambda: rnnext.nn.LSTM(6, H, num_layers=2, bidirectional=True, dropout=0.25), _lstm_inputs, _sum_all),
    "LSTM(batch_first, proj)": Case(lambda: rnnext.nn.LSTM(6, H, batch_first=True, proj_size=3),
                                    _lstm_lengths_inputs, _sum_all),
    "LSTMCell": Case(lambda: rnnext.nn.LSTMCell(6, H), lambda s: [torch.randn(4, 6, generator=_g(s))], _sum_all),
    "TreeLSTMCell": Case(lambda: rnnext.nn.TreeLSTMCell(H, tracker_size=3),
                         lambda s: [torch.randn(5, 2 * H, generator=_g(s)), torch.randn(5, 2 * H, generator=_g(s + 1)),
                                    torch.randn(5, 3, generator=_g(s + 2))], _sum_all),
    "SPINN": Case(lambda: rnnext.nn.SPINN(H, tracker_size=4), _tree_inputs, _sum_all),
    "SPINN(no tracker)": Case(lambda: rnnext.nn.SPINN(H), _tree_inputs, _sum_all),
    "RNNClassifier": Case(lambda: RNNClassifier(20, 6, H, 3, num_layers=2, bidirectional=True, dropout=0.2,
                                                pooling="mean"), _tokens_lengths, _sum_all),
    "SPINNClassifier": Case(lambda: SPINNClassifier(L.VOCAB_SIZE, 6, H, L.NUM_CLASSES, dropout=0.1),
                            _listops_inputs, _sum_all),
    "CharGenerator": Case(lambda: CharGenerator(12, 5, H, 2, dropout=0.2),
                          lambda s: [torch.randint(0, 12, (3, 10), generator=_g(s))], _sum_all),
    # GRU and RNN (since 0.2: in checkpoints_v0.2.0.pt, not in the v0.1.0 artifact)
    "GRU": Case(lambda: rnnext.nn.GRU(6, H, num_layers=2, bidirectional=True, dropout=0.25), _lstm_inputs, _sum_all),
    "RNN(relu, batch_first)": Case(lambda: rnnext.nn.RNN(6, H, nonlinearity="relu", batch_first=True),
                                   _lstm_lengths_inputs, _sum_all),
    "GRUCell": Case(lambda: rnnext.nn.GRUCell(6, H), lambda s: [torch.randn(4, 6, generator=_g(s))], _sum_all),
    "RNNCell": Case(lambda: rnnext.nn.RNNCell(6, H, nonlinearity="tanh"),
                    lambda s: [torch.randn(4, 6, generator=_g(s))], _sum_all),
    "RNNClassifier(gru)": Case(lambda: RNNClassifier(20, 6, H, 3, cell="gru", num_layers=2, bidirectional=True,
                                                     pooling="last"), _tokens_lengths, _sum_all),
    "CharGenerator(gru)": Case(lambda: CharGenerator(12, 5, H, 2, cell="gru"),
                               lambda s: [torch.randint(0, 12, (3, 10), generator=_g(s))], _sum_all),
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return CASES[name].build()


def forward_backward(model: torch.nn.Module, name: str, seed: int = 1, rng_seed: int = 2):
    """One forward + backward with a seeded global RNG (dropout); returns the outputs and the gradients of
    the parameters and of the floating-point inputs, all detached."""
    case = CASES[name]
    args = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in case.inputs(seed)]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(rng_seed)
    out = model(*args)
    case.loss(out).backward()
    outs = [t.detach().clone() for t in tensors_of(out)]
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    grads += [a.grad.clone() for a in args if isinstance(a, torch.Tensor) and a.grad is not None]
    return outs, grads
