"""Step 3 of the core: the running statistics, moved towards each training batch's.

PyTorch's convention, as formulas (equation numbers refer to ``docs/math.md``)::

    running = (1 - momentum) * running + momentum * batch_stat       (eq. 13)
    running_var stores the unbiased var * m / (m - 1) by default      (eq. 16)

``momentum=None`` is a cumulative average, ``running += (batch - running) / n`` (eq. 15),
``n`` the number of batches so far including this one. A batch whose statistics are not all
finite leaves every buffer as it was and is counted, decided on the device (no host sync).

The in-place entry point is ``functional.update_running_stats``, which runs the kernel set's
``running_update``; this file holds the rule itself, pure (:func:`running_stats_step`, for
``torch.func``) and in torch ops (:func:`native_running_update`, the native kernel entry).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .stats import bessel

__all__ = ["all_finite", "native_running_update", "running_stats_step"]


def all_finite(mean: Tensor, var: Tensor) -> Tensor:
    """A 0-d bool tensor: every entry of ``mean`` and ``var`` is finite (no host sync).

    One reduction each: a sum is finite exactly when every term is, barring an overflow that
    float64 accumulation of batch statistics cannot reach.
    """
    return torch.isfinite(mean.sum(dtype=torch.float64) + var.sum(dtype=torch.float64))


def running_stats_step(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: int,
    factor: float | Tensor,
    *,
    store_unbiased: bool = True,
    ok: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The pure form of ``update_running_stats``: new ``(running_mean, running_var)``.

    ``new = (1 - factor) * running + factor * batch`` (eq. 13), the batch variance made
    unbiased (eq. 16) if ``store_unbiased``. The blend is computed in float32 or better (a
    float16 buffer is blended in float32 and rounded once: a batch variance above 65504 still
    moves a float16 ``running_var`` to the right finite value). Where the batch statistics are
    not all finite (``ok``, a 0-d bool tensor, is that test when the caller has already made
    it), or the blended values do not fit the buffers' dtype, the running ones are returned
    unchanged and ``ok`` is False. No in-place operation, so it runs under ``torch.func``.

    Returns:
        ``(new_running_mean, new_running_var, ok)``.
    """
    if ok is None:
        ok = all_finite(mean, var)
    batch_var = bessel(var, count) if store_unbiased else var  # (eq. 16)
    mean_acc = torch.promote_types(running_mean.dtype, torch.float32)
    var_acc = torch.promote_types(running_var.dtype, torch.float32)
    new_mean = factor * mean.to(mean_acc) + (1 - factor) * running_mean.to(mean_acc)
    new_var = factor * batch_var.to(var_acc) + (1 - factor) * running_var.to(var_acc)
    new_mean, new_var = new_mean.to(running_mean.dtype), new_var.to(running_var.dtype)
    # A value that overflows the buffer's dtype (float16 holds at most 65504) is not stored.
    ok = ok & all_finite(new_mean, new_var)
    return (
        torch.where(ok, new_mean, running_mean),
        torch.where(ok, new_var, running_var),
        ok,
    )


def native_running_update(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum: float | Tensor | None,
    num_batches_tracked: Tensor | None,
    store_unbiased: bool,
    skipped_updates: Tensor | None,
) -> None:
    """``update_running_stats`` in torch ops, on any device: the native kernel entry."""
    with torch.no_grad():
        ok = all_finite(mean, var)
        factor: float | Tensor
        if momentum is None:
            assert num_batches_tracked is not None  # checked by update_running_stats
            # (eq. 15) as an EMA with factor 1/n, n counting this batch if it is stored; clamp
            # keeps 1/0 out of a skipped first batch.
            n = num_batches_tracked + ok.to(num_batches_tracked.dtype)
            factor = 1.0 / n.clamp(min=1).to(torch.promote_types(running_mean.dtype, torch.float32))
        else:
            factor = momentum
        new_mean, new_var, ok = running_stats_step(
            running_mean,
            running_var,
            mean,
            var,
            count,
            factor,
            store_unbiased=store_unbiased,
            ok=ok,
        )
        if num_batches_tracked is not None:
            num_batches_tracked.add_(ok.to(num_batches_tracked.dtype))
        if skipped_updates is not None:
            skipped_updates.add_((~ok).to(skipped_updates.dtype))
        running_mean.copy_(new_mean)
        running_var.copy_(new_var)
