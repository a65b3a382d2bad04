"""Drop-in and tree-structured modules: ``LSTM``, ``LSTMCell`` (for ``torch.nn.LSTM`` / ``LSTMCell``),
``replace_rnns``; ``TreeLSTMCell``, ``Tracker``, ``SPINN`` and ``ThinStack``."""

from .lstm import LSTM, LSTMCell
from .replace import replace_rnns
from .tree import PAD, REDUCE, SHIFT, SPINN, SPINNParse, ThinStack, Tracker, TreeLSTMCell

__all__ = ["LSTM", "LSTMCell", "replace_rnns", "TreeLSTMCell", "Tracker", "SPINN", "SPINNParse", "ThinStack",
           "SHIFT", "REDUCE", "PAD"]
