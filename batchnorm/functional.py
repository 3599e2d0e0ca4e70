"""The functional API: ``batch_norm`` with ``torch.nn.functional.batch_norm``'s signature.

The three steps of the core, each usable alone: :func:`batch_stats` (eq. 1-2),
:func:`batch_norm` (statistics -> normalize -> running update, with the closed-form
backward), :func:`update_running_stats` / :func:`running_stats_step` (eq. 13-16),
:func:`inference_affine` (eq. 23), and TensorFlow's :func:`moments` and
:func:`batch_normalization`. They live in :mod:`batchnorm.core.functional`.
"""

from .core.functional import batch_norm as batch_norm
from .core.functional import batch_normalization as batch_normalization
from .core.functional import batch_stats as batch_stats
from .core.functional import inference_affine as inference_affine
from .core.functional import moments as moments
from .core.functional import running_stats_step as running_stats_step
from .core.functional import update_running_stats as update_running_stats

__all__ = [
    "batch_norm",
    "batch_normalization",
    "batch_stats",
    "inference_affine",
    "moments",
    "running_stats_step",
    "update_running_stats",
]
