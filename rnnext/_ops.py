"""Loads the compiled op library and registers, for every rnnext op, its fake (meta) kernel and its autograd
(except the one-step cells lstm_cell and rnn_cell, whose autograd is in C++: csrc/autograd/cells.cpp).

Everything else in rnnext calls the ops through ``torch.ops.rnnext``; nothing reaches into the extension.
"""

from __future__ import annotations

import glob
import os

import torch

_REBUILD = (
    "Rebuild rnnext against the installed torch from the rnnext source tree: "
    "`pip install --no-build-isolation --force-reinstall --no-deps .` "
    "(or install the torch it was built for)."
)


def _public_version(v: str) -> str:
    return v.split("+", 1)[0]


def _load_library() -> None:
    try:
        from . import _build_info
    except ImportError as e:  # pragma: no cover - only without a build
        raise ImportError(
            "rnnext's compiled library is missing (rnnext/_build_info.py was not found): rnnext must be built "
            "and installed with `pip install .` from its source tree before it can be imported."
        ) from e
    built = _build_info.TORCH_VERSION
    if _public_version(built) != _public_version(torch.__version__):
        raise ImportError(
            f"rnnext was compiled against torch {built} but torch {torch.__version__} is installed; "
            f"libtorch has no stable C++ ABI, so the compiled ops cannot be used with it. {_REBUILD}"
        )
    try:
        from . import _C  # noqa: F401  (loading it runs the TORCH_LIBRARY registrations)
    except ImportError as e:
        here = os.path.dirname(os.path.abspath(__file__))
        if not glob.glob(os.path.join(here, "_C*.so")) and os.path.exists(os.path.join(here, "..", "setup.py")):
            raise ImportError(
                f"rnnext was imported from its source tree ({here}), which holds no compiled library: the source "
                "tree shadows the installed package. Run from another directory (e.g. `pytest tests`, not "
                "`python -m pytest`, from the repository root), or build in place with "
                "`python setup.py build_ext --inplace`."
            ) from e
        raise ImportError(f"rnnext's compiled library (rnnext._C) failed to load: {e}. {_REBUILD}") from e


_load_library()

ops = torch.ops.rnnext

from . import _composite  # noqa: E402  (after the library: it calls rnnext ops)
from . import onnx as _onnx  # noqa: E402


def functorch_active() -> bool:
    """Whether a torch.func transform (grad, vjp, jacrev, jacfwd, vmap) is running. The fused ops' autograd
    (torch.library's, and the cells' C++ Function) does not support the transforms, so the LSTM/GRU/RNN modules
    and cells then run the ops' plain-PyTorch twins (rnnext._composite: the same semantics, differentiable and
    batchable by the transforms, at stock-Python speed). Never while compiling (torch.compile sees the ops)."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


# ---------------------------------------------------------------------------------------------------------
# Checks shared by the fake kernels: what the C++ kernels check, with torch._check, so that a bad call fails
# the same way under torch.compile / FakeTensorMode and a meta tensor among real ones is refused (the
# dispatcher sends such a call here, where it would otherwise return uninitialised memory).


def _check_devices(op: str, ref_name: str, ref, *named, index=()) -> None:
    """Float arguments on ref's device; index tensors (batch sizes, permutations, transitions) on the CPU or
    on ref's device."""
    for name, t in named:
        if t is not None:
            torch._check(
                t.device == ref.device,
                lambda: f"{op}: expected {name} on the device of {ref_name} ({ref.device}), got {t.device}",
            )
    for name, t in index:
        if t is not None:
            torch._check(
                t.device == ref.device or t.device.type == "cpu",
                lambda: f"{op}: expected {name} on the CPU or on the device of {ref_name} ({ref.device}), "
                f"got {t.device}",
            )


def _check_shape(op: str, name: str, t, shape) -> None:
    torch._check(tuple(t.shape) == tuple(shape), lambda: f"{op}: expected {name} of shape {list(shape)}, got "
                 f"{list(t.shape)}")


def _check_dim(op: str, name: str, t, dim: int, layout: str) -> None:
    torch._check(t.dim() == dim, lambda: f"{op}: expected {name} to have {dim} dimensions {layout}, got "
                 f"{t.dim()} dimensions with shape {list(t.shape)}")


def _check_same_dtype(op: str, ref_name: str, ref, *named) -> None:
    for name, t in named:
        if t is not None:
            torch._check(t.dtype == ref.dtype, lambda: f"{op}: expected {name} to have the dtype of {ref_name} "
                         f"({ref.dtype}), got {t.dtype}")


def _workspace_dtype(input) -> torch.dtype:
    """The dtype of the workspace a forward returns for its backward (gates, cells, saved): float32 for bfloat16
    on the CPU, whose ops compute in float32 (csrc/cpu/bf16.h), else the input's."""
    return torch.float32 if input.dtype == torch.bfloat16 and input.device.type == "cpu" else input.dtype


def _check_workspace_dtype(op: str, input, *named) -> None:
    want = _workspace_dtype(input)
    for name, t in named:
        torch._check(t.dtype == want, lambda: f"{op}: expected {name} to be {want} (the workspace of a {input.dtype} "
                     f"forward), got {t.dtype}")


def _not_differentiable(op: str, forward: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"{op} is the backward of {forward} and has no derivative of its own: to differentiate twice, "
            f"call {forward} (through its module) and use torch.autograd.grad(..., create_graph=True), which "
            f"recomputes it with differentiable operations"
        )

    return backward


