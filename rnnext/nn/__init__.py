"""Drop-in modules: ``LSTM`` and ``LSTMCell`` (for ``torch.nn.LSTM`` / ``LSTMCell``), and ``replace_rnns``."""

from .lstm import LSTM, LSTMCell
from .replace import replace_rnns

__all__ = ["LSTM", "LSTMCell", "replace_rnns"]
