"""rnnext: fused C++/CUDA recurrent and tree-structured networks for PyTorch.

``import rnnext`` loads the compiled op library (``torch.ops.rnnext``) and fails with a clear message if it is
missing or was built for another torch. It also registers rnnext's module and model classes with
``torch.load``'s weights-only allowlist, so that whole-module checkpoints (``torch.save(model)``) load.
"""

from . import _ops  # noqa: F401  (loads the library, registers fake kernels and autograd)
from . import _safe_globals, data, models, nn, onnx, utils
from .nn import PAD, REDUCE, SHIFT, replace_rnns

_safe_globals.register()

__version__ = "0.2.0"

__all__ = ["nn", "models", "data", "utils", "onnx", "replace_rnns", "SHIFT", "REDUCE", "PAD", "__version__"]
