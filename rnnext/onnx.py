"""ONNX export of models holding rnnext's LSTM, GRU and RNN: each layer and direction (one
``rnnext::lstm_layer`` / ``rnnext::rnn_layer`` call) becomes one standard ONNX ``LSTM``, ``GRU`` or ``RNN``
node, with ``sequence_lens`` for ``lengths=``, so that any ONNX runtime runs the graph.

    onnx_program = rnnext.onnx.export(model, (x, lengths))          # torch.onnx.export(..., dynamo=True)
    onnx_program.save("model.onnx")

or pass ``custom_translation_table=rnnext.onnx.translation_table()`` to ``torch.onnx.export(..., dynamo=True)``
yourself. Needs the ``onnx`` and ``onnxscript`` packages (``pip install onnx onnxscript``; ``onnxruntime`` to
run the result).

What maps and what does not: dense inputs (``batch_first`` or not) and padded inputs with ``lengths=`` (a
tensor argument of the exported program: it becomes ``sequence_lens``), every number of layers, both
directions, with or without biases, initial states given or not. A length of 0 (possible in an exported program,
where the op reads ``lengths``) keeps the initial state as rnnext does (``h_n = h_0``; ONNX's own LSTM/GRU/RNN
would return zeros there, so the graph selects ``h_0`` for those rows) and gives an all-zero output. ``proj_size > 0`` (ONNX's LSTM has no
projection) and ``PackedSequence`` inputs (their batch sizes are not a graph input) raise. The cells
(``LSTMCell``, ``GRUCell``, ``RNNCell``) export as their formulas in elementwise ONNX ops. SPINN and the
generation ops have no ONNX equivalent: exporting them raises an error that names them.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, Optional

import torch

__all__ = ["export", "translation_table", "UnsupportedForONNX"]


class UnsupportedForONNX(RuntimeError):
    """An rnnext op or argument that has no ONNX equivalent, or an ONNX export that cannot translate rnnext's ops."""


_HOW = ("export with rnnext.onnx.export(model, args), or pass custom_translation_table=rnnext.onnx.translation_table() "
        "to torch.onnx.export(..., dynamo=True)")
_with_table = False  # set while export() runs


def check_export_context(what: str) -> None:
    """Called by rnnext's recurrent modules as they run: inside the TorchScript-based ONNX exporter
    (``torch.onnx.export(..., dynamo=False)``), which cannot translate rnnext's ops, raises an error that says so
    and what to do instead of the exporter's own error about an unknown ``rnnext::`` op. Outside an export it
    costs a dictionary lookup."""
    if torch.compiler.is_dynamo_compiling():  # (torch.compile, strict export: not that exporter)
        return
    legacy = sys.modules.get("torch.onnx._internal.torchscript_exporter._globals")
    if legacy is not None and getattr(legacy.GLOBALS, "in_onnx_export", False):
        raise UnsupportedForONNX(f"{what}: the TorchScript-based ONNX exporter (torch.onnx.export(..., dynamo=False)) "
                                 f"cannot translate rnnext's ops; {_HOW}")


def check_export_registry(op: str) -> None:
    """Called by the fake kernels of the ops that have ONNX translations (they run whenever a graph is captured):
    inside ``torch.onnx.export(dynamo=True)`` without rnnext's translation table, raises an error that names the
    op and says what to do, instead of the exporter's own 'No ONNX function found for rnnext.lstm_layer' after
    the capture. Outside an export it costs a dictionary lookup."""
    flags = sys.modules.get("torch.onnx._internal.exporter._flags")
    if flags is None or not getattr(flags, "_is_onnx_exporting", False) or _with_table:
        return
    if _export_registry_lacks_rnnext():
        raise UnsupportedForONNX(f"{op}: torch.onnx.export was called without rnnext's translations for its ops; "
                                 f"{_HOW}")


def _export_registry_lacks_rnnext() -> bool:
    """Whether the registry of the torch.onnx export on the call stack (the ``registry`` argument of torch's
    exporter's ``export``) lacks a translation of rnnext's layer op. False where that frame cannot be found (another
    torch version): then nothing is claimed and the exporter reports what it finds."""
    core = os.path.join("exporter", "_core.py")
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "export" and code.co_filename.endswith(core):
            registry = frame.f_locals.get("registry")
            is_registered = getattr(registry, "is_registered", None)
            return is_registered is not None and not is_registered(torch.ops.rnnext.lstm_layer.default)
        frame = frame.f_back
    return False


