"""bfloat16 on the CPU: rnnext's LSTM, GRU and RNN layers and cells in bfloat16 against a float64 oracle (stock
torch.nn in float64 on the same bfloat16 weights and inputs), with stock torch.nn's own bfloat16 run as the
yardstick. The bounds, per output and gradient tensor:
- relative RMS error (||ours - oracle|| / ||oracle||) at most 1.5x stock bfloat16's, or under a floor: one bfloat16
  unit in the last place (2^-7) for LSTM, GRU and tanh RNN; 4e-2 for ReLU RNN, whose kinks turn a rounding-sized
  difference in a pre-activation near zero into an O(1) difference in a gradient entry (stock has the same,
  case by case in other places);
- LSTM also the largest absolute error at most 1.5x stock's, or within one bfloat16 unit in the last place at the
  oracle's largest value (a correctly rounded result is within half of one; a float32 sum a few float32 ulps
  off rounds to the neighbouring bfloat16 number when the exact value lies near a midpoint, and stock's error
  there can be the correctly rounded half-unit: seen for a bias gradient on a CPU without AVX-512, where stock
  LSTM runs ATen's per-step ops instead of oneDNN's fused kernel and sums b_ih's gradient in one reduction).
Also the dtype contract (bfloat16 in, bfloat16 out, bfloat16 gradients; no silent mixing), opcheck with bfloat16
arguments, and clear errors for mixed dtypes."""

import itertools
import math

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnext
from rnnext.benchmarks.bf16 import stock_lstm_path

BF16_ULP = 2.0 ** -7  # spacing of bfloat16 numbers in [1, 2)

KINDS = {
    "lstm": (torch.nn.LSTM, rnnext.nn.LSTM, {}),
    "lstm_proj": (torch.nn.LSTM, rnnext.nn.LSTM, {"proj_size": 5}),
    "gru": (torch.nn.GRU, rnnext.nn.GRU, {}),
    "rnn_tanh": (torch.nn.RNN, rnnext.nn.RNN, {}),
    "rnn_relu": (torch.nn.RNN, rnnext.nn.RNN, {"nonlinearity": "relu"}),
}


def _modules(kind, I, H, **kw):
    """(stock bf16, rnnext bf16, stock float64 oracle), all holding the same bfloat16-valued weights."""
    stock_cls, ours_cls, extra = KINDS[kind]
    torch.manual_seed(7)
    base = stock_cls(I, H, **extra, **kw)
    state = base.to(torch.bfloat16).state_dict()
    stock = stock_cls(I, H, **extra, **kw, dtype=torch.bfloat16)
    ours = ours_cls(I, H, **extra, **kw, dtype=torch.bfloat16)
    oracle = stock_cls(I, H, **extra, **kw, dtype=torch.float64)
    stock.load_state_dict(state)
    ours.load_state_dict(state)
    oracle.load_state_dict({k: v.double() for k, v in state.items()})
    return stock, ours, oracle


def _run(module, inp, x, lengths, hx, batch_first):
    """Forward and backward of one input kind; returns [output, final states..., grad input, grad hx...,
    parameter grads...] in float64, and checks that everything bfloat16 in came out bfloat16."""
    dtype = next(module.parameters()).dtype
    xi = x.to(dtype, copy=True).requires_grad_()
    hxi = None
    if hx is not None:
        hxi = (tuple(h.to(dtype, copy=True).requires_grad_() for h in hx) if isinstance(hx, tuple)
               else hx.to(dtype, copy=True).requires_grad_())
    if inp == "packed":
        packed = pack_padded_sequence(xi, lengths, batch_first=batch_first, enforce_sorted=False)
        out, states = module(packed, hxi)
        out = pad_packed_sequence(out, batch_first=batch_first)[0]
    elif inp == "lengths" and isinstance(module, (rnnext.nn.LSTM, rnnext.nn.GRU, rnnext.nn.RNN)):
        out, states = module(xi, hxi, lengths=lengths)
    elif inp == "lengths":  # stock: pack, run, unpack (padding zero)
        packed = pack_padded_sequence(xi, lengths, batch_first=batch_first, enforce_sorted=False)
        out, states = module(packed, hxi)
        out = pad_packed_sequence(out, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0])[0]
    else:
        out, states = module(xi, hxi)
    states = list(states) if isinstance(states, tuple) else [states]
    assert out.dtype == dtype and all(s.dtype == dtype for s in states)
    weight = torch.linspace(-1, 1, out.shape[-1], dtype=torch.float64)
    loss = (out.double() * weight).sum() + sum((s.double() * 0.5).sum() for s in states)
    loss.backward()
    hx_grads = [] if hxi is None else [h.grad for h in (hxi if isinstance(hxi, tuple) else (hxi,))]
    grads = [xi.grad, *hx_grads, *[p.grad for p in module.parameters()]]
    assert all(g.dtype == dtype for g in grads)
    return [t.detach().double() for t in (out, *states, *grads)]


GRID = list(itertools.product(list(KINDS), [1, 2], [False, True], ["dense", "packed", "lengths"], [False, True]))


