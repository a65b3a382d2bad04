"""TreeLSTM cell, the thin-stack SPINN op and module against the per-example oracle (tests/spinn_oracle.py),
gradcheck / opcheck, torch.compile, the ThinStack primitives, parsing, REINFORCE and errors."""

import itertools
import os
import sys

import pytest
import torch

import rnnext
from rnnext.nn import SPINN, ThinStack, TreeLSTMCell

sys.path.insert(0, os.path.dirname(__file__))
from spinn_oracle import oracle_spinn, random_transitions, tree_lstm  # noqa: E402

TOL = {torch.float64: 1e-9, torch.float32: 2e-5}


def close(a, b, dtype, what=""):
    assert a.shape == b.shape, f"{what}: {tuple(a.shape)} vs {tuple(b.shape)}"
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    err = (a - b).abs().max().item() if b.numel() else 0.0
    assert err <= TOL[dtype] * scale, f"{what}: max error {err:.3g}"


def make_batch(B, N, H, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, N + 1, (B,), generator=g)
    lengths[0] = N
    transitions = random_transitions(lengths.tolist(), g)
    buffers = torch.randn(N, B, 2 * H, dtype=dtype, generator=g)
    return buffers, transitions, lengths


def params_of(m):
    return [p for p in m.parameters()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("tracker,predict,B", [(None, False, 5), (3, False, 6), (4, True, 5), (None, False, 40),
                                               (5, True, 33)])
def test_spinn_matches_oracle(dtype, tracker, predict, B):
    H, N = 6, 7
    torch.manual_seed(B)
    model = SPINN(H, tracker_size=tracker, predict_transitions=predict).to(dtype)
    buffers, transitions, lengths = make_batch(B, N, H, dtype, seed=B + (tracker or 0))
    results = []
    for use_oracle in (True, False):
        buf = buffers.clone().requires_grad_()
        if use_oracle:
            top, logits = oracle_spinn(buf, transitions, model)
        else:
            out = model(buf, transitions, lengths=lengths)
            top, logits = out if predict else (out, None)
        loss = (top * torch.linspace(-1, 1, top.numel(), dtype=dtype).view_as(top)).sum()
        if logits is not None:
            loss = loss + torch.nn.functional.cross_entropy(logits.reshape(-1, 2), transitions.clamp(min=0).reshape(-1))
        loss.backward()
        results.append([top] + ([logits] if logits is not None else []) + [buf.grad] +
                       [p.grad.clone() for p in params_of(model)])
        model.zero_grad()
    names = ["top"] + (["logits"] if predict else []) + ["grad buffers"] + [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, results[1], results[0]):
        close(a, b, dtype, name)


def test_spinn_batch_first_and_single_token_rows():
    torch.manual_seed(0)
    H = 4
    model = SPINN(H, tracker_size=3, batch_first=True).double()
    buffers, transitions, _ = make_batch(4, 5, H, torch.float64, seed=3)
    transitions[:, 1] = -1
    transitions[-1, 1] = 0  # a one-token row: a single SHIFT
    top_ref, _ = oracle_spinn(buffers, transitions, model)
    top = model(buffers.transpose(0, 1), transitions.t())
    close(top, top_ref, torch.float64)
    close(top[1], buffers[0, 1, :H], torch.float64)


def test_treelstm_cell_module_op_and_checks():
    torch.manual_seed(0)
    H = 5
    cell = TreeLSTMCell(H, tracker_size=3).double()
    left, right = torch.randn(4, 2 * H, dtype=torch.float64), torch.randn(4, 2 * H, dtype=torch.float64)
    track = torch.randn(4, 3, dtype=torch.float64)
    out = cell(left, right, track)
    lstm_in = cell.left(left[:, :H]) + cell.right(right[:, :H]) + cell.track(track)
    h, c = tree_lstm(lstm_in, left[:, H:], right[:, H:])
    close(out, torch.cat([h, c], 1), torch.float64)
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(4, 5 * H, dtype=torch.float64, generator=g).requires_grad_(),
            torch.randn(4, H, dtype=torch.float64, generator=g).requires_grad_(),
            torch.randn(4, H, dtype=torch.float64, generator=g).requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: torch.ops.rnnext.treelstm_cell(*a)[:2], args)
    torch.library.opcheck(torch.ops.rnnext.treelstm_cell.default, args)
    h, c, acts = torch.ops.rnnext.treelstm_cell(*[a.detach() for a in args])
    torch.library.opcheck(torch.ops.rnnext.treelstm_cell_backward.default,
                          (torch.randn_like(h), torch.randn_like(c), acts, c, args[1].detach(), args[2].detach()))
    with pytest.raises(ValueError, match="tracking must be given"):
        cell(left, right)
    with pytest.raises(RuntimeError, match="5 \\* hidden_size"):
        torch.ops.rnnext.treelstm_cell(torch.randn(2, 7), torch.randn(2, 1), torch.randn(2, 1))