def _op():
    try:
        from onnxscript import opset18
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("rnnext.onnx needs the onnxscript and onnx packages: pip install onnx onnxscript") from e
    return opset18


def _gate_rows(op, w, order, n_gates: int):
    """The n_gates row blocks of w (gates stacked along dim 0) taken in `order`."""
    parts = op.Split(w, axis=0, num_outputs=n_gates)
    return op.Concat(*[parts[i] for i in order], axis=0)


def _recurrent_node(kind: str, input, hx, cx, w_ih, w_hh, b_ih, b_hh, batch_first: bool, reverse: bool,
                    lengths, activation: Optional[str] = None):
    """One ONNX LSTM/GRU/RNN node for one layer and direction, in PyTorch's layout and gate order."""
    op = _op()
    # PyTorch's gate order -> ONNX's: LSTM (i, f, g, o) -> (i, o, f, c); GRU (r, z, n) -> (z, r, h).
    order, n = {"LSTM": ((0, 3, 1, 2), 4), "GRU": ((1, 0, 2), 3), "RNN": ((0,), 1)}[kind]
    W = op.Unsqueeze(_gate_rows(op, w_ih, order, n) if n > 1 else w_ih, [0])
    R = op.Unsqueeze(_gate_rows(op, w_hh, order, n) if n > 1 else w_hh, [0])
    B = None
    if b_ih is not None or b_hh is not None:
        zero = op.Mul(b_ih if b_ih is not None else b_hh, op.Constant(value_float=0.0))
        bi = b_ih if b_ih is not None else zero
        bh = b_hh if b_hh is not None else zero
        if n > 1:
            bi, bh = _gate_rows(op, bi, order, n), _gate_rows(op, bh, order, n)
        B = op.Unsqueeze(op.Concat(bi, bh, axis=0), [0])
    x = op.Transpose(input, perm=[1, 0, 2]) if batch_first else input
    seq = op.Cast(lengths, to=6) if lengths is not None else None  # INT32, as ONNX wants
    h0 = op.Unsqueeze(hx, [0])
    attrs: Dict[str, Any] = {"direction": "reverse" if reverse else "forward",
                             "hidden_size": int(w_hh.shape[1])}  # (the weights' shapes are static)
    if kind == "LSTM":
        Y, Y_h, Y_c = op.LSTM(x, W, R, B, seq, h0, op.Unsqueeze(cx, [0]), **attrs)
    elif kind == "GRU":
        Y, Y_h = op.GRU(x, W, R, B, seq, h0, linear_before_reset=1, **attrs)
        Y_c = None
    else:
        Y, Y_h = op.RNN(x, W, R, B, seq, h0, activations=[activation], **attrs)
        Y_c = None
    y = op.Squeeze(Y, [1])  # (T, 1, B, H) -> (T, B, H)
    if batch_first:
        y = op.Transpose(y, perm=[1, 0, 2])
    if seq is not None:
        # A sequence of length 0 keeps its initial state in rnnext (masked mode: h_n = h_0, c_n = c_0), where ONNX
        # runtimes return zeros for sequence_lens 0 (onnxruntime does): take the initial state for those rows.
        empty = op.Unsqueeze(op.Equal(seq, op.CastLike(op.Constant(value_int=0), seq)), [0, 2])  # (1, B, 1)
        Y_h = op.Where(empty, h0, Y_h)
        if Y_c is not None:
            Y_c = op.Where(empty, op.Unsqueeze(cx, [0]), Y_c)
    return y, op.Squeeze(Y_h, [0]), (op.Squeeze(Y_c, [0]) if Y_c is not None else None)


def _check(name: str, w_hr=None, batch_sizes=None) -> None:
    if w_hr is not None:
        raise UnsupportedForONNX(f"rnnext.onnx: {name} with proj_size > 0 has no ONNX equivalent (ONNX's LSTM has "
                                 "no projection)")
    if batch_sizes is not None:
        raise UnsupportedForONNX(f"rnnext.onnx: {name} on a PackedSequence cannot be exported (its batch sizes are "
                                 "not a graph input); pass the padded tensor and lengths= instead")


def _lstm_layer(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, batch_sizes=None, sorted_indices=None,
                batch_first: bool = False, reverse: bool = False, train: bool = False, lengths=None):
    _check("rnnext::lstm_layer (LSTM)", w_hr, batch_sizes)
    y, hy, cy = _recurrent_node("LSTM", input, hx, cx, w_ih, w_hh, b_ih, b_hh, batch_first, reverse, lengths)
    op = _op()
    empty = op.Constant(value_floats=[])  # the workspace outputs (for a backward) are not used in inference
    return y, hy, cy, op.CastLike(empty, y), op.CastLike(empty, y)