@pytest.mark.parametrize("kind,layers,bidir,inp,give_hx", GRID)
def test_bf16_modules_within_stock_bf16_error(kind, layers, bidir, inp, give_hx):
    I, H, T, B = 6, 12, 7, 5
    batch_first = (layers + int(bidir) + int(give_hx)) % 2 == 1
    stock, ours, oracle = _modules(kind, I, H, num_layers=layers, bidirectional=bidir, batch_first=batch_first)
    g = torch.Generator().manual_seed(layers * 10 + int(bidir))
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(*shape, generator=g).to(torch.bfloat16).double()
    lengths = torch.tensor([7, 3, 5, 1, 6])
    hx = None
    if give_hx:
        D = 2 if bidir else 1
        P = KINDS[kind][2].get("proj_size", H)
        h0 = torch.randn(layers * D, B, P, generator=g).to(torch.bfloat16).double()
        hx = (h0, torch.randn(layers * D, B, H, generator=g).to(torch.bfloat16).double()) if kind.startswith(
            "lstm") else h0
    ref = _run(oracle, inp, x, lengths, hx, batch_first)
    theirs = _run(stock, inp, x, lengths, hx, batch_first)
    mine = _run(ours, inp, x, lengths, hx, batch_first)
    assert len(ref) == len(theirs) == len(mine)
    _check_errors(kind, ref, theirs, mine)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("inp", ["dense", "packed", "lengths"])
@pytest.mark.parametrize("B,I,H", [(40, 24, 32), (41, 24, 32), (40, 23, 33)])
def test_bf16_native_sizes(threads, kind, inp, B, I, H):
    """The LSTM, GRU and RNN layers at sizes where the native bfloat16 path runs on AVX512-BF16 CPUs (batch 40
    and 41: the slot split at 1 and 2 threads, even and uneven halves; 480 or 533 input rows: the input
    projection on the bfloat16 micro-kernel; odd input and hidden sizes: odd GEMM depths, whose last k-pair has
    a zero partner, and partial vectors in the pointwise steps), two layers, bidirectional, initial states given,
    every output and gradient (h_0 and c_0 included) within 1.5x stock bfloat16's relative RMS error (or the
    floor) and, for LSTM, its largest error too."""
    T = 12 if B % 2 == 0 else 13
    stock, ours, oracle = _modules(kind, I, H, num_layers=2, bidirectional=True)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(T, B, I, generator=g).to(torch.bfloat16).double()
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    # Initial states given: their gradients (h_0, and c_0 for LSTM) are compared too.
    h0 = torch.randn(4, B, H, generator=g).to(torch.bfloat16).double()
    hx = (h0, torch.randn(4, B, H, generator=g).to(torch.bfloat16).double()) if kind == "lstm" else h0
    ref = _run(oracle, inp, x, lengths, hx, False)
    theirs = _run(stock, inp, x, lengths, hx, False)
    mine = _run(ours, inp, x, lengths, hx, False)
    _check_errors(kind, ref, theirs, mine)


def _ulp(value):
    """The spacing of bfloat16 numbers at max(|value|, 1): one unit in the last place there."""
    return 2.0 ** (math.floor(math.log2(max(1.0, abs(value)))) - 7)


def _check_errors(kind, ref, theirs, mine):
    rms_floor = 4e-2 if kind == "rnn_relu" else BF16_ULP
    for i, (r, t, m) in enumerate(zip(ref, theirs, mine)):
        norm = r.norm().item()
        if norm == 0:
            assert m.abs().max().item() == 0, f"tensor {i}: the oracle is zero, rnnext is not"
            continue
        rms_stock, rms_ours = (t - r).norm().item() / norm, (m - r).norm().item() / norm
        assert rms_ours <= max(1.5 * rms_stock, rms_floor), (
            f"tensor {i}: rnnext bf16 relative RMS error {rms_ours:.3g} > 1.5x stock bf16's {rms_stock:.3g} "
            f"and > {rms_floor:.3g}")
        if kind.startswith("lstm"):
            err_stock, err_ours = (t - r).abs().max().item(), (m - r).abs().max().item()
            floor = _ulp(r.abs().max().item())
            assert err_ours <= max(1.5 * err_stock, floor), (
                f"tensor {i}: rnnext bf16 max error {err_ours:.3g} > 1.5x stock bf16's {err_stock:.3g} "
                f"(floor {floor:.3g})")


CELLS = {"lstm": (torch.nn.LSTMCell, rnnext.nn.LSTMCell, {}), "gru": (torch.nn.GRUCell, rnnext.nn.GRUCell, {}),
         "rnn_tanh": (torch.nn.RNNCell, rnnext.nn.RNNCell, {}),
         "rnn_relu": (torch.nn.RNNCell, rnnext.nn.RNNCell, {"nonlinearity": "relu"})}


@pytest.mark.parametrize("kind,bias,B", list(itertools.product(list(CELLS), [True, False], [1, 3, 40])))
def test_bf16_cells_within_stock_bf16_error(kind, bias, B):
    stock_cls, ours_cls, extra = CELLS[kind]
    I, H = 6, 12
    torch.manual_seed(3)
    state = stock_cls(I, H, bias=bias, **extra).to(torch.bfloat16).state_dict()
    mods = []
    for cls, dtype in ((stock_cls, torch.float64), (stock_cls, torch.bfloat16), (ours_cls, torch.bfloat16)):
        m = cls(I, H, bias=bias, **extra, dtype=dtype)
        m.load_state_dict({k: v.to(dtype) for k, v in state.items()})
        mods.append(m)
    g = torch.Generator().manual_seed(B)
    x = torch.randn(B, I, generator=g).to(torch.bfloat16).double()
    h = torch.randn(B, H, generator=g).to(torch.bfloat16).double()
    c = torch.randn(B, H, generator=g).to(torch.bfloat16).double()
    results = []
    for m in mods:
        dtype = next(m.parameters()).dtype
        xi, hi, ci = (t.to(dtype, copy=True).requires_grad_() for t in (x, h, c))
        out = m(xi, (hi, ci)) if kind == "lstm" else m(xi, hi)
        outs = list(out) if isinstance(out, tuple) else [out]
        assert all(o.dtype == dtype for o in outs)
        sum((o.double() * (k + 1)).sum() for k, o in enumerate(outs)).backward()
        grads = [xi.grad, hi.grad] + ([ci.grad] if kind == "lstm" else []) + [p.grad for p in m.parameters()]
        assert all(t.dtype == dtype for t in grads)
        results.append([t.detach().double() for t in outs + grads])
    _check_errors(kind, *results)


