"""PyTorch's own test material for nn.LSTM, nn.LSTMCell, nn.GRU, nn.GRUCell, nn.RNN and nn.RNNCell
(torch.testing._internal.common_modules ModuleInfo samples) run against rnnext: forward, backward, gradcheck and
gradgradcheck, stock torch.nn as the oracle."""

import pytest
import torch
from torch.func import functional_call

import rnnext

common_modules = pytest.importorskip("torch.testing._internal.common_modules")

PAIRS = {torch.nn.LSTM: rnnext.nn.LSTM, torch.nn.LSTMCell: rnnext.nn.LSTMCell, torch.nn.GRU: rnnext.nn.GRU,
         torch.nn.GRUCell: rnnext.nn.GRUCell, torch.nn.RNN: rnnext.nn.RNN, torch.nn.RNNCell: rnnext.nn.RNNCell}


def _samples():
    out = []
    for info in common_modules.module_db:
        if info.module_cls not in PAIRS:
            continue
        for training in (True, False):
            inputs = info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True,
                                             training=training)
            for i, sample in enumerate(inputs):
                out.append(pytest.param(info.module_cls, sample, training,
                                        id=f"{info.name}-{'train' if training else 'eval'}-{i}"))
    return out


SAMPLES = _samples()


def test_samples_were_found():
    assert len(SAMPLES) >= 120, len(SAMPLES)


def _build(cls, sample, training):
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    stock = cls(*args, **kwargs).to(torch.float64)
    ours = PAIRS[cls](*args, **kwargs).to(torch.float64)
    ours.load_state_dict(stock.state_dict())
    stock.train(training)
    ours.train(training)
    return stock, ours


def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _tensors(item)]
    return []


def _clone_args(args):
    if isinstance(args, torch.Tensor):
        return args.detach().clone().requires_grad_(args.requires_grad)
    if isinstance(args, (tuple, list)):
        return type(args)(_clone_args(a) for a in args)
    return args


def _run(module, sample):
    args = _clone_args(sample.forward_input.args)
    torch.manual_seed(0)
    out = module(*args, **sample.forward_input.kwargs)
    return args, _tensors(out)


@pytest.mark.parametrize("cls,sample,training", SAMPLES)
def test_forward_and_backward_match_stock(cls, sample, training):
    stock, ours = _build(cls, sample, training)
    results = []
    for m in (stock, ours):
        args, outs = _run(m, sample)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)
        loss.backward()
        grads = [t.grad for t in _tensors(args) if t.requires_grad] + [p.grad for p in m.parameters()]
        results.append((outs, grads))
    (o_s, g_s), (o_r, g_r) = results
    assert len(o_s) == len(o_r) and len(g_s) == len(g_r)
    for a, b in zip(o_r + g_r, o_s + g_s):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def _as_function(module, sample):
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    args = _clone_args(sample.forward_input.args)
    leaves = [t for t in _tensors(args) if t.requires_grad]

    def rebuild(values):
        it = iter(values)

        def sub(a):
            if isinstance(a, torch.Tensor) and a.requires_grad:
                return next(it)
            if isinstance(a, (tuple, list)):
                return type(a)(sub(x) for x in a)
            return a

        return sub(args)

    def fn(*flat):
        p = dict(zip(names, flat[:len(names)]))
        torch.manual_seed(0)
        out = functional_call(module, p, tuple(rebuild(flat[len(names):])), sample.forward_input.kwargs)
        return tuple(_tensors(out))

    return fn, tuple(params + leaves)


@pytest.mark.parametrize("cls,sample,training", SAMPLES)
def test_gradcheck(cls, sample, training):
    _, ours = _build(cls, sample, training)
    fn, inputs = _as_function(ours, sample)
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("cls,sample,training", SAMPLES)
def test_gradgradcheck(cls, sample, training):
    _, ours = _build(cls, sample, training)
    fn, inputs = _as_function(ours, sample)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def _error_samples():
    out = []
    for info in common_modules.module_db:
        if info.module_cls not in PAIRS or info.module_error_inputs_func is None:
            continue
        for dtype in (torch.float32, torch.float64):
            errors = info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False,
                                                   training=True)
            for i, err in enumerate(errors):
                out.append(pytest.param(info.module_cls, dtype, err, id=f"{info.name}-{dtype}-{i}"))
    return out


ERROR_SAMPLES = _error_samples()


def test_error_samples_were_found():
    assert len(ERROR_SAMPLES) >= 40, len(ERROR_SAMPLES)


@pytest.mark.parametrize("cls,dtype,err", ERROR_SAMPLES)
def test_error_inputs_raise_stock_exception_types(cls, dtype, err):
    """PyTorch's own error inputs for these modules (ModuleInfo ``module_error_inputs_func``, run as PyTorch's
    test_modules runs them: the module converted to the sample's dtype for forward errors): rnnext raises an
    exception of the type stock raises (its messages are its own), at construction or in forward as stock does."""
    sample = err.module_error_input
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    construction = err.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR
    with pytest.raises(err.error_type):  # the oracle raises as its own list says
        stock = cls(*args, **kwargs).to(dtype)
        if not construction:
            stock(*sample.forward_input.args, **sample.forward_input.kwargs)
    if construction:
        with pytest.raises(err.error_type):
            PAIRS[cls](*args, **kwargs)
        return
    ours = PAIRS[cls](*args, **kwargs).to(dtype)
    with pytest.raises(err.error_type):
        ours(*sample.forward_input.args, **sample.forward_input.kwargs)
