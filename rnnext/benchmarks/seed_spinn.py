"""SPINN as the 2017 PyTorch SNLI example writes it: Python lists as per-example buffers and stacks, a Reduce
that batches the compositions of a step, and a Tracker LSTMCell over bundled states. The baseline of the SPINN
benchmark (the transition codes follow rnnext: SHIFT 0, REDUCE 1, PAD -1; the tracker's transition layer is
omitted, as the benchmark does not predict transitions)."""

import itertools

import torch
from torch import nn


def bundle(lstm_iter):
    if lstm_iter is None:
        return None
    lstm_iter = tuple(lstm_iter)
    if lstm_iter[0] is None:
        return None
    return torch.cat(lstm_iter, 0).chunk(2, 1)


def unbundle(state):
    if state is None:
        return itertools.repeat(None)
    return torch.split(torch.cat(state, 1), 1, 0)


def tree_lstm(c1, c2, lstm_in):
    a, i, f1, f2, o = lstm_in.chunk(5, 1)
    c = a.tanh() * i.sigmoid() + f1.sigmoid() * c1 + f2.sigmoid() * c2
    h = o.sigmoid() * c.tanh()
    return h, c


class Reduce(nn.Module):
    def __init__(self, size, tracker_size=None):
        super().__init__()
        self.left = nn.Linear(size, 5 * size)
        self.right = nn.Linear(size, 5 * size, bias=False)
        if tracker_size is not None:
            self.track = nn.Linear(tracker_size, 5 * size, bias=False)

    def forward(self, left_in, right_in, tracking=None):
        left, right = bundle(left_in), bundle(right_in)
        tracking = bundle(tracking)
        lstm_in = self.left(left[0])
        lstm_in += self.right(right[0])
        if hasattr(self, "track"):
            lstm_in += self.track(tracking[0])
        return unbundle(tree_lstm(left[1], right[1], lstm_in))


class Tracker(nn.Module):
    def __init__(self, size, tracker_size):
        super().__init__()
        self.rnn = nn.LSTMCell(3 * size, tracker_size)
        self.state_size = tracker_size
        self.state = None

    def reset_state(self):
        self.state = None

    def forward(self, bufs, stacks):
        buf = bundle(buf[-1] for buf in bufs)[0]
        stack1 = bundle(stack[-1] for stack in stacks)[0]
        stack2 = bundle(stack[-2] for stack in stacks)[0]
        x = torch.cat((buf, stack1, stack2), 1)
        if self.state is None:
            self.state = 2 * [x.new_zeros(x.size(0), self.state_size)]
        self.state = self.rnn(x, self.state)
        return unbundle(self.state)


class SeedSPINN(nn.Module):
    def __init__(self, size, tracker_size=None):
        super().__init__()
        self.reduce = Reduce(size, tracker_size)
        if tracker_size is not None:
            self.tracker = Tracker(size, tracker_size)

    def forward(self, buffers, transitions):
        """buffers (N, B, 2H) tokens left to right; transitions (S, B)."""
        null = buffers.new_zeros(1, buffers.size(2))
        n_tokens = (transitions == 0).sum(0).tolist()
        # Reversed and prefixed with a null, so that tokens pop from the end left to right.
        rows = torch.split(buffers, 1, 1)
        buffers = [[null] + list(torch.split(b.squeeze(1)[:n], 1, 0))[::-1] for b, n in zip(rows, n_tokens)]
        stacks = [[null, null] for _ in buffers]
        if hasattr(self, "tracker"):
            self.tracker.reset_state()
        trans_list = transitions.tolist()
        for i in range(len(trans_list)):
            trans = trans_list[i]
            if hasattr(self, "tracker"):
                tracker_states = self.tracker(buffers, stacks)
            else:
                tracker_states = itertools.repeat(None)
            lefts, rights, trackings = [], [], []
            batch = zip(trans, buffers, stacks, tracker_states)
            for transition, buf, stack, tracking in batch:
                if transition == 0:  # shift
                    stack.append(buf.pop())
                elif transition == 1:  # reduce
                    rights.append(stack.pop())
                    lefts.append(stack.pop())
                    trackings.append(tracking)
            if rights:
                reduced = iter(self.reduce(lefts, rights, trackings))
                for transition, stack in zip(trans, stacks):
                    if transition == 1:
                        stack.append(next(reduced))
        return bundle([stack.pop() for stack in stacks])[0]
