"""``torch.func.functional_call`` over a whole model, with every plain BN layer made pure.

:func:`functional_call` is ``torch.func.functional_call`` with every plain BN layer (ours or
``torch.nn.BatchNorm*d``) routed through :func:`batchnorm.func.batch_norm`, and returns the
output and the new running statistics. Per-sample gradients through BN (docs/variants.md):
BN in training mixes the samples of a batch, so a per-sample gradient exists only where each
sample's output depends on that sample alone: BN in evaluation mode (running statistics),
which is the pattern to use with ``vmap(grad(...))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ..core.func import batch_norm
from ..nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["functional_call"]


def _plain_bn(module: torch.nn.Module) -> bool:
    plain = (
        BatchNorm,
        BatchNorm1d,
        BatchNorm2d,
        BatchNorm3d,
        torch.nn.BatchNorm1d,
        torch.nn.BatchNorm2d,
        torch.nn.BatchNorm3d,
    )
    return type(module) in plain


def functional_call(
    model: torch.nn.Module,
    parameters_and_buffers: Mapping[str, Tensor],
    args: Any,
    kwargs: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Tensor]]:
    """``torch.func.functional_call`` with BN made pure; returns ``(output, new_buffers)``.

    Each plain BN layer (``batchnorm.BatchNorm*``, ``torch.nn.BatchNorm*d``) computes with
    :func:`batch_norm` on the parameters and buffers given, in its own train/eval mode;
    ``new_buffers`` maps ``"<layer>.running_mean"``/``"<layer>.running_var"`` (and
    ``num_batches_tracked``) to the values after this call, for the layers that updated.
    The model is not modified: the forwards are restored in ``finally``.

    Raises:
        TypeError: a BN variant (ghost, renorm, ...) in the model: only plain BN is routed.
    """
    new: dict[str, Tensor] = {}
    patched: list[torch.nn.Module] = []

    def pure_forward(name: str, module: _BatchNorm) -> Callable[[Tensor], Tensor]:
        def forward(input: Tensor) -> Tensor:
            update = module.training and module.track_running_stats
            if update and module.momentum is None:
                raise ValueError(
                    f"batchnorm.func.functional_call: {name!r} has momentum=None (cumulative average), "
                    "which needs a batch counter; set a float momentum or call the model in eval mode"
                )
            use_batch = module.training or module.running_mean is None
            y, rm, rv = batch_norm(
                input,
                module.running_mean if (update or not use_batch) else None,
                module.running_var if (update or not use_batch) else None,
                module.weight,
                module.bias,
                use_batch,
                0.1 if module.momentum is None else module.momentum,
                module.eps,
                axis=getattr(module, "axis", 1),
                store_unbiased=getattr(module, "store_unbiased", True),
            )
            if update and rm is not None and rv is not None:
                assert module.num_batches_tracked is not None  # tracked
                prefix = f"{name}." if name else ""
                new[prefix + "running_mean"], new[prefix + "running_var"] = rm, rv
                new[prefix + "num_batches_tracked"] = module.num_batches_tracked + 1
            return y

        return forward

    try:
        for name, module in model.named_modules():
            if isinstance(module, _BatchNorm):
                if not _plain_bn(module):
                    raise TypeError(
                        f"batchnorm.func.functional_call routes plain BN layers only, but {name!r} is a "
                        f"{type(module).__name__}; convert it to BatchNorm*d or call torch.func.functional_call"
                    )
                module.forward = pure_forward(name, module)  # type: ignore[method-assign,assignment]
                patched.append(module)
        out = torch.func.functional_call(model, dict(parameters_and_buffers), args, kwargs)
    finally:
        for module in patched:
            del module.forward  # the instance attribute; the class's forward shows through again
    return out, new