def _spinn_op_args(tracker, train=True, requires_grad=True):
    g = torch.Generator().manual_seed(5)
    H, N, B, Tt = 3, 4, 3, 2
    rnd = lambda *s: (torch.randn(*s, dtype=torch.float64, generator=g) * 0.5).requires_grad_(requires_grad)
    transitions = random_transitions([4, 2, 3], g)
    K = 2 * H + (Tt if tracker else 0)
    t_args = (rnd(4 * Tt, 3 * H), rnd(4 * Tt, Tt), rnd(4 * Tt), rnd(4 * Tt)) if tracker else (None,) * 4
    return (rnd(N, B, 2 * H), transitions, None, rnd(5 * H, K), rnd(5 * H), *t_args, train)


@pytest.mark.parametrize("tracker", [False, True])
def test_spinn_op_gradcheck_and_opcheck(tracker):
    args = _spinn_op_args(tracker)
    idx = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def f(*ts):
        a = list(args)
        for i, t in zip(idx, ts):
            a[i] = t
        out = torch.ops.rnnext.spinn_encode(*a)
        return (out[0], out[1]) if tracker else out[0]

    assert torch.autograd.gradcheck(f, [args[i] for i in idx])
    torch.library.opcheck(torch.ops.rnnext.spinn_encode.default, args)
    torch.library.opcheck(torch.ops.rnnext.spinn_encode.default, _spinn_op_args(tracker, False, False))
    plain = _spinn_op_args(tracker, True, False)
    out = torch.ops.rnnext.spinn_encode(*plain)
    gt = torch.randn_like(out[1]) if tracker else out[1]
    torch.library.opcheck(torch.ops.rnnext.spinn_encode_backward.default,
                          (torch.randn_like(out[0]), gt, *plain[:9], out[2], out[3], out[1], out[4], out[5]))
    torch.library.opcheck(torch.ops.rnnext.thin_stack_plan.default, (plain[1], 4, None))


@pytest.mark.parametrize("tracker", [None, 3])
def test_thin_stack_primitives_match_fused(tracker):
    torch.manual_seed(1)
    H = 5
    model = SPINN(H, tracker_size=tracker).double()
    buffers, transitions, lengths = make_batch(6, 6, H, torch.float64, seed=9)
    ref = model(buffers, transitions)
    stack = ThinStack(buffers, transitions, lengths)
    state = None
    for t in range(stack.steps):
        tracking = None
        if model.tracker is not None:
            buf, top, second = stack.tracker_inputs(t)
            state, _ = model.tracker(buf[:, :H], top[:, :H], second[:, :H], state)
        rows, left, right = stack.children(t)
        if rows.numel():
            stack.push(t, model.reduce(left, right, state[0][rows] if state is not None else None))
    close(stack.result()[:, :H], ref, torch.float64)


def test_parse_mode_is_consistent_with_the_fused_op():
    torch.manual_seed(2)
    H = 4
    model = SPINN(H, tracker_size=5, predict_transitions=True).double()
    buffers, _, lengths = make_batch(5, 6, H, torch.float64, seed=4)
    for training in (False, True):
        model.train(training)
        parse = model(buffers, None, lengths=lengths)
        tr = parse.transitions
        assert ((tr == 0).sum(0) == lengths).all() and ((tr == 1).sum(0) == lengths - 1).all()
        top, logits = model(buffers, tr, lengths=lengths)
        close(parse.h, top, torch.float64)
        # The log-probabilities are those of the tracker's logits with the invalid moves masked out.
        assert (parse.log_probs <= 0).all() and (parse.log_probs[tr == -1] == 0).all()


