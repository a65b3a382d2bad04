"""ONNX export (rnnext.onnx, torch.onnx.export(dynamo=True)) of models holding rnnext's LSTM, GRU and RNN, run
by onnxruntime and compared with rnnext's own outputs (float32, 1e-5): each layer and direction a standard
ONNX LSTM/GRU/RNN node, lengths= as sequence_lens, both directions, layers, batch_first, dynamic batch and
time; the cells; and the clear errors for what has no ONNX equivalent."""

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import rnnext
import rnnext.onnx

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")


class Wrap(torch.nn.Module):
    def __init__(self, rnn, with_lengths, with_state):
        super().__init__()
        self.rnn, self.with_lengths, self.with_state = rnn, with_lengths, with_state

    def forward(self, x, *extra):
        kwargs = {}
        extra = list(extra)
        if self.with_lengths:
            kwargs["lengths"] = extra.pop(0)
        hx = None
        if self.with_state:
            hx = tuple(extra) if len(extra) == 2 else extra[0]
        out, h = self.rnn(x, hx, **kwargs)
        return (out, *h) if isinstance(h, tuple) else (out, h)


def run_onnx(program, inputs):
    buf = io.BytesIO()
    onnx.save(program.model_proto, buf)
    model = onnx.load_from_string(buf.getvalue())
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return model, sess.run(None, dict(zip(names, [t.numpy() for t in inputs])))


CASES = [
    # kind, kwargs, lengths, state
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True), True, False),
    ("LSTM", dict(num_layers=1), False, True),
    ("LSTM", dict(num_layers=2, bias=False), True, True),
    ("LSTM", dict(bidirectional=True), False, False),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True), True, True),
    ("GRU", dict(bias=False), False, False),
    ("GRU", dict(num_layers=3), True, False),
    ("RNN", dict(num_layers=2, bidirectional=True), True, True),
    ("RNN", dict(nonlinearity="relu", batch_first=True), True, False),
    ("RNN", dict(nonlinearity="relu", bias=False, bidirectional=True), False, True),
]


@pytest.mark.parametrize("kind,kwargs,with_lengths,with_state", CASES)
def test_export_runs_in_onnxruntime_like_rnnext(kind, kwargs, with_lengths, with_state):
    torch.manual_seed(0)
    rnn = getattr(rnnext.nn, kind)(7, 9, **kwargs)
    model = Wrap(rnn, with_lengths, with_state).eval()
    B, T = 4, 6
    bf = kwargs.get("batch_first", False)
    x = torch.randn(B, T, 7) if bf else torch.randn(T, B, 7)
    inputs = [x]
    if with_lengths:
        inputs.append(torch.tensor([6, 2, 5, 1]))
    if with_state:
        D = rnn.num_layers * (2 if rnn.bidirectional else 1)
        inputs += [torch.randn(D, B, 9) for _ in range(2 if kind == "LSTM" else 1)]
    program = rnnext.onnx.export(model, tuple(inputs))
    graph, got = run_onnx(program, inputs)
    node_ops = [n.op_type for n in graph.graph.node]
    assert node_ops.count(kind) == rnn.num_layers * (2 if rnn.bidirectional else 1)
    assert not any(n.domain.startswith("rnnext") for n in graph.graph.node)
    with torch.no_grad():
        want = model(*inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)


def test_export_with_dynamic_batch_and_time():
    torch.manual_seed(1)
    model = Wrap(rnnext.nn.LSTM(5, 8, num_layers=2, bidirectional=True, batch_first=True), True, False).eval()
    x, lengths = torch.randn(3, 7, 5), torch.tensor([7, 3, 5])
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    program = rnnext.onnx.export(model, (x, lengths), dynamic_shapes=({0: batch, 1: time}, ({0: batch},)))
    for B, T in ((2, 4), (6, 11)):
        x2 = torch.randn(B, T, 5)
        l2 = torch.randint(1, T + 1, (B,))
        _, got = run_onnx(program, [x2, l2])
        with torch.no_grad():
            want = model(x2, l2)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,kwargs", [(rnnext.nn.LSTMCell, {}), (rnnext.nn.GRUCell, {}),
                                        (rnnext.nn.RNNCell, {"nonlinearity": "relu"}),
                                        (rnnext.nn.RNNCell, {"bias": False})])
def test_cells_export(cls, kwargs):
    torch.manual_seed(2)
    cell = cls(6, 10, **kwargs).eval()

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x, h):
            out = self.cell(x, (h, h * 0.5) if isinstance(cell, rnnext.nn.LSTMCell) else h)
            return out if isinstance(out, tuple) else (out,)

    x, h = torch.randn(3, 6), torch.randn(3, 10)
    _, got = run_onnx(rnnext.onnx.export(Step(), (x, h)), [x, h])
    with torch.no_grad():
        want = Step()(x, h)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)


