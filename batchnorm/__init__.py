"""batchnorm: batch normalization for PyTorch, exact, fast and complete.

The public surface, re-exported from the layout by role (see the README): ``core`` (the math),
``nn`` (the layers), ``tools`` (model-wide tools), ``cli`` (the command), ``experiments``.
Names load on first use, so ``import batchnorm`` is cheap and ``batchnorm --help`` needs no
torch; using any name loads torch and numpy only (plotting and data tooling load lazily).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE: dict[str, str] = {
    "batch_norm": "batchnorm.functional",
    "batch_normalization": "batchnorm.functional",
    "moments": "batchnorm.functional",
    "BatchNorm": "batchnorm.nn.batchnorm",
    "BatchNorm1d": "batchnorm.nn.batchnorm",
    "BatchNorm2d": "batchnorm.nn.batchnorm",
    "BatchNorm3d": "batchnorm.nn.batchnorm",
    "FrozenStatisticsWarning": "batchnorm.nn.batchnorm",
    "FrozenBatchNorm": "batchnorm.nn.frozen",
    "FrozenBatchNorm1d": "batchnorm.nn.frozen",
    "FrozenBatchNorm2d": "batchnorm.nn.frozen",
    "FrozenBatchNorm3d": "batchnorm.nn.frozen",
    "BatchNormAct": "batchnorm.nn.act",
    "BatchNormAct1d": "batchnorm.nn.act",
    "BatchNormAct2d": "batchnorm.nn.act",
    "BatchNormAct3d": "batchnorm.nn.act",
    "GhostBatchNorm": "batchnorm.nn.ghost",
    "GhostBatchNorm1d": "batchnorm.nn.ghost",
    "GhostBatchNorm2d": "batchnorm.nn.ghost",
    "GhostBatchNorm3d": "batchnorm.nn.ghost",
    "ghost_batch_norm": "batchnorm.nn.ghost",
    "BatchRenorm": "batchnorm.nn.renorm",
    "BatchRenorm1d": "batchnorm.nn.renorm",
    "BatchRenorm2d": "batchnorm.nn.renorm",
    "BatchRenorm3d": "batchnorm.nn.renorm",
    "LinearSchedule": "batchnorm.nn.renorm",
    "batch_renorm": "batchnorm.nn.renorm",
    "SyncBatchNorm": "batchnorm.nn.sync",
    "SyncBatchRenorm": "batchnorm.nn.sync",
    "convert_sync_batchnorm": "batchnorm.tools.sync",
    "revert_sync_batchnorm": "batchnorm.tools.sync",
    "check_frozen": "batchnorm.tools.freeze",
    "freeze": "batchnorm.tools.freeze",
    "set_stats_mode": "batchnorm.tools.freeze",
    "unfreeze": "batchnorm.tools.freeze",
    "convert": "batchnorm.tools.convert",
    "KerasBatchNorm": "batchnorm.tools.keras",
    "from_keras": "batchnorm.tools.keras",
    "load_keras_weights": "batchnorm.tools.keras",
    "to_keras": "batchnorm.tools.keras",
    "FoldReport": "batchnorm.tools.fold",
    "fold": "batchnorm.tools.fold",
    "fold_bn_layer": "batchnorm.tools.fold",
    "fold_layer_bn": "batchnorm.tools.fold",
    "recompute_statistics": "batchnorm.tools.population",
    "Finding": "batchnorm.tools.doctor",
    "diagnose": "batchnorm.tools.doctor",
}
_MODULES = ("functional", "func", "kernels")

__all__ = [*_MODULES, *_WHERE]


# Subpackages by role, importable as attributes too (``batchnorm.core.kernels.info()``).
_SUBPACKAGES = ("core", "nn", "tools", "cli", "experiments", "reference")


def __getattr__(name: str) -> Any:
    if name in _MODULES or name in _SUBPACKAGES:
        return importlib.import_module(f"batchnorm.{name}")
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'batchnorm' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:
    from . import func as func
    from . import functional as functional
    from . import kernels as kernels
    from .functional import batch_norm as batch_norm
    from .functional import batch_normalization as batch_normalization
    from .functional import moments as moments
    from .nn.act import BatchNormAct as BatchNormAct
    from .nn.act import BatchNormAct1d as BatchNormAct1d
    from .nn.act import BatchNormAct2d as BatchNormAct2d
    from .nn.act import BatchNormAct3d as BatchNormAct3d
    from .nn.batchnorm import BatchNorm as BatchNorm
    from .nn.batchnorm import BatchNorm1d as BatchNorm1d
    from .nn.batchnorm import BatchNorm2d as BatchNorm2d
    from .nn.batchnorm import BatchNorm3d as BatchNorm3d
    from .nn.batchnorm import FrozenStatisticsWarning as FrozenStatisticsWarning
    from .nn.frozen import FrozenBatchNorm as FrozenBatchNorm
    from .nn.frozen import FrozenBatchNorm1d as FrozenBatchNorm1d
    from .nn.frozen import FrozenBatchNorm2d as FrozenBatchNorm2d
    from .nn.frozen import FrozenBatchNorm3d as FrozenBatchNorm3d
    from .nn.ghost import GhostBatchNorm as GhostBatchNorm
    from .nn.ghost import GhostBatchNorm1d as GhostBatchNorm1d
    from .nn.ghost import GhostBatchNorm2d as GhostBatchNorm2d
    from .nn.ghost import GhostBatchNorm3d as GhostBatchNorm3d
    from .nn.ghost import ghost_batch_norm as ghost_batch_norm
    from .nn.renorm import BatchRenorm as BatchRenorm
    from .nn.renorm import BatchRenorm1d as BatchRenorm1d
    from .nn.renorm import BatchRenorm2d as BatchRenorm2d
    from .nn.renorm import BatchRenorm3d as BatchRenorm3d
    from .nn.renorm import LinearSchedule as LinearSchedule
    from .nn.renorm import batch_renorm as batch_renorm
    from .nn.sync import SyncBatchNorm as SyncBatchNorm
    from .nn.sync import SyncBatchRenorm as SyncBatchRenorm
    from .tools.convert import convert as convert
    from .tools.doctor import Finding as Finding
    from .tools.doctor import diagnose as diagnose
    from .tools.fold import FoldReport as FoldReport
    from .tools.fold import fold as fold
    from .tools.fold import fold_bn_layer as fold_bn_layer
    from .tools.fold import fold_layer_bn as fold_layer_bn
    from .tools.freeze import check_frozen as check_frozen
    from .tools.freeze import freeze as freeze
    from .tools.freeze import set_stats_mode as set_stats_mode
    from .tools.freeze import unfreeze as unfreeze
    from .tools.keras import KerasBatchNorm as KerasBatchNorm
    from .tools.keras import from_keras as from_keras
    from .tools.keras import load_keras_weights as load_keras_weights
    from .tools.keras import to_keras as to_keras
    from .tools.population import recompute_statistics as recompute_statistics
    from .tools.sync import convert_sync_batchnorm as convert_sync_batchnorm
    from .tools.sync import revert_sync_batchnorm as revert_sync_batchnorm
