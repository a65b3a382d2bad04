"""rnnext: fused C++/CUDA recurrent and tree-structured networks for PyTorch.

``import rnnext`` loads the compiled op library (``torch.ops.rnnext``) and fails with a clear message if it is
missing or was built for another torch.
"""

from . import _ops  # noqa: F401  (loads the library, registers fake kernels and autograd)
from . import nn, utils
from .nn import PAD, REDUCE, SHIFT, replace_rnns

__version__ = "0.2.0"

__all__ = ["nn", "utils", "replace_rnns", "SHIFT", "REDUCE", "PAD", "__version__"]
