"""rnnext::rnn_layer (GRU, tanh RNN, ReLU RNN; one layer, one direction) against torch.nn.GRU / torch.nn.RNN in
every layout, both directions, below and above the threading thresholds, every gradient compared (hx included);
gradcheck, gradgradcheck, opcheck, torch.compile and bad arguments."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnext  # noqa: F401  (loads the ops)

ops = torch.ops.rnnext
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=2e-5, atol=2e-5)}
CELLS = ["gru", "rnn_tanh", "rnn_relu"]


def stock_module(cell, I, H, dtype, bias=True, batch_first=False):
    if cell == "gru":
        return torch.nn.GRU(I, H, bias=bias, batch_first=batch_first, bidirectional=True, dtype=dtype)
    return torch.nn.RNN(I, H, nonlinearity=cell[4:], bias=bias, batch_first=batch_first, bidirectional=True,
                        dtype=dtype)


def layer_params(m, reverse):
    sfx = "_reverse" if reverse else ""
    get = lambda n: getattr(m, n + sfx, None)  # noqa: E731
    return get("weight_ih_l0"), get("weight_hh_l0"), get("bias_ih_l0"), get("bias_hh_l0")


GRID = list(itertools.product(CELLS, ["dense", "batch_first", "packed", "padded"], [False, True], [True, False],
                              [3, 40]))


@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=["1thread", "2threads"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell,layout,reverse,bias,B", GRID)
def test_rnn_layer_matches_torch(threads, dtype, cell, layout, reverse, bias, B):
    torch.manual_seed(0)
    T, I, H = 6, 3, 5
    batch_first = layout == "batch_first"
    m = stock_module(cell, I, H, dtype, bias=bias, batch_first=batch_first)
    g = torch.Generator().manual_seed(B)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype, generator=g)
    h0 = torch.randn(2, B, H, dtype=dtype, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    d = 1 if reverse else 0
    w_ih, w_hh, b_ih, b_hh = layer_params(m, reverse)
    params = [p for p in (w_ih, w_hh, b_ih, b_hh) if p is not None]
    xs, hs = x.clone().requires_grad_(), h0.clone().requires_grad_()
    # stock: the bidirectional module's direction d
    if layout in ("packed", "padded"):
        packed = pack_padded_sequence(xs, lengths, enforce_sorted=False)
        y, hn = m(packed, hs)
        out_s, _ = pad_packed_sequence(y, total_length=T)
    else:
        out_s, hn = m(xs, hs)
        if batch_first:
            out_s = out_s.transpose(0, 1)
    out_s = out_s[..., d * H:(d + 1) * H]
    hy_s = hn[d]
    # rnnext: the op on the same direction
    xr, hr = x.clone().requires_grad_(), h0[d].clone().requires_grad_()
    if layout == "packed":
        packed_r = pack_padded_sequence(xr, lengths, enforce_sorted=False)
        out_r, hy_r, _ = ops.rnn_layer(packed_r.data, hr.index_select(0, packed_r.sorted_indices), w_ih, w_hh, b_ih,
                                       b_hh, packed_r.batch_sizes, None, False, reverse, True, cell)
        out_r, _ = pad_packed_sequence(torch.nn.utils.rnn.PackedSequence(out_r, packed_r.batch_sizes,
                                                                         packed_r.sorted_indices,
                                                                         packed_r.unsorted_indices), total_length=T)
        hy_r = hy_r.index_select(0, packed_r.unsorted_indices)
    elif layout == "padded":
        sorted_len, order = torch.sort(lengths, descending=True, stable=True)
        bs = torch.tensor([(sorted_len > t).sum() for t in range(int(sorted_len[0]))])
        out_r, hy_r, _ = ops.rnn_layer(xr, hr, w_ih, w_hh, b_ih, b_hh, bs, order, False, reverse, True, cell)
    else:
        out_r, hy_r, _ = ops.rnn_layer(xr, hr, w_ih, w_hh, b_ih, b_hh, None, None, batch_first, reverse, True, cell)
        if batch_first:
            out_r = out_r.transpose(0, 1)
    torch.testing.assert_close(out_r, out_s, **TOL[dtype])
    torch.testing.assert_close(hy_r, hy_s, **TOL[dtype])
    wy = torch.randn(out_s.shape, dtype=dtype, generator=g)
    wh = torch.randn(hy_s.shape, dtype=dtype, generator=g)
    gs = torch.autograd.grad((out_s * wy).sum() + (hy_s * wh).sum(), [xs, hs] + params)
    gr = torch.autograd.grad((out_r * wy).sum() + (hy_r * wh).sum(), [xr, hr] + params)
    torch.testing.assert_close(gr[0], gs[0], **TOL[dtype], msg="grad input")
    torch.testing.assert_close(gr[1], gs[1][d], **TOL[dtype], msg="grad h_0")
    for name, a, b in zip(["w_ih", "w_hh", "b_ih", "b_hh"], gr[2:], gs[2:]):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=f"grad {name}")


def _small(cell, layout="dense", dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    T, B, I, H = 4, 3, 2, 3
    G = (3 if cell == "gru" else 1) * H
    r = lambda *s: torch.randn(*s, dtype=dtype, generator=g, requires_grad=True)  # noqa: E731
    x = r(7, I) if layout == "packed" else r(T, B, I)
    bs = torch.tensor([3, 2, 1, 1]) if layout == "packed" else (torch.tensor([3, 2, 1]) if layout == "padded"
                                                                 else None)
    si = torch.tensor([2, 0, 1]) if layout == "padded" else None
    return x, r(B, H), r(G, I), r(G, H), r(G), r(G), bs, si


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", ["dense", "packed", "padded"])
@pytest.mark.parametrize("reverse", [False, True])
def test_rnn_layer_gradcheck_and_gradgradcheck(cell, layout, reverse):
    x, h, w_ih, w_hh, b_ih, b_hh, bs, si = _small(cell, layout)

    def fn(*a):
        out, hy, _ = ops.rnn_layer(*a, bs, si, False, reverse, True, cell)
        return out, hy

    args = (x, h, w_ih, w_hh, b_ih, b_hh)
    if cell == "rnn_relu":  # keep pre-activations away from the kink at 0
        with torch.no_grad():
            b_ih.add_(2.0)
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", ["dense", "packed", "padded"])
def test_rnn_layer_opcheck(cell, layout):
    x, h, w_ih, w_hh, b_ih, b_hh, bs, si = _small(cell, layout)
    torch.library.opcheck(ops.rnn_layer.default, (x, h, w_ih, w_hh, b_ih, b_hh, bs, si, False, False, True, cell))
    with torch.no_grad():
        out, hy, saved = ops.rnn_layer(x, h, w_ih, w_hh, b_ih, b_hh, bs, si, False, False, True, cell)
    torch.library.opcheck(ops.rnn_layer_backward.default,
                          (torch.randn_like(out), torch.randn_like(hy), x.detach(), h.detach(), w_ih.detach(),
                           w_hh.detach(), bs, si, False, False, out, saved, cell, True))


def test_rnn_layer_compiles_fullgraph():
    x, h, w_ih, w_hh, b_ih, b_hh, _, _ = _small("gru")

    def fn(x, h, w_ih, w_hh, b_ih, b_hh):
        out, hy, _ = ops.rnn_layer(x, h, w_ih, w_hh, b_ih, b_hh, None, None, False, False, True, "gru")
        return (out.sin().sum() + hy.sum())

    torch._dynamo.reset()
    args = (x, h, w_ih, w_hh, b_ih, b_hh)
    want = torch.autograd.grad(fn(*args), args)
    got = torch.autograd.grad(torch.compile(fn, fullgraph=True)(*args), args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_rnn_layer_bad_arguments():
    x, h, w_ih, w_hh, b_ih, b_hh, _, _ = _small("gru")
    with torch.no_grad():
        with pytest.raises(RuntimeError, match='expected cell to be "gru", "rnn_tanh" or "rnn_relu", got "lstm"'):
            ops.rnn_layer(x, h, w_ih, w_hh, b_ih, b_hh, None, None, False, False, True, "lstm")
        with pytest.raises(RuntimeError, match=r"expected w_ih.size\(0\) to be 3 \* hidden_size"):
            ops.rnn_layer(x, h, w_ih[:8], w_hh, b_ih, b_hh, None, None, False, False, True, "gru")
        with pytest.raises(RuntimeError, match="expected hx of shape"):
            ops.rnn_layer(x, h[:2], w_ih, w_hh, b_ih, b_hh, None, None, False, False, True, "gru")
        with pytest.raises(RuntimeError, match="expected b_hh of shape"):
            ops.rnn_layer(x, h, w_ih, w_hh, b_ih, b_hh[:3], None, None, False, False, True, "gru")
        with pytest.raises(RuntimeError, match="to have the dtype of input"):
            ops.rnn_layer(x, h.float(), w_ih, w_hh, b_ih, b_hh, None, None, False, False, True, "gru")
        out, hy, saved = ops.rnn_layer(x, h, w_ih, w_hh, b_ih, b_hh, None, None, False, False, False, "gru")
    with pytest.raises(RuntimeError, match="expected saved of shape"):
        ops.rnn_layer_backward(out, hy, x.detach(), h.detach(), w_ih.detach(), w_hh.detach(), None, None, False,
                               False, out, saved, "gru", True)


# ---- masked mode: lengths read where the kernel runs (the sync-free GPU path), here on the CPU ----------------

MASKED_GRID = list(itertools.product(CELLS, [False, True], [False, True], [3, 40]))


@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=["1thread", "2threads"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell,batch_first,reverse,B", MASKED_GRID)
def test_rnn_layer_masked_matches_oracle(threads, dtype, cell, batch_first, reverse, B):
    """lengths given to the op (masked mode) against rnnext._composite.rnn_layer (plain PyTorch, the same
    semantics: active while t < clamp(len, 0, T)) with lengths 0 and > T among them, and against stock on the
    lengths in [1, T]; every gradient."""
    from rnnext import _composite

    torch.manual_seed(0)
    T, I, H = 6, 3, 5
    m = stock_module(cell, I, H, dtype, batch_first=batch_first)
    w_ih, w_hh, b_ih, b_hh = layer_params(m, reverse)
    g = torch.Generator().manual_seed(B + 100)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype, generator=g)
    h0 = torch.randn(B, H, dtype=dtype, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = 0
    lengths[1] = T + 3  # clamped to T
    params = [w_ih, w_hh, b_ih, b_hh]
    res = []
    for fn in (lambda *a: ops.rnn_layer(*a, None, None, batch_first, reverse, True, cell, lengths)[:2],
               lambda *a: _composite.rnn_layer(*a, None, None, batch_first, reverse, cell, lengths)):
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        out, hy = fn(xi, hi, *params)
        wy = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
        gr = torch.autograd.grad((out * wy).sum() + (hy * 0.7).sum(), [xi, hi] + params)
        res.append([out, hy, *gr])
    names = ["output", "hy", "grad input", "grad h_0", "grad w_ih", "grad w_hh", "grad b_ih", "grad b_hh"]
    for name, a, b in zip(names, *res):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=name)
    # The entry of length 0 keeps h_0 and outputs zeros; the one past T runs all T steps.
    assert torch.equal(res[0][1][0], h0[0])
    assert not res[0][0].select(0 if batch_first else 1, 0).any()
    # Against stock on valid lengths (1..T): the bidirectional module's direction.
    valid = lengths.clamp(1, T)
    xs, hs = x.clone().requires_grad_(), torch.stack([h0, h0]).clone().requires_grad_()
    packed = pack_padded_sequence(xs, valid, batch_first=batch_first, enforce_sorted=False)
    y, hn = m(packed, hs)
    out_s, _ = pad_packed_sequence(y, batch_first=batch_first, total_length=T)
    d = 1 if reverse else 0
    out_r, hy_r, _ = ops.rnn_layer(x, h0, *params, None, None, batch_first, reverse, True, cell, valid)
    torch.testing.assert_close(out_r, out_s[..., d * H:(d + 1) * H], **TOL[dtype])
    torch.testing.assert_close(hy_r, hn[d], **TOL[dtype])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_rnn_layer_masked_gradcheck_and_opcheck(cell, reverse):
    x, h, w_ih, w_hh, b_ih, b_hh, _, _ = _small(cell)
    lengths = torch.tensor([4, 0, 2])
    if cell == "rnn_relu":
        with torch.no_grad():
            b_ih.add_(2.0)

    def fn(*a):
        out, hy, _ = ops.rnn_layer(*a, None, None, False, reverse, True, cell, lengths)
        return out, hy

    args = (x, h, w_ih, w_hh, b_ih, b_hh)
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)
    torch.library.opcheck(ops.rnn_layer.default, (*args, None, None, False, reverse, True, cell, lengths))
    with torch.no_grad():
        out, hy, saved = ops.rnn_layer(*args, None, None, False, reverse, True, cell, lengths)
    torch.library.opcheck(ops.rnn_layer_backward.default,
                          (torch.randn_like(out), torch.randn_like(hy), x.detach(), h.detach(), w_ih.detach(),
                           w_hh.detach(), None, None, False, reverse, out, saved, cell, True, lengths))


def test_rnn_layer_masked_bad_lengths():
    x, h, w_ih, w_hh, b_ih, b_hh, bs, _ = _small("gru")
    args = (x, h, w_ih, w_hh, b_ih, b_hh)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="expected lengths to be 1-D with 3 entries"):
            ops.rnn_layer(*args, None, None, False, False, True, "gru", torch.tensor([1, 2]))
        with pytest.raises(RuntimeError, match="expected lengths to be int64"):
            ops.rnn_layer(*args, None, None, False, False, True, "gru", torch.tensor([1, 2, 3], dtype=torch.int32))
        with pytest.raises(RuntimeError, match="two ways to give variable lengths"):
            ops.rnn_layer(*args, torch.tensor([3, 2, 1]), None, False, False, True, "gru", torch.tensor([1, 2, 3]))


# ---- rnnext::rnn_cell (GRUCell / RNNCell): one step ------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B", [0, 1, 3, 8, 9, 70])  # gemv rows (<= 8), ATen GEMMs
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_rnn_cell_matches_the_plain_step(cell, B, dtype):
    from rnnext import _composite

    g = torch.Generator().manual_seed(B)
    I, H = 6, 7
    G = (3 if cell == "gru" else 1) * H
    args = [torch.randn(*s, dtype=dtype, generator=g, requires_grad=True) for s in ((B, I), (B, H), (G, I), (G, H),
                                                                                 (G,), (G,))]
    hy, _ = ops.rnn_cell(*args, cell)
    (want,) = _composite.rnn_cell(*args, cell)
    torch.testing.assert_close(hy, want, **TOL[dtype])
    wy = torch.randn(hy.shape, dtype=dtype, generator=g)
    got = torch.autograd.grad((hy * wy).sum(), args, allow_unused=True)
    ref = torch.autograd.grad((want * wy).sum(), args, allow_unused=True)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_rnn_cell_gradcheck_opcheck_and_compile(cell, bias):
    x, h, w_ih, w_hh, b_ih, b_hh, _, _ = _small(cell)
    x = x[0].detach().requires_grad_()
    if not bias:
        b_ih = b_hh = None
    elif cell == "rnn_relu":
        with torch.no_grad():
            b_ih.add_(2.0)
    args = (x, h, w_ih, w_hh, b_ih, b_hh)

    def fn(*a):
        return ops.rnn_cell(*a, cell)[0]

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)
    torch.library.opcheck(ops.rnn_cell.default, (*args, cell))
    with torch.no_grad():
        hy, saved = ops.rnn_cell(*args, cell)
    torch.library.opcheck(ops.rnn_cell_backward.default, (torch.randn_like(hy), x.detach(), h.detach(),
                                                          w_ih.detach(), w_hh.detach(), hy, saved, cell, bias))
    torch._dynamo.reset()
    want = torch.autograd.grad(fn(*args).sin().sum(), [a for a in args if a is not None])
    got = torch.autograd.grad(torch.compile(fn, fullgraph=True)(*args).sin().sum(), [a for a in args if a is not None])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_rnn_cell_bad_arguments():
    x, h, w_ih, w_hh, b_ih, b_hh, _, _ = _small("gru")
    x = x[0]
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="expected input to have 2 dimensions"):
            ops.rnn_cell(x[0], h, w_ih, w_hh, b_ih, b_hh, "gru")
        with pytest.raises(RuntimeError, match='expected cell to be "gru", "rnn_tanh" or "rnn_relu", got "tanh"'):
            ops.rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, "tanh")
        with pytest.raises(RuntimeError, match="expected hx of shape"):
            ops.rnn_cell(x, h[:2], w_ih, w_hh, b_ih, b_hh, "gru")
        with pytest.raises(RuntimeError, match="to have the dtype of input"):
            ops.rnn_cell(x, h, w_ih.float(), w_hh, b_ih, b_hh, "gru")
        hy, saved = ops.rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, "gru")
        with pytest.raises(RuntimeError, match="expected saved of shape"):
            ops.rnn_cell_backward(hy, x, h, w_ih, w_hh, hy, saved[:, :3], "gru", True)


def _with_bad_values(t, gen, values=(float("nan"), float("inf"), -float("inf")), count=2):
    t = t.clone()
    flat = t.view(-1)
    for k in range(count):
        flat[torch.randint(0, flat.numel(), (1,), generator=gen)] = values[k % len(values)]
    return t


@pytest.mark.parametrize("where", ["input", "weight_hh", "h0"])
@pytest.mark.parametrize("kind", ["layer", "packed", "cell"])
@pytest.mark.parametrize("cell", CELLS)
def test_nan_and_inf_gradients_propagate_like_stock(cell, kind, where):
    """A NaN or inf in the input, a weight or the initial state gives stock's outputs and every gradient, NaN where
    stock's is NaN (stock's ReLU backward is threshold_backward: a NaN pre-activation passes its gradient on,
    where rnnext used to zero it)."""
    torch.manual_seed(0)
    T, B, I, H = 4, 3, 3, 5
    g = torch.Generator().manual_seed(7)
    layer = kind != "cell"
    if cell == "gru":
        Stock, kw = (torch.nn.GRU if layer else torch.nn.GRUCell), {}
    else:
        Stock, kw = (torch.nn.RNN if layer else torch.nn.RNNCell), {"nonlinearity": cell[4:]}
    stock = Stock(I, H, dtype=torch.float64, **kw)
    ours = getattr(rnnext.nn, Stock.__name__)(I, H, dtype=torch.float64, **kw)
    x = torch.randn(*((T, B, I) if layer else (B, I)), dtype=torch.float64, generator=g)
    h0 = torch.randn(*((1, B, H) if layer else (B, H)), dtype=torch.float64, generator=g)
    if where == "input":
        x = _with_bad_values(x, g)
    elif where == "h0":
        h0 = _with_bad_values(h0, g, count=1)
    else:
        w_hh = stock.weight_hh_l0 if layer else stock.weight_hh
        with torch.no_grad():
            w_hh.copy_(_with_bad_values(w_hh, g))
    ours.load_state_dict(stock.state_dict())
    results = []
    for m in (stock, ours):
        xs, hs = x.clone().requires_grad_(), h0.clone().requires_grad_()
        if kind == "packed":
            y, hn = m(pack_padded_sequence(xs, torch.tensor([4, 2, 1]), enforce_sorted=False), hs)
            y = pad_packed_sequence(y)[0]
        elif kind == "cell":
            y = hn = m(xs, hs)
        else:
            y, hn = m(xs, hs)
        (y.sum() + hn.sum()).backward()
        results.append([y, hn, xs.grad, hs.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(results[1], results[0]):
        assert torch.equal(a.isnan(), b.isnan()), (a, b)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, equal_nan=True)
