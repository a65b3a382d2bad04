"""rnnext.nn.LSTM / LSTMCell against torch.nn.LSTM / LSTMCell (the oracle), the ops' gradcheck and opcheck,
torch.compile / torch.export, state_dict compatibility and error messages."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnext

TOL = {torch.float64: 1e-9, torch.float32: 2e-5}


def close(a, b, dtype, what=""):
    """|a - b| <= tol * max(1, |b|max): float64 within 1e-9, float32 within 2e-5, scaled by magnitude."""
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    err = (a - b).abs().max().item() if b.numel() else 0.0
    assert err <= TOL[dtype] * scale, f"{what}: max error {err:.3g} > {TOL[dtype] * scale:.3g}"


def make_pair(input_size, hidden_size, dtype, **kw):
    torch.manual_seed(1234)
    stock = torch.nn.LSTM(input_size, hidden_size, dtype=dtype, **kw)
    torch.manual_seed(1234)
    ours = rnnext.nn.LSTM(input_size, hidden_size, dtype=dtype, **kw)
    return stock, ours


def run_lstm(module, kind, x, lengths, hx, enforce_sorted, batch_first):
    """Runs module on x in the given input kind; returns (tensors to compare, loss). kind "lengths" is
    pack -> LSTM -> unpack for stock torch and LSTM(padded, lengths=...) for rnnext."""
    if kind == "lengths":
        if isinstance(module, rnnext.nn.LSTM):
            out_pad, (h, c) = module(x, hx, lengths=lengths)
        else:
            packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
            y, (h, c) = module(packed, hx)
            out_pad, _ = pad_packed_sequence(y, batch_first=batch_first, total_length=x.size(1 if batch_first else 0))
        weights = torch.linspace(-1, 1, out_pad.numel(), dtype=out_pad.dtype).view_as(out_pad)
        return [out_pad, h, c], (out_pad * weights).sum() + (h * 1.5).sum() + (c * c).sum()
    if kind == "packed":
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
        y, (h, c) = module(packed, hx)
        assert isinstance(y, PackedSequence)
        out = y.data
        padded, _ = pad_packed_sequence(y, batch_first=batch_first)
        out_pad = padded
    else:
        y, (h, c) = module(x, hx)
        out, out_pad = y, y
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * weights).sum() + (h * 1.5).sum() + (c * c).sum()
    return [out_pad, h, c], loss


GRID = list(
    itertools.product(
        [1, 2, 3],  # num_layers
        [False, True],  # bidirectional
        [0, 3],  # proj_size
        [True, False],  # bias
        ["dense", "packed", "unbatched", "lengths", "masked"],  # input kind ("masked": lengths in masked mode)
        [False, True],  # hx given
    )
)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layers,bidir,proj,bias,kind,give_hx", GRID)
def test_lstm_matches_torch(dtype, layers, bidir, proj, bias, kind, give_hx, monkeypatch):
    # batch_first and enforce_sorted are varied along the grid rather than multiplying it.
    if kind == "masked":  # the lengths path of a GPU input (lengths on the device), run on the CPU
        monkeypatch.setattr(rnnext.nn.lstm, "_MASKED_ON_CPU", True)
        kind = "lengths"
    batch_first = (layers + int(bidir) + int(give_hx)) % 2 == 1
    enforce_sorted = kind == "packed" and bias
    I, H, T, B = 5, 6, 7, 4
    stock, ours = make_pair(I, H, dtype, num_layers=layers, bidirectional=bidir, proj_size=proj, bias=bias,
                            batch_first=batch_first)
    g = torch.Generator().manual_seed(layers * 100 + proj)
    D = 2 if bidir else 1
    Hout = proj or H
    if kind == "unbatched":
        x = torch.randn(T, I, dtype=dtype, generator=g)
        hx_shape, cx_shape = (layers * D, Hout), (layers * D, H)
    else:
        x = torch.randn(B, T, I, dtype=dtype, generator=g) if batch_first else torch.randn(T, B, I, dtype=dtype, generator=g)
        hx_shape, cx_shape = (layers * D, B, Hout), (layers * D, B, H)
    lengths = torch.tensor([7, 5, 5, 2]) if enforce_sorted else torch.tensor([3, 7, 1, 5])
    if kind == "lengths" and layers == 2:
        lengths = torch.tensor([6, 6, 3, 1])  # already sorted, shorter than T: no reordering, trailing padding
    results = []
    for module in (stock, ours):
        xi = x.clone().requires_grad_()
        hx = None
        if give_hx:
            h0 = torch.randn(hx_shape, dtype=dtype, generator=torch.Generator().manual_seed(7)).requires_grad_()
            c0 = torch.randn(cx_shape, dtype=dtype, generator=torch.Generator().manual_seed(8)).requires_grad_()
            hx = (h0, c0)
        outs, loss = run_lstm(module, kind, xi, lengths, hx, enforce_sorted, batch_first)
        loss.backward()
        grads = [xi.grad] + ([hx[0].grad, hx[1].grad] if give_hx else [])
        grads += [p.grad for p in module.parameters()]
        results.append((outs, grads))
        module.zero_grad()
    (o1, g1), (o2, g2) = results
    for name, a, b in zip(["output", "h_n", "c_n"], o2, o1):
        close(a, b, dtype, name)
    names = ["grad input"] + (["grad h_0", "grad c_0"] if give_hx else []) + [n for n, _ in ours.named_parameters()]
    assert len(g1) == len(g2)
    for name, a, b in zip(names, g2, g1):
        close(a, b, dtype, name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layers,bidir,proj,bias,kind,give_hx", GRID[::2] + GRID[1::14])
def test_lstm_engine_loop_matches_torch(dtype, layers, bidir, proj, bias, kind, give_hx, monkeypatch):
    """The engine's generic step loop (csrc/common/rnn_engine.h: every CUDA layer call, and masked mode on the
    CPU) on every layout, through RNNEXT_LSTM_ENGINE=1 (the CPU's dense, packed and padded layers otherwise run
    their fused schedule)."""
    monkeypatch.setenv("RNNEXT_LSTM_ENGINE", "1")
    test_lstm_matches_torch(dtype, layers, bidir, proj, bias, kind, give_hx, monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias,batched,give_hx", list(itertools.product([True, False], [True, False], [True, False])))
def test_lstm_cell_matches_torch(dtype, bias, batched, give_hx):
    torch.manual_seed(0)
    stock = torch.nn.LSTMCell(5, 7, bias=bias, dtype=dtype)
    torch.manual_seed(0)
    ours = rnnext.nn.LSTMCell(5, 7, bias=bias, dtype=dtype)
    shape = (3, 5) if batched else (5,)
    hshape = (3, 7) if batched else (7,)
    x = torch.randn(shape, dtype=dtype)
    h0, c0 = torch.randn(hshape, dtype=dtype), torch.randn(hshape, dtype=dtype)
    res = []
    for m in (stock, ours):
        xi, hi, ci = (t.clone().requires_grad_() for t in (x, h0, c0))
        h, c = m(xi, (hi, ci) if give_hx else None)
        (h.sum() * 2 + (c * c).sum()).backward()
        res.append([h, c, xi.grad] + ([hi.grad, ci.grad] if give_hx else []) + [p.grad for p in m.parameters()])
    for a, b in zip(res[1], res[0]):
        close(a, b, dtype)


def test_same_initialisation_and_state_dict_both_ways():
    torch.manual_seed(5)
    stock = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=2)
    torch.manual_seed(5)
    ours = rnnext.nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=2)
    sd_s, sd_o = stock.state_dict(), ours.state_dict()
    assert list(sd_s.keys()) == list(sd_o.keys())
    for k in sd_s:
        assert torch.equal(sd_s[k], sd_o[k]), k
    fresh_stock = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=2)
    fresh_stock.load_state_dict(sd_o)
    fresh_ours = rnnext.nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=2)
    fresh_ours.load_state_dict(sd_s)
    x = torch.randn(3, 2, 4)
    close(fresh_ours(x)[0], fresh_stock(x)[0], torch.float32)
    cell_s, cell_o = torch.nn.LSTMCell(3, 4), rnnext.nn.LSTMCell(3, 4)
    cell_o.load_state_dict(cell_s.state_dict())
    assert list(cell_o.state_dict()) == list(cell_s.state_dict())
    assert repr(ours).replace("rnnext.nn.", "") == repr(stock).replace("torch.nn.", "")


def test_not_a_torch_rnn_subclass():
    # Dynamo graph-breaks on instances of nn.RNNBase subclasses nn.LSTM/GRU/RNN; rnnext must not be one.
    assert not isinstance(rnnext.nn.LSTM(2, 3), torch.nn.LSTM)
    assert not isinstance(rnnext.nn.LSTMCell(2, 3), torch.nn.LSTMCell)


def test_replace_rnns_keeps_parameters():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.rnn = torch.nn.LSTM(4, 5, num_layers=2, batch_first=True)
            self.blocks = torch.nn.ModuleList([torch.nn.LSTMCell(5, 5)])

        def forward(self, tok):
            y, _ = self.rnn(self.emb(tok))
            h, c = self.blocks[0](y[:, -1])
            return h

    torch.manual_seed(0)
    model = Model()
    tok = torch.randint(0, 10, (3, 6))
    before = model(tok)
    params = {n: p for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    out = rnnext.replace_rnns(model)
    assert out is model
    assert isinstance(model.rnn, rnnext.nn.LSTM) and isinstance(model.blocks[0], rnnext.nn.LSTMCell)
    assert list(model.state_dict()) == keys
    for n, p in model.named_parameters():
        assert p is params[n], n
    close(model(tok), before, torch.float32)
    single = rnnext.replace_rnns(torch.nn.LSTM(2, 3))
    assert isinstance(single, rnnext.nn.LSTM)


def test_dropout_between_layers():
    torch.manual_seed(0)
    m = rnnext.nn.LSTM(4, 8, num_layers=2, dropout=0.5)
    x = torch.randn(5, 3, 4)
    m.eval()
    a, b = m(x)[0], m(x)[0]
    assert torch.equal(a, b)
    m.train()
    torch.manual_seed(1)
    c = m(x)[0]
    torch.manual_seed(1)
    d = m(x)[0]
    torch.manual_seed(2)
    e = m(x)[0]
    assert torch.equal(c, d) and not torch.allclose(c, e)
    assert not torch.allclose(c, a)


def test_empty_batch_and_nonfinite_like_stock():
    stock, ours = make_pair(3, 4, torch.float32)
    y1, (h1, c1) = stock(torch.randn(5, 0, 3))
    y2, (h2, c2) = ours(torch.randn(5, 0, 3))
    assert y1.shape == y2.shape and h1.shape == h2.shape and c1.shape == c2.shape
    x = torch.randn(6, 2, 3)
    x[2, 0, 1] = float("nan")
    x[1, 1, 0] = float("inf")
    x[4, 1, 2] = -float("inf")
    a, b = stock(x)[0], ours(x)[0]
    assert torch.equal(a.isnan(), b.isnan())
    finite = ~a.isnan()
    close(b[finite], a[finite], torch.float32)
    assert rnnext.nn.LSTMCell(3, 4)(torch.randn(0, 3))[0].shape == (0, 4)


def test_noncontiguous_inputs():
    stock, ours = make_pair(4, 5, torch.float64, num_layers=2)
    x = torch.randn(4, 7, 3, dtype=torch.float64).permute(1, 2, 0)  # (7, 3, 4), non-contiguous
    h0 = torch.randn(3, 2, 5, dtype=torch.float64).transpose(0, 1)
    c0 = torch.randn(2, 5, 3, dtype=torch.float64).permute(0, 2, 1)
    for a, b in zip(ours(x, (h0, c0))[1], stock(x, (h0, c0))[1]):
        close(a, b, torch.float64)


# ---- errors ----------------------------------------------------------------------------------------------


def test_lstm_errors_name_the_argument():
    m = rnnext.nn.LSTM(4, 5, num_layers=2)
    with pytest.raises(RuntimeError, match="input_size=4"):
        m(torch.randn(3, 2, 6))
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        m(torch.randn(3, 2, 2, 4))
    with pytest.raises(RuntimeError, match=r"h_0 of shape \(2, 2, 5\)"):
        m(torch.randn(3, 2, 4), (torch.zeros(1, 2, 5), torch.zeros(2, 2, 5)))
    with pytest.raises(RuntimeError, match=r"c_0 of shape \(2, 2, 5\)"):
        m(torch.randn(3, 2, 4), (torch.zeros(2, 2, 5), torch.zeros(2, 3, 5)))
    with pytest.raises(RuntimeError, match="h_0 to be 3-D"):
        m(torch.randn(3, 2, 4), (torch.zeros(2, 5), torch.zeros(2, 5)))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.ones(3, 2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="float32"):
        m(torch.randn(3, 2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="h_0 of dtype"):
        m(torch.randn(3, 2, 4), (torch.zeros(2, 2, 5, dtype=torch.float64), torch.zeros(2, 2, 5)))
    with pytest.raises(RuntimeError, match="device"):
        m(torch.randn(3, 2, 4, device="meta"))
    with pytest.raises(ValueError, match="proj_size"):
        rnnext.nn.LSTM(4, 5, proj_size=5)
    with pytest.raises(ValueError, match="dropout"):
        rnnext.nn.LSTM(4, 5, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_size"):
        rnnext.nn.LSTM(4, 0)


def test_lstm_cell_errors_name_the_argument():
    m = rnnext.nn.LSTMCell(4, 5)
    with pytest.raises(RuntimeError, match="input_size=4"):
        m(torch.randn(3, 6))
    with pytest.raises(ValueError, match="1-D .* or 2-D"):
        m(torch.randn(2, 3, 4))
    with pytest.raises(RuntimeError, match=r"h_0 of shape \(3, 5\)"):
        m(torch.randn(3, 4), (torch.zeros(2, 5), torch.zeros(3, 5)))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.ones(3, 4, dtype=torch.int32))


def test_op_errors_are_clear():
    ops = torch.ops.rnnext
    x, h, c = torch.randn(5, 3, 4), torch.zeros(3, 6), torch.zeros(3, 6)
    w_ih, w_hh = torch.randn(24, 4), torch.randn(24, 6)
    with pytest.raises(RuntimeError, match=r"expected w_hh of shape \[24, 6\]"):
        ops.lstm_layer(x, h, c, w_ih, torch.randn(24, 5), None, None, None, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="expected hx of shape"):
        ops.lstm_layer(x, torch.zeros(2, 6), c, w_ih, w_hh, None, None, None, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="expected w_ih to have the dtype of input"):
        ops.lstm_layer(x, h, c, w_ih.double(), w_hh, None, None, None, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="float32, float64 or bfloat16 on the CPU, got Long"):
        ops.lstm_layer(x.long(), h.long(), c.long(), w_ih.long(), w_hh.long(), None, None, None, None, None, False, False, False)
    data = torch.randn(6, 4)
    with pytest.raises(RuntimeError, match="non-increasing"):
        ops.lstm_layer(data, h[:2], c[:2], w_ih, w_hh, None, None, None, torch.tensor([2, 3, 1]), None, False, False, False)
    with pytest.raises(RuntimeError, match="sum to the number of packed rows"):
        ops.lstm_layer(data, h, c, w_ih, w_hh, None, None, None, torch.tensor([3, 2]), None, False, False, False)
    with pytest.raises(RuntimeError, match="at least 1"):
        ops.lstm_layer(data, h, c, w_ih, w_hh, None, None, None, torch.tensor([3, 3, 0]), None, False, False, False)
    with pytest.raises(RuntimeError, match="batch_sizes to be int64"):
        ops.lstm_layer(data, h, c, w_ih, w_hh, None, None, None, torch.tensor([3, 3], dtype=torch.int32), None, False, False, False)
    with pytest.raises(RuntimeError, match="batch_sizes\\[0\\] to equal the batch size of hx"):
        ops.lstm_layer(data, h[:2], c[:2], w_ih, w_hh, None, None, None, torch.tensor([3, 3]), None, False, False, False)
    with pytest.raises(RuntimeError, match="train=False"):
        out = ops.lstm_layer(x.requires_grad_(), h, c, w_ih, w_hh, None, None, None, None, None, False, False, False)
        out[0].sum().backward()


# ---- ops: gradcheck, opcheck ------------------------------------------------------------------------------


def _layer_args(layout, proj, bias, reverse, train=True, requires_grad=True, strided=False):
    """Arguments of rnnext::lstm_layer for a layout: dense, dense_bf (batch_first), packed, padded (variable
    lengths, sorted_indices), padded_bf."""
    g = torch.Generator().manual_seed(3)
    I, H, B, T = 3, 4, 3, 4
    P = 2 if proj else H
    rnd = lambda *s: (torch.randn(*s, dtype=torch.float64, generator=g) * 0.7).requires_grad_(requires_grad)
    bs = si = None
    batch_first = layout.endswith("_bf")
    lengths = ()
    if layout == "packed":
        bs = torch.tensor([3, 3, 2, 1])
        x = rnd(int(bs.sum()), I)
    else:
        x = rnd(B, T, I) if batch_first else rnd(T, B, I)
        if layout.startswith("padded"):
            bs, si = torch.tensor([3, 2, 1]), torch.tensor([1, 2, 0])  # lengths 1, 3, 2 (< T: trailing padding)
        if layout.startswith("masked"):  # lengths given to the op: masked mode (0: never active; 9: clamped to T)
            lengths = (torch.tensor([2, 9, 0]) if batch_first else torch.tensor([1, 3, 2]),)
    if strided:  # a transposed input and a transposed weight
        x = rnd(B, T, I).transpose(0, 1)
        w_ih = rnd(I, 4 * H).t()
    else:
        w_ih = rnd(4 * H, I)
    return (x, rnd(B, P), rnd(B, H), w_ih, rnd(4 * H, P), rnd(4 * H) if bias else None,
            rnd(4 * H) if bias else None, rnd(P, H) if proj else None, bs, si, batch_first, reverse, train, *lengths)


LAYER_CASES = list(itertools.product(["dense", "packed", "padded", "dense_bf", "padded_bf", "masked", "masked_bf"],
                                     [False, True], [False, True], [False, True]))


# loop "engine": the engine's generic step loop on the CPU for the host-side layouts (masked mode always runs it).
GRADCHECK_CASES = [(*c, "default") for c in LAYER_CASES] + [(*c, "engine") for c in LAYER_CASES
                                                           if not c[0].startswith("masked")]


@pytest.mark.parametrize("layout,proj,bias,reverse,loop", GRADCHECK_CASES)
def test_lstm_layer_gradcheck(layout, proj, bias, reverse, loop, monkeypatch):
    if loop == "engine":
        monkeypatch.setenv("RNNEXT_LSTM_ENGINE", "1")
    args = _layer_args(layout, proj, bias, reverse)

    def f(*tensors):
        a = list(args)
        idx = [i for i, t in enumerate(args) if isinstance(t, torch.Tensor) and t.requires_grad]
        for i, t in zip(idx, tensors):
            a[i] = t
        out, hy, cy, _, _ = torch.ops.rnnext.lstm_layer(*a)
        return out, hy, cy

    inputs = [t for t in args if isinstance(t, torch.Tensor) and t.requires_grad]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_lstm_cell_gradcheck():
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g).requires_grad_()
    args = (rnd(3, 4), rnd(3, 5), rnd(3, 5), rnd(20, 4), rnd(20, 5), rnd(20), rnd(20))
    f = lambda *a: torch.ops.rnnext.lstm_cell(*a)[:2]
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.rnnext.lstm_cell(*a, None, None)[:2], args[:5])


@pytest.mark.parametrize("layout,proj,bias,reverse", LAYER_CASES[::3] + [("packed", True, True, True)])
@pytest.mark.parametrize("train", [True, False])
def test_lstm_layer_opcheck(layout, proj, bias, reverse, train):
    args = _layer_args(layout, proj, bias, reverse, train=train, requires_grad=train)
    torch.library.opcheck(torch.ops.rnnext.lstm_layer.default, args)


@pytest.mark.parametrize("train", [True, False])
def test_lstm_layer_opcheck_strided_inputs(train):
    args = _layer_args("dense", True, True, False, train=train, requires_grad=train, strided=True)
    assert not args[0].is_contiguous() and not args[3].is_contiguous()
    torch.library.opcheck(torch.ops.rnnext.lstm_layer.default, args)


def test_lstm_backward_ops_opcheck():
    args = _layer_args("padded_bf", True, True, True, requires_grad=False)
    out, hy, cy, gates, cells = torch.ops.rnnext.lstm_layer(*args)
    x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, bs, si, bf, reverse, _ = args
    torch.library.opcheck(
        torch.ops.rnnext.lstm_layer_backward.default,
        (torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy), x, hx, cx, w_ih, w_hh, w_hr, bs, si, bf,
         out, gates, cells, reverse, True),
    )
    g = torch.Generator().manual_seed(1)
    cell_args = [torch.randn(s, dtype=torch.float64, generator=g) for s in ((3, 4), (3, 5), (3, 5), (20, 4), (20, 5))]
    for layout in ("masked", "masked_bf"):
        args = _layer_args(layout, True, True, layout == "masked", requires_grad=False)
        out, hy, cy, gates, cells = torch.ops.rnnext.lstm_layer(*args)
        x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, bs, si, bf, reverse, _, lengths = args
        torch.library.opcheck(
            torch.ops.rnnext.lstm_layer_backward.default,
            (torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy), x, hx, cx, w_ih, w_hh, w_hr, bs, si,
             bf, out, gates, cells, reverse, True, lengths),
        )
    hy, cy, gates = torch.ops.rnnext.lstm_cell(*cell_args, None, None)
    torch.library.opcheck(torch.ops.rnnext.lstm_cell_backward.default,
                          (torch.randn_like(hy), torch.randn_like(cy), *cell_args, gates, cy, False))


def test_lstm_cell_opcheck():
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g).requires_grad_()
    torch.library.opcheck(torch.ops.rnnext.lstm_cell.default,
                          (rnd(3, 4), rnd(3, 5), rnd(3, 5), rnd(20, 4), rnd(20, 5), rnd(20), rnd(20)))
    torch.library.opcheck(torch.ops.rnnext.lstm_cell.default,
                          (rnd(3, 4), rnd(3, 5), rnd(3, 5), rnd(20, 4), rnd(20, 5), None, None))


# ---- torch.compile / torch.export -------------------------------------------------------------------------


class _Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 8)
        self.rnn = rnnext.nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = rnnext.nn.LSTMCell(32, 16)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, tok):
        y, (h, c) = self.rnn(self.emb(tok))
        h2, _ = self.cell(y[:, -1])
        return self.out(h2) + h.sum(0).sum(-1, keepdim=True)


def test_torch_compile_fullgraph_forward_backward_equals_eager():
    torch.manual_seed(0)
    model = _Tagger()
    tok = torch.randint(0, 20, (4, 9))
    eager_out = model(tok)
    eager_out.square().sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(tok)
    out.square().sum().backward()
    close(out, eager_out, torch.float32)
    for a, b in zip([p.grad for p in model.parameters()], eager_grads):
        close(a, b, torch.float32)


def test_torch_compile_inductor_inference():
    torch.manual_seed(0)
    model = _Tagger().eval()
    tok = torch.randint(0, 20, (4, 9))
    with torch.no_grad():
        close(torch.compile(model, fullgraph=True)(tok), model(tok), torch.float32)


def test_torch_export():
    torch.manual_seed(0)
    model = _Tagger().eval()
    tok = torch.randint(0, 20, (4, 9))
    ep = torch.export.export(model, (tok,))
    close(ep.module()(tok), model(tok), torch.float32)
    assert any("rnnext.lstm_layer" in str(n.target) for n in ep.graph.nodes)


# ---- the library guard ------------------------------------------------------------------------------------


def test_refuses_other_torch_version(monkeypatch):
    from rnnext import _build_info, _ops

    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.0.0")
    with pytest.raises(ImportError, match="compiled against torch 1.0.0.*Rebuild"):
        _ops._load_library()


@pytest.mark.parametrize("batch", [3, 40], ids=["split-by-units", "split-by-rows"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("proj", [0, 4])
def test_lstm_thread_splits_match_torch(batch, threads, proj):
    """Small batches share each step's hidden units among threads; large ones give each thread its own rows
    (no synchronization). Both, with one thread and two, packed and dense, both directions, match torch."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        stock, ours = make_pair(6, 20, torch.float64, bidirectional=True, proj_size=proj)
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(9, batch, 6, dtype=torch.float64, generator=g)
        lengths = torch.randint(1, 10, (batch,), generator=g)
        for kind in ("dense", "packed", "lengths"):
            res = []
            for m in (stock, ours):
                xi = x.clone().requires_grad_()
                outs, loss = run_lstm(m, kind, xi, lengths, None, False, False)
                loss.backward()
                res.append(outs + [xi.grad] + [p.grad.clone() for p in m.parameters()])
                m.zero_grad()
            for a, b in zip(res[1], res[0]):
                close(a, b, torch.float64, kind)
    finally:
        torch.set_num_threads(old)


