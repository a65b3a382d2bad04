"""Drop-in and tree-structured modules: ``LSTM``, ``LSTMCell``, ``GRU``, ``GRUCell``, ``RNN``, ``RNNCell`` (for
their ``torch.nn`` namesakes), ``replace_rnns``; ``TreeLSTMCell``, ``Tracker``, ``SPINN`` and ``ThinStack``."""

from .lstm import LSTM, ArgumentError, LSTMCell, RankError
from .rnn import GRU, RNN, GRUCell, RNNCell
from .replace import replace_rnns
from .snli_example import SNLIExampleSPINN
from .tree import PAD, REDUCE, SHIFT, SPINN, SPINNParse, ThinStack, Tracker, TreeLSTMCell

__all__ = ["LSTM", "LSTMCell", "GRU", "GRUCell", "RNN", "RNNCell", "replace_rnns", "SNLIExampleSPINN", "TreeLSTMCell", "Tracker", "SPINN", "SPINNParse", "ThinStack",
           "SHIFT", "REDUCE", "PAD", "ArgumentError", "RankError"]
