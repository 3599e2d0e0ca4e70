"""The core: every piece of batch-norm math, once.

Layers, variants and tools reach the math only through this package's internal API
(``docs/architecture.md``):

- :mod:`.validate`: argument checks, one message per rule;
- :mod:`.stats`: the per-channel count, Bessel's correction, Chan's merge of (count, mean, M2),
  :class:`BatchStats` and :class:`Moments`;
- :mod:`.autograd`: :func:`train_forward` with :class:`TrainOptions`, :func:`eval_forward`,
  :func:`closed_form_backward` and the torch-op form :func:`torch_op_forward`;
- :mod:`.running`: the running-statistics rule (eq. 13-16), pure and in torch ops;
- :mod:`.collectives`: the two collectives of synchronized BN and :func:`active_group`;
- :mod:`.functional`: the public functional API built from the above;
- :mod:`.func`: the pure form for ``torch.func``;
- :mod:`.kernels`: the per-device primitives behind one interface.

Nothing here imports the layers (:mod:`batchnorm.nn`), the tools or the command line.
"""

from .autograd import Correction as Correction
from .autograd import TrainOptions as TrainOptions
from .autograd import closed_form_backward as closed_form_backward
from .autograd import eval_forward as eval_forward
from .autograd import torch_op_forward as torch_op_forward
from .autograd import train_forward as train_forward
from .collectives import active_group as active_group
from .collectives import is_distributed as is_distributed
from .functional import update_running_stats as update_running_stats
from .stats import BatchStats as BatchStats
from .stats import Moments as Moments
from .stats import bessel as bessel
from .stats import count_per_channel as count_per_channel
from .stats import merge_moments as merge_moments

__all__ = [
    "BatchStats",
    "Correction",
    "Moments",
    "TrainOptions",
    "active_group",
    "bessel",
    "closed_form_backward",
    "count_per_channel",
    "eval_forward",
    "is_distributed",
    "merge_moments",
    "torch_op_forward",
    "train_forward",
    "update_running_stats",
]
