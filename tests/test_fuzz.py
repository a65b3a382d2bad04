"""Property-based fuzzing (hypothesis) of every public op and module.

Valid inputs: random shapes (down to 0 and 1 where the op allows them), odd sizes, float64/float32 and the other
dtypes an op accepts, and random memory layouts (contiguous, transposed, strided, expanded/broadcast) compared
against the plain-PyTorch oracles (torch.nn.LSTM / LSTMCell, torch.nn.utils.rnn, tests/spinn_oracle.py).
Invalid inputs: one argument of a valid call broken at random (dtype, rank, a size, lengths, batch sizes, indices,
transitions); the call must raise a Python exception with a message, never crash or read out of bounds (run the
suite under the sanitizer build to check the latter: see README, "Sanitizers"). NaN and inf propagate as in stock.

RNNEXT_FUZZ_EXAMPLES sets the examples per property (default 300; `pytest --hypothesis-show-statistics` counts).
"""

import os
import sys
from unittest.mock import patch

import pytest
import torch
import torch.nn.utils.rnn as stock_rnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnext
from rnnext.utils import rnn as ours_rnn

sys.path.insert(0, os.path.dirname(__file__))
from spinn_oracle import PAD, REDUCE, SHIFT, oracle_spinn, random_transitions, tree_lstm  # noqa: E402

EXAMPLES = int(os.environ.get("RNNEXT_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-5)}
FLOATS = st.sampled_from([torch.float64, torch.float32])
ERRORS = (RuntimeError, ValueError, TypeError, IndexError)
ops = torch.ops.rnnext


def layout(data, shape, dtype, seed, label="layout"):
    """A tensor of `shape` whose memory layout hypothesis picks: contiguous, transposed (reversed dims),
    strided (every other element of a wider tensor) or expanded along one dimension (stride 0)."""
    g = torch.Generator().manual_seed(seed)
    kind = data.draw(st.sampled_from(["contiguous", "transposed", "strided", "expanded"]), label=label)
    shape = tuple(shape)
    if dtype.is_floating_point:
        base = lambda s: torch.randn(s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    else:
        base = lambda s: torch.randint(-50, 50, s, generator=g).to(dtype)  # noqa: E731
    if kind == "transposed" and len(shape) >= 2:
        return base(shape[::-1]).permute(*range(len(shape) - 1, -1, -1))
    if kind == "strided" and len(shape) >= 1 and shape[-1] > 0:
        return base(shape[:-1] + (2 * shape[-1],))[..., ::2]
    if kind == "expanded":
        dims = [d for d, n in enumerate(shape) if n > 1]
        if dims:
            d = data.draw(st.sampled_from(dims), label="expanded dim")
            small = list(shape)
            small[d] = 1
            return base(tuple(small)).expand(shape)
    return base(shape)


def assert_close(got, want, dtype, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    torch.testing.assert_close(got, want, **TOL[dtype], equal_nan=True, msg=what)


def raises_with_message(fn):
    with pytest.raises(ERRORS) as info:
        fn()
    assert str(info.value).strip(), "an exception without a message"


# ------------------------------------------------------------------------------------------ valid: LSTM

@FUZZ
@given(data=st.data())
def test_fuzz_lstm_module_matches_torch(data):
    d = data.draw
    I, H, L = d(st.integers(1, 5)), d(st.integers(1, 6)), d(st.integers(1, 2))
    bi, bias, bf = d(st.booleans()), d(st.booleans()), d(st.booleans())
    proj = d(st.integers(1, H - 1)) if H > 1 and d(st.booleans()) else 0
    T, B, dtype, seed = d(st.integers(1, 6)), d(st.integers(1, 5)), d(FLOATS), d(st.integers(0, 2**16))
    mode = d(st.sampled_from(["dense", "packed", "lengths", "masked", "unbatched"]))
    torch.manual_seed(seed)
    stock = torch.nn.LSTM(I, H, L, bias=bias, batch_first=bf, bidirectional=bi, proj_size=proj).to(dtype)
    ours = rnnext.nn.LSTM(I, H, L, bias=bias, batch_first=bf, bidirectional=bi, proj_size=proj).to(dtype)
    ours.load_state_dict(stock.state_dict())
    D, P = 2 if bi else 1, proj or H
    if mode == "unbatched":
        x = layout(data, (T, I), dtype, seed)
        hx = (layout(data, (L * D, P), dtype, seed + 1, "h0"), layout(data, (L * D, H), dtype, seed + 2, "c0"))
    else:
        x = layout(data, (B, T, I) if bf else (T, B, I), dtype, seed)
        hx = (layout(data, (L * D, B, P), dtype, seed + 1, "h0"), layout(data, (L * D, B, H), dtype, seed + 2, "c0"))
    if not d(st.booleans(), label="with hx"):
        hx = None
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(seed))
    results = []
    for m in (stock, ours):
        xg = x.detach().clone().requires_grad_()
        hg = tuple(h.detach().clone().requires_grad_() for h in hx) if hx is not None else None
        if mode == "packed":
            packed = stock_rnn.pack_padded_sequence(xg, lengths, batch_first=bf, enforce_sorted=False)
            y, (hn, cn) = m(packed, hg)
            y = y.data
        elif mode in ("lengths", "masked") and m is ours:
            # masked: the device-lengths path of a GPU input (no host reads), run on the CPU
            with patch.object(rnnext.nn.lstm, "_MASKED_ON_CPU", mode == "masked"):
                y, (hn, cn) = m(xg, hg, lengths=lengths)
        elif mode in ("lengths", "masked"):
            packed = stock_rnn.pack_padded_sequence(xg, lengths, batch_first=bf, enforce_sorted=False)
            y, (hn, cn) = m(packed, hg)
            y, _ = stock_rnn.pad_packed_sequence(y, batch_first=bf, total_length=T)
        else:
            y, (hn, cn) = m(xg, hg)
        w = torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)
        ((y * w).sum() + hn.sin().sum() + cn.cos().sum()).backward()
        grads = [xg.grad] + ([h.grad for h in hg] if hg else []) + [p.grad for p in m.parameters()]
        results.append([y, hn, cn] + grads)
    for i, (a, b) in enumerate(zip(results[1], results[0])):
        assert_close(a, b, dtype, f"{mode} tensor {i}")


@FUZZ
@given(data=st.data())
def test_fuzz_lstm_cell_op_and_module(data):
    d = data.draw
    I, H, B = d(st.integers(1, 6)), d(st.integers(1, 7)), d(st.integers(0, 5))
    dtype, seed, bias = d(FLOATS), d(st.integers(0, 2**16)), d(st.booleans())
    x = layout(data, (B, I), dtype, seed, "x")
    h, c = layout(data, (B, H), dtype, seed + 1, "h"), layout(data, (B, H), dtype, seed + 2, "c")
    w_ih, w_hh = layout(data, (4 * H, I), dtype, seed + 3, "w_ih"), layout(data, (4 * H, H), dtype, seed + 4, "w_hh")
    b_ih = layout(data, (4 * H,), dtype, seed + 5, "b_ih") if bias else None
    b_hh = layout(data, (4 * H,), dtype, seed + 6, "b_hh") if bias else None
    hy, cy, _ = ops.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    gates = x @ w_ih.t() + h @ w_hh.t() + ((b_ih + b_hh) if bias else 0)
    i, f, g, o = gates.chunk(4, 1)
    c_ref = f.sigmoid() * c + i.sigmoid() * g.tanh()
    assert_close(cy, c_ref, dtype, "c")
    assert_close(hy, o.sigmoid() * c_ref.tanh(), dtype, "h")
    # the module, unbatched or batched, against torch.nn.LSTMCell, with gradients
    torch.manual_seed(seed)
    stock = torch.nn.LSTMCell(I, H, bias=bias).to(dtype)
    ours = rnnext.nn.LSTMCell(I, H, bias=bias).to(dtype)
    ours.load_state_dict(stock.state_dict())
    xin = x[0] if B > 0 and d(st.booleans(), label="unbatched") else x
    outs = []
    for m in (stock, ours):
        xg = xin.detach().clone().requires_grad_()
        hh, cc = m(xg)
        (hh.sum() + 2 * cc.sum()).backward()
        outs.append([hh, cc, xg.grad] + [p.grad for p in m.parameters()])
    for k, (a, b) in enumerate(zip(outs[1], outs[0])):
        assert_close(a, b, dtype, f"LSTMCell tensor {k}")


# ------------------------------------------------------------------------------------------ valid: GRU and RNN

RNN_KINDS = {"gru": (torch.nn.GRU, rnnext.nn.GRU, {}), "rnn_tanh": (torch.nn.RNN, rnnext.nn.RNN, {}),
             "rnn_relu": (torch.nn.RNN, rnnext.nn.RNN, {"nonlinearity": "relu"})}
RNN_CELLS = {"gru": (torch.nn.GRUCell, rnnext.nn.GRUCell, {}), "rnn_tanh": (torch.nn.RNNCell, rnnext.nn.RNNCell, {}),
             "rnn_relu": (torch.nn.RNNCell, rnnext.nn.RNNCell, {"nonlinearity": "relu"})}


@FUZZ
@given(data=st.data())
def test_fuzz_gru_rnn_module_matches_torch(data):
    d = data.draw
    kind = d(st.sampled_from(sorted(RNN_KINDS)), label="cell")
    stock_cls, ours_cls, extra = RNN_KINDS[kind]
    I, H, L = d(st.integers(1, 5)), d(st.integers(1, 6)), d(st.integers(1, 2))
    bi, bias, bf = d(st.booleans()), d(st.booleans()), d(st.booleans())
    T, B, dtype, seed = d(st.integers(1, 6)), d(st.integers(1, 5)), d(FLOATS), d(st.integers(0, 2**16))
    mode = d(st.sampled_from(["dense", "packed", "lengths", "masked", "unbatched"]))
    torch.manual_seed(seed)
    stock = stock_cls(I, H, L, bias=bias, batch_first=bf, bidirectional=bi, **extra).to(dtype)
    ours = ours_cls(I, H, L, bias=bias, batch_first=bf, bidirectional=bi, **extra).to(dtype)
    ours.load_state_dict(stock.state_dict())
    D = 2 if bi else 1
    if mode == "unbatched":
        x, hx = layout(data, (T, I), dtype, seed), layout(data, (L * D, H), dtype, seed + 1, "h0")
    else:
        x = layout(data, (B, T, I) if bf else (T, B, I), dtype, seed)
        hx = layout(data, (L * D, B, H), dtype, seed + 1, "h0")
    if not d(st.booleans(), label="with hx"):
        hx = None
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(seed))
    results = []
    for m in (stock, ours):
        xg = x.detach().clone().requires_grad_()
        hg = hx.detach().clone().requires_grad_() if hx is not None else None
        if mode == "packed" or (mode in ("lengths", "masked") and m is stock):
            packed = stock_rnn.pack_padded_sequence(xg, lengths, batch_first=bf, enforce_sorted=False)
            y, hn = m(packed, hg)
            y = y.data if mode == "packed" else stock_rnn.pad_packed_sequence(y, batch_first=bf, total_length=T)[0]
        elif mode in ("lengths", "masked"):
            with patch.object(rnnext.nn.lstm, "_MASKED_ON_CPU", mode == "masked"):
                y, hn = m(xg, hg, lengths=lengths)
        else:
            y, hn = m(xg, hg)
        w = torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)
        ((y * w).sum() + hn.sin().sum()).backward()
        results.append([y, hn, xg.grad] + ([hg.grad] if hg is not None else []) + [p.grad for p in m.parameters()])
    for i, (a, b) in enumerate(zip(results[1], results[0])):
        assert_close(a, b, dtype, f"{kind} {mode} tensor {i}")


