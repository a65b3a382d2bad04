"""Utilities: ``rnnext.utils.rnn`` holds the drop-ins for ``torch.nn.utils.rnn``."""

from . import rnn

__all__ = ["rnn"]