def test_unsupported_exports_name_what_fails():
    lstm = rnnext.nn.LSTM(4, 6, proj_size=3)
    with pytest.raises(Exception, match="proj_size > 0 has no ONNX equivalent"):
        rnnext.onnx.export(Wrap(lstm, False, False).eval(), (torch.randn(5, 2, 4),))

    class Tree(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.spinn = rnnext.nn.SPINN(3)

        def forward(self, buffers, transitions):
            return self.spinn(buffers, transitions)

    transitions = torch.tensor([[0, 0], [0, 0], [1, 1]])
    with pytest.raises(Exception, match=r"rnnext::spinn_encode \(SPINN\) has no ONNX equivalent"):
        rnnext.onnx.export(Tree().eval(), (torch.randn(2, 2, 6), transitions))
    class Sample(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gen = rnnext.models.CharGenerator(11, 4, 8, 1)

        def forward(self, prime):
            return self.gen.generate(prime, 3, temperature=0)

    with pytest.raises(Exception, match=r"rnnext::lstm_generate \(CharGenerator.generate\) has no ONNX equivalent"):
        rnnext.onnx.export(Sample().eval(), (torch.tensor([[1, 2]]),))
    table = rnnext.onnx.translation_table()
    assert torch.ops.rnnext.lstm_layer.default in table and torch.ops.rnnext.rnn_layer.default in table


@pytest.mark.parametrize("kind,kwargs", [("LSTM", dict(bidirectional=True)), ("GRU", dict(batch_first=True)),
                                         ("RNN", dict(num_layers=2))])
def test_zero_length_keeps_the_initial_state_in_onnx_as_in_the_exported_program(kind, kwargs):
    """A sequence of length 0 (allowed in an exported program, where lengths= is read by the op: masked mode) has
    h_n = h_0 and an all-padding output; ONNX runtimes give Y_h = 0 for sequence_lens 0, so the graph picks h_0
    for those rows."""
    torch.manual_seed(3)
    rnn = getattr(rnnext.nn, kind)(5, 6, **kwargs)
    model = Wrap(rnn, True, True).eval()
    B, T = 4, 5
    x = torch.randn(B, T, 5) if kwargs.get("batch_first") else torch.randn(T, B, 5)
    D = rnn.num_layers * (2 if rnn.bidirectional else 1)
    states = [torch.randn(D, B, 6) for _ in range(2 if kind == "LSTM" else 1)]
    inputs = [x, torch.tensor([5, 0, 3, 0]), *states]
    program = rnnext.onnx.export(model, tuple(inputs))
    _, got = run_onnx(program, inputs)
    with torch.no_grad():
        want = torch.export.export(model, tuple(inputs)).module()(*inputs)
    for i, s in enumerate(states):  # h_n (and c_n): the zero-length rows kept h_0 (c_0)
        torch.testing.assert_close(want[1 + i][:, [1, 3]], s[:, [1, 3]])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "GRUCell"])
def test_plain_export_without_rnnext_table_says_what_to_do(kind, dynamo):
    """torch.onnx.export of a model holding rnnext modules without rnnext's translation table (with either
    exporter) fails with an error that names the module and says how to export it, not with the exporter's
    'No ONNX function found for rnnext.lstm_layer' or 'unrecognized namespace rnnext'."""
    torch.manual_seed(4)
    cell = kind.endswith("Cell")
    m = getattr(rnnext.nn, kind)(3, 4).eval()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            out = self.m(x)
            return out if cell else out[0]

    x = torch.randn(2, 3) if cell else torch.randn(5, 2, 3)
    with pytest.raises(Exception) as info:
        torch.onnx.export(Net(), (x,), None if dynamo else io.BytesIO(), dynamo=dynamo)
    text = "".join(str(e) for e in _exception_chain(info.value))
    named = f"rnnext.nn.{kind}" if not dynamo else "rnnext::rnn_cell" if cell else \
        "rnnext::lstm_layer" if kind == "LSTM" else "rnnext::rnn_layer"
    assert named in text and "rnnext.onnx.export(model, args)" in text, text[-2000:]
    # the table given by hand, and rnnext.onnx.export, work
    table = rnnext.onnx.translation_table()
    _, got = run_onnx(torch.onnx.export(Net(), (x,), dynamo=True, custom_translation_table=table), [x])
    with torch.no_grad():
        np.testing.assert_allclose(got[0], Net()(x).numpy(), rtol=1e-5, atol=1e-5)


def _exception_chain(e):
    seen = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen
