"""Module surgery shared by freeze, unfreeze and convert: replace submodules in place."""

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
    new module takes the old one's training flag. All replacements are built first and
    installed only if every call of ``fn`` succeeded, so an error leaves the model as it was.
    """
    top = fn("", model)
    if top is not None:
        top.train(model.training)
        return top
    todo: list[tuple[nn.Module, str, nn.Module]] = []
    _collect(model, "", fn, todo)
    for parent, name, new in todo:
        new.train(getattr(parent, name).training)
        setattr(parent, name, new)
    return model


def _collect(
    module: nn.Module,
    prefix: str,
    fn: Callable[[str, nn.Module], nn.Module | None],
    todo: list[tuple[nn.Module, str, nn.Module]],
) -> None:
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        new = fn(full, child)
        if new is None:
            _collect(child, full, fn, todo)
        else:
            todo.append((module, name, new))