def _rnn_layer(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, batch_sizes=None, sorted_indices=None,
               batch_first: bool = False, reverse: bool = False, train: bool = False, cell: str = "gru",
               lengths=None):
    _check(f"rnnext::rnn_layer ({cell})", None, batch_sizes)
    if cell == "gru":
        y, hy, _ = _recurrent_node("GRU", input, hx, None, w_ih, w_hh, b_ih, b_hh, batch_first, reverse, lengths)
    else:
        act = {"rnn_tanh": "Tanh", "rnn_relu": "Relu"}[cell]
        y, hy, _ = _recurrent_node("RNN", input, hx, None, w_ih, w_hh, b_ih, b_hh, batch_first, reverse, lengths,
                                   act)
    op = _op()
    return y, hy, op.CastLike(op.Constant(value_floats=[]), y)


def _linear(op, x, w, b):
    y = op.MatMul(x, op.Transpose(w, perm=[1, 0]))
    return op.Add(y, b) if b is not None else y


def _lstm_cell(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None):
    op = _op()
    gates = op.Add(_linear(op, input, w_ih, b_ih), _linear(op, hx, w_hh, b_hh))
    i, f, g, o = op.Split(gates, axis=-1, num_outputs=4)
    cy = op.Add(op.Mul(op.Sigmoid(f), cx), op.Mul(op.Sigmoid(i), op.Tanh(g)))
    hy = op.Mul(op.Sigmoid(o), op.Tanh(cy))
    return hy, cy, op.CastLike(op.Constant(value_floats=[]), hy)


def _rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, cell: str = "gru"):
    op = _op()
    gx, gh = _linear(op, input, w_ih, b_ih), _linear(op, hx, w_hh, b_hh)
    if cell == "gru":
        xr, xz, xn = op.Split(gx, axis=-1, num_outputs=3)
        hr, hz, hn = op.Split(gh, axis=-1, num_outputs=3)
        r, z = op.Sigmoid(op.Add(xr, hr)), op.Sigmoid(op.Add(xz, hz))
        n = op.Tanh(op.Add(xn, op.Mul(r, hn)))
        hy = op.Add(n, op.Mul(z, op.Sub(hx, n)))
    else:
        pre = op.Add(gx, gh)
        hy = op.Relu(pre) if cell == "rnn_relu" else op.Tanh(pre)
    return hy, op.CastLike(op.Constant(value_floats=[]), hy)


def _unsupported(name: str, why: str) -> Callable:
    def translate(*args, **kwargs):
        raise UnsupportedForONNX(f"rnnext.onnx: {name} has no ONNX equivalent ({why}); export the model without it")
    return translate


def translation_table() -> Dict[Any, Callable]:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: rnnext's layer ops as ONNX
    recurrent nodes, and the ops without an ONNX equivalent as clear errors."""
    ops = torch.ops.rnnext
    return {
        ops.lstm_layer.default: _lstm_layer,
        ops.rnn_layer.default: _rnn_layer,
        ops.lstm_cell.default: _lstm_cell,
        ops.rnn_cell.default: _rnn_cell,
        ops.spinn_encode.default: _unsupported("rnnext::spinn_encode (SPINN)", "a data-dependent shift-reduce stack"),
        ops.lstm_generate.default: _unsupported("rnnext::lstm_generate (CharGenerator.generate)",
                                                "a sampling loop"),
        ops.rnn_generate.default: _unsupported("rnnext::rnn_generate (CharGenerator.generate)", "a sampling loop"),
        ops.thin_stack_plan.default: _unsupported("rnnext::thin_stack_plan (ThinStack)",
                                                  "a data-dependent shift-reduce plan"),
    }


def export(model: torch.nn.Module, args: tuple, f: Optional[str] = None, **kwargs):
    """``torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=...)`` with rnnext's
    translations added (to any given in ``custom_translation_table``). Returns the ``ONNXProgram``; ``f``
    (a path) also saves it. Other keyword arguments go to ``torch.onnx.export``."""
    global _with_table
    table = translation_table()
    table.update(kwargs.pop("custom_translation_table", None) or {})
    kwargs.pop("dynamo", None)
    _with_table = True
    try:
        return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)
    finally:
        _with_table = False
