"""The layers: drop-ins for ``torch.nn.BatchNorm*d``, frozen BN, the variants, synchronized BN.

Each layer holds parameters and buffers and chooses between training and evaluation; the
math is the core's (:mod:`batchnorm.core`).
"""

# Importing the layers registers them with torch.ao.quantization's fusers (quantization.py).
from . import quantization as quantization
from .act import BatchNormAct as BatchNormAct
from .act import BatchNormAct1d as BatchNormAct1d
from .act import BatchNormAct2d as BatchNormAct2d
from .act import BatchNormAct3d as BatchNormAct3d
from .batchnorm import BatchNorm as BatchNorm
from .batchnorm import BatchNorm1d as BatchNorm1d
from .batchnorm import BatchNorm2d as BatchNorm2d
from .batchnorm import BatchNorm3d as BatchNorm3d
from .batchnorm import FrozenStatisticsWarning as FrozenStatisticsWarning
from .frozen import FrozenBatchNorm as FrozenBatchNorm
from .frozen import FrozenBatchNorm1d as FrozenBatchNorm1d
from .frozen import FrozenBatchNorm2d as FrozenBatchNorm2d
from .frozen import FrozenBatchNorm3d as FrozenBatchNorm3d
from .ghost import GhostBatchNorm as GhostBatchNorm
from .ghost import GhostBatchNorm1d as GhostBatchNorm1d
from .ghost import GhostBatchNorm2d as GhostBatchNorm2d
from .ghost import GhostBatchNorm3d as GhostBatchNorm3d
from .ghost import ghost_batch_norm as ghost_batch_norm
from .renorm import BatchRenorm as BatchRenorm
from .renorm import BatchRenorm1d as BatchRenorm1d
from .renorm import BatchRenorm2d as BatchRenorm2d
from .renorm import BatchRenorm3d as BatchRenorm3d
from .renorm import LinearSchedule as LinearSchedule
from .renorm import batch_renorm as batch_renorm
from .sync import SyncBatchNorm as SyncBatchNorm
from .sync import SyncBatchRenorm as SyncBatchRenorm

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
    "BatchRenorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "FrozenBatchNorm",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "FrozenStatisticsWarning",
    "GhostBatchNorm",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "LinearSchedule",
    "SyncBatchNorm",
    "SyncBatchRenorm",
    "batch_renorm",
    "ghost_batch_norm",
]