@pytest.mark.parametrize("training", [False, True])
def test_sync_free_parse_loop_equals_the_cpu_loop(training, monkeypatch):
    """The GPU's parse loop (stack on the device, every row composed and kept where it reduced, no
    data-dependent shapes), run on the CPU, gives the CPU loop's transitions, log-probs, h and gradients."""
    H = 4
    torch.manual_seed(3)
    model = SPINN(H, tracker_size=5, predict_transitions=True).double().train(training)
    buffers, _, lengths = make_batch(6, 7, H, torch.float64, seed=5)
    results = []
    masked_steps = []
    step = SPINN._parse_step_masked
    monkeypatch.setattr(SPINN, "_parse_step_masked", lambda *a: masked_steps.append(1) or step(*a))
    for sync_free in (False, True):
        monkeypatch.setattr(rnnext.nn.tree, "_SYNC_FREE_PARSE_ON_CPU", sync_free)
        torch.manual_seed(11)  # the same draws when sampling
        b = buffers.clone().requires_grad_()
        parse = model(b, None, lengths=lengths)
        assert (len(masked_steps) > 0) == sync_free  # each loop ran its own code
        (parse.h.sin().sum() + parse.log_probs.sum()).backward()
        results.append([parse.transitions, parse.log_probs, parse.h, b.grad] + [p.grad.clone() for p in model.parameters()])
        model.zero_grad()
    assert torch.equal(results[0][0], results[1][0])
    for a, c in zip(results[1][1:], results[0][1:]):
        close(a, c, torch.float64)