@FUZZ
@given(data=st.data())
def test_fuzz_gru_rnn_cells_match_torch(data):
    d = data.draw
    kind = d(st.sampled_from(sorted(RNN_CELLS)), label="cell")
    stock_cls, ours_cls, extra = RNN_CELLS[kind]
    I, H, B = d(st.integers(1, 6)), d(st.integers(1, 7)), d(st.integers(0, 6))
    dtype, seed, bias = d(FLOATS), d(st.integers(0, 2**16)), d(st.booleans())
    torch.manual_seed(seed)
    stock = stock_cls(I, H, bias=bias, **extra).to(dtype)
    ours = ours_cls(I, H, bias=bias, **extra).to(dtype)
    ours.load_state_dict(stock.state_dict())
    x = layout(data, (B, I), dtype, seed, "x")
    h = layout(data, (B, H), dtype, seed + 1, "h") if d(st.booleans(), label="with hx") else None
    unbatched = B > 0 and d(st.booleans(), label="unbatched")
    outs = []
    for m in (stock, ours):
        xg = (x[0] if unbatched else x).detach().clone().requires_grad_()
        hg = None if h is None else (h[0] if unbatched else h).detach().clone().requires_grad_()
        hy = m(xg, hg)
        (hy * 1.5).sin().sum().backward()
        outs.append([hy, xg.grad] + ([hg.grad] if hg is not None else []) + [p.grad for p in m.parameters()])
    for k, (a, b) in enumerate(zip(outs[1], outs[0])):
        assert_close(a, b, dtype, f"{kind} cell tensor {k}")


# ------------------------------------------------------------------------------------------ valid: packing

PACK_DTYPES = st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
                               torch.int32, torch.int16, torch.uint8])


@FUZZ
@given(data=st.data())
def test_fuzz_pack_and_pad_match_torch(data):
    d = data.draw
    T, B, dtype, seed = d(st.integers(1, 7)), d(st.integers(1, 6)), d(PACK_DTYPES), d(st.integers(0, 2**16))
    trailing = d(st.sampled_from([(), (1,), (3,), (2, 3)]))
    bf, enforce = d(st.booleans()), d(st.booleans())
    x = layout(data, ((B, T) if bf else (T, B)) + trailing, dtype, seed)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(seed))
    if enforce:
        lengths = lengths.sort(descending=True).values
    as_kind = d(st.sampled_from(["tensor", "list"]))
    lens = lengths.tolist() if as_kind == "list" else lengths
    want = stock_rnn.pack_padded_sequence(x, lens, batch_first=bf, enforce_sorted=enforce)
    got = ours_rnn.pack_padded_sequence(x, lens, batch_first=bf, enforce_sorted=enforce)
    assert torch.equal(got.data, want.data) and torch.equal(got.batch_sizes, want.batch_sizes)
    for a, b in ((got.sorted_indices, want.sorted_indices), (got.unsorted_indices, want.unsorted_indices)):
        assert (a is None and b is None) or torch.equal(a, b)
    total = d(st.one_of(st.none(), st.integers(int(lengths.max()), T + 3)), label="total_length")
    pad = d(st.sampled_from([0, 1, -3]), label="padding_value")
    y1, l1 = stock_rnn.pad_packed_sequence(want, batch_first=bf, padding_value=pad, total_length=total)
    y2, l2 = ours_rnn.pad_packed_sequence(got, batch_first=bf, padding_value=pad, total_length=total)
    assert torch.equal(y2, y1) and torch.equal(l2, l1)
    seqs = ours_rnn.unpad_sequence(y2, l2, batch_first=bf)
    assert all(torch.equal(a, b) for a, b in zip(ours_rnn.unpack_sequence(got), seqs))


# ------------------------------------------------------------------------------------------ valid: trees