def test_lengths_path_details():
    stock, ours = make_pair(3, 5, torch.float64, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    lengths = [2, 6, 1, 4]
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    y_ref, (h_ref, c_ref) = stock(packed)
    y_ref, _ = pad_packed_sequence(y_ref, batch_first=True, padding_value=-3.0, total_length=6)
    for lens in (lengths, torch.tensor(lengths)):
        y, (h, c) = ours(x, lengths=lens, padding_value=-3.0)
        close(y, y_ref, torch.float64)
        close(h, h_ref, torch.float64)
        close(c, c_ref, torch.float64)
    # Without lengths the same padded batch runs every step of every entry (the plain drop-in).
    close(ours(x)[0], stock(x)[0], torch.float64)
    with pytest.raises(ValueError, match=r"lengths\[1\] = 7 is longer"):
        ours(x, lengths=[2, 7, 1, 4])
    with pytest.raises(ValueError, match="at least 1"):
        ours(x, lengths=[2, 0, 1, 4])
    with pytest.raises(ValueError, match="expected 4 lengths"):
        ours(x, lengths=[2, 1])
    with pytest.raises(ValueError, match="PackedSequence carries its own"):
        ours(packed, lengths=lengths)
    with pytest.raises(ValueError, match="batched 3-D"):
        ours(x[0], lengths=[3])


# ---- masked mode: lengths read where the kernel runs (the sync-free GPU path), here on the CPU ----------------


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("proj", [0, 2])
def test_masked_mode_lengths_are_clamped(batch_first, proj, monkeypatch):
    """Masked mode never reads out of bounds and gives lengths outside [1, T] a meaning: 0 runs no step (output
    all padding, h_n = h_0), more than T runs T steps. Oracle: each entry alone through torch.nn.LSTM."""
    monkeypatch.setattr(rnnext.nn.lstm, "_MASKED_ON_CPU", True)
    stock, ours = make_pair(3, 5, torch.float64, num_layers=2, bidirectional=True, proj_size=proj,
                            batch_first=batch_first)
    T, B = 6, 5
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, T, 3, dtype=torch.float64, generator=g)
    P = proj or 5
    h0 = torch.randn(4, B, P, dtype=torch.float64, generator=g)
    c0 = torch.randn(4, B, 5, dtype=torch.float64, generator=g)
    lengths = torch.tensor([0, 6, 40, -3, 2])
    xin = x if batch_first else x.transpose(0, 1)
    y, (h, c) = ours(xin, (h0, c0), lengths=lengths, padding_value=-2.0)
    y = y if batch_first else y.transpose(0, 1)
    for b, n in enumerate(lengths.clamp(0, T).tolist()):
        if n == 0:
            assert torch.all(y[b] == -2.0)
            close(h[:, b], h0[:, b], torch.float64)
            close(c[:, b], c0[:, b], torch.float64)
            continue
        xb = x[b:b + 1, :n] if batch_first else x[b, :n].unsqueeze(1)
        yb, (hb, cb) = stock(xb, (h0[:, b:b + 1].contiguous(), c0[:, b:b + 1].contiguous()))
        yb = yb[0] if batch_first else yb[:, 0]
        close(y[b, :n], yb, torch.float64)
        assert torch.all(y[b, n:] == -2.0)
        close(h[:, b], hb[:, 0], torch.float64)
        close(c[:, b], cb[:, 0], torch.float64)


def test_masked_mode_errors():
    ops = torch.ops.rnnext
    x, h, c = torch.randn(5, 3, 4), torch.zeros(3, 6), torch.zeros(3, 6)
    w_ih, w_hh = torch.randn(24, 4), torch.randn(24, 6)
    args = (x, h, c, w_ih, w_hh, None, None, None, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="expected lengths to be 1-D with 3 entries"):
        ops.lstm_layer(*args, torch.tensor([5, 5]))
    with pytest.raises(RuntimeError, match="expected lengths to be int64"):
        ops.lstm_layer(*args, torch.tensor([5, 5, 5], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="two ways to give variable lengths"):
        ops.lstm_layer(x, h, c, w_ih, w_hh, None, None, None, torch.tensor([3, 2]), None, False, False, False,
                       torch.tensor([2, 2, 1]))
    with pytest.raises(RuntimeError, match="lengths applies to a padded 3-D input"):
        ops.lstm_layer(x[0], h, c, w_ih, w_hh, None, None, None, None, None, False, False, False,
                       torch.tensor([1, 1, 1]))
    with pytest.raises(RuntimeError, match="expected w_hh of shape"):
        ops.lstm_layer(x, h, c, w_ih, torch.randn(24, 5), None, None, None, None, None, False, False, False,
                       torch.tensor([5, 5, 5]))
    # The module checks what it can without reading the values.
    m = rnnext.nn.LSTM(4, 6)
    rnnext.nn.lstm._MASKED_ON_CPU = True
    try:
        with pytest.raises(TypeError, match="integer lengths"):
            m(x, lengths=torch.tensor([5.0, 5.0, 5.0]))
        with pytest.raises(ValueError, match="expected 3 lengths"):
            m(x, lengths=torch.tensor([5, 5]))
        y, _ = m(x, lengths=torch.tensor([5, 5, 5], dtype=torch.int32))  # any integer dtype
        close(y, m(x)[0], torch.float32)
    finally:
        rnnext.nn.lstm._MASKED_ON_CPU = False


def test_masked_mode_compiles_fullgraph(monkeypatch):
    """Masked mode has no host logic on the lengths, so a module call with a lengths tensor compiles into one
    graph (forward and backward), equal to eager."""
    monkeypatch.setattr(rnnext.nn.lstm, "_MASKED_ON_CPU", True)
    torch.manual_seed(0)
    m = rnnext.nn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True).double()

    def f(x, lengths):
        y, (h, c) = m(x, lengths=lengths, padding_value=-1.0)
        return y.sum() + h.square().sum() + c.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 7, 5, dtype=torch.float64)
    lengths = torch.tensor([7, 2, 0, 5])
    results = []
    for fn in (f, compiled):
        xi = x.clone().requires_grad_()
        m.zero_grad()
        loss = fn(xi, lengths)
        loss.backward()
        results.append([loss, xi.grad] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(results[1], results[0]):
        close(a, b, torch.float64)


def test_errors_point_at_the_cause():
    """What a hostile caller found pointing nowhere: a raw layer op with input size 0 ("cannot reshape tensor of 0
    elements") and a float16 module on the CPU ("expected float32 or float64", no word of bfloat16 or CUDA)."""
    ops = torch.ops.rnnext
    x, h, c = torch.randn(5, 3, 0), torch.zeros(3, 6), torch.zeros(3, 6)
    for run in (lambda: ops.lstm_layer(x, h, c, torch.randn(24, 0), torch.randn(24, 6), None, None, None, None, None,
                                       False, False, True),
                lambda: ops.rnn_layer(x, h, torch.randn(18, 0), torch.randn(18, 6), None, None, None, None, False,
                                      False, True, "gru")):
        with pytest.raises(RuntimeError, match=r"expected input's last dimension \(input_size\) to be at least 1"):
            run()
        with pytest.raises(RuntimeError, match=r"input_size\) to be at least 1"):  # the fake kernel says the same
            torch.compile(run, fullgraph=True, backend="eager")()
    for module, inp in ((rnnext.nn.LSTM(3, 4), torch.randn(2, 1, 3)), (rnnext.nn.GRU(3, 4), torch.randn(2, 1, 3)),
                        (rnnext.nn.LSTMCell(3, 4), torch.randn(1, 3)), (rnnext.nn.GRUCell(3, 4), torch.randn(1, 3))):
        with pytest.raises(RuntimeError, match="float32, float64 or bfloat16 on the CPU \\(float16 runs on CUDA only"):
            module.half()(inp.half())


@pytest.mark.parametrize("cls", [rnnext.nn.LSTM, rnnext.nn.GRU, rnnext.nn.RNN], ids=["LSTM", "GRU", "RNN"])
def test_cpu_lengths_compile_fullgraph(cls):
    """What a hostile caller found: `module(x, lengths=t)` with lengths on the CPU under
    torch.compile(fullgraph=True) failed ("Could not guard on data-dependent expression u0 <= 0": the host path
    checks and sorts the lengths in Python). Under compile a lengths tensor is now read by the op (masked mode),
    one graph, forward and backward equal to eager."""
    torch.manual_seed(0)
    m = cls(5, 6, num_layers=2, bidirectional=True, batch_first=True).double()

    def f(x, lengths):
        y, h = m(x, lengths=lengths)
        h = h[0] if isinstance(h, tuple) else h
        return y.square().sum() + h.sum()

    x = torch.randn(4, 7, 5, dtype=torch.float64)
    lengths = torch.tensor([7, 2, 3, 5])
    results = []
    for fn in (f, torch.compile(f, fullgraph=True, backend="aot_eager")):
        xi = x.clone().requires_grad_()
        m.zero_grad()
        loss = fn(xi, lengths)
        loss.backward()
        results.append([loss, xi.grad] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
