"""Pure batch normalization for ``torch.func`` (vmap, grad, jacrev, per-sample gradients).

:func:`batch_norm` takes the running statistics and returns the new ones instead of updating
buffers in place, so it runs under every ``torch.func`` transform. It is the core's three
steps in their torch-op form (``autograd.torch_op_forward`` -> ``running.running_stats_step``)
with autograd differentiating the primitives' torch ops instead of the closed-form backward.
``batchnorm.tools.functional_call`` runs a whole model this way.
"""

from __future__ import annotations

from torch import Tensor

from . import validate
from .autograd import torch_op_forward
from .running import running_stats_step

__all__ = ["batch_norm"]


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    axis: int = 1,
    store_unbiased: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Batch normalization without side effects: ``(y, new_running_mean, new_running_var)``.

    The arguments of :func:`batchnorm.functional.batch_norm`, in its order (and torch's).
    Training: ``y = (x - mean_B) / sqrt(var_B + eps) * weight + bias`` (eq. 1-4) and
    ``new = (1 - momentum) * running + momentum * batch`` (eq. 13), the stored variance
    unbiased (eq. 16) unless ``store_unbiased=False``; non-finite batch statistics return the
    running ones unchanged. Evaluation: the running statistics, returned as they are.

    Args:
        input: input with channels on ``axis``.
        running_mean, running_var: (C,) or None (training only; then None is returned).
        weight, bias: gamma and beta (C,), or None.
        training: batch statistics (True) or running statistics (False).
        momentum: weight of the new batch, a float (the cumulative ``None`` needs a counter:
            use the module API for it).
        eps: added to the variance; > 0.
        axis: keyword-only, the channel axis.
        store_unbiased: keyword-only, store the unbiased (True) or biased variance.

    Returns:
        ``(y, new_running_mean, new_running_var)``.

    Raises:
        ValueError, TypeError: as :func:`batchnorm.functional.batch_norm` (one value per
            channel in training included), and for ``momentum=None``.

    Example:
        >>> x, rm, rv = torch.randn(8, 3), torch.zeros(3), torch.ones(3)
        >>> jac = torch.func.jacrev(lambda x: batch_norm(x, rm, rv, training=True)[0])(x)
    """
    if momentum is None:
        raise ValueError(
            "batchnorm.func.batch_norm needs a float momentum; momentum=None needs a batch counter"
        )
    axis = validate.check_inputs(
        input, running_mean, running_var, weight, bias, training, momentum, eps, axis
    )
    y, stats = torch_op_forward(input, weight, bias, running_mean, running_var, training, eps, axis)
    if stats is None or running_mean is None or running_var is None:
        return y, running_mean, running_var
    new_mean, new_var, _ = running_stats_step(
        running_mean,
        running_var,
        stats.mean.detach(),
        stats.var.detach(),
        stats.num_values,
        momentum,
        store_unbiased=store_unbiased,
    )
    return y, new_mean, new_var
