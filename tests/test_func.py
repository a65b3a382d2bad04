"""torch.func transforms (grad, vjp, jacrev, jacfwd, vmap) over functional_call of every rnnext module, against
stock's results: under a transform the modules run the ops' plain-PyTorch twins (rnnext._composite), which the
transforms differentiate and batch. A transform stock does not support for its module is not asked of rnnext."""

import pytest
import torch
from torch.func import functional_call, grad, jacfwd, jacrev, vjp, vmap
from torch.nn.utils.rnn import pack_padded_sequence

import rnnext

LAYERS = ["LSTM", "GRU", "RNN"]
CELLS = ["LSTMCell", "GRUCell", "RNNCell"]


def _pair(name, **kw):
    torch.manual_seed(0)
    stock = getattr(torch.nn, name)(3, 4, **kw).double()
    ours = getattr(rnnext.nn, name)(3, 4, **kw).double()
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _case(name, layout):
    """(module kwargs, input, call kwargs, how the output becomes a tensor)."""
    g = torch.Generator().manual_seed(1)
    if name in CELLS:
        return {}, torch.randn(2, 3, dtype=torch.float64, generator=g), lambda o: _first(o)
    kw = {"num_layers": 2, "bidirectional": True, "batch_first": layout == "batch_first"}
    shape = (2, 5, 3) if layout == "batch_first" else (5, 2, 3)
    return kw, torch.randn(*shape, dtype=torch.float64, generator=g), lambda o: _first(o)


def _transform(kind, module, params, x, out_of):
    def f(p, xx):
        return out_of(functional_call(module, p, (xx,)))

    def loss(p, xx):
        return f(p, xx).square().sum()

    if kind == "grad":
        return grad(loss, argnums=(0, 1))(params, x)
    if kind == "vjp":
        out, pull = vjp(lambda xx: f(params, xx), x)
        return out, pull(torch.ones_like(out))
    if kind == "jacrev":
        return jacrev(lambda xx: f(params, xx))(x)
    if kind == "jacfwd":
        return jacfwd(lambda xx: f(params, xx))(x)
    if kind == "vmap":  # a stack of 3 inputs
        xs = torch.stack([x, 2 * x, -x])
        return vmap(lambda xx: f(params, xx))(xs)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["grad", "vjp", "jacrev", "jacfwd", "vmap"])
@pytest.mark.parametrize("name,layout", [(n, lay) for n in LAYERS for lay in ("dense", "batch_first")] +
                         [(n, "cell") for n in CELLS])
def test_func_transforms_match_stock(name, layout, kind):
    kw, x, out_of = _case(name, layout)
    stock, ours = _pair(name, **kw)
    try:
        expected = _transform(kind, stock, dict(stock.named_parameters()), x, out_of)
    except Exception as e:  # noqa: BLE001  (what stock cannot do is not asked of rnnext)
        pytest.skip(f"stock {name} does not support {kind}: {type(e).__name__}")
    got = _transform(kind, ours, dict(ours.named_parameters()), x, out_of)
    flat_e, flat_g = torch.utils._pytree.tree_leaves(expected), torch.utils._pytree.tree_leaves(got)
    assert len(flat_e) == len(flat_g)
    for a, b in zip(flat_g, flat_e):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_func_grad_with_packed_input_and_lengths():
    """grad of the parameters through a PackedSequence input (packed outside the transform: packing itself, stock's
    or rnnext's, does not run under torch.func) and through lengths= (the masked twin), against stock's packed run
    differentiated by plain autograd (stock's packed LSTM does not run under torch.func: "Cannot access data
    pointer of Tensor that doesn't have storage")."""
    stock, ours = _pair("LSTM", num_layers=2, bidirectional=True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, 3, dtype=torch.float64, generator=g)
    lengths = torch.tensor([6, 2, 4])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)

    def loss_packed(module):
        def f(p):
            out, (h, _) = functional_call(module, p, (packed,))
            return out.data.square().sum() + h.square().sum()
        return f

    def loss_lengths(p):
        out, (h, _) = functional_call(ours, p, (x,), {"lengths": lengths})
        return out.square().sum() + h.square().sum()

    params = dict(stock.named_parameters())
    ref = dict(zip(params, torch.autograd.grad(loss_packed(stock)(params), list(params.values()))))
    for f in (loss_packed(ours), loss_lengths):
        got = grad(f)(dict(ours.named_parameters()))
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-10, rtol=1e-10)


def test_plain_calls_still_use_the_fused_ops():
    """Outside a transform the modules call the fused ops (the twins are only for transforms)."""
    ours = rnnext.nn.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    with torch.autograd.profiler.profile() as prof:
        ours(x)
    assert any(e.name == "rnnext::rnn_layer" for e in prof.function_events)


@pytest.mark.parametrize("name,layout", [(n, "dense") for n in LAYERS] + [("LSTMCell", "cell")])
def test_vmap_where_stock_cannot(name, layout):
    """vmap of the modules stock cannot vmap (its fused layers, LSTMCell): rnnext's equals stock's per-input
    results stacked."""
    kw, x, out_of = _case(name, layout)
    stock, ours = _pair(name, **kw)
    xs = torch.stack([x, 2 * x, -x])
    got = vmap(lambda xx: out_of(functional_call(ours, dict(ours.named_parameters()), (xx,))))(xs)
    with torch.no_grad():
        expected = torch.stack([out_of(stock(xi)) for xi in xs])
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