def _bf(*shape, g):
    return torch.randn(*shape, generator=g).to(torch.bfloat16)


def test_bf16_ops_opcheck():
    g = torch.Generator().manual_seed(0)
    T, B, I, H, P = 4, 3, 5, 6, 4
    rg = lambda t: t.requires_grad_()  # noqa: E731
    lstm = (rg(_bf(T, B, I, g=g)), rg(_bf(B, P, g=g)), rg(_bf(B, H, g=g)), rg(_bf(4 * H, I, g=g)),
            rg(_bf(4 * H, P, g=g)), rg(_bf(4 * H, g=g)), rg(_bf(4 * H, g=g)), rg(_bf(P, H, g=g)), None, None, False,
            True, True)
    torch.library.opcheck(torch.ops.rnnext.lstm_layer.default, lstm)
    for cell in ("gru", "rnn_tanh"):
        G = (3 if cell == "gru" else 1) * H
        packed = (rg(_bf(8, I, g=g)), rg(_bf(B, H, g=g)), rg(_bf(G, I, g=g)), rg(_bf(G, H, g=g)), rg(_bf(G, g=g)),
                  rg(_bf(G, g=g)), torch.tensor([3, 2, 2, 1]), None, False, True, True, cell)
        torch.library.opcheck(torch.ops.rnnext.rnn_layer.default, packed)
        # At a size where the native bfloat16 path runs (the slot split: 33 entries, 5 steps), forward and
        # backward op.
        dense = (rg(_bf(5, 33, I, g=g)), rg(_bf(33, H, g=g)), *packed[2:6], None, None, False, False, True, cell)
        torch.library.opcheck(torch.ops.rnnext.rnn_layer.default, dense)
        out, hy, saved = torch.ops.rnnext.rnn_layer(*(t.detach() if isinstance(t, torch.Tensor) else t
                                                      for t in dense))
        assert out.dtype == hy.dtype == torch.bfloat16 and saved.dtype == torch.float32
        x, h0, w_ih, w_hh = (t.detach() for t in dense[:4])
        torch.library.opcheck(torch.ops.rnnext.rnn_layer_backward.default,
                              (torch.randn_like(out), torch.randn_like(hy), x, h0, w_ih, w_hh, None, None, False,
                               False, out, saved, cell, True, None))
        torch.library.opcheck(torch.ops.rnnext.rnn_cell.default,
                              (rg(_bf(B, I, g=g)), rg(_bf(B, H, g=g)), rg(_bf(G, I, g=g)), rg(_bf(G, H, g=g)),
                               rg(_bf(G, g=g)), rg(_bf(G, g=g)), cell))
    torch.library.opcheck(torch.ops.rnnext.lstm_cell.default,
                          (rg(_bf(B, I, g=g)), rg(_bf(B, H, g=g)), rg(_bf(B, H, g=g)), rg(_bf(4 * H, I, g=g)),
                           rg(_bf(4 * H, H, g=g)), None, None))
    # The backward ops: bfloat16 values, float32 workspace.
    x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr = (t.detach() for t in lstm[:8])
    out, hy, cy, gates, cells = torch.ops.rnnext.lstm_layer(x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, None, None,
                                                            False, True, True)
    assert out.dtype == hy.dtype == cy.dtype == torch.bfloat16 and gates.dtype == cells.dtype == torch.float32
    torch.library.opcheck(torch.ops.rnnext.lstm_layer_backward.default,
                          (torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy), x, hx, cx, w_ih, w_hh,
                           w_hr, None, None, False, out, gates, cells, True, True))


def test_bf16_mixed_dtypes_are_clear_errors():
    g = torch.Generator().manual_seed(0)
    x, h, c = _bf(4, 3, 5, g=g), _bf(3, 6, g=g), _bf(3, 6, g=g)
    w_ih, w_hh = _bf(24, 5, g=g), _bf(24, 6, g=g)
    with pytest.raises(RuntimeError, match="expected hx to have the dtype of input"):
        torch.ops.rnnext.lstm_layer(x, h.float(), c, w_ih, w_hh, None, None, None, None, None, False, False, False)
    with pytest.raises(RuntimeError, match="expected w_hh to have the dtype of input"):
        torch.ops.rnnext.rnn_layer(x, h, w_ih[:6], w_hh[:6].float(), None, None, None, None, False, False, False,
                                   "rnn_tanh")
    out, hy, cy, gates, cells = torch.ops.rnnext.lstm_layer(x, h, c, w_ih, w_hh, None, None, None, None, None, False,
                                                            False, True)
    with pytest.raises(RuntimeError, match="expected gates to be (float32|Float)"):
        torch.ops.rnnext.lstm_layer_backward(out, hy, cy, x, h, c, w_ih, w_hh, None, None, None, False, out,
                                             gates.bfloat16(), cells, False, False)
    # A module keeps its dtype: bfloat16 input to a float32 module (outside autocast) is a TypeError naming both.
    m = rnnext.nn.GRU(5, 6)
    with pytest.raises(TypeError, match="bfloat16"):
        m(x)


