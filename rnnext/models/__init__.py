"""Ready models: ``RNNClassifier`` (sequence classifier) and ``SPINNClassifier`` (trees)."""

from .classifier import RNNClassifier
from .spinn import SPINNClassifier

__all__ = ["RNNClassifier", "SPINNClassifier"]
