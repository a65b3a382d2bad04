"""Drop-in replacements for ``torch.nn.LSTM`` and ``torch.nn.LSTMCell`` on top of the fused rnnext ops."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .. import _ops
from .. import onnx as _onnx
from ..utils.rnn import batch_sizes_from_lengths, check_lengths

__all__ = ["LSTM", "LSTMCell"]

_HiddenState = Tuple[Tensor, Tensor]


def _autocast_dtype(lowers: bool, input, params_dtype: torch.dtype, hx=None) -> Optional[torch.dtype]:
    """The dtype a module computes in under ``torch.autocast`` (None outside autocast, or where autocast leaves it
    alone), as stock's module does: autocast lowers float32 only; a module whose stock ops are on autocast's
    lower-precision list (``lowers``: on the CPU LSTM through ``mkldnn_rnn_layer``, RNN and RNNCell through their
    linear maps; on CUDA every layer, through cuDNN's RNN) runs in the autocast dtype. The others (on the CPU GRU,
    LSTMCell, GRUCell: their fused pointwise kernels are on autocast's float32 list) run in the dtype of the state
    their pointwise step carries (GRU's h, LSTMCell's c; the input's dtype when no state is given), which is what
    stock returns: a float32 input with a bfloat16 state (an embedding's and an autocast Linear's outputs) runs
    in bfloat16, a bfloat16 input with a float32 state in float32."""
    if params_dtype != torch.float32 or not isinstance(input, Tensor):
        return None
    dev = input.device.type
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return None
    low = torch.get_autocast_dtype(dev)
    if lowers:
        return low
    states = () if hx is None else tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
    carried = states[-1] if states and isinstance(states[-1], Tensor) else None
    dtype = carried.dtype if carried is not None else input.dtype
    if dtype == low:
        return low
    if dtype != params_dtype:
        return None
    others = [t.dtype for t in (input, *states) if isinstance(t, Tensor)]
    if all(d in (low, params_dtype) for d in others) and any(d == low for d in others):
        return params_dtype  # the lower-precision ones are upcast
    return None


def _refuse_scripting(kind: str):
    raise RuntimeError(
        f"torch.jit.script: rnnext.nn.{kind} cannot be scripted (TorchScript cannot compile its forward: keyword-only "
        "arguments, PackedSequence handling and custom ops); use torch.compile or torch.export (rnnext modules run "
        "there without graph breaks), or torch.jit.trace for a fixed input layout")


class ArgumentError(TypeError, ValueError):
    """An argument of the wrong type or dtype. Both a TypeError (what torch.nn raises for a wrong type, e.g.
    ``bias=0`` or a float size) and a ValueError (what torch.nn raises for an input whose dtype is not the
    weights'), so that code catching either exception type, as written for stock modules, catches it."""


class RankError(RuntimeError, ValueError):
    """A state (hx) of the wrong number of dimensions. torch.nn raises a RuntimeError for it in the layers and a
    ValueError in the cells; this is both."""


def _check_bool(kind: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ArgumentError(f"{kind}: {name} should be of type bool, got: {type(value).__name__}")


def _check_size(kind: str, name: str, value) -> None:
    """A size argument as torch.nn checks it: an int (TypeError otherwise), greater than zero (ValueError)."""
    if not isinstance(value, int):
        raise ArgumentError(f"{kind}: {name} should be of type int, got: {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{kind}: {name} must be greater than zero, got {value}")


def _check_float_input(module: str, input: Tensor, ref: Tensor, dtype: Optional[torch.dtype] = None) -> None:
    """input is floating point, of the parameters' dtype (any floating dtype when an autocast region runs the
    module in ``dtype``, to which it is cast) and on their device."""
    if not torch.is_floating_point(input):
        raise TypeError(f"{module}: expected a floating-point input, got dtype {input.dtype}")
    if dtype is None and input.dtype != ref.dtype:
        raise ArgumentError(
            f"{module}: expected input of dtype {ref.dtype} (the parameters' dtype), got {input.dtype}; "
            f"convert one to the other with .to()"
        )
    if input.device != ref.device:
        raise RuntimeError(
            f"{module}: expected input on {ref.device} (the parameters' device), got {input.device}"
        )


def _check_state(module: str, name: str, t: Tensor, shape: Tuple[int, ...], ref: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{module}: expected {name} to be a Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise RuntimeError(f"{module}: expected {name} of shape {shape}, got {tuple(t.shape)}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{module}: expected {name} of dtype {ref.dtype} (the input's dtype), got {t.dtype}")
    if t.device != ref.device:
        raise RuntimeError(f"{module}: expected {name} on {ref.device} (the input's device), got {t.device}")


def _batched_states(module: str, labels, states, shapes, batched: bool, batch_dim: int, ref: Tensor) -> List[Tensor]:
    """Checks the given states (hx entries) of a batched or unbatched call: Tensors of the right rank, then, with
    the batch dimension added at batch_dim when unbatched, of shapes ``shapes`` and ref's dtype and device."""
    want = len(shapes[0]) if batched else len(shapes[0]) - 1
    out = []
    for label, t, shape in zip(labels, states, shapes):
        if not isinstance(t, Tensor):
            raise TypeError(f"{module}: expected {label} to be a Tensor, got {type(t).__name__}")
        if t.dim() != want:
            kind = f"batched {want}-D" if batched else f"unbatched {want}-D"
            raise RankError(f"{module}: for {kind} input, expected {label} to be {want}-D, "
                            f"got {t.dim()}-D with shape {tuple(t.shape)}")
        t = t if batched else t.unsqueeze(batch_dim)
        _check_state(module, label, t, shape, ref)
        out.append(t)
    return out


# Lengths already on the input's GPU run the masked layer mode, which reads them on the device: no host sync.
# (Tests set this to run that mode on the CPU too.)
_MASKED_ON_CPU = False


def _masked_lengths(lengths, x: Tensor) -> bool:
    # (torch.compile and torch.export, and the ONNX export on top of it, keep a lengths tensor a graph input: the
    # op reads it, not Python, whose checks and sort would be data-dependent, which fullgraph=True refuses.)
    return isinstance(lengths, Tensor) and lengths.device == x.device and (
        x.device.type != "cpu" or _MASKED_ON_CPU or torch.compiler.is_compiling() or torch.compiler.is_exporting())


def _check_device_lengths(module: str, lengths: Tensor, batch: int, x: Tensor) -> Tensor:
    """Lengths on the input's device, checked without reading them (that would wait for the device): an
    integer dtype and one entry per sequence. Their values are clamped to [0, T] by the kernel."""
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"{module}: expected integer lengths, got dtype {lengths.dtype}")
    if lengths.dim() != 1:
        raise ValueError(f"{module}: expected lengths to be 1-D (one length per sequence), got shape "
                         f"{tuple(lengths.shape)}")
    if lengths.numel() != batch:
        raise ValueError(f"{module}: expected {batch} lengths (the batch size of the input), got {lengths.numel()}")
    return lengths.detach().to(torch.int64)


def _needs_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


class _RNNBase(nn.Module):
    """What rnnext's LSTM, GRU and RNN share: the parameters (names, shapes, initialisation and order of
    torch.nn's), the layer and direction loop, dropout between layers, ``hx`` handling and the dispatch of padded,
    packed, unbatched and ``lengths=`` inputs to the fused layer ops. Subclasses say which cell (``mode``) and
    run one layer and direction (``_run_direction``)."""

    _kind = "RNN"  # the public class name, for messages

    def __prepare_scriptable__(self):  # torch.jit.script calls it on every submodule first
        _refuse_scripting(self._kind)

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None) -> None:
        super().__init__()
        kind = self._kind
        factory = {"device": device, "dtype": dtype}
        # (torch.nn's checks and exception types: TypeError for a wrong type, ValueError for a bad value.)
        _check_bool(kind, "bias", bias)
        _check_bool(kind, "batch_first", batch_first)
        _check_bool(kind, "bidirectional", bidirectional)
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            _check_size(kind, name, value)
        if not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError(f"{kind}: proj_size must be a non-negative integer, got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"{kind}: proj_size ({proj_size}) has to be smaller than hidden_size ({hidden_size})")
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"{kind}: dropout should be a number in [0, 1] representing the probability of an "
                             f"element being zeroed, got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}"
            )
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        num_directions = 2 if bidirectional else 1
        real_hidden = proj_size if proj_size > 0 else hidden_size
        gate_size = _GATES[mode] * hidden_size
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input = input_size if layer == 0 else real_hidden * num_directions
                suffix = "_reverse" if direction == 1 else ""
                params = [
                    (f"weight_ih_l{layer}{suffix}", (gate_size, layer_input)),
                    (f"weight_hh_l{layer}{suffix}", (gate_size, real_hidden)),
                ]
                if bias:
                    params += [(f"bias_ih_l{layer}{suffix}", (gate_size,)), (f"bias_hh_l{layer}{suffix}", (gate_size,))]
                if proj_size > 0:
                    params += [(f"weight_hr_l{layer}{suffix}", (proj_size, hidden_size))]
                for name, shape in params:
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names.extend(name for name, _ in params)
                self._all_weights.append([name for name, _ in params])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    @property
    def all_weights(self) -> List[List[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    @property
    def _flat_weights(self) -> List[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    def flatten_parameters(self) -> None:
        """No-op, for compatibility with ``torch.nn`` (rnnext needs no flattened weight buffer)."""

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += ", nonlinearity={nonlinearity}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__)

    def _layer_weights(self, index: int, cast: Optional[torch.dtype] = None):
        """Layer index's (w_ih, w_hh, b_ih, b_hh, w_hr), the biases and w_hr None where absent, in ``cast``
        (autocast's dtype) when given."""
        names = self._all_weights[index]
        w_ih, w_hh = getattr(self, names[0]), getattr(self, names[1])
        b_ih = getattr(self, names[2]) if self.bias else None
        b_hh = getattr(self, names[3]) if self.bias else None
        w_hr = getattr(self, names[-1]) if self.proj_size > 0 else None
        if cast is None:
            return w_ih, w_hh, b_ih, b_hh, w_hr
        return tuple(None if w is None else w.to(cast) for w in (w_ih, w_hh, b_ih, b_hh, w_hr))

    # What a subclass supplies.
    _num_states = 1          # LSTM: (h, c); GRU and RNN: h
    _device_lengths = False  # runs lengths on the input's device without reading them (masked mode)
    _autocast_lowers = True  # on the CPU, stock's module runs in the autocast dtype (see _autocast_dtype)

    def _run_direction(self, idx: int, x: Tensor, states: List[Tensor], batch_sizes, sorted_indices,
                       batch_first: bool, reverse: bool, train: bool, masked_lengths,
                       cast: Optional[torch.dtype]) -> Tuple[Tensor, List[Tensor]]:
        raise NotImplementedError  # pragma: no cover  (every subclass overrides it)

    def forward(self, input: Union[Tensor, PackedSequence], hx=None, *,
                lengths: Optional[Union[Tensor, List[int]]] = None, padding_value: float = 0.0):
        """Runs the network. ``lengths`` (keyword only, with a padded batched input): the length of every
        sequence, as a list or a tensor on any device; the result then equals
        ``pad_packed_sequence(module(pack_padded_sequence(input, lengths, enforce_sorted=False)),
        padding_value=padding_value, total_length=T)``: outputs past each length are ``padding_value``, the final
        states are those at each sequence's last step, and reverse directions start at each sequence's own last
        step. It is computed straight from the padded tensor (no pack or unpack copies).

        Lengths on the CPU (or a list) are checked (each in [1, T]) and run a sorted schedule that skips the
        padding. A lengths tensor already on the input's GPU is never read by the host, so the call does not
        synchronize: every sequence runs at every step, masked past its length, and the values are not checked
        but clamped to [0, T] (a length of 0 leaves the state at ``hx`` and the output all padding)."""
        name = f"rnnext.nn.{self._kind}"
        _onnx.check_export_context(name)
        ref = self.weight_ih_l0
        raw = input.data if isinstance(input, PackedSequence) else input
        cast = _autocast_dtype(self._autocast_lowers or ref.device.type == "cuda", raw, ref.dtype, hx)
        if cast is not None and ref.device.type == "cuda":
            # Stock's CUDA layers autocast through cuDNN's RNN wrapper, which casts to float16 whatever the
            # autocast dtype (measured on an H200, torch 2.11: float16 out under a bfloat16 region); match it.
            cast = torch.float16
        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        batch_first = False
        masked_lengths: Optional[Tensor] = None
        if packed:
            if lengths is not None:
                raise ValueError(f"{name}: lengths= is for a padded tensor input; a PackedSequence carries its own")
            data, batch_sizes, sorted_indices, unsorted_indices = input
            _check_float_input(name, data, ref, cast)
            data = data if cast is None else data.to(cast)
            if data.dim() != 2:
                raise ValueError(f"{name}: expected the PackedSequence data to be 2-D (rows, features), "
                                 f"got {data.dim()}-D")
            x = data
            batch = int(batch_sizes[0]) if batch_sizes.numel() > 0 else 0
            batched = True
            layer_sorted_indices = None  # packed data is already in sorted order
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"{name}: expected input to be a Tensor or a PackedSequence, got "
                                f"{type(input).__name__}")
            _check_float_input(name, input, ref, cast)
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: expected input to be 2-D (unbatched) or 3-D, got {input.dim()}-D "
                                 f"with shape {tuple(input.shape)}")
            batched = input.dim() == 3
            batch_first = batched and self.batch_first
            # The op copies a strided input anyway; doing it here also keeps what autograd saves in the layout
            # torch.compile traced.
            x = (input if batched else input.unsqueeze(1)).contiguous()
            x = x if cast is None else x.to(cast)
            batch = x.size(0 if batch_first else 1)
            batch_sizes = sorted_indices = unsorted_indices = layer_sorted_indices = None
            if lengths is not None:
                if not batched:
                    raise ValueError(f"{name}: lengths= needs a batched 3-D input, got a 2-D (unbatched) one")
                steps = x.size(1 if batch_first else 0)
                if self._device_lengths and _masked_lengths(lengths, x):
                    masked_lengths = lengths = _check_device_lengths(name, lengths, batch, x)
                else:
                    lengths = check_lengths(name, lengths, batch, steps)
                    sorted_lengths, order = torch.sort(lengths, descending=True, stable=True)
                    batch_sizes = batch_sizes_from_lengths(sorted_lengths)
                    if not torch.equal(order, torch.arange(batch)):
                        layer_sorted_indices = order
        if x.size(-1) != self.input_size:
            raise RuntimeError(f"{name}: expected input.size(-1) to be input_size={self.input_size}, "
                               f"got {x.size(-1)}")

        shapes = [(self.num_layers * num_directions, batch, real_hidden)]
        labels = ["h_0"]
        if self._num_states == 2:
            shapes.append((self.num_layers * num_directions, batch, self.hidden_size))
            labels.append("c_0")
        if hx is None:
            states = [x.new_zeros(shape) for shape in shapes]
        else:
            if self._num_states == 2:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"{name}: expected hx to be a tuple (h_0, c_0), got {type(hx).__name__}")
                states = list(hx)
            else:
                states = [hx]
            if cast is not None:  # autocast casts the given states too
                states = [t.to(cast) if isinstance(t, Tensor) and t.is_floating_point() else t for t in states]
            states = _batched_states(name, labels, states, shapes, batched, 1, x)
            if sorted_indices is not None:
                states = [t.index_select(1, sorted_indices) for t in states]

        # (A traced graph keeps the workspace whatever the grad mode at trace time: torch.jit.trace checks the
        # trace by re-running it under no_grad, and a traced module may later be trained.)
        train = torch.jit.is_tracing() or (torch.is_grad_enabled() and _needs_grad([x, *states, *self._flat_weights]))
        layer_input = x
        finals: List[List[Tensor]] = [[] for _ in shapes]
        per_layer = [t.unbind(0) for t in states]  # one view per layer and direction (cheaper than t[idx] each)
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                idx = layer * num_directions + direction
                out, new_states = self._run_direction(idx, layer_input, [t[idx] for t in per_layer], batch_sizes,
                                                      layer_sorted_indices, batch_first, direction == 1, train,
                                                      masked_lengths, cast)
                outputs.append(out)
                for acc, t in zip(finals, new_states):
                    acc.append(t)
            layer_output = outputs[0] if num_directions == 1 else torch.cat(outputs, -1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_output = F.dropout(layer_output, self.dropout, True)
            layer_input = layer_output
        output = layer_input
        state_n = [torch.stack(acc, 0) for acc in finals]

        def pack_state(ts: List[Tensor]):
            return (ts[0], ts[1]) if self._num_states == 2 else ts[0]

        if packed:
            if unsorted_indices is not None:
                state_n = [t.index_select(1, unsorted_indices) for t in state_n]
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), pack_state(state_n)
        if not batched:
            return output.squeeze(1), pack_state([t.squeeze(1) for t in state_n])
        if lengths is not None and padding_value != 0:
            steps = torch.arange(output.size(1 if batch_first else 0), device=output.device)
            # non_blocking: host lengths reach a GPU without a stream synchronization
            pad = steps.unsqueeze(0) >= lengths.to(output.device, non_blocking=True).unsqueeze(1)  # (B, T)
            output = output.masked_fill((pad if batch_first else pad.t()).unsqueeze(-1), padding_value)
        return output, pack_state(state_n)


class LSTM(_RNNBase):
    r"""A multi-layer LSTM with the interface of :class:`torch.nn.LSTM`, run by rnnext's fused layer op.

    The constructor arguments, parameter names and shapes, ``state_dict`` keys, initialisation (for the same
    seed, the same initial weights), the forward signature and the return values are those of
    ``torch.nn.LSTM``, so a state_dict saved from one loads into the other and the two give the same
    numbers. For each layer and direction, with PyTorch's gate order (input, forget, cell, output)::

        i, f, g, o = split(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh, 4)
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(c_t)          (then h_t = h_t W_hr^T when proj_size > 0)

    All weights and biases are initialised from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)).

    Each layer and direction is one call of ``torch.ops.rnnext.lstm_layer``: the input projection of all steps
    as one GEMM, then the recurrence in C++ (the recurrent GEMM and the fused pointwise step, threads owning
    blocks of hidden units), and an explicit backward op (BPTT in C++, the weight gradients as large GEMMs).
    A ``PackedSequence`` computes only its real rows at every step.

    Args:
        input_size: features of the input ``x``.
        hidden_size: features of the hidden state ``h``.
        num_layers: number of stacked layers. Default: 1.
        bias: if ``False``, the layers have no ``b_ih`` and ``b_hh``. Default: ``True``.
        batch_first: if ``True``, input and output are ``(batch, seq, feature)``. Default: ``False``.
        dropout: dropout on the outputs of every layer but the last, in training. Default: 0.
        bidirectional: if ``True``, a bidirectional LSTM. Default: ``False``.
        proj_size: if > 0, an LSTM with projections of that size. Default: 0.

    Forward: ``forward(input, hx=None)`` takes ``input`` of shape ``(L, H_in)`` (unbatched), ``(L, N, H_in)``
    (or ``(N, L, H_in)`` with ``batch_first``) or a ``PackedSequence``, and ``hx = (h_0, c_0)`` of shapes
    ``(D * num_layers, N, H_out)`` and ``(D * num_layers, N, hidden_size)`` (no batch dimension when
    unbatched), zeros when omitted. Returns ``output, (h_n, c_n)`` as ``torch.nn.LSTM`` does.
    """

    _kind = "LSTM"
    _num_states = 2
    _device_lengths = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype)

    def _run_direction(self, idx, x, states, batch_sizes, sorted_indices, batch_first, reverse, train,
                       masked_lengths, cast):
        w_ih, w_hh, b_ih, b_hh, w_hr = self._layer_weights(idx, cast)
        time_dim = 1 if batch_first else 0
        if _ops.functorch_active():
            out, hy, cy = _ops._composite.lstm_layer(x, states[0], states[1], w_ih, w_hh, b_ih, b_hh, w_hr,
                                                     batch_sizes, sorted_indices, batch_first, reverse, masked_lengths)
            return out, [hy, cy]
        if w_hr is None and batch_sizes is None and masked_lengths is None and x.size(time_dim) == 1:
            # One step (a decoder or sampling loop calling the module per step): the cell op, which runs on the
            # weights as they are; the layer op would first lay them out for its recurrence, costing more than
            # one step's GEMMs.
            hy, cy, _ = _ops.ops.lstm_cell(x.select(time_dim, 0), states[0], states[1], w_ih, w_hh, b_ih, b_hh)
            return hy.unsqueeze(time_dim), [hy, cy]
        out, hy, cy, _, _ = _ops.ops.lstm_layer(x, states[0], states[1], w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                                sorted_indices, batch_first, reverse, train, masked_lengths)
        return out, [hy, cy]

    def forward(
        self,
        input: Union[Tensor, PackedSequence],
        hx: Optional[_HiddenState] = None,
        *,
        lengths: Optional[Union[Tensor, List[int]]] = None,
        padding_value: float = 0.0,
    ) -> Tuple[Union[Tensor, PackedSequence], _HiddenState]:
        """Runs the LSTM; returns ``output, (h_n, c_n)`` as ``torch.nn.LSTM`` does. See ``_RNNBase.forward`` for
        ``lengths`` and ``padding_value``."""
        return super().forward(input, hx, lengths=lengths, padding_value=padding_value)


class _CellBase(nn.Module):
    """The single-step modules (LSTMCell, GRUCell, RNNCell): torch.nn's parameters (``weight_ih`` (gates H, I),
    ``weight_hh`` (gates H, H), ``bias_ih``, ``bias_hh``), initialisation and argument checks."""

    _kind = "RNNCell"  # the public class name, for messages

    def __prepare_scriptable__(self):  # torch.jit.script calls it on every submodule first
        _refuse_scripting(self._kind)
    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            _check_size(self._kind, name, value)  # (torch.nn's cells do not check bias's type; nor does rnnext)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        G = self._gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(G, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G, **factory))
            self.bias_hh = nn.Parameter(torch.empty(G, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if "bias" in self.__dict__ and self.bias is not True:
            s += ", bias={bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += ", nonlinearity={nonlinearity}"
        return s.format(**self.__dict__)

    def _weights(self) -> Optional[Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]]:
        """The parameters for the one-call path, or None where they are not plain registered parameters
        (parametrized, or a DataParallel replica's copies): those modules take the checked path."""
        p = self._parameters
        try:
            return p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]
        except KeyError:
            return None

    _autocast_lowers = False  # on the CPU, stock's LSTMCell and GRUCell follow the input's dtype under autocast

    def _direct(self, input: Tensor) -> bool:
        """Whether a call may take the one-call path: not while compiling (the checked path traces better) nor
        under autocast (the checked path casts)."""
        _onnx.check_export_context(f"rnnext.nn.{self._kind}")
        return (not torch.compiler.is_compiling() and not torch.is_autocast_enabled(input.device.type)
                and not _ops.functorch_active())

    def _cast_weights(self, cast: Optional[torch.dtype]):
        w = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return w if cast is None else tuple(None if t is None else t.to(cast) for t in w)

    def _prepare(self, input: Tensor, states, labels) -> Tuple[Tensor, List[Tensor], bool, Optional[torch.dtype]]:
        """Checks input (1-D unbatched or 2-D) and the states (a tuple of len(labels) tensors, or None for
        zeros); returns the batched input, the batched states, whether the input was batched and the dtype an
        autocast region runs the cell in (None: its parameters')."""
        name = f"rnnext.nn.{self._kind}"
        _onnx.check_export_context(name)
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: expected input to be a Tensor, got {type(input).__name__}")
        cast = _autocast_dtype(self._autocast_lowers or input.device.type == "cuda", input, self.weight_ih.dtype,
                               states)
        _check_float_input(name, input, self.weight_ih, cast)
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: expected input to be 1-D (unbatched) or 2-D, got {input.dim()}-D "
                             f"with shape {tuple(input.shape)}")
        if input.size(-1) != self.input_size:
            raise RuntimeError(f"{name}: expected input.size(-1) to be input_size={self.input_size}, "
                               f"got {input.size(-1)}")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        x = x if cast is None else x.to(cast)
        shape = (x.size(0), self.hidden_size)
        if states is None:
            return x, [x.new_zeros(shape) for _ in labels], batched, cast
        if cast is not None:  # autocast casts the given states too
            states = [t.to(cast) if isinstance(t, Tensor) and t.is_floating_point() else t for t in states]
        return x, _batched_states(name, labels, states, [shape] * len(labels), batched, 0, x), batched, cast


class LSTMCell(_CellBase):
    r"""One LSTM step with the interface of :class:`torch.nn.LSTMCell`, run by the fused ``rnnext::lstm_cell`` op.

    Same constructor arguments, parameters (``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias_ih``,
    ``bias_hh``), initialisation U(-1/sqrt(H), 1/sqrt(H)) and forward: ``forward(input, hx=None) -> (h_1, c_1)``
    with input ``(N, I)`` or unbatched ``(I,)``. The op computes both GEMMs and the fused pointwise step, and
    its backward (one op) returns every gradient.
    """

    _kind = "LSTMCell"
    _gates = 4

    def forward(self, input: Tensor, hx: Optional[_HiddenState] = None) -> _HiddenState:
        # The common call (a batch, given states, registered parameters) goes straight to the op, whose checks
        # cover the module's: a call in a Python loop pays little beyond the op. Anything the op rejects, and
        # every other form of call, takes the module's checks below, which say what is wrong as stock does.
        if type(hx) is tuple and len(hx) == 2 and type(input) is Tensor and input.dim() == 2 and self._direct(input):
            w = self._weights()
            if w is not None:
                try:
                    hy, cy, _ = _ops.ops.lstm_cell(input, hx[0], hx[1], *w)
                    return hy, cy
                except (RuntimeError, TypeError, ValueError):
                    pass
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"rnnext.nn.LSTMCell: expected hx to be a tuple (h_0, c_0), got {type(hx).__name__}")
        x, (h, c), batched, cast = self._prepare(input, hx, ("h_0", "c_0"))
        w = self._cast_weights(cast)
        if _ops.functorch_active():  # (see _ops.functorch_active)
            hy, cy = _ops._composite.lstm_step(x, h, c, w[0], w[1], _ops._composite._bias(w[2], w[3]))
        else:
            hy, cy, _ = _ops.ops.lstm_cell(x, h, c, *w)
        if not batched:
            return hy.squeeze(0), cy.squeeze(0)
        return hy, cy
