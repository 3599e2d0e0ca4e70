"""Module surgery shared by freeze, convert and fold: replace submodules in place."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_modules(
    model: nn.Module, fn: Callable[[str, nn.Module], nn.Module | None]
) -> nn.Module:
    """Replace every submodule ``m`` (named ``name``) for which ``fn(name, m)`` is not None.

    The model is changed in place and returned; if the model itself is replaced, the
    replacement is returned (as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does).
    A module is asked before its children, and a replacement is not descended into. The
    new module takes the old one's training flag.
    """
    top = fn("", model)
    if top is not None:
        top.train(model.training)
        return top
    _replace_children(model, "", fn)
    return model


def _replace_children(
    module: nn.Module, prefix: str, fn: Callable[[str, nn.Module], nn.Module | None]
) -> None:
    for name, child in list(module.named_children()):
        full = f"{prefix}.{name}" if prefix else name
        new = fn(full, child)
        if new is None:
            _replace_children(child, full, fn)
        else:
            new.train(child.training)
            setattr(module, name, new)
