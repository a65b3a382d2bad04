"""rnnext.nn.GRU / RNN / GRUCell / RNNCell against torch.nn (the oracle) over the module grid: layers, directions,
bias, batch_first, dense / packed (sorted and not) / unbatched / lengths= inputs, given and default hx, both RNN
nonlinearities; outputs, final states and every gradient (input, h_0, parameters). Plus state_dict both ways,
torch.compile, torch.export, replace_rnns and bad arguments."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnext

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=2e-5, atol=2e-5)}
KINDS = {"gru": (torch.nn.GRU, rnnext.nn.GRU, {}), "rnn_tanh": (torch.nn.RNN, rnnext.nn.RNN, {}),
         "rnn_relu": (torch.nn.RNN, rnnext.nn.RNN, {"nonlinearity": "relu"})}


def make_pair(kind, I, H, dtype, **kw):
    stock_cls, ours_cls, extra = KINDS[kind]
    torch.manual_seed(1234)
    stock = stock_cls(I, H, dtype=dtype, **extra, **kw)
    torch.manual_seed(1234)
    ours = ours_cls(I, H, dtype=dtype, **extra, **kw)
    return stock, ours


GRID = list(itertools.product(list(KINDS), [1, 2], [False, True], [True, False],
                              ["dense", "packed", "packed_sorted", "unbatched", "lengths", "masked"], [False, True],
                              [4, 40]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind,layers,bidir,bias,inp,give_hx,B", GRID)
def test_module_matches_torch(dtype, kind, layers, bidir, bias, inp, give_hx, B, monkeypatch):
    if inp == "masked":  # the lengths path of a GPU input (lengths on the device: masked mode), run on the CPU
        monkeypatch.setattr(rnnext.nn.lstm, "_MASKED_ON_CPU", True)
    batch_first = (layers + int(bidir) + int(give_hx)) % 2 == 1
    I, H, T = 3, 5, 6
    stock, ours = make_pair(kind, I, H, dtype, num_layers=layers, bidirectional=bidir, bias=bias,
                            batch_first=batch_first)
    assert [n for n, _ in stock.named_parameters()] == [n for n, _ in ours.named_parameters()]
    for a, b in zip(stock.parameters(), ours.parameters()):
        assert torch.equal(a, b)  # same initialisation for the same seed
    g = torch.Generator().manual_seed(B * 10 + layers)
    D = 2 if bidir else 1
    if inp == "unbatched":
        x = torch.randn(T, I, dtype=dtype, generator=g)
        h_shape = (layers * D, H)
    else:
        x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype, generator=g)
        h_shape = (layers * D, B, H)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    if inp == "packed_sorted":
        lengths = lengths.sort(descending=True).values
    h0 = torch.randn(h_shape, dtype=dtype, generator=g)
    res = []
    for m in (stock, ours):
        xi = x.clone().requires_grad_()
        hi = h0.clone().requires_grad_() if give_hx else None
        if inp.startswith("packed") or (inp in ("lengths", "masked") and m is stock):
            packed = pack_padded_sequence(xi, lengths, batch_first=batch_first, enforce_sorted=inp == "packed_sorted")
            y, hn = m(packed, hi)
            assert isinstance(y, PackedSequence)
            out, _ = pad_packed_sequence(y, batch_first=batch_first, total_length=T)
        elif inp in ("lengths", "masked"):
            out, hn = m(xi, hi, lengths=lengths)
        else:
            out, hn = m(xi, hi)
        w = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
        ((out * w).sum() + (hn * 1.5).sum()).backward()
        res.append([out, hn, xi.grad] + ([hi.grad] if give_hx else []) + [p.grad for p in m.parameters()])
    names = ["output", "h_n", "grad input"] + (["grad h_0"] if give_hx else []) + [n for n, _ in
                                                                                  ours.named_parameters()]
    for name, a, b in zip(names, res[1], res[0]):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=name)


CELL_KINDS = {"gru": (torch.nn.GRUCell, rnnext.nn.GRUCell, {}), "rnn_tanh": (torch.nn.RNNCell, rnnext.nn.RNNCell, {}),
              "rnn_relu": (torch.nn.RNNCell, rnnext.nn.RNNCell, {"nonlinearity": "relu"})}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind,bias,batched,give_hx",
                         list(itertools.product(list(CELL_KINDS), [True, False], [True, False], [True, False])))
def test_cell_matches_torch(dtype, kind, bias, batched, give_hx):
    stock_cls, ours_cls, extra = CELL_KINDS[kind]
    torch.manual_seed(0)
    stock = stock_cls(5, 7, bias=bias, dtype=dtype, **extra)
    torch.manual_seed(0)
    ours = ours_cls(5, 7, bias=bias, dtype=dtype, **extra)
    x = torch.randn((3, 5) if batched else (5,), dtype=dtype)
    h0 = torch.randn((3, 7) if batched else (7,), dtype=dtype)
    res = []
    for m in (stock, ours):
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        h = m(xi, hi if give_hx else None)
        (h.sum() * 2 + (h * h).sum()).backward()
        res.append([h, xi.grad] + ([hi.grad] if give_hx else []) + [p.grad for p in m.parameters()])
    for a, b in zip(res[1], res[0]):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_state_dict_both_ways():
    for kind in KINDS:
        stock, ours = make_pair(kind, 4, 6, torch.float32, num_layers=2, bidirectional=True)
        ours.load_state_dict(stock.state_dict())
        stock.load_state_dict(ours.state_dict())
        assert list(stock.state_dict()) == list(ours.state_dict())
    for stock_cls, ours_cls, extra in CELL_KINDS.values():
        assert list(stock_cls(3, 4, **extra).state_dict()) == list(ours_cls(3, 4, **extra).state_dict())


@pytest.mark.parametrize("kind", list(KINDS))
def test_compile_fullgraph_and_export(kind):
    _, ours = make_pair(kind, 3, 4, torch.float32, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(2, 5, 3, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    out_c, h_c = compiled(x)
    out_e, h_e = ours(x)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(h_c, h_e)
    g_c = torch.autograd.grad(out_c.sum() + h_c.sum(), [x] + list(ours.parameters()))
    g_e = torch.autograd.grad(out_e.sum() + h_e.sum(), [x] + list(ours.parameters()))
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)
    exported = torch.export.export(ours, (x.detach(),))
    torch.testing.assert_close(exported.module()(x.detach())[0], out_e.detach())


def test_replace_rnns_swaps_gru_and_rnn_too():
    model = torch.nn.Sequential(torch.nn.GRU(3, 4), torch.nn.Module())
    model[1].rnn = torch.nn.RNN(3, 4, nonlinearity="relu")
    model[1].cell = torch.nn.GRUCell(3, 4)
    model[1].rcell = torch.nn.RNNCell(3, 4)
    x = torch.randn(5, 2, 3)
    want = [model[0](x)[0], model[1].rnn(x)[0], model[1].cell(x[0]), model[1].rcell(x[0])]
    out, report = rnnext.replace_rnns(model, return_report=True)
    assert isinstance(out[0], rnnext.nn.GRU) and isinstance(out[1].rnn, rnnext.nn.RNN)
    assert isinstance(out[1].cell, rnnext.nn.GRUCell) and isinstance(out[1].rcell, rnnext.nn.RNNCell)
    assert out[1].rnn.nonlinearity == "relu"
    got = [out[0](x)[0], out[1].rnn(x)[0], out[1].cell(x[0]), out[1].rcell(x[0])]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert sorted(report.replaced) == ["0", "1.cell", "1.rcell", "1.rnn"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="nonlinearity"):
        rnnext.nn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="nonlinearity"):
        rnnext.nn.RNNCell(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        rnnext.nn.GRU(3, 0)
    gru = rnnext.nn.GRU(3, 4)
    with pytest.raises(RuntimeError, match="expected h_0 of shape"):
        gru(torch.randn(5, 2, 3), torch.randn(1, 3, 4))
    with pytest.raises(TypeError, match="expected input of dtype"):
        gru(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point input"):
        gru(torch.ones(5, 2, 3, dtype=torch.long))
    with pytest.raises(RuntimeError, match="input_size=3"):
        gru(torch.randn(5, 2, 4))
    with pytest.raises(RuntimeError, match="expected hx of shape"):
        rnnext.nn.GRUCell(3, 4)(torch.randn(2, 3), torch.randn(3, 4))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_training_dropout_masks_match_stock_on_cpu(kind, bidirectional):
    """Inter-layer dropout draws from torch's RNG as stock's CPU path does: same seed, same masks, same outputs
    and gradients (3 layers, dropout 0.5, float64)."""
    stock_cls, ours_cls = {"lstm": (torch.nn.LSTM, rnnext.nn.LSTM), "gru": (torch.nn.GRU, rnnext.nn.GRU),
                           "rnn_tanh": (torch.nn.RNN, rnnext.nn.RNN)}[kind]
    torch.manual_seed(0)
    stock = stock_cls(5, 7, num_layers=3, dropout=0.5, bidirectional=bidirectional, dtype=torch.float64)
    ours = ours_cls(5, 7, num_layers=3, dropout=0.5, bidirectional=bidirectional, dtype=torch.float64)
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(6, 4, 5, dtype=torch.float64)
    res = []
    for m in (stock, ours):
        xi = x.clone().requires_grad_()
        torch.manual_seed(123)
        y, _ = m(xi)
        y.pow(2).sum().backward()
        res.append([y, xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(res[1], res[0]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.manual_seed(124)  # another seed gives other masks: the comparison above is not vacuous
    assert not torch.allclose(ours(x)[0], res[0][0])
