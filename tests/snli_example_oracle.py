"""A re-creation of the 2017 PyTorch SNLI example's SPINN (pytorch/examples, snli/spinn.py) for the tests of
rnnext.nn.SNLIExampleSPINN: per-example Python lists as buffers (popped from their end) and stacks (two copies
of the buffer's first entry at the bottom), torchtext's transition codes (3 shift, 2 reduce, others no-op), a
Reduce of three Linear maps into a TreeLSTM, a Tracker LSTMCell whose optional 4-way transition layer's argmax
replaces the given transitions. Same parameter names as the example (reduce.left/right/track,
tracker.rnn/transition)."""

import torch
from torch import nn


def _tree_lstm(c_left, c_right, pre):
    a, i, f1, f2, o = pre.chunk(5, 1)
    c = a.tanh() * i.sigmoid() + f1.sigmoid() * c_left + f2.sigmoid() * c_right
    return o.sigmoid() * c.tanh(), c


def _halves(rows):
    """A list of (1, 2H) rows -> their stacked h and c halves (n, H) each."""
    return torch.cat(list(rows), 0).chunk(2, 1)


class ExampleReduce(nn.Module):
    def __init__(self, size, tracker_size=None):
        super().__init__()
        self.left = nn.Linear(size, 5 * size)
        self.right = nn.Linear(size, 5 * size, bias=False)
        if tracker_size is not None:
            self.track = nn.Linear(tracker_size, 5 * size, bias=False)

    def forward(self, lefts, rights, trackings):
        lh, lc = _halves(lefts)
        rh, rc = _halves(rights)
        pre = self.left(lh) + self.right(rh)
        if hasattr(self, "track"):
            pre = pre + self.track(_halves(trackings)[0])
        h, c = _tree_lstm(lc, rc, pre)
        return list(torch.split(torch.cat([h, c], 1), 1, 0))


class ExampleTracker(nn.Module):
    def __init__(self, size, tracker_size, predict):
        super().__init__()
        self.rnn = nn.LSTMCell(3 * size, tracker_size)
        if predict:
            self.transition = nn.Linear(tracker_size, 4)
        self.tracker_size = tracker_size
        self.state = None

    def forward(self, bufs, stacks):
        buf = _halves(b[-1] for b in bufs)[0]
        top = _halves(s[-1] for s in stacks)[0]
        second = _halves(s[-2] for s in stacks)[0]
        x = torch.cat([buf, top, second], 1)
        if self.state is None:
            self.state = (x.new_zeros(x.size(0), self.tracker_size),) * 2
        self.state = self.rnn(x, self.state)
        states = list(torch.split(torch.cat(self.state, 1), 1, 0))
        return states, (self.transition(self.state[0]) if hasattr(self, "transition") else None)


class ExampleSPINN(nn.Module):
    def __init__(self, size, tracker_size=None, predict=False):
        super().__init__()
        self.reduce = ExampleReduce(size, tracker_size)
        if tracker_size is not None:
            self.tracker = ExampleTracker(size, tracker_size, predict)

    def forward(self, buffers, transitions):
        """buffers (N, B, 2H) in the example's layout; transitions (S, B) torchtext codes or None."""
        bufs = [list(torch.split(buffers[:, b], 1, 0)) for b in range(buffers.size(1))]
        stacks = [[buf[0], buf[0]] for buf in bufs]
        if hasattr(self, "tracker"):
            self.tracker.state = None
        steps = transitions.size(0) if transitions is not None else 2 * len(bufs[0]) - 3
        for t in range(steps):
            trans = transitions[t].tolist() if transitions is not None else None
            states = [None] * len(bufs)
            if hasattr(self, "tracker"):
                states, logits = self.tracker(bufs, stacks)
                if logits is not None:
                    trans = logits.max(1)[1].tolist()
            lefts, rights, trackings = [], [], []
            for code, buf, stack, state in zip(trans, bufs, stacks, states):
                if code == 3:
                    stack.append(buf.pop())
                elif code == 2:
                    rights.append(stack.pop())
                    lefts.append(stack.pop())
                    trackings.append(state)
            if rights:
                made = iter(self.reduce(lefts, rights, trackings))
                for code, stack in zip(trans, stacks):
                    if code == 2:
                        stack.append(next(made))
        return _halves([stack.pop() for stack in stacks])[0]


def example_inputs(token_states, parses, pad_state):
    """The example's inputs for a batch: token_states[b] (n_b, 2H) and parses[b] (shift/reduce codes 3/2) ->
    buffers (max n + 1, B, 2H), each row [tokens, end-of-sentence pad, pads] reversed, and transitions
    (max steps, B) padded at the end with code 1."""
    N = max(len(s) for s in token_states) + 1
    S = max(len(p) for p in parses)
    rows = []
    for s in token_states:
        pads = pad_state.expand(N - len(s), -1)
        rows.append(torch.cat([s, pads]).flip(0))
    transitions = torch.ones(S, len(parses), dtype=torch.int64)
    for b, p in enumerate(parses):
        transitions[: len(p), b] = torch.tensor(p)
    return torch.stack(rows, 1), transitions