@FUZZ
@given(data=st.data())
def test_fuzz_treelstm_cell_op(data):
    d = data.draw
    M, H, dtype, seed = d(st.integers(0, 6)), d(st.integers(1, 6)), d(FLOATS), d(st.integers(0, 2**16))
    lstm_in = layout(data, (M, 5 * H), dtype, seed, "lstm_in").detach().clone().requires_grad_()
    cl = layout(data, (M, H), dtype, seed + 1, "c_left").detach().clone().requires_grad_()
    cr = layout(data, (M, H), dtype, seed + 2, "c_right").detach().clone().requires_grad_()
    h, c, _ = ops.treelstm_cell(lstm_in, cl, cr)
    h_ref, c_ref = tree_lstm(lstm_in, cl, cr)
    assert_close(h, h_ref, dtype, "h")
    assert_close(c, c_ref, dtype, "c")
    if M:
        g1 = torch.autograd.grad((h * 1.5 + c.sin()).sum(), (lstm_in, cl, cr))
        g2 = torch.autograd.grad((h_ref * 1.5 + c_ref.sin()).sum(), (lstm_in, cl, cr))
        for a, b in zip(g1, g2):
            assert_close(a, b, dtype, "grad")


@FUZZ
@given(data=st.data())
def test_fuzz_spinn_matches_oracle(data):
    d = data.draw
    B, H, dtype, seed = d(st.integers(1, 5)), d(st.integers(1, 5)), d(FLOATS), d(st.integers(0, 2**16))
    tracker = d(st.one_of(st.none(), st.integers(1, 4)), label="tracker")
    bf = d(st.booleans())
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 7, (B,), generator=g).tolist()
    N = max(lengths) + d(st.integers(0, 2), label="extra buffer rows")
    transitions = random_transitions(lengths, g)
    torch.manual_seed(seed)
    spinn = rnnext.nn.SPINN(H, tracker_size=tracker, batch_first=bf).to(dtype)
    buffers = layout(data, (B, N, 2 * H) if bf else (N, B, 2 * H), dtype, seed, "buffers")
    buffers = buffers.detach().clone().requires_grad_()
    pass_lengths = d(st.booleans(), label="lengths given")
    top = spinn(buffers, transitions.t() if bf else transitions, torch.tensor(lengths) if pass_lengths else None)
    seq_first = buffers.transpose(0, 1) if bf else buffers
    ref, _ = oracle_spinn(seq_first, transitions, spinn)
    assert_close(top, ref, dtype, "top")
    params = list(spinn.parameters())
    g1 = torch.autograd.grad((top * top).sum(), [buffers] + params, allow_unused=True)
    g2 = torch.autograd.grad((ref * ref).sum(), [buffers] + params, allow_unused=True)
    for a, b in zip(g1, g2):
        if b is None:
            assert a is None or not a.any()
        else:
            assert_close(a, b, dtype, "grad")


# ------------------------------------------------------------------------------------------ valid: generation

@FUZZ
@given(data=st.data())
def test_fuzz_greedy_generation_equals_a_python_loop(data):
    from rnnext.models import CharGenerator

    d = data.draw
    V, E, H, L = d(st.integers(2, 9)), d(st.integers(1, 5)), d(st.integers(1, 6)), d(st.integers(1, 2))
    B, P, steps, seed = d(st.integers(1, 3)), d(st.integers(1, 4)), d(st.integers(0, 6)), d(st.integers(0, 2**16))
    cell = d(st.sampled_from(["lstm", "gru", "rnn"]), label="cell")
    torch.manual_seed(seed)
    model = CharGenerator(V, E, H, L, cell=cell).double().eval()
    prime = torch.randint(0, V, (B, P), generator=torch.Generator().manual_seed(seed))
    got = model.generate(prime, steps, temperature=0.0)
    logits, state = model(prime)
    want = []
    with torch.no_grad():
        for _ in range(steps):
            tok = logits[:, -1].argmax(-1, keepdim=True)
            want.append(tok)
            logits, state = model(tok, state)
    want = torch.cat(want, 1) if want else torch.empty(B, 0, dtype=torch.int64)
    assert torch.equal(got, want)
    k = d(st.integers(1, V), label="top_k")
    sampled = model.generate(prime, steps, temperature=0.7, top_k=k, generator=torch.Generator().manual_seed(seed))
    assert sampled.shape == (B, steps) and ((sampled >= 0) & (sampled < V)).all()


# ------------------------------------------------------------------------------------------ invalid inputs

def _layer_args(T, B, I, H, dtype=torch.float64):
    g = torch.Generator().manual_seed(T * 100 + B)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(input=r(T, B, I), hx=r(B, H), cx=r(B, H), w_ih=r(4 * H, I), w_hh=r(4 * H, H), b_ih=r(4 * H),
                b_hh=r(4 * H), w_hr=None, batch_sizes=None, sorted_indices=None, batch_first=False, reverse=False,
                train=True)