def test_bf16_module_to_keeps_dtype_and_state_dict():
    m = rnnext.nn.LSTM(5, 6, num_layers=2).to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    out, (h, c) = m(torch.randn(4, 3, 5, dtype=torch.bfloat16))
    assert out.dtype == h.dtype == c.dtype == torch.bfloat16
    stock = torch.nn.LSTM(5, 6, num_layers=2, dtype=torch.bfloat16)
    stock.load_state_dict(m.state_dict())
    packed = pack_padded_sequence(torch.randn(4, 3, 5, dtype=torch.bfloat16), torch.tensor([4, 2, 1]))
    out_p, _ = m(packed)
    assert isinstance(out_p, PackedSequence) and out_p.data.dtype == torch.bfloat16


AUTOCAST_PAIRS = [(torch.nn.LSTM, rnnext.nn.LSTM), (torch.nn.GRU, rnnext.nn.GRU), (torch.nn.RNN, rnnext.nn.RNN),
                  (torch.nn.LSTMCell, rnnext.nn.LSTMCell), (torch.nn.GRUCell, rnnext.nn.GRUCell),
                  (torch.nn.RNNCell, rnnext.nn.RNNCell)]


@pytest.mark.parametrize("stock_cls,ours_cls", AUTOCAST_PAIRS, ids=[p[0].__name__ for p in AUTOCAST_PAIRS])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["f32_input", "bf16_input"])
@pytest.mark.parametrize("state", [None, torch.float32, torch.bfloat16], ids=["no_hx", "f32_hx", "bf16_hx"])
def test_autocast_matches_stock_dtypes(stock_cls, ours_cls, input_dtype, state):
    """Under torch.autocast("cpu", bfloat16) a float32 module returns what stock's returns: LSTM, RNN and RNNCell
    run in bfloat16 whatever the input; GRU, LSTMCell and GRUCell follow the state they carry (h, LSTMCell's c),
    or the input when no state is given (float32 stays float32, a bfloat16 activation runs in bfloat16, a
    float32 input with a bfloat16 state, as an embedding and an autocast Linear give, runs in bfloat16). Values
    agree with stock's at bfloat16 precision, and the gradients reach the float32 parameters in float32.

    Stock LSTM keeps that contract only where it runs oneDNN's fused kernel (CPUs with AVX-512): elsewhere, under
    autocast, a float32 input makes oneDNN fail ("could not create a primitive descriptor") and a bfloat16 input
    with float32 states runs ATen's per-step ops, which promote to float32. There rnnext keeps the contract (a
    bfloat16 result) and its values are compared with stock's float32 module outside autocast."""
    torch.manual_seed(0)
    stock = stock_cls(4, 6)
    ours = ours_cls(4, 6)
    ours.load_state_dict(stock.state_dict())
    cell = "Cell" in stock_cls.__name__
    x = torch.randn(3, 4) if cell else torch.randn(5, 3, 4)
    hshape = (3, 6) if cell else (1, 3, 6)
    h = torch.randn(hshape)
    hx = None
    if state is not None:
        hx = (h.to(state), torch.randn(hshape).to(state)) if stock_cls in (torch.nn.LSTM, torch.nn.LSTMCell) \
            else h.to(state)
    stock_off_contract = stock_cls is torch.nn.LSTM and stock_lstm_path() != "oneDNN"
    results = []
    for m in (stock, ours):
        if m is stock and stock_off_contract:  # (float32 states: outside autocast stock wants one dtype)
            hx32 = None if hx is None else tuple(t.float() for t in hx) if isinstance(hx, tuple) else hx.float()
            results.append(stock(x, hx32)[0].detach())
            continue
        xi = x.to(input_dtype).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(xi, hx)
        first = out[0] if isinstance(out, tuple) else out
        results.append(first)
        first.float().sum().backward()
        assert xi.grad.dtype == input_dtype
        assert all(p.grad.dtype == torch.float32 for p in m.parameters())
    a, b = results
    expected = torch.bfloat16 if stock_off_contract else a.dtype
    assert b.dtype == expected, f"expected {expected} (stock returns {a.dtype}), rnnext returns {b.dtype}"
    torch.testing.assert_close(b.double(), a.double(), atol=3e-2, rtol=3e-2)
    # Outside autocast a bfloat16 input to a float32 module is an error, as for stock.
    with pytest.raises((TypeError, ValueError, RuntimeError)):
        ours(x.bfloat16(), hx)


def _bf16_reference(x, h0, c0, w_ih, w_hh, b, reverse=False):
    """The native bfloat16 LSTM layer's arithmetic in float64: GEMMs on bfloat16 operands ([x_t | h_{t-1}], the
    weights), the cell state carried unrounded, h rounded to bfloat16 once per step (the next GEMM's operand and
    the output)."""
    T = x.shape[0]
    h, c = h0.double(), c0.double()
    outs = [None] * T
    for step in range(T):
        t = T - 1 - step if reverse else step
        gates = x[t].double() @ w_ih.double().t() + h @ w_hh.double().t() + b.double()
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = (torch.sigmoid(o) * torch.tanh(c)).to(torch.bfloat16).double()
        outs[t] = h
    return torch.stack(outs), h, c


def _layer_input(x, layout, g):
    """A layer op's input for x (T, B, I) in `layout`: (input, batch_sizes, sorted_indices, lengths). "packed":
    random sorted lengths, the first T; "batch_first": (B, T, I); "padded": every length T with batch_sizes and a
    random permutation (the padded path); "dense": x itself."""
    T, B = x.shape[0], x.shape[1]
    if layout == "packed":
        lengths = torch.tensor(sorted(torch.randint(1, T + 1, (B,), generator=g).tolist(), reverse=True))
        lengths[0] = T
        packed = pack_padded_sequence(x, lengths)
        return packed.data, packed.batch_sizes, None, lengths
    if layout == "batch_first":
        return x.transpose(0, 1).contiguous(), None, None, None
    if layout == "padded":
        return x, torch.full((T,), B), torch.randperm(B, generator=g), None
    return x, None, None, None


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("B,layout,reverse", [(3, "dense", False), (40, "dense", True), (64, "packed", False),
                                               (64, "batch_first", True), (9, "padded", True)])
