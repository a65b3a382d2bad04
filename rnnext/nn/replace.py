"""Swap stock ``torch.nn`` recurrent modules inside a model for their rnnext drop-ins."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

from torch import nn
from torch.nn.utils import parametrize

from .lstm import LSTM, LSTMCell
from .rnn import GRU, RNN, GRUCell, RNNCell

__all__ = ["replace_rnns", "ReplaceReport"]

# Hook dictionaries of nn.Module carried from the stock module to its replacement (shared, so the handles the
# user holds still remove them).
_HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


@dataclass
class ReplaceReport:
    """What :func:`replace_rnns` did: the qualified names it replaced and those it left stock, with the reason."""

    replaced: List[str] = field(default_factory=list)
    left_stock: List[Tuple[str, str]] = field(default_factory=list)


# Each stock class and its rnnext twin.
_TWINS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell, nn.RNNCell: RNNCell}
_STOCK = tuple(_TWINS)
_OURS = tuple(_TWINS.values())


def _stock_class(module: nn.Module):
    return next(c for c in _STOCK if isinstance(module, c))


def _expected_params(module: nn.Module) -> List[str]:
    if isinstance(module, nn.RNNBase):
        return list(module._flat_weights_names)
    names = ["weight_ih", "weight_hh"]
    return names + (["bias_ih", "bias_hh"] if module.bias else [])


def _why_not(module: nn.Module) -> Optional[str]:
    """Why ``module`` (a stock recurrent module or cell) cannot be swapped without changing what it does, or None."""
    if parametrize.is_parametrized(module):
        return "it has parametrizations (e.g. parametrizations.weight_norm), which the fused ops would bypass"
    stock = _stock_class(module)
    if type(module) is not stock:
        return (f"it is a subclass ({type(module).__qualname__}) of {stock.__name__}, whose own methods "
                "(forward, ...) the rnnext module would not have")
    for hook in list(module._forward_pre_hooks.values()):
        kind = type(hook).__name__
        if kind in ("WeightNorm", "SpectralNorm") or any(c.__name__ == "BasePruningMethod" for c in type(hook).__mro__):
            return (f"a {kind} forward pre-hook recomputes its weights before each call (torch.nn.utils "
                    "weight_norm / spectral_norm / prune)")
    if sorted(module._parameters) != sorted(_expected_params(module)):
        return f"its parameters ({sorted(module._parameters)}) are not those of a stock module"
    if any(not isinstance(v, nn.Parameter) for v in (getattr(module, n) for n in _expected_params(module))):
        return "one of its weights is not a Parameter"
    return None


def _convert(module: nn.Module) -> nn.Module:
    """The rnnext twin of ``module`` sharing its Parameter objects and hooks."""
    cls = _TWINS[type(module)]
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    if isinstance(module, nn.RNNBase):
        for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional",
                     "proj_size"):
            setattr(new, attr, getattr(module, attr))
        if isinstance(module, nn.RNN):
            new.nonlinearity = module.nonlinearity
        new.dropout = float(module.dropout)
        new._flat_weights_names = list(module._flat_weights_names)
        new._all_weights = [list(names) for names in module._all_weights]
        for name in new._flat_weights_names:
            setattr(new, name, getattr(module, name))
    else:
        new.input_size, new.hidden_size, new.bias = module.input_size, module.hidden_size, module.bias
        if isinstance(module, nn.RNNCell):
            new.nonlinearity = module.nonlinearity
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            p = getattr(module, name)
            if p is None:
                new.register_parameter(name, None)
            else:
                setattr(new, name, p)
    for name in _HOOK_DICTS:
        if hasattr(module, name):
            setattr(new, name, getattr(module, name))
    if getattr(module, "_is_full_backward_hook", None) is not None:
        new._is_full_backward_hook = module._is_full_backward_hook
    new._buffers.update(module._buffers)
    new.train(module.training)
    return new


def replace_rnns(module: nn.Module, *, return_report: bool = False) -> Union[nn.Module, Tuple[nn.Module, ReplaceReport]]:
    """Replace every ``torch.nn`` LSTM, GRU, RNN, LSTMCell, GRUCell and RNNCell inside ``module`` with the
    rnnext version.

    The replacements are made in place and share the original ``Parameter`` objects (an optimizer built before
    the swap keeps working, ``state_dict`` keys do not change) and the module's hooks (forward, pre-forward,
    backward, state_dict). A module that the swap would change is left stock with a warning that names it and
    says why: a subclass (its own ``forward``), a parametrized module (``parametrizations.weight_norm``), one
    whose weights a pre-hook recomputes (``weight_norm``, ``spectral_norm``, ``prune``). If nothing was
    replaced, a warning says so.

    Returns the model (the replacement itself if ``module`` is one of those classes); with
    ``return_report=True``, ``(model, ReplaceReport)``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"replace_rnns: expected an nn.Module, got {type(module).__name__}")
    report = ReplaceReport()

    def consider(name: str, child: nn.Module) -> Optional[nn.Module]:
        if isinstance(child, _OURS) or not isinstance(child, _STOCK):
            return None
        label = name or type(child).__name__
        why = _why_not(child)
        if why is not None:
            report.left_stock.append((label, why))
            warnings.warn(f"replace_rnns: left {label} ({type(child).__name__}) stock: {why}", stacklevel=3)
            return None
        report.replaced.append(label)
        return _convert(child)

    top = consider("", module)
    if top is not None:
        result = top
    else:
        result = module
        for parent_name, parent in list(module.named_modules()):
            for name, child in list(parent.named_children()):
                new = consider(f"{parent_name}.{name}" if parent_name else name, child)
                if new is not None:
                    setattr(parent, name, new)
    if not report.replaced:
        warnings.warn(f"replace_rnns: nothing was replaced in {type(module).__name__} (no stock nn.LSTM, GRU, RNN "
                      "or their cells that could be swapped)", stacklevel=2)
    return (result, report) if return_report else result
