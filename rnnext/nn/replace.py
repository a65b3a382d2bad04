"""Swap stock ``torch.nn`` recurrent modules inside a model for their rnnext drop-ins."""

from __future__ import annotations

from torch import nn

from .lstm import LSTM, LSTMCell

__all__ = ["replace_rnns"]


def _convert(module: nn.Module) -> nn.Module | None:
    """The rnnext twin of ``module`` sharing its Parameter objects, or None if it has none."""
    if type(module) is nn.LSTM or (isinstance(module, nn.LSTM) and not isinstance(module, LSTM)):
        new = LSTM.__new__(LSTM)
        nn.Module.__init__(new)
        for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional",
                     "proj_size"):
            setattr(new, attr, getattr(module, attr))
        new.dropout = float(module.dropout)
        new._flat_weights_names = list(module._flat_weights_names)
        new._all_weights = [list(names) for names in module._all_weights]
        for name in new._flat_weights_names:
            setattr(new, name, getattr(module, name))
    elif isinstance(module, nn.LSTMCell):
        new = LSTMCell.__new__(LSTMCell)
        nn.Module.__init__(new)
        new.input_size, new.hidden_size, new.bias = module.input_size, module.hidden_size, module.bias
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            p = getattr(module, name)
            if p is None:
                new.register_parameter(name, None)
            else:
                setattr(new, name, p)
    else:
        return None
    new.train(module.training)
    return new


def replace_rnns(module: nn.Module) -> nn.Module:
    """Replace every ``torch.nn.LSTM`` and ``torch.nn.LSTMCell`` inside ``module`` with the rnnext version.

    The replacements are made in place and share the original ``Parameter`` objects, so an optimizer built
    before the swap keeps working and ``state_dict`` keys do not change. Returns the model (the replacement
    itself if ``module`` is an LSTM or LSTMCell).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"replace_rnns: expected an nn.Module, got {type(module).__name__}")
    top = _convert(module)
    if top is not None:
        return top
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            new = _convert(child)
            if new is not None:
                setattr(parent, name, new)
    return module