def _call_layer(a):
    return ops.lstm_layer(a["input"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["w_hr"],
                          a["batch_sizes"], a["sorted_indices"], a["batch_first"], a["reverse"], a["train"])


def _break(data, name, t):
    """A broken version of argument t (wrong dtype, integer, rank or size), or None when the change happens to
    be valid (a different T)."""
    d = data.draw
    how = d(st.sampled_from(["dtype", "int", "rank+", "rank-", "size"]), label="breakage")
    if how == "dtype":
        return t.float()
    if how == "int":
        return t.long()
    if how == "rank+":
        return t.unsqueeze(0)
    if how == "rank-":
        return t[0] if t.dim() != 2 else t.reshape(-1)
    dim = d(st.integers(0, t.dim() - 1), label="dim")
    delta = d(st.sampled_from([-1, 1, 3]), label="delta")
    if t.size(dim) + delta < 0:
        delta = 1
    shape = list(t.shape)
    shape[dim] += delta
    if name == "input" and dim == 0:  # a different T is valid
        return None
    return torch.zeros(shape, dtype=t.dtype)  # (a different B no longer matches hx: invalid)


@FUZZ
@given(data=st.data())
def test_fuzz_lstm_layer_rejects_broken_arguments(data):
    d = data.draw
    T, B, I, H = d(st.integers(1, 5)), d(st.integers(1, 5)), d(st.integers(1, 4)), d(st.integers(1, 4))
    a = _layer_args(T, B, I, H)
    _call_layer(a)  # the valid call runs
    name = d(st.sampled_from(["input", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh"]), label="argument")
    a[name] = _break(data, name, a[name])
    if a[name] is not None:
        raises_with_message(lambda: _call_layer(a))


@FUZZ
@given(data=st.data())
def test_fuzz_rnn_layer_rejects_broken_arguments(data):
    d = data.draw
    cell = d(st.sampled_from(["gru", "rnn_tanh", "rnn_relu"]), label="cell")
    T, B, I, H = d(st.integers(1, 5)), d(st.integers(1, 5)), d(st.integers(1, 4)), d(st.integers(1, 4))
    G = (3 if cell == "gru" else 1) * H
    g = torch.Generator().manual_seed(T * 100 + B)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    a = dict(input=r(T, B, I), hx=r(B, H), w_ih=r(G, I), w_hh=r(G, H), b_ih=r(G), b_hh=r(G))

    def call():
        return ops.rnn_layer(a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], None, None, False,
                             False, True, cell)

    call()  # the valid call runs
    name = d(st.sampled_from(sorted(a)), label="argument")
    a[name] = _break(data, name, a[name])
    if a[name] is not None:
        raises_with_message(call)


@FUZZ
@given(data=st.data())
def test_fuzz_lstm_layer_rejects_broken_batch_sizes(data):
    """Packed mode with random (often malformed) batch_sizes / sorted_indices: valid ones must run, every
    invalid one must raise (never a read past the input or the states)."""
    d = data.draw
    B, I, H = d(st.integers(1, 4)), d(st.integers(1, 3)), d(st.integers(1, 3))
    bs = d(st.lists(st.integers(-2, B + 2), min_size=0, max_size=5), label="batch_sizes")
    N = d(st.integers(0, 12), label="rows")
    padded = d(st.booleans(), label="padded mode")
    a = _layer_args(1, B, I, H)
    a["batch_sizes"] = torch.tensor(bs, dtype=torch.int64)
    if padded:
        T = len(bs)
        a["input"] = torch.randn(T, B, I, dtype=torch.float64)
        perm = d(st.lists(st.integers(-1, B), min_size=B, max_size=B), label="sorted_indices")
        a["sorted_indices"] = torch.tensor(perm, dtype=torch.int64)
        valid_perm = sorted(perm) == list(range(B))
    else:
        a["input"] = torch.randn(N, I, dtype=torch.float64)
        valid_perm = True
    # an empty batch_sizes is a sequence of zero steps (the states come back unchanged), as dense T=0 is
    valid = (all(1 <= v <= B for v in bs) and all(x >= y for x, y in zip(bs, bs[1:]))
             and (padded or sum(bs) == N) and valid_perm
             and (not bs or bs[0] == B))  # every sequence has at least one step
    if valid:
        _call_layer(a)
    else:
        raises_with_message(lambda: _call_layer(a))


@FUZZ
@given(data=st.data())
def test_fuzz_packing_rejects_broken_lengths(data):
    d = data.draw
    T, B = d(st.integers(1, 5)), d(st.integers(1, 5))
    x = torch.randn(T, B, 2)
    kind = d(st.sampled_from(["zero", "negative", "too long", "wrong count", "2-D", "float"]), label="breakage")
    lengths = torch.randint(1, T + 1, (B,))
    if kind == "zero":
        lengths[d(st.integers(0, B - 1))] = 0
    elif kind == "negative":
        lengths[d(st.integers(0, B - 1))] = -d(st.integers(1, 10**6))
    elif kind == "too long":
        lengths[d(st.integers(0, B - 1))] = T + d(st.integers(1, 10**6))
    elif kind == "wrong count":
        lengths = torch.randint(1, T + 1, (B + d(st.sampled_from([-1, 1, 2])),)) if B > 1 else torch.ones(3, dtype=torch.long)
    elif kind == "2-D":
        lengths = lengths.unsqueeze(0)
    else:
        lengths = lengths.double() + 0.5
    raises_with_message(lambda: ours_rnn.pack_padded_sequence(x, lengths, enforce_sorted=False))
    m = rnnext.nn.LSTM(2, 3)
    raises_with_message(lambda: m(x, lengths=lengths))


@FUZZ
@given(data=st.data())
def test_fuzz_packed_ops_reject_broken_batch_sizes(data):
    d = data.draw
    T, B = d(st.integers(1, 4)), d(st.integers(1, 4))
    bs = d(st.lists(st.integers(-3, B + 2), min_size=0, max_size=T + 2), label="batch_sizes")
    idx = d(st.one_of(st.none(), st.lists(st.integers(-2, B + 1), min_size=0, max_size=B + 1)), label="indices")
    rows = d(st.integers(-1, 12), label="total rows")
    bst = torch.tensor(bs, dtype=torch.int64)
    it = None if idx is None else torch.tensor(idx, dtype=torch.int64)
    valid_bs = (len(bs) <= T and all(1 <= v <= B for v in bs) and  # empty: zero steps, all padding
                all(x >= y for x, y in zip(bs, bs[1:])) and (not bs or bs[0] == B))
    valid_idx = idx is None or sorted(idx) == list(range(B))
    x = torch.randn(T, B, 3)
    if valid_bs and valid_idx and rows == sum(bs):
        out = ops.packed_gather(x, bst, it, False, rows)
        back = ops.packed_scatter(out, bst, it, False, 0.0, B, T)
        assert back.shape == (T, B, 3)
    else:
        raises_with_message(lambda: ops.packed_gather(x, bst, it, False, rows))
    data_rows = torch.randn(max(rows, 0), 3)
    if valid_bs and valid_idx and data_rows.size(0) == sum(bs):
        assert ops.packed_scatter(data_rows, bst, it, False, 0.0, B, T).shape == (T, B, 3)
    else:
        raises_with_message(lambda: ops.packed_scatter(data_rows, bst, it, False, 0.0, B, T))


def _simulate(transitions, num_tokens):
    """Whether (S, B) transitions are valid for buffers of num_tokens rows: the tree issue's rules."""
    S, B = transitions.shape
    for b in range(B):
        stack, shifted = 0, 0
        for t in range(S):
            code = int(transitions[t, b])
            if code == SHIFT:
                if shifted >= num_tokens:
                    return False
                shifted, stack = shifted + 1, stack + 1
            elif code == REDUCE:
                if stack < 2:
                    return False
                stack -= 1
            elif code != PAD:
                return False
        if stack != 1:
            return False
    return True


@FUZZ
@given(data=st.data())
def test_fuzz_spinn_random_transitions_run_or_raise(data):
    """Random transition codes (mostly malformed): valid sequences run and match the oracle, invalid ones
    raise an error that names a row, for the fused op, the plan and the module."""
    d = data.draw
    B, N, S = d(st.integers(1, 4)), d(st.integers(0, 4)), d(st.integers(0, 8))
    codes = d(st.lists(st.lists(st.sampled_from([SHIFT, SHIFT, REDUCE, PAD, 2, -2]), min_size=B, max_size=B),
                       min_size=S, max_size=S), label="transitions")
    tr = torch.tensor(codes, dtype=torch.int64).reshape(S, B)
    H = 2
    torch.manual_seed(0)
    spinn = rnnext.nn.SPINN(H, tracker_size=d(st.sampled_from([None, 2]))).double()
    buffers = torch.randn(N, B, 2 * H, dtype=torch.float64)
    if S > 0 and N > 0 and _simulate(tr, N):
        top = spinn(buffers, tr)
        ref, _ = oracle_spinn(buffers, tr, spinn)
        assert_close(top, ref, torch.float64, "top")
        ops.thin_stack_plan(tr, N, None)
    else:
        raises_with_message(lambda: spinn(buffers, tr))
        raises_with_message(lambda: ops.thin_stack_plan(tr, N, None))


@FUZZ
@given(data=st.data())
def test_fuzz_spinn_rejects_broken_buffers_and_lengths(data):
    d = data.draw
    B, H = d(st.integers(1, 4)), 2
    g = torch.Generator().manual_seed(B)
    lengths = torch.randint(1, 5, (B,), generator=g)
    tr = random_transitions(lengths.tolist(), g)
    spinn = rnnext.nn.SPINN(H).double()
    buffers = torch.randn(int(lengths.max()), B, 2 * H, dtype=torch.float64)
    kind = d(st.sampled_from(["width", "rank", "batch", "dtype", "lengths", "lengths size", "few rows"]))
    if kind == "width":
        buffers = torch.randn(buffers.size(0), B, 2 * H + d(st.sampled_from([-1, 1, 2])), dtype=torch.float64)
    elif kind == "rank":
        buffers = buffers[0]
    elif kind == "batch":
        buffers = torch.randn(buffers.size(0), B + 1, 2 * H, dtype=torch.float64)
    elif kind == "dtype":
        buffers = buffers.float()
    elif kind == "few rows":
        buffers = buffers[: int(lengths.max()) - 1]
    bad_lengths = None
    if kind == "lengths":
        bad_lengths = lengths.clone()
        bad_lengths[d(st.integers(0, B - 1))] += d(st.sampled_from([-1, 1, 100, -100]))
    elif kind == "lengths size":
        bad_lengths = torch.ones(B + 1, dtype=torch.int64)
    raises_with_message(lambda: spinn(buffers, tr, bad_lengths))


@FUZZ
@given(data=st.data())
def test_fuzz_treelstm_and_cell_reject_broken_shapes(data):
    d = data.draw
    M, H = d(st.integers(1, 4)), d(st.integers(1, 4))
    args = [torch.randn(M, 5 * H), torch.randn(M, H), torch.randn(M, H)]
    i = d(st.integers(0, 2), label="argument")
    how = d(st.sampled_from(["size0", "size1", "rank", "dtype"]), label="breakage")
    t = args[i]
    if how == "size0":
        args[i] = torch.randn(t.size(0) + 1, t.size(1))
    elif how == "size1":
        args[i] = torch.randn(t.size(0), t.size(1) + d(st.sampled_from([-1, 1, 5])) if t.size(1) > 1 else 3)
    elif how == "rank":
        args[i] = t.reshape(-1)
    else:
        args[i] = t.double()
    raises_with_message(lambda: ops.treelstm_cell(*args))
    c = [torch.randn(M, 3), torch.randn(M, H), torch.randn(M, H), torch.randn(4 * H, 3), torch.randn(4 * H, H)]
    j = d(st.integers(0, 4), label="cell argument")
    c[j] = torch.randn(c[j].size(0) + 1, c[j].size(1)) if d(st.booleans()) else c[j].double()
    raises_with_message(lambda: ops.lstm_cell(*c, None, None))


# ------------------------------------------------------------------------------------------ NaN and inf

@FUZZ
@given(data=st.data())
def test_fuzz_nan_and_inf_propagate_like_stock(data):
    d = data.draw
    T, B, I, H = d(st.integers(1, 4)), d(st.integers(1, 3)), d(st.integers(1, 3)), d(st.integers(1, 4))
    x = torch.randn(T, B, I, dtype=torch.float64)
    for _ in range(d(st.integers(1, 3), label="bad values")):
        x[d(st.integers(0, T - 1)), d(st.integers(0, B - 1)), d(st.integers(0, I - 1))] = d(
            st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    torch.manual_seed(0)
    stock = torch.nn.LSTM(I, H).double()
    ours = rnnext.nn.LSTM(I, H).double()
    ours.load_state_dict(stock.state_dict())
    y1, (h1, c1) = stock(x)
    y2, (h2, c2) = ours(x)
    for a, b in ((y2, y1), (h2, h1), (c2, c1)):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, equal_nan=True)
    lstm_in = torch.randn(B, 5 * H, dtype=torch.float64)
    lstm_in[0, d(st.integers(0, 5 * H - 1))] = d(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    cl, cr = torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    h, c, _ = ops.treelstm_cell(lstm_in, cl, cr)
    hr, cr_ = tree_lstm(lstm_in, cl, cr)
    assert torch.equal(h.isnan(), hr.isnan()) and torch.equal(c.isnan(), cr_.isnan())
    torch.testing.assert_close(h, hr, equal_nan=True)
    torch.testing.assert_close(c, cr_, equal_nan=True)


# --------------------------------------------------------------------- every raw op: layouts, meta, huge sizes

def _raw_op_calls():
    """Valid calls of every raw op: (name, op, args). Forward workspaces come from real forward calls."""
    g = torch.Generator().manual_seed(11)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    T, B, I, H = 3, 4, 3, 2
    calls = []
    x, h, c = r(T, B, I), r(B, H), r(B, H)
    w_ih, w_hh, b_ih, b_hh = r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H)
    calls.append(("lstm_cell", ops.lstm_cell, [x[0], h, c, w_ih, w_hh, b_ih, b_hh]))
    hy, cy, gates = ops.lstm_cell(x[0], h, c, w_ih, w_hh, b_ih, b_hh)
    calls.append(("lstm_cell_backward", ops.lstm_cell_backward, [r(B, H), r(B, H), x[0], h, c, w_ih, w_hh, gates, cy,
                                                                 True]))
    bs, si, lengths = torch.tensor([4, 3, 1]), torch.tensor([2, 0, 3, 1]), torch.tensor([3, 1, 2, 0])
    for label, extra in (("dense", (None, None, None)), ("padded", (bs, si, None)), ("masked", (None, None, lengths))):
        args = [x, h, c, w_ih, w_hh, b_ih, b_hh, None, extra[0], extra[1], False, True, True, extra[2]]
        calls.append((f"lstm_layer/{label}", ops.lstm_layer, args))
        out, _, _, ga, ce = ops.lstm_layer(*args)
        calls.append((f"lstm_layer_backward/{label}", ops.lstm_layer_backward,
                      [torch.randn_like(out), r(B, H), r(B, H), x, h, c, w_ih, w_hh, None, extra[0], extra[1], False,
                       out, ga, ce, True, True, extra[2]]))
    for cell, G in (("gru", 3 * H), ("rnn_tanh", H), ("rnn_relu", H)):
        rw_ih, rw_hh, rb_ih, rb_hh = r(G, I), r(G, H), r(G), r(G)
        for label, extra in (("dense", (None, None)), ("padded", (bs, si))):
            args = [x, h, rw_ih, rw_hh, rb_ih, rb_hh, extra[0], extra[1], False, True, True, cell]
            calls.append((f"rnn_layer/{cell}/{label}", ops.rnn_layer, args))
            out, hy, saved = ops.rnn_layer(*args)
            calls.append((f"rnn_layer_backward/{cell}/{label}", ops.rnn_layer_backward,
                          [torch.randn_like(out), r(B, H), x, h, rw_ih, rw_hh, extra[0], extra[1], False, True, out,
                           saved, cell, True]))
    packed = r(8, I)
    calls.append(("lstm_layer/packed", ops.lstm_layer, [packed, h, c, w_ih, w_hh, b_ih, b_hh, None, bs, None, False,
                                                        False, True, None]))
    calls.append(("packed_gather", ops.packed_gather, [x, bs, si, False, 8]))
    calls.append(("packed_scatter", ops.packed_scatter, [packed, bs, si, False, 0.0, B, T]))
    lstm_in, cl, cr = r(5, 5 * H), r(5, H), r(5, H)
    calls.append(("treelstm_cell", ops.treelstm_cell, [lstm_in, cl, cr]))
    th, tc, acts = ops.treelstm_cell(lstm_in, cl, cr)
    calls.append(("treelstm_cell_backward", ops.treelstm_cell_backward, [r(5, H), r(5, H), acts, tc, cl, cr]))
    N, Tt = 3, 2
    buffers, transitions = r(N, 2, 2 * H), torch.tensor([[0, 0], [0, 0], [1, 1], [0, -1], [1, -1]])
    enc = [buffers, transitions, None, r(5 * H, 2 * H + Tt), r(5 * H), r(4 * Tt, 3 * H), r(4 * Tt, Tt), r(4 * Tt),
           None]
    calls.append(("spinn_encode", ops.spinn_encode, enc + [True]))
    top, trk_h, nodes, node_acts, trk_acts, trk_c = ops.spinn_encode(*enc, True)
    calls.append(("spinn_encode_backward", ops.spinn_encode_backward,
                  [torch.randn_like(top), torch.randn_like(trk_h)] + enc + [nodes, node_acts, trk_h, trk_acts, trk_c]))
    calls.append(("thin_stack_plan", ops.thin_stack_plan, [transitions, N, None]))
    V, E = 5, 3
    calls.append(("lstm_generate", ops.lstm_generate,
                  [r(2, V), r(1, 2, H), r(1, 2, H), r(V, E), [r(4 * H, E)], [r(4 * H, H)], [r(4 * H)], [None],
                   r(V, H), r(V), torch.rand(3, 2, generator=g), 0.0, 0]))
    return calls


RAW_CALLS = _raw_op_calls()


def _outcome(fn):
    try:
        return "ok", fn()
    except ERRORS as e:
        assert str(e).strip(), "an exception without a message"
        return "raised", None


def _same_values_other_layout(t, kind):
    if kind == "expanded":
        return t[:1].expand_as(t) if t.dim() >= 1 and t.size(0) > 1 else t
    if t.dim() < 2:  # 1-D: every other element of a wider tensor
        return torch.stack([t, t], -1)[..., 0]
    return t.transpose(0, 1).contiguous().transpose(0, 1)


@FUZZ
@given(data=st.data())
def test_fuzz_raw_ops_take_any_layout_and_refuse_meta(data):
    """Any tensor argument of any raw op, expanded (stride 0), transposed in memory or meta: the same result as
    with the same values contiguous (or the same refusal), and a meta tensor among CPU ones is refused."""
    name, op, args = data.draw(st.sampled_from(RAW_CALLS), label="op")
    slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    i = data.draw(st.sampled_from(slots), label="argument")
    kind = data.draw(st.sampled_from(["expanded", "transposed", "meta"]), label="kind")
    args = list(args)
    if kind == "meta":
        alone = all(not isinstance(a, torch.Tensor) for j, a in enumerate(args) if j != i)
        args[i] = args[i].to("meta")
        # Refused, or (a meta input with CPU index tensors) a shape computation: every output on meta. Never
        # real tensors of uninitialised memory.
        status, out = _outcome(lambda: op(*args))
        if status == "ok":
            outs = out if isinstance(out, (tuple, list)) else [out]
            assert all(o.device.type == "meta" for o in outs), f"{name}: meta argument {i} gave real outputs"
            assert alone or args[0].device.type == "meta", f"{name}: meta argument {i} among CPU ones ran"
        return
    odd = _same_values_other_layout(args[i], kind)
    args[i] = odd
    got = _outcome(lambda: op(*args))
    args[i] = odd.contiguous()
    want = _outcome(lambda: op(*args))
    assert got[0] == want[0], f"{name}: {kind} argument {i}: {got[0]} vs {want[0]} with the same values contiguous"
    if got[0] == "ok":
        for a, b in zip(got[1] if isinstance(got[1], (tuple, list)) else [got[1]],
                        want[1] if isinstance(want[1], (tuple, list)) else [want[1]]):
            assert torch.equal(a, b), f"{name}: {kind} argument {i} changed the result"


HUGE = [2**31 - 1, 2**31, 2**32 + 1, 2**62, 2**63 - 1, -(2**63)]


@FUZZ
@given(data=st.data())
def test_fuzz_huge_integer_arguments_raise_or_run(data):
    """Size arguments near 2^31 and 2^63 (and negative): a clear exception or a correct run, never a crash."""
    n = data.draw(st.sampled_from(HUGE), label="value")
    which = data.draw(st.sampled_from(["thin_stack_plan", "packed_gather", "packed_scatter.batch",
                                       "packed_scatter.length", "lstm_generate.top_k"]), label="argument")
    calls = {c[0]: c for c in RAW_CALLS}
    if which == "lstm_generate.top_k":
        _, op, args = calls["lstm_generate"]
        args = list(args)
        args[-1] = n
        tokens = op(*args)  # top_k beyond the vocabulary means all of it
        assert tokens.shape == (2, 3) and int(tokens.min()) >= 0 and int(tokens.max()) < 5
        return
    if which == "thin_stack_plan":  # a valid count runs (references past n * B), a negative or huge one raises
        _, op, args = calls["thin_stack_plan"]
        status, plan = _outcome(lambda: op(args[0], n, None))
        assert status == "raised" or (n >= 0 and int(plan[2].max()) == 1 + n * 2 + 2), (n, status)
        if n < 0 or n >= 2**62:
            assert status == "raised", n
        return
    elif which == "packed_gather":
        _, op, args = calls["packed_gather"]
        args = list(args[:4]) + [n]
    else:
        _, op, args = calls["packed_scatter"]
        args = list(args)
        args[5 if which.endswith("batch") else 6] = n
    raises_with_message(lambda: op(*args))