def _no_context(ctx, inputs, output):
    pass


# ---------------------------------------------------------------------------------------------------------
# LSTM cell


@torch.library.register_fake("rnnext::lstm_cell")
def _lstm_cell_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    op = "rnnext::lstm_cell"
    _onnx.check_export_registry(op)
    _check_devices(op, "input", input, ("hx", hx), ("cx", cx), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih),
                   ("b_hh", b_hh))
    _check_same_dtype(op, "input", input, ("hx", hx), ("cx", cx), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih),
                      ("b_hh", b_hh))
    _check_dim(op, "input", input, 2, "(batch, input_size)")
    _check_dim(op, "w_ih", w_ih, 2, "(4 * hidden_size, input_size)")
    _check_dim(op, "w_hh", w_hh, 2, "(4 * hidden_size, hidden_size)")
    B, H = input.shape[0], w_hh.shape[1]
    _check_shape(op, "w_ih", w_ih, (4 * H, input.shape[1]))
    _check_shape(op, "w_hh", w_hh, (4 * H, H))
    _check_shape(op, "hx", hx, (B, H))
    _check_shape(op, "cx", cx, (B, H))
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            _check_shape(op, name, b, (4 * H,))
    return input.new_empty(B, H), input.new_empty(B, H), input.new_empty(B, 4 * H, dtype=_workspace_dtype(input))


@torch.library.register_fake("rnnext::lstm_cell_backward")
def _lstm_cell_backward_fake(grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, gates, cy, has_bias):
    op = "rnnext::lstm_cell_backward"
    _check_devices(op, "input", input, ("grad_hy", grad_hy), ("grad_cy", grad_cy), ("hx", hx), ("cx", cx),
                   ("w_ih", w_ih), ("w_hh", w_hh), ("gates", gates), ("cy", cy))
    _check_dim(op, "input", input, 2, "(batch, input_size)")
    _check_dim(op, "w_hh", w_hh, 2, "(4 * hidden_size, hidden_size)")
    B, H = input.shape[0], w_hh.shape[1]
    _check_shape(op, "w_ih", w_ih, (4 * H, input.shape[1]))
    for name, t in (("grad_hy", grad_hy), ("grad_cy", grad_cy), ("hx", hx), ("cx", cx), ("cy", cy)):
        _check_shape(op, name, t, (B, H))
    _check_shape(op, "gates", gates, (B, 4 * H))
    _check_same_dtype(op, "input", input, ("grad_hy", grad_hy), ("grad_cy", grad_cy), ("hx", hx), ("cx", cx),
                      ("w_ih", w_ih), ("w_hh", w_hh), ("cy", cy))
    _check_workspace_dtype(op, input, ("gates", gates))
    G = w_ih.shape[0]
    return (
        input.new_empty(input.shape),
        hx.new_empty(hx.shape),
        cx.new_empty(cx.shape),
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        input.new_empty(G if has_bias else 0),
    )


# lstm_cell's autograd is registered in C++ (csrc/autograd/cells.cpp): a per-step op's call cost matters.
torch.library.register_autograd("rnnext::lstm_cell_backward",
                                _not_differentiable("rnnext::lstm_cell_backward", "rnnext::lstm_cell"),
                                setup_context=_no_context)


# ---------------------------------------------------------------------------------------------------------
# LSTM layer


def _check_masked_lengths(op, input, lengths, batch_first, batch_sizes, sorted_indices) -> None:
    """csrc/common/layer_schedule.h's check_masked_lengths (masked mode's device lengths)."""
    torch._check(batch_sizes is None and sorted_indices is None, lambda: f"{op}: lengths and "
                 "batch_sizes/sorted_indices are two ways to give variable lengths; give one")
    torch._check(input.dim() == 3, lambda: f"{op}: lengths applies to a padded 3-D input, got {input.dim()} "
                 "dimensions")
    B = input.shape[0 if batch_first else 1]
    torch._check(lengths.dim() == 1 and lengths.shape[0] == B, lambda: f"{op}: expected lengths to be 1-D with {B} "
                 f"entries (one per batch entry), got shape {list(lengths.shape)}")
    torch._check(lengths.dtype == torch.int64, lambda: f"{op}: expected lengths to be int64, got {lengths.dtype}")
    torch._check(lengths.device == input.device, lambda: f"{op}: expected lengths on the input's device "
                 f"({input.device}), got {lengths.device}")


