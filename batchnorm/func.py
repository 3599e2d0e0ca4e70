"""Pure batch normalization for ``torch.func`` (vmap, grad, jacrev, per-sample gradients).

:func:`batch_norm` takes the running statistics and returns the new ones instead of updating
buffers in place, so it runs under every ``torch.func`` transform. It is the core's three
steps (``kernels._native.stats`` -> ``normalize`` -> :func:`functional.running_stats_step`)
with autograd differentiating the primitives' torch ops instead of the closed-form backward
(``torch.func`` cannot see through the core's ``autograd.Function``).

:func:`functional_call` runs a whole model this way: it is ``torch.func.functional_call``
with every plain BN layer (ours or ``torch.nn.BatchNorm*d``) routed through :func:`batch_norm`,
and returns the output and the new running statistics. Per-sample gradients through BN
(docs/variants.md): BN in training mixes the samples of a batch, so a per-sample gradient
exists only where each sample's output depends on that sample alone: BN in evaluation mode
(running statistics), which is the pattern to use with ``vmap(grad(...))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from . import functional as F
from .kernels import _native

__all__ = ["batch_norm", "functional_call"]


def batch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
    axis: int = 1,
    *,
    store_unbiased: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Batch normalization without side effects: ``(y, new_running_mean, new_running_var)``.

    Training: ``y = (x - mean_B) / sqrt(var_B + eps) * weight + bias`` (eq. 1-4) and
    ``new = (1 - momentum) * running + momentum * batch`` (eq. 13), the stored variance
    unbiased (eq. 16) unless ``store_unbiased=False``; non-finite batch statistics return the
    running ones unchanged. Evaluation: the running statistics, returned as they are.

    Args:
        x: input with channels on ``axis``.
        weight, bias: gamma and beta (C,), or None.
        running_mean, running_var: (C,) or None (training only; then None is returned).
        training: batch statistics (True) or running statistics (False).
        momentum: weight of the new batch, a float (the cumulative ``None`` needs a counter:
            use the module API for it).
        eps: added to the variance; > 0.
        axis: the channel axis.
        store_unbiased: keyword-only, store the unbiased (True) or biased variance.

    Returns:
        ``(y, new_running_mean, new_running_var)``.

    Raises:
        ValueError, TypeError: as :func:`batchnorm.functional.batch_norm` (one value per
            channel in training included), and for ``momentum=None``.

    Example:
        >>> x, rm, rv = torch.randn(8, 3), torch.zeros(3), torch.ones(3)
        >>> jac = torch.func.jacrev(lambda x: batch_norm(x, None, None, rm, rv, True)[0])(x)
    """
    if momentum is None:
        raise ValueError(
            "batchnorm.func.batch_norm needs a float momentum; momentum=None needs a batch counter"
        )
    axis = F._check_inputs(
        x, running_mean, running_var, weight, bias, training, momentum, eps, axis
    )
    if training:
        mean, var = _native.stats(x, axis)  # (C,) float64, (C,) acc dtype; differentiable
    else:
        mean = running_mean.to(torch.float64)
        var = running_var.to(_native.acc_dtype(x.dtype))
    inv_std = torch.rsqrt(var + eps)
    scale, shift = _native.scale_shift(inv_std, weight, bias)
    y = _native.normalize(x, axis, mean, scale, shift)
    if not training or running_mean is None:
        return y, running_mean, running_var
    new_mean, new_var = F.running_stats_step(
        running_mean,
        running_var,
        mean.detach(),
        var.detach(),
        x.numel() // x.shape[axis],
        momentum,
        store_unbiased=store_unbiased,
    )
    return y, new_mean, new_var


def _plain_bn(module: torch.nn.Module) -> bool:
    from .modules import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d

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

    def pure_forward(name: str, module: _BatchNorm):
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
                module.weight,
                module.bias,
                module.running_mean if (update or not use_batch) else None,
                module.running_var if (update or not use_batch) else None,
                use_batch,
                0.1 if module.momentum is None else module.momentum,
                module.eps,
                getattr(module, "axis", 1),
                store_unbiased=getattr(module, "store_unbiased", True),
            )
            if update:
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
                module.forward = pure_forward(name, module)
                patched.append(module)
        out = torch.func.functional_call(model, dict(parameters_and_buffers), args, kwargs)
    finally:
        for module in patched:
            del module.forward  # the instance attribute; the class's forward shows through again
    return out, new