def test_bf16_lstm_layer_native_path(threads, B, layout, reverse):
    """The LSTM layer op in bfloat16 (natively on AVX512-BF16 CPUs: the fused loop's GEMMs in bfloat16, float32
    accumulation and cell state; elsewhere the float32 kernel on the upcast values) against its float64
    re-computation: outputs within a bfloat16 unit in the last place (a rounding of h may land on the other side
    of a tie), the same bits for 1 and 2 threads and on either side of the slot split's batch threshold, and
    every gradient within stock bfloat16's error bound (test_bf16_modules_within_stock_bf16_error)."""
    g = torch.Generator().manual_seed(B)
    T, I, H = (6 if B % 2 == 0 else 5), 7, 20  # (odd B: an odd number of rows)
    x = torch.randn(T, B, I, generator=g).bfloat16()
    h0, c0 = torch.randn(B, H, generator=g).bfloat16(), torch.randn(B, H, generator=g).bfloat16()
    w_ih, w_hh = (torch.randn(4 * H, I, generator=g) * 0.4).bfloat16(), (torch.randn(4 * H, H, generator=g) * 0.3).bfloat16()
    b_ih, b_hh = (torch.randn(4 * H, generator=g) * 0.1).bfloat16(), (torch.randn(4 * H, generator=g) * 0.1).bfloat16()
    ref_out, ref_h, ref_c = _bf16_reference(x, h0, c0, w_ih, w_hh, b_ih.double() + b_hh.double(), reverse)
    inp, bs, si, lengths = _layer_input(x, layout, g)
    first = torch.ops.rnnext.lstm_layer(inp, h0, c0, w_ih, w_hh, b_ih, b_hh, None, bs, si, layout == "batch_first",
                                        reverse, True)
    out, hy, cy, gates, cells = first
    assert out.dtype == hy.dtype == cy.dtype == torch.bfloat16 and gates.dtype == torch.float32
    if layout == "packed":
        out = pad_packed_sequence(PackedSequence(out, bs), total_length=T)[0]
        keep = (torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(2)
        if not reverse:
            ref_out = ref_out * keep  # (a forward direction's entries end early: compare the real rows)
    elif layout == "batch_first":
        out = out.transpose(0, 1)
    if layout != "packed":
        torch.testing.assert_close(out.double(), ref_out, atol=BF16_ULP * 2, rtol=BF16_ULP)
        torch.testing.assert_close(hy.double(), ref_h, atol=BF16_ULP * 2, rtol=BF16_ULP)
        torch.testing.assert_close(cy.double(), ref_c, atol=BF16_ULP * 4, rtol=BF16_ULP)
    else:
        torch.testing.assert_close((out * keep).double(), ref_out * keep, atol=BF16_ULP * 2, rtol=BF16_ULP)
    # Thread counts and splits give the same bits, forward and backward.
    out0 = first[0]
    grads = (torch.randn(out0.shape, generator=g).bfloat16(), torch.randn(B, H, generator=g).bfloat16(),
             torch.randn(B, H, generator=g).bfloat16())

    def backward(fwd):
        return torch.ops.rnnext.lstm_layer_backward(*grads, inp, h0, c0, w_ih, w_hh, None, bs, si,
                                                    layout == "batch_first", fwd[0], fwd[3], fwd[4], reverse, True)

    back = backward(first)
    assert all(t.dtype == torch.bfloat16 for t in back)
    # Inference (no activations kept) gives the training forward's bits.
    infer = torch.ops.rnnext.lstm_layer(inp, h0, c0, w_ih, w_hh, b_ih, b_hh, None, bs, si, layout == "batch_first",
                                        reverse, False)
    for a, b in zip(first[:3], infer[:3]):
        assert torch.equal(a, b)
    torch.set_num_threads(3 - threads)
    again = torch.ops.rnnext.lstm_layer(inp, h0, c0, w_ih, w_hh, b_ih, b_hh, None, bs, si, layout == "batch_first",
                                        reverse, True)
    back_again = backward(again)
    torch.set_num_threads(threads)
    for a, b in zip((*first, *back), (*again, *back_again)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("cell", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("layout", ["dense", "batch_first", "packed", "padded"])
@pytest.mark.parametrize("B,reverse,bias", [(33, False, True), (33, True, False), (17, True, True),
                                            (20, False, True)])
def test_bf16_rnn_layer_native_equals_upcast(monkeypatch, threads, cell, layout, B, reverse, bias):
    """The GRU/RNN layer ops' native bfloat16 path (AVX512-BF16 CPUs, the slot split: at least 16 batch entries
    per thread and 4 steps; bfloat16 outputs written by the steps and read back as the next step's GEMM operand,
    float32 state) gives the bits of the path on float32 copies (RNNEXT_BF16_UPCAST=1), forward and backward, h_0
    and every weight and bias gradient included: time-major, batch-first, packed (sorted lengths: reversed,
    the shorter entries join the slot split late) and padded with a permutation; batch 33 (odd: uneven halves at
    2 threads), 17 (native at 1 thread only) and 20 (below the 2-thread threshold); odd sizes I=23, H=33
    (partial vectors, odd GEMM depths); with and without biases."""
    g = torch.Generator().manual_seed(B + 100 * int(reverse))
    T, I, H = 9, 23, 33
    G = (3 if cell == "gru" else 1) * H
    x = torch.randn(T, B, I, generator=g).bfloat16()
    h0 = torch.randn(B, H, generator=g).bfloat16()
    w_ih, w_hh = (torch.randn(G, I, generator=g) * 0.3).bfloat16(), (torch.randn(G, H, generator=g) * 0.3).bfloat16()
    b_ih, b_hh = ((torch.randn(G, generator=g) * 0.1).bfloat16(), (torch.randn(G, generator=g) * 0.1).bfloat16()) \
        if bias else (None, None)
    inp, bs, si, _ = _layer_input(x, layout, g)
    bf = layout == "batch_first"

    def run():
        out, hy, saved = torch.ops.rnnext.rnn_layer(inp, h0, w_ih, w_hh, b_ih, b_hh, bs, si, bf, reverse, True, cell)
        go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
        gh = torch.randn(hy.shape, generator=torch.Generator().manual_seed(2)).bfloat16()
        back = torch.ops.rnnext.rnn_layer_backward(go, gh, inp, h0, w_ih, w_hh, bs, si, bf, reverse, out, saved, cell,
                                                   bias, None)
        return out, hy, *back

    native = run()
    monkeypatch.setenv("RNNEXT_BF16_UPCAST", "1")
    upcast = run()
    assert all(t.dtype == torch.bfloat16 for t in native)
    names = ["output", "h_n", "grad_input", "grad_hx", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh"]
    for name, a, b in zip(names, native, upcast):
        assert torch.equal(a, b), f"{name}: native and upcast paths differ by {(a.float() - b.float()).abs().max()}"
    assert native[0].abs().sum() > 0 and native[4].abs().sum() > 0


@pytest.mark.parametrize("threads", [1], indirect=True)
@pytest.mark.parametrize("layout", ["lengths", "packed", "dense"])
@pytest.mark.parametrize("T", [4, 5, 12])
def test_bf16_gru_native_equals_upcast_near_the_row_threshold(monkeypatch, threads, layout, T):
    """What a hostile caller found: a bfloat16 GRU with lengths= or packed input at batch 17, input and hidden
    257, 1 thread, gave other bits natively than with RNNEXT_BF16_UPCAST=1 (9 elements, up to 4.9e-4). At 4
    steps a variable-length batch of 17 has fewer than 64 rows, where the float32-copy path projects the input
    with float32's GEMM (exact products and float32 sums, in another order than the native step loop's
    bfloat16 kernel); such calls now take the float32-copy path either way. Every output and gradient, two
    bidirectional layers."""
    B, I, H = 17, 257, 257

    def run():
        torch.manual_seed(0)
        m = rnnext.nn.GRU(I, H, num_layers=2, bidirectional=True).bfloat16()
        g = torch.Generator().manual_seed(T)
        x = torch.randn(T, B, I, generator=g).bfloat16().requires_grad_()
        h0 = torch.randn(4, B, H, generator=g).bfloat16().requires_grad_()
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        if layout == "packed":
            y, h = m(pack_padded_sequence(x, lengths, enforce_sorted=False), h0)
            y = pad_packed_sequence(y)[0]
        elif layout == "lengths":
            y, h = m(x, h0, lengths=lengths)
        else:
            y, h = m(x, h0)
        (y.float().square().sum() + h.float().sum()).backward()
        return [y.detach(), h.detach(), x.grad, h0.grad] + [p.grad for p in m.parameters()]

    native = run()
    monkeypatch.setenv("RNNEXT_BF16_UPCAST", "1")
    upcast = run()
    for i, (a, b) in enumerate(zip(native, upcast)):
        assert torch.equal(a, b), f"tensor {i}: {(a != b).sum()} elements differ, by {(a.float() - b.float()).abs().max()}"


def test_bf16_layers_without_avx512_pointwise():
    """The native-path checks with RNNEXT_DISABLE_AVX512=1 (in a fresh process): the bfloat16 LSTM's pointwise
    step then runs the AVX2/baseline float32 tiles and rounds h afterwards, instead of the AVX-512 tile that
    rounds h inside the step; the native GRU/RNN step runs the AVX2/baseline loops with bfloat16 outputs."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, RNNEXT_DISABLE_AVX512="1")
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"{os.path.join(here, 'test_bf16.py')}::test_bf16_lstm_layer_native_path",
                          f"{os.path.join(here, 'test_bf16.py')}::test_bf16_rnn_layer_native_equals_upcast"],
                         capture_output=True, text=True, env=env, cwd=here, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "106 passed" in out.stdout, out.stdout[-1000:]


# ---- TreeLSTM, SPINN and generation in bfloat16 (the float32 kernels on the bfloat16 values) ------------------


def test_bf16_treelstm_cell_and_spinn_ops():
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from spinn_oracle import random_transitions

    g = torch.Generator().manual_seed(0)
    H, N, B, Tt = 6, 5, 4, 3
    # TreeLSTM cell: bfloat16 outputs, float32 workspace, values those of the float64 op on the same inputs
    # rounded once; opcheck forward and backward.
    lstm_in, cl, cr = (_bf(7, 5 * H, g=g), _bf(7, H, g=g), _bf(7, H, g=g))
    h, c, acts = torch.ops.rnnext.treelstm_cell(lstm_in, cl, cr)
    assert h.dtype == c.dtype == torch.bfloat16 and acts.dtype == torch.float32
    h64, c64, _ = torch.ops.rnnext.treelstm_cell(lstm_in.double(), cl.double(), cr.double())
    torch.testing.assert_close(h.double(), h64, atol=BF16_ULP, rtol=BF16_ULP / 2)
    torch.testing.assert_close(c.double(), c64, atol=BF16_ULP, rtol=BF16_ULP / 2)
    torch.library.opcheck(torch.ops.rnnext.treelstm_cell.default, tuple(t.requires_grad_() for t in
                                                                        (lstm_in.clone(), cl.clone(), cr.clone())))
    torch.library.opcheck(torch.ops.rnnext.treelstm_cell_backward.default,
                          (torch.randn_like(h), torch.randn_like(c), acts, c, cl, cr))
    # SPINN with a tracker: forward and backward in bfloat16 against float64 on the same values.
    transitions = random_transitions([5, 3, 4, 2], g)
    args16 = [_bf(N, B, 2 * H, g=g), transitions, None, _bf(5 * H, 2 * H + Tt, g=g) * 0.5, _bf(5 * H, g=g) * 0.1,
              _bf(4 * Tt, 3 * H, g=g) * 0.5, _bf(4 * Tt, Tt, g=g) * 0.5, _bf(4 * Tt, g=g) * 0.1,
              _bf(4 * Tt, g=g) * 0.1]
    results = []
    for dtype in (torch.float64, torch.bfloat16):
        args = [a.to(dtype).requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in args16]
        top, tracker_h, *work = torch.ops.rnnext.spinn_encode(*args, True)
        assert top.dtype == tracker_h.dtype == dtype
        assert all(w.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype) for w in work)
        (top.double().sum() + tracker_h.double().sum()).backward()
        results.append([top.detach().double(), tracker_h.detach().double()] +
                       [a.grad.double() for a in args if isinstance(a, torch.Tensor) and a.requires_grad])
        assert all(a.grad.dtype == dtype for a in args if isinstance(a, torch.Tensor) and a.requires_grad)
    for i, (r, m) in enumerate(zip(*results)):
        scale = max(1.0, r.abs().max().item())
        assert (m - r).abs().max().item() <= 4 * BF16_ULP * scale, f"spinn tensor {i}"
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args16]
    torch.library.opcheck(torch.ops.rnnext.spinn_encode.default, (*plain, True))
    out = torch.ops.rnnext.spinn_encode(*plain, True)
    torch.library.opcheck(torch.ops.rnnext.spinn_encode_backward.default,
                          (torch.randn_like(out[0]), torch.randn_like(out[1]), *plain, out[2], out[3], out[1],
                           out[4], out[5]))


@pytest.mark.parametrize("slow_gemm", [False, True])
@pytest.mark.parametrize("tracker", [None, 4])
def test_bf16_treelstm_cell_module(monkeypatch, slow_gemm, tracker):
    """TreeLSTMCell in bfloat16, both routes of its Linear maps (ATen's bfloat16 GEMM, and float32's GEMM on the
    same values, taken on x86 CPUs without AVX-512, where ATen's bfloat16 GEMM is many times slower): bfloat16
    out and bfloat16 gradients, every output and gradient within 4 bfloat16 units in the last place (relative to
    the tensor's largest value) of float64 on the same values, and the two routes within 2 of each other."""
    from rnnext.nn import TreeLSTMCell, tree

    H, M = 10, 7
    torch.manual_seed(0)
    base = TreeLSTMCell(H, tracker)
    g = torch.Generator().manual_seed(1)
    inputs = [_bf(M, 2 * H, g=g), _bf(M, 2 * H, g=g)] + ([_bf(M, tracker, g=g)] if tracker else [])
    results = {}
    for route, dtype in (("float64", torch.float64), ("bf16", torch.bfloat16)):
        monkeypatch.setattr(tree, "_SLOW_CPU_BF16_GEMM", slow_gemm)
        cell = TreeLSTMCell(H, tracker, dtype=dtype)
        cell.load_state_dict({k: v.to(torch.bfloat16).to(dtype) for k, v in base.state_dict().items()})
        xs = [x.to(dtype, copy=True).requires_grad_() for x in inputs]
        out = cell(*xs)
        assert out.dtype == dtype
        (out.double() * torch.linspace(-1, 1, 2 * H, dtype=torch.float64)).sum().backward()
        grads = [x.grad for x in xs] + [p.grad for p in cell.parameters()]
        assert all(gr.dtype == dtype for gr in grads)
        results[route] = [t.detach().double() for t in (out, *grads)]
    for i, (r, m) in enumerate(zip(results["float64"], results["bf16"])):
        scale = max(1.0, r.abs().max().item())
        assert (m - r).abs().max().item() <= 4 * BF16_ULP * scale, f"tensor {i}"
    monkeypatch.setattr(tree, "_SLOW_CPU_BF16_GEMM", not slow_gemm)
    cell = TreeLSTMCell(H, tracker, dtype=torch.bfloat16)
    cell.load_state_dict({k: v.to(torch.bfloat16) for k, v in base.state_dict().items()})
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    out = cell(*xs)
    (out.double() * torch.linspace(-1, 1, 2 * H, dtype=torch.float64)).sum().backward()
    other = [t.detach().double() for t in (out, *[x.grad for x in xs], *[p.grad for p in cell.parameters()])]
    for i, (a, b) in enumerate(zip(results["bf16"], other)):
        scale = max(1.0, a.abs().max().item())
        assert (a - b).abs().max().item() <= 2 * BF16_ULP * scale, f"routes differ, tensor {i}"


@pytest.mark.parametrize("tracker", [None, 4])
def test_bf16_treelstm_cell_under_autocast(monkeypatch, tracker):
    """A float32 TreeLSTMCell under CPU autocast to bfloat16: its Linear maps lowered to bfloat16 (nn.Linear's
    autocast rule) on either route (ATen's bfloat16 GEMM, or float32's GEMM on the bfloat16-rounded operands):
    the same dtype out (bfloat16), float32 gradients for the float32 parameters and input, and the two routes
    within 2 bfloat16 units in the last place of each other (relative to each tensor's largest value)."""
    from rnnext.nn import TreeLSTMCell, tree

    H, M = 10, 7
    torch.manual_seed(0)
    cell = TreeLSTMCell(H, tracker)
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(M, 2 * H, generator=g), torch.randn(M, 2 * H, generator=g)] + (
        [torch.randn(M, tracker, generator=g)] if tracker else [])
    runs = []
    for slow in (False, True):
        monkeypatch.setattr(tree, "_SLOW_CPU_BF16_GEMM", slow)
        cell.zero_grad()
        xs = [x.clone().requires_grad_() for x in inputs]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = cell(*xs)
        assert out.dtype == torch.bfloat16
        (out.double() * torch.linspace(-1, 1, 2 * H, dtype=torch.float64)).sum().backward()
        grads = [x.grad for x in xs] + [p.grad for p in cell.parameters()]
        assert all(gr.dtype == torch.float32 for gr in grads)
        runs.append([t.detach().double() for t in (out, *grads)])
    for i, (a, b) in enumerate(zip(*runs)):
        scale = max(1.0, a.abs().max().item())
        assert (a - b).abs().max().item() <= 2 * BF16_ULP * scale, f"routes differ, tensor {i}"


@pytest.mark.parametrize("upcast", [False, True])
@pytest.mark.parametrize("tracker", [None, 16])
@pytest.mark.parametrize("B", [9, 40])
def test_bf16_spinn_at_size(monkeypatch, tracker, upcast, B):
    """SPINN in bfloat16 at a size where the GEMMs matter (H=40 or 33; 9 rows of up to 12 tokens, or 40 rows of
    up to 16, which a tracker's steps split across 2 threads unevenly, 16 + 24 rows; on AVX512-BF16 CPUs the
    native path: bfloat16 GEMM operands gathered from bfloat16 rows, float32 accumulation and workspace; with
    RNNEXT_BF16_UPCAST=1, and on other CPUs, the float32 kernels on float32 copies): every output and gradient
    against float64 on the same values within a relative RMS error of 2^-7 and a max error of 8 bfloat16 ulps
    of the tensor's scale; the same bits for 1 and 2 threads."""
    import os
    import sys

    if upcast:
        monkeypatch.setenv("RNNEXT_BF16_UPCAST", "1")

    sys.path.insert(0, os.path.dirname(__file__))
    from spinn_oracle import random_transitions

    g = torch.Generator().manual_seed(1)
    H = 40 if B == 9 else 33
    lengths = [12, 3, 7, 1, 12, 5, 9, 2, 11] if B == 9 else torch.randint(1, 17, (B,), generator=g).tolist()
    N = max(lengths)
    m16 = rnnext.nn.SPINN(H, tracker_size=tracker).to(torch.bfloat16)
    m64 = rnnext.nn.SPINN(H, tracker_size=tracker).double()
    m64.load_state_dict(m16.state_dict())
    transitions = random_transitions(lengths, g)
    buf = _bf(N, B, 2 * H, g=g)
    results = {}
    for key, m, dt, threads in (("f64", m64, torch.float64, 2), ("bf16_2", m16, torch.bfloat16, 2),
                                ("bf16_1", m16, torch.bfloat16, 1)):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            m.zero_grad()
            b = buf.to(dt).clone().requires_grad_()  # (a new leaf: .to() returns buf itself for bfloat16)
            out = m(b, transitions, lengths)
            (out.double() * torch.linspace(-1, 1, H, dtype=torch.float64)).sum().backward()
            results[key] = [out.detach(), b.grad] + [p.grad for p in m.parameters()]
        finally:
            torch.set_num_threads(old)
    for i, (r, x) in enumerate(zip(results["f64"], results["bf16_2"])):
        assert x.dtype == torch.bfloat16
        r, x = r.double(), x.double()
        scale = max(r.abs().max().item(), 1e-30)
        rel_rms = ((x - r).square().mean().sqrt() / r.square().mean().sqrt().clamp_min(1e-30)).item()
        assert rel_rms <= 2 ** -7, f"tensor {i}: relative RMS error {rel_rms:.3g}"
        assert (x - r).abs().max().item() <= 8 * BF16_ULP * scale, f"tensor {i}"
    for a, b in zip(results["bf16_1"], results["bf16_2"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bf16_generation_matches_float32_greedy(cell):
    """A bfloat16 CharGenerator samples (greedy) the same characters as its float32 copy holding the same
    bfloat16-valued weights (a fixed case: the two runs' logits differ at the bfloat16 level, below the gap
    between the top two logits of every step here)."""
    from rnnext.models import CharGenerator

    torch.manual_seed(0)
    model = CharGenerator(20, embed_dim=8, hidden_size=16, num_layers=2, cell=cell).to(torch.bfloat16).eval()
    ref = CharGenerator(20, embed_dim=8, hidden_size=16, num_layers=2, cell=cell).eval()
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    prime = torch.randint(0, 20, (4, 3))
    a = model.generate(prime, steps=12, temperature=0.0)
    b = ref.generate(prime, steps=12, temperature=0.0)
    assert a.dtype == b.dtype == torch.int64
    assert torch.equal(a, b)