def test_reinforce_learns_gold_trees():
    """REINFORCE with reward = agreement with the gold transitions: the policy's agreement rises well above its
    starting value."""
    torch.manual_seed(0)
    H, N, B = 8, 6, 32
    g = torch.Generator().manual_seed(0)
    model = SPINN(H, tracker_size=16, predict_transitions=True)
    emb = torch.nn.Embedding(10, 2 * H)
    opt = torch.optim.Adam(list(model.parameters()) + list(emb.parameters()), lr=0.02)

    left_branching = torch.tensor([0, 0] + [1, 0] * (N - 2) + [1])
    right_branching = torch.tensor([0] * N + [1] * (N - 1))

    def agreement(parse, gold):
        return (parse.transitions == gold.unsqueeze(1)).float().mean(0)

    # Gold: the one of the two tree shapes that the untrained policy agrees with less.
    model.eval()
    tokens = torch.randint(0, 10, (N, B), generator=g)
    with torch.no_grad():
        parse = model(emb(tokens), None)
    gold = min((left_branching, right_branching), key=lambda gd: agreement(parse, gd).mean().item())
    start = agreement(parse, gold).mean().item()

    def batch():
        return torch.randint(0, 10, (N, B), generator=g), gold

    model.train()
    for _ in range(60):
        tokens, gold = batch()
        parse = model(emb(tokens), None)
        reward = agreement(parse, gold)
        loss = -((reward - reward.mean()) * parse.log_probs.sum(0)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tokens, gold = batch()
    with torch.no_grad():
        end = agreement(model(emb(tokens), None), gold).mean().item()
    assert end > start + 0.2 and end > 0.9, (start, end)


def test_torch_compile_spinn_forward_backward():
    torch.manual_seed(0)
    H = 4
    model = SPINN(H, tracker_size=3, predict_transitions=True)
    buffers, transitions, _ = make_batch(4, 5, H, torch.float32, seed=1)

    def step(buf):
        top, logits = model(buf, transitions)
        return top.square().sum() + logits.sum()

    b1 = buffers.clone().requires_grad_()
    eager = step(b1)
    eager.backward()
    g_eager = [b1.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    b2 = buffers.clone().requires_grad_()
    compiled = torch.compile(step, fullgraph=True)(b2)
    compiled.backward()
    close(compiled, eager, torch.float32)
    for a, b in zip([b2.grad] + [p.grad for p in model.parameters()], g_eager):
        close(a, b, torch.float32)


def test_checkpoint_names_match_the_seed():
    model = SPINN(300, tracker_size=64, predict_transitions=True)
    names = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert names == {
        "reduce.left.weight": (1500, 300), "reduce.left.bias": (1500,), "reduce.right.weight": (1500, 300),
        "reduce.track.weight": (1500, 64), "tracker.rnn.weight_ih": (256, 900), "tracker.rnn.weight_hh": (256, 64),
        "tracker.rnn.bias_ih": (256,), "tracker.rnn.bias_hh": (256,), "tracker.transition.weight": (2, 64),
        "tracker.transition.bias": (2,),
    }


def test_invalid_transitions_name_row_and_step():
    H = 2
    model = SPINN(H)
    buf = torch.randn(3, 2, 2 * H)
    ok = torch.tensor([[0, 0], [0, 0], [1, 1], [0, -1], [1, -1]])
    model(buf, ok)
    with pytest.raises(RuntimeError, match=r"row 1, step 1: REDUCE needs two entries"):
        model(buf, torch.tensor([[0, 0], [0, 1], [1, 0], [0, 1], [1, -1]]))
    with pytest.raises(RuntimeError, match=r"transitions\[2, 0\] = 3 \(step 2, row 0\)"):
        model(buf, torch.tensor([[0, 0], [0, 0], [3, 1], [0, -1], [1, -1]]))
    with pytest.raises(RuntimeError, match="row 0 has 4 SHIFTs but the buffer holds only 3"):
        model(buf, torch.tensor([[0, 0], [0, 0], [0, 1], [0, -1], [1, -1], [1, -1], [1, -1]]))
    with pytest.raises(RuntimeError, match="row 1 ends with 2 entries"):
        model(buf, torch.tensor([[0, 0], [0, 0], [1, -1], [0, -1], [1, -1]]))
    with pytest.raises(RuntimeError, match=r"row 1 has 2 SHIFTs but lengths\[1\] = 3"):
        model(buf, ok, lengths=[3, 3])
    with pytest.raises(ValueError, match="width 2 \\* hidden_size = 4"):
        model(torch.randn(3, 2, 5), ok)
    with pytest.raises(ValueError, match="predict_transitions"):
        model(buf, None)


@pytest.mark.parametrize("B", [40, 43])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_spinn_tracker_row_split_threads(dtype, B):
    """With a tracker and at least 32 rows SPINN runs split by batch rows (each thread all steps of its rows):
    1 and 2 threads give the same bits, forward and every gradient, training and no-grad forward agree, and
    float64 matches the oracle."""
    g = torch.Generator().manual_seed(7)
    H, Tt = 12, 6
    lengths = torch.randint(1, 11, (B,), generator=g).tolist()
    transitions = random_transitions(lengths, g)
    torch.manual_seed(3)
    model = SPINN(H, tracker_size=Tt, predict_transitions=True).to(dtype)
    buf = torch.randn(max(lengths), B, 2 * H, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
    results = []
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            model.zero_grad()
            b = buf.clone().requires_grad_()
            top, logits = model(b, transitions)
            ((top * w).sum() + logits.sum()).backward()
            with torch.no_grad():
                top_ng, logits_ng = model(buf, transitions)
            results.append([top.detach(), logits.detach(), b.grad] + [p.grad.clone() for p in model.parameters()])
            assert torch.equal(top_ng, top.detach()) and torch.equal(logits_ng, logits.detach())
        finally:
            torch.set_num_threads(old)
    for i, (x, y) in enumerate(zip(*results)):
        assert torch.equal(x, y), (i, (x.double() - y.double()).abs().max().item())
    if dtype == torch.float64:
        top_ref, logits_ref = oracle_spinn(buf, transitions, model)
        torch.testing.assert_close(results[0][0], top_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(results[0][1], logits_ref, rtol=1e-10, atol=1e-10)
