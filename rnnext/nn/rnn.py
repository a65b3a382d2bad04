"""Drop-in replacements for ``torch.nn.GRU``, ``torch.nn.RNN``, ``torch.nn.GRUCell`` and ``torch.nn.RNNCell`` on
top of the fused ``rnnext::rnn_layer`` op (csrc/common/rnn_engine.h)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _ops
from .lstm import _CellBase, _RNNBase

__all__ = ["GRU", "RNN", "GRUCell", "RNNCell"]

_NONLINEARITIES = ("tanh", "relu")


def _check_nonlinearity(kind: str, nonlinearity) -> None:
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"{kind}: unknown nonlinearity {nonlinearity!r}; select from 'tanh' or 'relu'")


class _GRUOrRNN(_RNNBase):
    """The GRU and RNN layers: one ``rnnext::rnn_layer`` call per layer and direction (one ``rnnext::rnn_cell``
    call for a one-step input)."""

    _cell = "gru"
    _device_lengths = True

    def _run_direction(self, idx, x, states, batch_sizes, sorted_indices, batch_first, reverse, train,
                       masked_lengths, cast):
        w_ih, w_hh, b_ih, b_hh, _ = self._layer_weights(idx, cast)
        time_dim = 1 if batch_first else 0
        if _ops.functorch_active():
            out, hy = _ops._composite.rnn_layer(x, states[0], w_ih, w_hh, b_ih, b_hh, batch_sizes, sorted_indices,
                                                batch_first, reverse, self._cell, masked_lengths)
            return out, [hy]
        if batch_sizes is None and masked_lengths is None and x.size(time_dim) == 1:
            # One step (a decoder or sampling loop calling the module per step): the cell op, as LSTM does.
            hy, _ = _ops.ops.rnn_cell(x.select(time_dim, 0), states[0], w_ih, w_hh, b_ih, b_hh, self._cell)
            return hy.unsqueeze(time_dim), [hy]
        out, hy, _ = _ops.ops.rnn_layer(x, states[0], w_ih, w_hh, b_ih, b_hh, batch_sizes, sorted_indices,
                                        batch_first, reverse, train, self._cell, masked_lengths)
        return out, [hy]


class GRU(_GRUOrRNN):
    r"""A multi-layer GRU with the interface of :class:`torch.nn.GRU`, run by rnnext's fused ``rnn_layer`` op.

    Same constructor arguments, parameter names and shapes (``weight_ih_l{k}`` (3H, in), ``weight_hh_l{k}``
    (3H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``_reverse`` for the second direction), ``state_dict`` keys,
    initialisation U(-1/sqrt(H), 1/sqrt(H)) (the same initial weights for the same seed), forward signature and
    return values ``output, h_n``. Gate order r, z, n as PyTorch::

        r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
        z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
        n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
        h' = (1 - z) * n + z * h

    Each layer and direction is one op call: the input projection of all steps as one GEMM, then per step the
    recurrent GEMM and one fused pointwise step; the backward is its own op. ``PackedSequence`` input computes
    only the real rows; ``forward(x, lengths=...)`` runs a padded batch on its lengths (see ``LSTM``): lengths on
    the CPU run only the real rows, lengths already on the input's GPU run masked mode (never read by the host, so
    no synchronization), as for ``LSTM``.
    """

    _kind = "GRU"
    _cell = "gru"
    _autocast_lowers = False  # on the CPU, stock's GRU follows the input's dtype under autocast

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype)


class RNN(_GRUOrRNN):
    r"""A multi-layer Elman RNN with the interface of :class:`torch.nn.RNN` (``nonlinearity="tanh"`` or
    ``"relu"``), run by rnnext's fused ``rnn_layer`` op: ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``.

    Same constructor arguments, parameters (``weight_ih_l{k}`` (H, in), ``weight_hh_l{k}`` (H, H), biases),
    ``state_dict`` keys, initialisation and forward (``output, h_n``) as ``torch.nn.RNN``; layouts and
    ``lengths=`` as ``GRU``.
    """

    _kind = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:
        _check_nonlinearity("RNN", nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__("RNN_" + nonlinearity.upper(), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype)

    @property
    def _cell(self) -> str:
        return "rnn_" + self.nonlinearity


class _GRUOrRNNCell(_CellBase):
    """GRUCell / RNNCell: one step, one call of ``rnnext::rnn_cell``."""

    def _cell_name(self) -> str:
        return "gru"

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        # The one-call path of LSTMCell.forward (see there): the op checks what the module would.
        if type(input) is Tensor and type(hx) is Tensor and input.dim() == 2 and self._direct(input):
            w = self._weights()
            if w is not None:
                try:
                    return _ops.ops.rnn_cell(input, hx, *w, self._cell_name())[0]
                except (RuntimeError, TypeError, ValueError):
                    pass
        x, (h,), batched, cast = self._prepare(input, None if hx is None else (hx,), ("hx",))
        cell = _ops._composite.rnn_cell if _ops.functorch_active() else _ops.ops.rnn_cell  # (see _ops)
        hy = cell(x, h, *self._cast_weights(cast), self._cell_name())[0]
        return hy if batched else hy.squeeze(0)


class GRUCell(_GRUOrRNNCell):
    r"""One GRU step with the interface of :class:`torch.nn.GRUCell` (parameters ``weight_ih`` (3H, I),
    ``weight_hh`` (3H, H), ``bias_ih``, ``bias_hh``; ``forward(input, hx=None) -> h'``), run by the fused
    ``rnnext::rnn_cell`` op (gate math as :class:`GRU`)."""

    _kind = "GRUCell"
    _gates = 3


class RNNCell(_GRUOrRNNCell):
    r"""One Elman RNN step with the interface of :class:`torch.nn.RNNCell` (``nonlinearity="tanh"`` or
    ``"relu"``; parameters ``weight_ih`` (H, I), ``weight_hh`` (H, H), biases), run by ``rnnext::rnn_cell``."""

    _kind = "RNNCell"
    _gates = 1
    _autocast_lowers = True  # stock's RNNCell runs its linear maps in the autocast dtype

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None) -> None:
        _check_nonlinearity("RNNCell", nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def _cell_name(self) -> str:
        return "rnn_" + self.nonlinearity
