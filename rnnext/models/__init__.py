"""Ready models: ``RNNClassifier`` (sequence classifier), ``SPINNClassifier`` (trees), ``CharGenerator`` with
``CharVocab`` (character language model)."""

from .chars import CharGenerator, CharVocab
from .classifier import RNNClassifier
from .spinn import SPINNClassifier

__all__ = ["RNNClassifier", "SPINNClassifier", "CharGenerator", "CharVocab"]
