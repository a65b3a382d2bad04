"""Whole-module checkpoints: ``torch.save(model)`` of a model holding rnnext modules loads with ``torch.load``'s
default ``weights_only=True`` once rnnext is imported, with no allowlist to edit (word_language_model saves and
reloads its model this way)."""

from __future__ import annotations

from typing import List

import torch
from torch import nn

# The torch.nn classes that rnnext's ready models are built from: their pickles name these too.
TORCH_NN_PARTS = (nn.Dropout, nn.Embedding, nn.Linear, nn.ReLU, nn.Sequential)


def register() -> List[type]:
    """Adds every public class of rnnext.nn and rnnext.models, and TORCH_NN_PARTS, to torch.load's
    weights-only allowlist (``torch.serialization.add_safe_globals``); returns them."""
    from . import models
    from . import nn as rnnext_nn

    classes: List[type] = [getattr(m, name) for m in (rnnext_nn, models) for name in m.__all__]
    classes = [c for c in classes if isinstance(c, type)] + list(TORCH_NN_PARTS)
    torch.serialization.add_safe_globals(classes)
    return classes