def _check_lstm_layer_args(op, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, sorted_indices,
                           batch_first, lengths):
    """csrc/common/layer_schedule.h's check_layer_args (and check_masked_lengths), for the fake kernels. Returns
    (H, P)."""
    if lengths is not None:
        _check_masked_lengths(op, input, lengths, batch_first, batch_sizes, sorted_indices)
    _check_devices(op, "input", input, ("hx", hx), ("cx", cx), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih),
                   ("b_hh", b_hh), ("w_hr", w_hr), ("lengths", lengths),
                   index=(("batch_sizes", batch_sizes), ("sorted_indices", sorted_indices)))
    _check_same_dtype(op, "input", input, ("hx", hx), ("cx", cx), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih),
                      ("b_hh", b_hh), ("w_hr", w_hr))
    torch._check(input.dim() in (2, 3), lambda: f"{op}: expected input to have 3 dimensions (seq_len, batch, "
                 f"input_size), or 2 for packed data, got {input.dim()}")
    torch._check(input.dim() == 3 or batch_sizes is not None, lambda: f"{op}: a 2-D input is packed data "
                 "(total_rows, input_size) and needs batch_sizes")
    torch._check(input.shape[-1] > 0, lambda: f"{op}: expected input's last dimension (input_size) to be at least 1, "
                 "got 0")
    _check_dim(op, "w_ih", w_ih, 2, "(4 * hidden_size, input_size)")
    _check_dim(op, "w_hh", w_hh, 2, "(4 * hidden_size, proj_size)" if w_hr is not None else
               "(4 * hidden_size, hidden_size)")
    G = w_ih.shape[0]
    torch._check(G % 4 == 0 and G > 0, lambda: f"{op}: expected w_ih.size(0) to be 4 * hidden_size > 0, got {G}")
    H = G // 4
    P = w_hr.shape[0] if w_hr is not None else H
    if w_hr is not None:
        _check_shape(op, "w_hr", w_hr, (P, H))
    _check_shape(op, "w_ih", w_ih, (G, input.shape[-1]))
    _check_shape(op, "w_hh", w_hh, (G, P))
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            _check_shape(op, name, b, (G,))
    _check_dim(op, "hx", hx, 2, "(batch, proj_size)" if w_hr is not None else "(batch, hidden_size)")
    if input.dim() == 3:
        B = input.shape[0 if batch_first else 1]
        _check_shape(op, "hx", hx, (B, P))
    _check_shape(op, "cx", cx, (hx.shape[0], H))
    return H, P


@torch.library.register_fake("rnnext::lstm_layer")
def _lstm_layer_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, sorted_indices, batch_first, reverse,
                     train, lengths=None):
    _onnx.check_export_registry("rnnext::lstm_layer")
    H, P = _check_lstm_layer_args("rnnext::lstm_layer", input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                  sorted_indices, batch_first, lengths)
    N = input.shape[0] if input.dim() == 2 else input.shape[0] * input.shape[1]
    output = input.new_empty(*input.shape[:-1], P)
    ws = _workspace_dtype(input)
    gates = input.new_empty(N, 4 * H, dtype=ws) if train else input.new_empty(0, dtype=ws)
    cells = input.new_empty(N, H, dtype=ws) if train else input.new_empty(0, dtype=ws)
    return output, hx.new_empty(hx.shape), cx.new_empty(cx.shape), gates, cells


@torch.library.register_fake("rnnext::lstm_layer_backward")
def _lstm_layer_backward_fake(
    grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, w_hr, batch_sizes, sorted_indices, batch_first, output,
    gates, cells, reverse, has_bias, lengths=None,
):
    op = "rnnext::lstm_layer_backward"
    H, P = _check_lstm_layer_args(op, input, hx, cx, w_ih, w_hh, None, None, w_hr, batch_sizes, sorted_indices,
                                  batch_first, lengths)
    _check_devices(op, "input", input, ("grad_output", grad_output), ("grad_hy", grad_hy), ("grad_cy", grad_cy),
                   ("output", output), ("gates", gates), ("cells", cells))
    _check_same_dtype(op, "input", input, ("grad_output", grad_output), ("grad_hy", grad_hy), ("grad_cy", grad_cy),
                      ("output", output))
    _check_workspace_dtype(op, input, ("gates", gates), ("cells", cells))
    out_shape = (*input.shape[:-1], P)
    N = input.shape[0] if input.dim() == 2 else input.shape[0] * input.shape[1]
    _check_shape(op, "grad_output", grad_output, out_shape)
    _check_shape(op, "output", output, out_shape)
    _check_shape(op, "grad_hy", grad_hy, (hx.shape[0], P))
    _check_shape(op, "grad_cy", grad_cy, (hx.shape[0], H))
    _check_shape(op, "gates", gates, (N, 4 * H))
    _check_shape(op, "cells", cells, (N, H))
    return (
        input.new_empty(input.shape),
        hx.new_empty(hx.shape),
        cx.new_empty(cx.shape),
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        input.new_empty(w_ih.shape[0] if has_bias else 0),
        w_hr.new_empty(w_hr.shape) if w_hr is not None else input.new_empty(0),
    )


def _lstm_layer_setup_context(ctx, inputs, output):
    input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, sorted_indices, batch_first, reverse, train = inputs[:13]
    lengths = inputs[13] if len(inputs) > 13 else None
    out, hy, cy, gates, cells = output
    ctx.reverse = reverse
    ctx.batch_first = batch_first
    ctx.train = train
    ctx.bias = (b_ih is not None, b_hh is not None)
    ctx.save_for_backward(input, hx, cx, w_ih, w_hh, w_hr, batch_sizes, sorted_indices, lengths, out, gates, cells,
                          b_ih, b_hh)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the unused workspace outputs


