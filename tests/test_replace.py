"""rnnext.replace_rnns never changes what a model does silently: hooks are carried across, and subclasses,
parametrized, weight-normed and pruned modules stay stock with a warning naming them."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import rnnext


class Model(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out = self.rnn(x)
        h = out[0] if isinstance(self.rnn, nn.LSTM) or isinstance(self.rnn, rnnext.nn.LSTM) else out[0]
        return self.head(h)


def _replace(model):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out, report = rnnext.replace_rnns(model, return_report=True)
    return out, report, [str(x.message) for x in w]


def test_plain_modules_are_replaced_and_reported():
    model = nn.Sequential(nn.LSTM(3, 4), nn.Module())
    model[1].cell = nn.LSTMCell(3, 4)
    out, report, msgs = _replace(model)
    assert isinstance(out[0], rnnext.nn.LSTM) and isinstance(out[1].cell, rnnext.nn.LSTMCell)
    assert report.replaced == ["0", "1.cell"] and report.left_stock == []
    assert msgs == []


def test_nothing_replaced_warns():
    with pytest.warns(UserWarning, match="nothing was replaced"):
        rnnext.replace_rnns(nn.Sequential(nn.Linear(2, 2)))


def test_subclass_keeps_its_forward_and_is_named():
    class Scaled(nn.LSTM):
        def forward(self, x, hx=None):
            out, state = super().forward(x, hx)
            return out * 2, state

    model = Model(Scaled(3, 4))
    x = torch.randn(5, 2, 3)
    want = model(x)
    out, report, msgs = _replace(model)
    assert type(out.rnn) is Scaled
    assert report.left_stock and report.left_stock[0][0] == "rnn"
    assert any("left rnn (Scaled) stock" in m and "subclass" in m for m in msgs)
    torch.testing.assert_close(out(x), want)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.LSTMCell])
def test_hooks_are_carried_across(cls):
    rnn = cls(3, 4)
    calls = []
    rnn.register_forward_pre_hook(lambda m, args: calls.append(("pre", type(m).__name__)))
    rnn.register_forward_hook(lambda m, args, out: calls.append(("post", type(m).__name__)))
    handle = rnn.register_full_backward_hook(lambda m, gi, go: calls.append(("backward", type(m).__name__)))
    new, report, msgs = _replace(rnn)
    assert report.replaced and not msgs
    x = torch.randn(2, 3, requires_grad=True) if cls is nn.LSTMCell else torch.randn(5, 2, 3, requires_grad=True)
    out = new(x)
    (out[0].sum()).backward()
    name = type(new).__name__
    assert ("pre", name) in calls and ("post", name) in calls and ("backward", name) in calls
    handle.remove()
    calls.clear()
    new(x)[0].sum().backward()
    assert ("backward", name) not in calls


def test_parametrized_weight_norm_stays_stock_and_trains():
    lstm = nn.utils.parametrizations.weight_norm(nn.LSTM(3, 4), name="weight_hh_l0")
    model = Model(lstm)
    out, report, msgs = _replace(model)
    assert not isinstance(out.rnn, rnnext.nn.LSTM)
    assert any("parametriz" in m for m in msgs)
    opt = torch.optim.SGD(out.parameters(), lr=0.1)
    for _ in range(2):  # the second step raised when a stale weight snapshot was taken
        opt.zero_grad()
        out(torch.randn(5, 2, 3)).sum().backward()
        opt.step()


@pytest.mark.parametrize("how", ["weight_norm", "prune"])
def test_reweighting_pre_hooks_stay_stock(how):
    lstm = nn.LSTM(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "weight_norm":
            nn.utils.weight_norm(lstm, name="weight_ih_l0")
        else:
            prune.l1_unstructured(lstm, name="weight_ih_l0", amount=0.5)
    model = Model(lstm)
    x = torch.randn(5, 2, 3)
    want = model(x)
    out, report, msgs = _replace(model)
    assert not isinstance(out.rnn, rnnext.nn.LSTM) and report.left_stock
    assert any("left rnn" in m for m in msgs)
    torch.testing.assert_close(out(x), want)
    if how == "prune":  # the pruned entries stay zero through training
        opt = torch.optim.SGD(out.parameters(), lr=0.5)
        out(x).sum().backward()
        opt.step()
        assert (out.rnn.weight_ih_l0 == 0).sum() >= lstm.weight_ih_l0.numel() // 2
