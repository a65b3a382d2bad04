"""The plain-PyTorch oracle for SPINN: the semantics of the tree issue written the seed's way, one example at
a time with Python lists as buffers and stacks, the TreeLSTM and the tracker's LSTMCell spelled out."""

import torch

SHIFT, REDUCE, PAD = 0, 1, -1


def tree_lstm(lstm_in, c_left, c_right):
    a, i, f1, f2, o = lstm_in.chunk(5, -1)
    c = a.tanh() * i.sigmoid() + f1.sigmoid() * c_left + f2.sigmoid() * c_right
    return o.sigmoid() * c.tanh(), c


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih
    if b_hh is not None:
        gates = gates + b_hh
    i, f, g, o = gates.chunk(4, -1)
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    return o.sigmoid() * c.tanh(), c


def oracle_spinn(buffers, transitions, spinn):
    """buffers (N, B, 2H), transitions (S, B); spinn supplies the parameters (reduce.left/right/track,
    tracker.rnn/transition). Returns (final top h (B, H), transition logits (S, B, 2) or None)."""
    N, B, W = buffers.shape
    H = W // 2
    zero = buffers.new_zeros(W)
    n_tokens = [int((transitions[:, b] == SHIFT).sum()) for b in range(B)]
    tokens = [[buffers[n, b] for n in range(N)] for b in range(B)]
    stacks = [[zero, zero] for _ in range(B)]
    pos = [0] * B
    red = spinn.reduce
    tracker = spinn.tracker
    Tt = spinn.tracker_size
    h = c = None
    if tracker is not None:
        h = [buffers.new_zeros(Tt) for _ in range(B)]
        c = [buffers.new_zeros(Tt) for _ in range(B)]
    logits = []
    for t in range(transitions.size(0)):
        if tracker is not None:
            step_logits = []
            for b in range(B):
                buf_top = tokens[b][pos[b]][:H] if pos[b] < n_tokens[b] else zero[:H]
                x = torch.cat([buf_top, stacks[b][-1][:H], stacks[b][-2][:H]])
                rnn = tracker.rnn
                h[b], c[b] = lstm_cell(x, h[b], c[b], rnn.weight_ih, rnn.weight_hh, rnn.bias_ih, rnn.bias_hh)
                if tracker.transition is not None:
                    step_logits.append(h[b] @ tracker.transition.weight.t() + tracker.transition.bias)
            if step_logits:
                logits.append(torch.stack(step_logits))
        for b in range(B):
            code = int(transitions[t, b])
            if code == SHIFT:
                stacks[b].append(tokens[b][pos[b]])
                pos[b] += 1
            elif code == REDUCE:
                right = stacks[b].pop()
                left = stacks[b].pop()
                lstm_in = left[:H] @ red.left.weight.t() + red.left.bias + right[:H] @ red.right.weight.t()
                if tracker is not None:
                    lstm_in = lstm_in + h[b] @ red.track.weight.t()
                hh, cc = tree_lstm(lstm_in, left[H:], right[H:])
                stacks[b].append(torch.cat([hh, cc]))
    top = torch.stack([stacks[b][-1][:H] for b in range(B)])
    return top, (torch.stack(logits) if logits else None)


def random_transitions(lengths, generator):
    """Random valid shift-reduce sequences (random binary trees) for rows of the given token counts,
    left-padded with PAD to a common length; (S, B) int64."""
    seqs = []
    for n in lengths:
        seq, stack, shifted = [], 0, 0
        while shifted < n or stack > 1:
            can_shift, can_reduce = shifted < n, stack >= 2
            if can_shift and (not can_reduce or torch.rand((), generator=generator) < 0.5):
                seq.append(SHIFT)
                stack += 1
                shifted += 1
            else:
                seq.append(REDUCE)
                stack -= 1
        seqs.append(seq)
    S = max(len(s) for s in seqs)
    out = torch.full((S, len(seqs)), PAD, dtype=torch.int64)
    for b, s in enumerate(seqs):
        out[S - len(s):, b] = torch.tensor(s)
    return out