def _lstm_layer_backward(ctx, grad_output, grad_hy, grad_cy, grad_gates, grad_cells):
    if grad_output is None and grad_hy is None and grad_cy is None:
        return (None,) * 14
    if not ctx.train:
        raise RuntimeError(
            "rnnext::lstm_layer was run with train=False, which keeps no state for the backward pass; "
            "call it with train=True to differentiate it"
        )
    (input, hx, cx, w_ih, w_hh, w_hr, batch_sizes, sorted_indices, lengths, out, gates, cells, b_ih,
     b_hh) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
        inputs = (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, sorted_indices, ctx.batch_first,
                  ctx.reverse, lengths)
        grads = _composite.differentiate(_composite.lstm_layer, inputs, (grad_output, grad_hy, grad_cy))
        return (*grads[:8], None, None, None, None, None, None)
    grad_output = grad_output if grad_output is not None else torch.zeros_like(out)
    grad_hy = grad_hy if grad_hy is not None else torch.zeros_like(hx)
    grad_cy = grad_cy if grad_cy is not None else torch.zeros_like(cx)
    g_in, g_hx, g_cx, g_wih, g_whh, g_b, g_whr = ops.lstm_layer_backward(
        grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, w_hr, batch_sizes, sorted_indices,
        ctx.batch_first, out, gates, cells, ctx.reverse, any(ctx.bias), lengths,
    )
    g_bih = g_b if ctx.bias[0] else None
    g_bhh = g_b if ctx.bias[1] else None
    g_whr = g_whr if w_hr is not None else None
    return g_in, g_hx, g_cx, g_wih, g_whh, g_bih, g_bhh, g_whr, None, None, None, None, None, None


torch.library.register_autograd("rnnext::lstm_layer", _lstm_layer_backward, setup_context=_lstm_layer_setup_context)
torch.library.register_autograd("rnnext::lstm_layer_backward",
                                _not_differentiable("rnnext::lstm_layer_backward", "rnnext::lstm_layer"),
                                setup_context=_no_context)


# ---------------------------------------------------------------------------------------------------------
# GRU and vanilla RNN layer

_CELL_GATES = {"gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _check_rnn_layer_args(op, input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, sorted_indices, batch_first, cell,
                          lengths=None):
    """csrc/common/layer_schedule.h's check_recurrent_args (and check_masked_lengths) for rnn_layer, for the fake
    kernels. Returns H."""
    if lengths is not None:
        _check_masked_lengths(op, input, lengths, batch_first, batch_sizes, sorted_indices)
    torch._check(cell in _CELL_GATES, lambda: f'{op}: expected cell to be "gru", "rnn_tanh" or "rnn_relu", got '
                 f'"{cell}"')
    _check_devices(op, "input", input, ("hx", hx), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh),
                   index=(("batch_sizes", batch_sizes), ("sorted_indices", sorted_indices)))
    _check_same_dtype(op, "input", input, ("hx", hx), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh))
    torch._check(input.dim() in (2, 3), lambda: f"{op}: expected input to have 3 dimensions (seq_len, batch, "
                 f"input_size), or 2 for packed data, got {input.dim()}")
    torch._check(input.dim() == 3 or batch_sizes is not None, lambda: f"{op}: a 2-D input is packed data "
                 "(total_rows, input_size) and needs batch_sizes")
    torch._check(input.shape[-1] > 0, lambda: f"{op}: expected input's last dimension (input_size) to be at least 1, "
                 "got 0")
    gates = _CELL_GATES[cell]
    _check_dim(op, "w_ih", w_ih, 2, f"({gates} * hidden_size, input_size)")
    _check_dim(op, "w_hh", w_hh, 2, f"({gates} * hidden_size, hidden_size)")
    G = w_ih.shape[0]
    torch._check(G % gates == 0 and G > 0, lambda: f"{op}: expected w_ih.size(0) to be {gates} * hidden_size > 0, "
                 f"got {G}")
    H = G // gates
    _check_shape(op, "w_ih", w_ih, (G, input.shape[-1]))
    _check_shape(op, "w_hh", w_hh, (G, H))
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            _check_shape(op, name, b, (G,))
    _check_dim(op, "hx", hx, 2, "(batch, hidden_size)")
    if input.dim() == 3:
        _check_shape(op, "hx", hx, (input.shape[0 if batch_first else 1], H))
    return H


@torch.library.register_fake("rnnext::rnn_layer")
def _rnn_layer_fake(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, sorted_indices, batch_first, reverse, train,
                    cell, lengths=None):
    _onnx.check_export_registry("rnnext::rnn_layer")
    H = _check_rnn_layer_args("rnnext::rnn_layer", input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, sorted_indices,
                              batch_first, cell, lengths)
    N = input.shape[0] if input.dim() == 2 else input.shape[0] * input.shape[1]
    ws = _workspace_dtype(input)
    saved = input.new_empty(N, 4 * H, dtype=ws) if train and cell == "gru" else input.new_empty(0, dtype=ws)
    return input.new_empty(*input.shape[:-1], H), hx.new_empty(hx.shape), saved


