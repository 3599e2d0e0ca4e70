"""batchnorm: batch normalization for PyTorch, exact, fast and complete.

``import batchnorm`` loads torch and numpy only; plotting and data tooling load lazily.
"""

from . import func as func
from . import functional as functional
from .act import BatchNormAct as BatchNormAct
from .act import BatchNormAct1d as BatchNormAct1d
from .act import BatchNormAct2d as BatchNormAct2d
from .act import BatchNormAct3d as BatchNormAct3d
from .convert import KerasBatchNorm as KerasBatchNorm
from .convert import convert as convert
from .convert import from_keras as from_keras
from .convert import load_keras_weights as load_keras_weights
from .convert import to_keras as to_keras
from .distributed import SyncBatchNorm as SyncBatchNorm
from .distributed import SyncBatchRenorm as SyncBatchRenorm
from .distributed import convert_sync_batchnorm as convert_sync_batchnorm
from .distributed import revert_sync_batchnorm as revert_sync_batchnorm
from .doctor import Finding as Finding
from .doctor import diagnose as diagnose
from .fold import FoldReport as FoldReport
from .fold import fold as fold
from .fold import fold_bn_layer as fold_bn_layer
from .fold import fold_layer_bn as fold_layer_bn
from .freeze import FrozenBatchNorm as FrozenBatchNorm
from .freeze import FrozenBatchNorm1d as FrozenBatchNorm1d
from .freeze import FrozenBatchNorm2d as FrozenBatchNorm2d
from .freeze import FrozenBatchNorm3d as FrozenBatchNorm3d
from .freeze import FrozenStatisticsWarning as FrozenStatisticsWarning
from .freeze import check_frozen as check_frozen
from .freeze import freeze as freeze
from .freeze import set_stats_mode as set_stats_mode
from .freeze import unfreeze as unfreeze
from .functional import batch_norm as batch_norm
from .functional import batch_normalization as batch_normalization
from .functional import moments as moments
from .ghost import GhostBatchNorm as GhostBatchNorm
from .ghost import GhostBatchNorm1d as GhostBatchNorm1d
from .ghost import GhostBatchNorm2d as GhostBatchNorm2d
from .ghost import GhostBatchNorm3d as GhostBatchNorm3d
from .ghost import ghost_batch_norm as ghost_batch_norm
from .modules import BatchNorm as BatchNorm
from .modules import BatchNorm1d as BatchNorm1d
from .modules import BatchNorm2d as BatchNorm2d
from .modules import BatchNorm3d as BatchNorm3d
from .population import recompute_statistics as recompute_statistics
from .renorm import BatchRenorm as BatchRenorm
from .renorm import BatchRenorm1d as BatchRenorm1d
from .renorm import BatchRenorm2d as BatchRenorm2d
from .renorm import BatchRenorm3d as BatchRenorm3d
from .renorm import LinearSchedule as LinearSchedule
from .renorm import batch_renorm as batch_renorm

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
    "SyncBatchNorm",
    "SyncBatchRenorm",
    "convert_sync_batchnorm",
    "revert_sync_batchnorm",
    "FrozenBatchNorm",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "FrozenStatisticsWarning",
    "check_frozen",
    "freeze",
    "set_stats_mode",
    "unfreeze",
    "KerasBatchNorm",
    "convert",
    "from_keras",
    "load_keras_weights",
    "to_keras",
    "FoldReport",
    "fold",
    "fold_bn_layer",
    "fold_layer_bn",
    "recompute_statistics",
    "func",
    "BatchNormAct",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
    "Finding",
    "diagnose",
    "GhostBatchNorm",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "ghost_batch_norm",
    "BatchRenorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "LinearSchedule",
    "batch_renorm",
]
