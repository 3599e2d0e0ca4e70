"""batchnorm: batch normalization for PyTorch, exact, fast and complete.

``import batchnorm`` loads torch and numpy only; plotting and data tooling load lazily.
"""

from . import functional as functional
from .functional import batch_norm as batch_norm
from .functional import batch_normalization as batch_normalization
from .functional import moments as moments
from .modules import BatchNorm as BatchNorm
from .modules import BatchNorm1d as BatchNorm1d
from .modules import BatchNorm2d as BatchNorm2d
from .modules import BatchNorm3d as BatchNorm3d
from .population import recompute_statistics as recompute_statistics

__version__ = "0.1.0"

__all__ = [
    "functional",
    "batch_norm",
    "batch_normalization",
    "moments",
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "recompute_statistics",
]