@torch.library.register_fake("rnnext::rnn_layer_backward")
def _rnn_layer_backward_fake(grad_output, grad_hy, input, hx, w_ih, w_hh, batch_sizes, sorted_indices, batch_first,
                             reverse, output, saved, cell, has_bias, lengths=None):
    op = "rnnext::rnn_layer_backward"
    H = _check_rnn_layer_args(op, input, hx, w_ih, w_hh, None, None, batch_sizes, sorted_indices, batch_first, cell,
                              lengths)
    _check_devices(op, "input", input, ("grad_output", grad_output), ("grad_hy", grad_hy), ("output", output),
                   ("saved", saved))
    _check_same_dtype(op, "input", input, ("grad_output", grad_output), ("grad_hy", grad_hy), ("output", output))
    _check_workspace_dtype(op, input, ("saved", saved))
    out_shape = (*input.shape[:-1], H)
    _check_shape(op, "grad_output", grad_output, out_shape)
    _check_shape(op, "output", output, out_shape)
    _check_shape(op, "grad_hy", grad_hy, (hx.shape[0], H))
    G = w_ih.shape[0]
    return (
        input.new_empty(input.shape),
        hx.new_empty(hx.shape),
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        input.new_empty(G if has_bias else 0),
        input.new_empty(G if has_bias else 0),
    )


def _rnn_layer_setup_context(ctx, inputs, output):
    input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, sorted_indices, batch_first, reverse, train, cell, lengths = inputs
    out, hy, saved = output
    ctx.flags = (batch_first, reverse, train, cell, b_ih is not None, b_hh is not None)
    ctx.save_for_backward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, sorted_indices, out, saved, lengths)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the unused workspace output


def _rnn_layer_backward(ctx, grad_output, grad_hy, grad_saved):
    if grad_output is None and grad_hy is None:
        return (None,) * 13
    batch_first, reverse, train, cell, has_bih, has_bhh = ctx.flags
    input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, sorted_indices, out, saved, lengths = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
        inputs = (input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, sorted_indices, batch_first, reverse, cell,
                  lengths)
        grads = _composite.differentiate(_composite.rnn_layer, inputs, (grad_output, grad_hy))
        return (*grads[:6],) + (None,) * 7
    if not train:
        raise RuntimeError(
            "rnnext::rnn_layer was run with train=False, which keeps no state for the backward pass; call it with "
            "train=True to differentiate it"
        )
    grad_output = grad_output if grad_output is not None else torch.zeros_like(out)
    grad_hy = grad_hy if grad_hy is not None else torch.zeros_like(hx)
    g_in, g_hx, g_wih, g_whh, g_bih, g_bhh = ops.rnn_layer_backward(
        grad_output, grad_hy, input, hx, w_ih, w_hh, batch_sizes, sorted_indices, batch_first, reverse, out, saved,
        cell, has_bih or has_bhh, lengths,
    )
    return (g_in, g_hx, g_wih, g_whh, g_bih if has_bih else None, g_bhh if has_bhh else None) + (None,) * 7


torch.library.register_autograd("rnnext::rnn_layer", _rnn_layer_backward, setup_context=_rnn_layer_setup_context)
torch.library.register_autograd("rnnext::rnn_layer_backward",
                                _not_differentiable("rnnext::rnn_layer_backward", "rnnext::rnn_layer"),
                                setup_context=_no_context)


@torch.library.register_fake("rnnext::rnn_cell")
def _rnn_cell_fake(input, hx, w_ih, w_hh, b_ih, b_hh, cell):
    op = "rnnext::rnn_cell"
    _onnx.check_export_registry(op)
    _check_dim(op, "input", input, 2, "(batch, input_size)")
    H = _check_rnn_layer_args(op, input.unsqueeze(0), hx, w_ih, w_hh, b_ih, b_hh, None, None, False, cell)
    B = input.shape[0]
    return hx.new_empty((B, H)), input.new_empty((B, 4 * H) if cell == "gru" else (0, 0),
                                                 dtype=_workspace_dtype(input))


@torch.library.register_fake("rnnext::rnn_cell_backward")
def _rnn_cell_backward_fake(grad_hy, input, hx, w_ih, w_hh, hy, saved, cell, has_bias):
    op = "rnnext::rnn_cell_backward"
    _check_dim(op, "input", input, 2, "(batch, input_size)")
    H = _check_rnn_layer_args(op, input.unsqueeze(0), hx, w_ih, w_hh, None, None, None, None, False, cell)
    _check_devices(op, "input", input, ("grad_hy", grad_hy), ("hy", hy), ("saved", saved))
    _check_same_dtype(op, "input", input, ("grad_hy", grad_hy), ("hy", hy))
    _check_workspace_dtype(op, input, ("saved", saved))
    B = input.shape[0]
    _check_shape(op, "grad_hy", grad_hy, (B, H))
    _check_shape(op, "hy", hy, (B, H))
    _check_shape(op, "saved", saved, (B, 4 * H) if cell == "gru" else (0, 0))
    G = w_ih.shape[0]
    return (input.new_empty(input.shape), hx.new_empty(hx.shape), w_ih.new_empty(w_ih.shape),
            w_hh.new_empty(w_hh.shape), input.new_empty(G if has_bias else 0), input.new_empty(G if has_bias else 0))


# rnn_cell's autograd is registered in C++ (csrc/autograd/cells.cpp), as lstm_cell's.
torch.library.register_autograd("rnnext::rnn_cell_backward",
                                _not_differentiable("rnnext::rnn_cell_backward", "rnnext::rnn_cell"),
                                setup_context=_no_context)


# ---------------------------------------------------------------------------------------------------------
# Packed sequences: gather and scatter, each the other's backward


@torch.library.register_fake("rnnext::packed_gather")
def _packed_gather_fake(input, batch_sizes, sorted_indices, batch_first, total_rows):
    _check_devices("rnnext::packed_gather", "input", input,
                   index=(("batch_sizes", batch_sizes), ("sorted_indices", sorted_indices)))
    return input.new_empty((total_rows, *input.shape[2:]))


