"""One step per call (T=1), the decoder / char-RNN loop of users' own code: rnnext's LSTM, GRU and RNN modules
and cells against torch.nn at the batch sizes that select each CPU path (1-8 rows: matrix-vector products over
the stored weights; 9 and 40: the GEMM paths), 1 and 2 threads, every layout of a one-step input, float64 and
float32; outputs, states and every gradient (input, h_0/c_0, parameters) over a short loop, and weights changed
in place between calls (rnnext keeps no weight copy that could go stale)."""

import itertools

import pytest
import torch

import rnnext

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=2e-5, atol=2e-5)}
MODULES = {"lstm": (torch.nn.LSTM, rnnext.nn.LSTM, {}), "gru": (torch.nn.GRU, rnnext.nn.GRU, {}),
           "rnn_relu": (torch.nn.RNN, rnnext.nn.RNN, {"nonlinearity": "relu"})}
CELLS = {"lstm": (torch.nn.LSTMCell, rnnext.nn.LSTMCell, {}), "gru": (torch.nn.GRUCell, rnnext.nn.GRUCell, {}),
         "rnn_tanh": (torch.nn.RNNCell, rnnext.nn.RNNCell, {})}


def pair(table, kind, dtype, *args, **kw):
    stock_cls, ours_cls, extra = table[kind]
    torch.manual_seed(7)
    stock = stock_cls(*args, dtype=dtype, **extra, **kw)
    ours = ours_cls(*args, dtype=dtype, **extra, **kw)
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def grads(m, *tensors):
    return [t.grad for t in tensors] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=["1thread", "2threads"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind,layout,B", [(k, layout, B) for k, layout, B in itertools.product(
    MODULES, ["dense", "batch_first", "unbatched"], [1, 3, 8, 9, 40]) if layout != "unbatched" or B == 1])
def test_module_step_loop_matches_torch(threads, dtype, kind, layout, B):
    I, H, steps = 7, 6, 4
    stock, ours = pair(MODULES, kind, dtype, I, H, num_layers=2, bidirectional=True,
                       batch_first=layout == "batch_first")
    g = torch.Generator().manual_seed(B)
    shape = {"dense": (steps, 1, B, I), "batch_first": (steps, B, 1, I), "unbatched": (steps, 1, I)}[layout]
    xs = torch.randn(shape, dtype=dtype, generator=g)
    hshape = (4, H) if layout == "unbatched" else (4, B, H)
    h0 = torch.randn(hshape, dtype=dtype, generator=g)
    c0 = torch.randn(hshape, dtype=dtype, generator=g)
    res = []
    for m in (stock, ours):
        x = xs.clone().requires_grad_()
        h = h0.clone().requires_grad_()
        c = c0.clone().requires_grad_()
        state = (h, c) if kind == "lstm" else h
        outs = []
        for t in range(steps):
            y, state = m(x[t], state)
            outs.append(y)
        out = torch.stack(outs)
        final = torch.stack(state) if kind == "lstm" else state
        w = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
        ((out * w).sum() + (final * 0.5).sum()).backward()
        res.append([out, final] + grads(m, x, h) + ([c.grad] if kind == "lstm" else []))
    for a, b in zip(res[1], res[0]):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=["1thread", "2threads"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind,B,bias", list(itertools.product(CELLS, [1, 3, 8, 9, 40], [True, False])))
def test_cell_loop_matches_torch(threads, dtype, kind, B, bias):
    I, H, steps = 9, 5, 4
    stock, ours = pair(CELLS, kind, dtype, I, H, bias=bias)
    g = torch.Generator().manual_seed(B)
    xs = torch.randn(steps, B, I, dtype=dtype, generator=g)
    h0 = torch.randn(B, H, dtype=dtype, generator=g)
    c0 = torch.randn(B, H, dtype=dtype, generator=g)
    res = []
    for m in (stock, ours):
        x, h, c = (t.clone().requires_grad_() for t in (xs, h0, c0))
        state = (h, c) if kind == "lstm" else h
        total = 0
        for t in range(steps):
            state = m(x[t], state)
            hy = state[0] if kind == "lstm" else state
            total = total + (hy * (t + 1)).sum()
        if kind == "lstm":
            total = total + state[1].sum()
        total.backward()
        res.append([hy] + grads(m, x, h) + ([c.grad] if kind == "lstm" else []))
    for a, b in zip(res[1], res[0]):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("kind", list(MODULES))
def test_weights_changed_in_place_between_steps_are_used(kind):
    """Old-style training code updates parameters through .data (no version counter bump): the next call must
    see the new weights, as stock does."""
    stock, ours = pair(MODULES, kind, torch.float32, 4, 3, num_layers=2)
    x = torch.randn(1, 2, 4)
    for step in range(3):
        with torch.no_grad():
            ys, _ = stock(x)
            yr, _ = ours(x)
        torch.testing.assert_close(yr, ys, **TOL[torch.float32])
        for ps, pr in zip(stock.parameters(), ours.parameters()):
            delta = torch.randn_like(ps) * 0.3
            ps.data.add_(delta)
            pr.data.add_(delta)


@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_weights_that_are_not_plain_parameters_are_used(kind):
    """The cells' one-call path reads the registered parameters; a parametrized weight (torch.nn.utils.
    parametrize) or a DataParallel replica's copies (attributes, not parameters) must be used instead, as stock
    uses them."""
    from torch.nn.utils import parametrize

    class Double(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    stock, ours = pair(CELLS, kind, torch.float64, 4, 3)
    for m in (stock, ours):
        parametrize.register_parametrization(m, "weight_hh", Double())
    x, h = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    state = (h, h) if kind == "lstm" else h
    torch.testing.assert_close(ours(x, state), stock(x, state), **TOL[torch.float64])

    stock, ours = pair(CELLS, kind, torch.float64, 4, 3)
    replicas = [m._replicate_for_data_parallel() for m in (stock, ours)]
    for m, r in zip((stock, ours), replicas):
        for name, p in m.named_parameters():
            setattr(r, name, p * 3)  # what torch.nn.parallel.replicate does with the broadcast copies
    torch.testing.assert_close(replicas[1](x, state), replicas[0](x, state), **TOL[torch.float64])
    assert not torch.allclose(replicas[1](x, state)[0], ours(x, state)[0])


def test_cell_op_outputs_for_the_backward_are_not_differentiable():
    """lstm_cell's gate activations and rnn_cell's saved activations are outputs for the backward op: they
    carry no gradient (autograd in csrc/autograd/cells.cpp)."""
    ops = torch.ops.rnnext
    x = torch.randn(2, 4, requires_grad=True)
    h = torch.randn(2, 3)
    lstm = rnnext.nn.LSTMCell(4, 3)
    hy, cy, gates = ops.lstm_cell(x, h, h, lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh)
    assert hy.requires_grad and cy.requires_grad and not gates.requires_grad
    gru = rnnext.nn.GRUCell(4, 3)
    hy, saved = ops.rnn_cell(x, h, gru.weight_ih, gru.weight_hh, gru.bias_ih, gru.bias_hh, "gru")
    assert hy.requires_grad and not saved.requires_grad
    (g,) = torch.autograd.grad(hy.sum(), x)
    assert g.shape == x.shape
    with torch.no_grad():
        assert ops.rnn_cell(x, h, gru.weight_ih, gru.weight_hh, None, None, "gru")[0].grad_fn is None
