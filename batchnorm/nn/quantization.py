"""torch.ao.quantization's eager-mode fusing accepts our layers as it accepts torch.nn's.

``torch.ao.quantization.fuse_modules`` (and ``fuse_modules_qat``) look a fuser up by the exact
module types (``(nn.Conv2d, nn.BatchNorm2d, nn.ReLU)``), so this module registers, when
``batchnorm.nn`` is first imported, one entry for every pattern of torch's table with our
``BatchNorm1d/2d/3d`` in place of torch's. Each entry hands the fuser torch.nn's layer on the
same parameters and buffers (:func:`batchnorm.nn.batchnorm.torch_equivalent`): in evaluation
the BN is folded into the conv or linear weights (the same numbers as with torch.nn's layer),
and for QAT the fused ``ConvBn2d`` / ``ConvBnReLU2d`` module holds torch.nn's BN, because
torch's intrinsic modules accept exactly ``torch.nn.BatchNorm*d`` and QAT's conversion
rebuilds the BN anyway. A layer torch.nn cannot express (a variant, another axis, a
statistics policy) gets a clear ``BatchNormError`` instead of a fused module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.ao.quantization import fuser_method_mappings as mappings

from .batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, torch_equivalent

__all__ = ["register_fusers"]

_OURS: dict[type, type] = {
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
}


def _with_torch_bn(fuser: Callable[..., Any]) -> Callable[..., Any]:
    """``fuser`` called with torch.nn's layer in place of each of ours."""

    def fuse(is_qat: bool, *modules: nn.Module) -> Any:
        swapped = [
            torch_equivalent(m, purpose="torch.ao.quantization fusing")
            if isinstance(m, BatchNorm)
            else m
            for m in modules
        ]
        return fuser(is_qat, *swapped)

    return fuse


def register_fusers() -> int:
    """Add our layers to torch's fuser table (idempotent); returns the number of entries added."""
    table = mappings._DEFAULT_OP_LIST_TO_FUSER_METHOD
    added = 0
    for pattern, fuser in list(table.items()):
        if not any(t in _OURS for t in pattern):
            continue
        ours = tuple(_OURS.get(t, t) for t in pattern)
        if ours not in table:
            table[ours] = _with_torch_bn(fuser)
            added += 1
    return added


register_fusers()