@torch.library.register_fake("rnnext::packed_scatter")
def _packed_scatter_fake(data, batch_sizes, sorted_indices, batch_first, padding_value, batch, total_length):
    _check_devices("rnnext::packed_scatter", "data", data,
                   index=(("batch_sizes", batch_sizes), ("sorted_indices", sorted_indices)))
    lead = (batch, total_length) if batch_first else (total_length, batch)
    return data.new_empty((*lead, *data.shape[1:]))


def _packed_gather_setup_context(ctx, inputs, output):
    input, batch_sizes, sorted_indices, batch_first, total_rows = inputs
    ctx.batch_first = batch_first
    ctx.batch = input.shape[0 if batch_first else 1]
    ctx.length = input.shape[1 if batch_first else 0]
    ctx.save_for_backward(batch_sizes, sorted_indices)


def _packed_gather_backward(ctx, grad):
    batch_sizes, sorted_indices = ctx.saved_tensors
    g = ops.packed_scatter(grad, batch_sizes, sorted_indices, ctx.batch_first, 0, ctx.batch, ctx.length)
    return g, None, None, None, None


torch.library.register_autograd(
    "rnnext::packed_gather", _packed_gather_backward, setup_context=_packed_gather_setup_context
)


def _packed_scatter_setup_context(ctx, inputs, output):
    data, batch_sizes, sorted_indices, batch_first, padding_value, batch, total_length = inputs
    ctx.batch_first = batch_first
    ctx.rows = data.shape[0]
    ctx.save_for_backward(batch_sizes, sorted_indices)


def _packed_scatter_backward(ctx, grad):
    batch_sizes, sorted_indices = ctx.saved_tensors
    g = ops.packed_gather(grad, batch_sizes, sorted_indices, ctx.batch_first, ctx.rows)
    return g, None, None, None, None, None, None


torch.library.register_autograd(
    "rnnext::packed_scatter", _packed_scatter_backward, setup_context=_packed_scatter_setup_context
)


# ---------------------------------------------------------------------------------------------------------
# TreeLSTM cell


@torch.library.register_fake("rnnext::treelstm_cell")
def _treelstm_cell_fake(lstm_in, c_left, c_right):
    op = "rnnext::treelstm_cell"
    _check_devices(op, "lstm_in", lstm_in, ("c_left", c_left), ("c_right", c_right))
    _check_same_dtype(op, "lstm_in", lstm_in, ("c_left", c_left), ("c_right", c_right))
    _check_dim(op, "lstm_in", lstm_in, 2, "(nodes, 5 * hidden_size)")
    torch._check(lstm_in.shape[1] % 5 == 0, lambda: f"{op}: expected lstm_in.size(1) to be 5 * hidden_size, got "
                 f"{lstm_in.shape[1]}")
    _check_shape(op, "c_left", c_left, (lstm_in.shape[0], lstm_in.shape[1] // 5))
    _check_shape(op, "c_right", c_right, (lstm_in.shape[0], lstm_in.shape[1] // 5))
    M, H = lstm_in.shape[0], lstm_in.shape[1] // 5
    return lstm_in.new_empty(M, H), lstm_in.new_empty(M, H), lstm_in.new_empty(M, 5 * H, dtype=_workspace_dtype(lstm_in))


@torch.library.register_fake("rnnext::treelstm_cell_backward")
def _treelstm_cell_backward_fake(grad_h, grad_c, acts, c, c_left, c_right):
    op = "rnnext::treelstm_cell_backward"
    _check_devices(op, "acts", acts, ("grad_h", grad_h), ("grad_c", grad_c), ("c", c), ("c_left", c_left),
                   ("c_right", c_right))
    _check_dim(op, "acts", acts, 2, "(nodes, 5 * hidden_size)")
    for name, t in (("grad_h", grad_h), ("grad_c", grad_c), ("c", c), ("c_left", c_left), ("c_right", c_right)):
        _check_shape(op, name, t, (acts.shape[0], acts.shape[1] // 5))
    _check_workspace_dtype(op, c_left, ("acts", acts))
    return c.new_empty(acts.shape), c.new_empty(c.shape), c.new_empty(c.shape)


def _treelstm_cell_setup_context(ctx, inputs, output):
    lstm_in, c_left, c_right = inputs
    h, c, acts = output
    ctx.save_for_backward(acts, c, c_left, c_right, lstm_in)
    ctx.set_materialize_grads(False)


def _treelstm_cell_backward(ctx, grad_h, grad_c, grad_acts):
    acts, c, c_left, c_right, lstm_in = ctx.saved_tensors
    if grad_h is None and grad_c is None:
        return None, None, None
    if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
        return tuple(_composite.differentiate(_composite.treelstm_cell, (lstm_in, c_left, c_right),
                                              (grad_h, grad_c)))
    grad_h = grad_h if grad_h is not None else torch.zeros_like(c)
    grad_c = grad_c if grad_c is not None else torch.zeros_like(c)
    return ops.treelstm_cell_backward(grad_h, grad_c, acts, c, c_left, c_right)


torch.library.register_autograd(
    "rnnext::treelstm_cell", _treelstm_cell_backward, setup_context=_treelstm_cell_setup_context
)
torch.library.register_autograd("rnnext::treelstm_cell_backward",
                                _not_differentiable("rnnext::treelstm_cell_backward", "rnnext::treelstm_cell"),
                                setup_context=_no_context)


# ---------------------------------------------------------------------------------------------------------
# Thin stack (SPINN)


@torch.library.register_fake("rnnext::spinn_encode")
def _spinn_encode_fake(buffers, transitions, lengths, w_comp, b_comp, tracker_w_ih, tracker_w_hh, tracker_b_ih,
                       tracker_b_hh, train):
    op = "rnnext::spinn_encode"
    _check_devices(op, "buffers", buffers, ("w_comp", w_comp), ("b_comp", b_comp), ("tracker_w_ih", tracker_w_ih),
                   ("tracker_w_hh", tracker_w_hh), ("tracker_b_ih", tracker_b_ih), ("tracker_b_hh", tracker_b_hh),
                   index=(("transitions", transitions), ("lengths", lengths)))
    _check_same_dtype(op, "buffers", buffers, ("w_comp", w_comp), ("b_comp", b_comp),
                      ("tracker_w_ih", tracker_w_ih), ("tracker_w_hh", tracker_w_hh),
                      ("tracker_b_ih", tracker_b_ih), ("tracker_b_hh", tracker_b_hh))
    _check_dim(op, "buffers", buffers, 3, "(tokens, batch, 2 * hidden_size)")
    _check_dim(op, "w_comp", w_comp, 2, "(5 * hidden_size, 2 * hidden_size [+ tracker_size])")
    torch._check(transitions.dim() == 2 and transitions.shape[1] == buffers.shape[1],
                 lambda: f"{op}: expected transitions of shape (steps, batch) = (S, {buffers.shape[1]}), got "
                 f"{list(transitions.shape)}")
    torch._check(w_comp.shape[0] % 5 == 0 and w_comp.shape[0] > 0, lambda: f"{op}: expected w_comp.size(0) to "
                 f"be 5 * hidden_size > 0, got {w_comp.shape[0]}")
    torch._check(buffers.shape[2] == 2 * (w_comp.shape[0] // 5), lambda: f"{op}: expected buffers rows [h | c] "
                 f"of width 2 * hidden_size = {2 * (w_comp.shape[0] // 5)}, got {buffers.shape[2]}")
    S, B, H = transitions.shape[0], buffers.shape[1], w_comp.shape[0] // 5
    tracker = tracker_w_hh is not None
    Tt = tracker_w_hh.shape[1] if tracker else 0
    ws = _workspace_dtype(buffers)
    return (
        buffers.new_empty(B, H),
        buffers.new_empty(S, B, Tt) if tracker else buffers.new_empty(0),
        buffers.new_empty(B * max(buffers.shape[0] - 1, 0), 2 * H, dtype=ws),
        buffers.new_empty(B * max(buffers.shape[0] - 1, 0), 5 * H, dtype=ws) if train else buffers.new_empty(0, dtype=ws),
        buffers.new_empty(S, B, 4 * Tt, dtype=ws) if tracker and train else buffers.new_empty(0, dtype=ws),
        buffers.new_empty(S, B, Tt, dtype=ws) if tracker and train else buffers.new_empty(0, dtype=ws),
    )


@torch.library.register_fake("rnnext::spinn_encode_backward")
def _spinn_encode_backward_fake(grad_top, grad_tracker_h, buffers, transitions, lengths, w_comp, b_comp,
                                tracker_w_ih, tracker_w_hh, tracker_b_ih, tracker_b_hh, nodes, node_acts,
                                tracker_h, tracker_acts, tracker_c):
    _check_devices("rnnext::spinn_encode_backward", "buffers", buffers, ("grad_top", grad_top),
                   ("grad_tracker_h", grad_tracker_h), ("w_comp", w_comp), ("b_comp", b_comp),
                   ("tracker_w_ih", tracker_w_ih), ("tracker_w_hh", tracker_w_hh), ("tracker_b_ih", tracker_b_ih),
                   ("tracker_b_hh", tracker_b_hh), ("nodes", nodes), ("node_acts", node_acts),
                   ("tracker_h", tracker_h), ("tracker_acts", tracker_acts), ("tracker_c", tracker_c),
                   index=(("transitions", transitions), ("lengths", lengths)))
    tracker = tracker_w_hh is not None
    empty = lambda: buffers.new_empty(0)  # noqa: E731  (distinct tensors: outputs must not alias)
    has_tb = tracker and (tracker_b_ih is not None or tracker_b_hh is not None)
    return (
        buffers.new_empty(buffers.shape),
        w_comp.new_empty(w_comp.shape),
        w_comp.new_empty(w_comp.shape[0]) if b_comp is not None else empty(),
        tracker_w_ih.new_empty(tracker_w_ih.shape) if tracker else empty(),
        tracker_w_hh.new_empty(tracker_w_hh.shape) if tracker else empty(),
        tracker_w_hh.new_empty(tracker_w_hh.shape[0]) if has_tb else buffers.new_empty(0),
    )


@torch.library.register_fake("rnnext::thin_stack_plan")
def _thin_stack_plan_fake(transitions, num_tokens, lengths):
    op = "rnnext::thin_stack_plan"
    _check_devices(op, "transitions", transitions, ("lengths", lengths))
    _check_dim(op, "transitions", transitions, 2, "(steps, batch)")
    S, B = transitions.shape
    new = lambda *shape: transitions.new_empty(shape, dtype=torch.int64)
    return new(S, B), new(S, B), new(S, B), new(S, B), new(S, B), new(S, B), new(B)


def _spinn_setup_context(ctx, inputs, output):
    (buffers, transitions, lengths, w_comp, b_comp, t_w_ih, t_w_hh, t_b_ih, t_b_hh, train) = inputs
    top, tracker_h, nodes, node_acts, tracker_acts, tracker_c = output
    ctx.train = train
    ctx.flags = (b_comp is not None, t_b_ih is not None, t_b_hh is not None)
    ctx.save_for_backward(buffers, transitions, lengths, w_comp, b_comp, t_w_ih, t_w_hh, t_b_ih, t_b_hh, nodes,
                          node_acts, tracker_h, tracker_acts, tracker_c)
    ctx.set_materialize_grads(False)


def _spinn_backward(ctx, grad_top, grad_tracker_h, *unused):
    n_inputs = 10
    if grad_top is None and grad_tracker_h is None:
        return (None,) * n_inputs
    if not ctx.train:
        raise RuntimeError(
            "rnnext::spinn_encode was run with train=False, which keeps no state for the backward pass; call it "
            "with train=True to differentiate it"
        )
    (buffers, transitions, lengths, w_comp, b_comp, t_w_ih, t_w_hh, t_b_ih, t_b_hh, nodes, node_acts, tracker_h,
     tracker_acts, tracker_c) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
        inputs = (buffers, transitions, lengths, w_comp, b_comp, t_w_ih, t_w_hh, t_b_ih, t_b_hh)
        grads = _composite.differentiate(_composite.spinn_encode, inputs, (grad_top, grad_tracker_h))
        return (*grads, None)
    B, H = buffers.shape[1], w_comp.shape[0] // 5
    grad_top = grad_top if grad_top is not None else buffers.new_zeros(B, H)
    if grad_tracker_h is None:
        grad_tracker_h = torch.zeros_like(tracker_h)
    g_buf, g_w, g_b, g_tih, g_thh, g_tb = ops.spinn_encode_backward(
        grad_top, grad_tracker_h, buffers, transitions, lengths, w_comp, b_comp, t_w_ih, t_w_hh, t_b_ih, t_b_hh,
        nodes, node_acts, tracker_h, tracker_acts, tracker_c,
    )
    has_b, has_tbi, has_tbh = ctx.flags
    tracker = t_w_ih is not None
    return (
        g_buf, None, None, g_w, g_b if has_b else None,
        g_tih if tracker else None, g_thh if tracker else None,
        g_tb if has_tbi else None, g_tb if has_tbh else None, None,
    )


torch.library.register_autograd("rnnext::spinn_encode", _spinn_backward, setup_context=_spinn_setup_context)
torch.library.register_autograd("rnnext::spinn_encode_backward",
                                _not_differentiable("rnnext::spinn_encode_backward", "rnnext::spinn_encode"),
                                setup_context=_no_context)


# ---------------------------------------------------------------------------------------------------------
# Generation (no autograd: it draws discrete tokens)


def _check_generate_args(op, logits, h0, c0, embedding, w_ih, w_hh, b_ih, b_hh, head_weight, head_bias, uniforms):
    """csrc/common/generate.h's check_generate_args (the devices and the vocabulary), for the fake kernels."""
    _check_devices(op, "logits", logits, ("h0", h0), ("c0", c0), ("embedding", embedding),
                   ("head_weight", head_weight), ("head_bias", head_bias),
                   *[(f"w_ih[{i}]", w) for i, w in enumerate(w_ih)], *[(f"w_hh[{i}]", w) for i, w in enumerate(w_hh)],
                   *[(f"b_ih[{i}]", b) for i, b in enumerate(b_ih)], *[(f"b_hh[{i}]", b) for i, b in enumerate(b_hh)],
                   index=(("uniforms", uniforms),))
    _check_dim(op, "logits", logits, 2, "(batch, vocab)")
    torch._check(logits.shape[1] >= 1, lambda: f"{op}: expected a vocabulary of at least 1 entry, got logits of "
                 f"shape {list(logits.shape)}")
    return logits.new_empty((logits.shape[0], uniforms.shape[0]), dtype=torch.int64)


@torch.library.register_fake("rnnext::lstm_generate")
def _lstm_generate_fake(logits, h0, c0, embedding, w_ih, w_hh, b_ih, b_hh, head_weight, head_bias, uniforms,
                        temperature, top_k):
    return _check_generate_args("rnnext::lstm_generate", logits, h0, c0, embedding, w_ih, w_hh, b_ih, b_hh,
                                head_weight, head_bias, uniforms)


@torch.library.register_fake("rnnext::rnn_generate")
def _rnn_generate_fake(logits, h0, embedding, w_ih, w_hh, b_ih, b_hh, head_weight, head_bias, uniforms, temperature,
                       top_k, cell):
    op = "rnnext::rnn_generate"
    torch._check(cell in _CELL_GATES, lambda: f'{op}: expected cell to be "gru", "rnn_tanh" or "rnn_relu", got '
                 f'"{cell}"')
    return _check_generate_args(op, logits, h0, None, embedding, w_ih, w_hh, b_ih, b_hh, head_weight, head_bias,
                                uniforms)
