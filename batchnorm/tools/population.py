"""Population statistics for a trained model: Algorithm 2 of the paper as a tool.

After training, replace every BN layer's running statistics by statistics of the data
itself, computed exactly instead of by a moving average (``docs/math.md``, eq. 17-22).
Each BN layer sees the inputs it would see in training (earlier BN layers normalize with
batch statistics, as in Algorithm 2) while the rest of the model is in eval mode (no
dropout noise). For every batch ``b`` with ``n_b`` values per channel, mean ``mu_b`` and
biased variance ``s2_b``:

- ``estimator="pooled"`` (default): the exact statistics of the concatenated data,
  ``mean = sum n_b mu_b / N`` and ``M2 = sum n_b s2_b + sum n_b (mu_b - mean)^2`` (eq. 22),
  stored as ``M2 / (N - 1)`` (unbiased, as torch) or ``M2 / N`` for a layer with
  ``store_unbiased=False``. It does not depend on how the data is split into batches.
- ``estimator="paper"``: Algorithm 2, ``E[x] = E_B[mu_B]`` and
  ``Var[x] = m/(m-1) E_B[s2_B]`` (eq. 17-18), batches weighted by their size.

With ``torch.distributed`` initialized, the sufficient statistics are all-reduced (two
packed collectives for all layers together), so every process ends with the same global
result. Every BN module counts: ours and ``torch.nn.BatchNorm*d`` / ``SyncBatchNorm``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core.collectives import active_group, all_gather_moments
from ..core.functional import batch_stats
from ..core.stats import Moments, bessel, count_per_channel
from .progress import Progress

__all__ = ["recompute_statistics", "bn_layers"]


def bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every batch-norm layer of ``model`` that keeps running statistics, with its name."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None
    ]


def _buffers(m: _BatchNorm) -> tuple[Tensor, Tensor]:
    """``(running_mean, running_var)`` of a layer :func:`bn_layers` returned (never None)."""
    assert m.running_mean is not None and m.running_var is not None
    return m.running_mean, m.running_var


@dataclass
class _Accumulator:
    """Per-channel (count, mean, M2) merged batch by batch (Chan, eq. 19-21), in float64."""

    moments: Moments | None = None
    # For the paper's estimator: sum over batches of n_b * m_b/(m_b - 1) * s2_b (eq. 18).
    paper: Tensor | None = None

    def add(self, n: int, mean: Tensor, var: Tensor) -> None:
        part = Moments.of(n, mean, var)
        self.moments = part if self.moments is None else self.moments.merge(part)
        term = n * bessel(var.double(), n)  # 0 for n == 1 (its variance is 0)
        self.paper = term if self.paper is None else self.paper + term


def _layer_axis(module: _BatchNorm) -> int:
    return getattr(module, "axis", 1)


def _first_input(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict) and "input" in batch:
        return batch["input"]
    raise TypeError(
        f"recompute_statistics got a batch of type {type(batch).__name__}; give tensors, "
        "(input, target) tuples, or pass forward=lambda model, batch: model(...)"
    )


def _model_device(model: nn.Module) -> torch.device | None:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return None


class _StopForward(Exception):
    """Raised by a hook once the layer being measured has seen its input (mode="eval")."""


def _finalize(
    layers: list[tuple[str, _BatchNorm]],
    accs: list[_Accumulator],
    estimator: str,
    process_group: Any,
) -> None:
    """Write the (merged over processes) statistics of ``accs`` into the layers' buffers."""
    group = active_group(process_group)
    merged: list[tuple[float, Tensor, Tensor, Tensor] | None] = []
    if group is not None:
        # A process whose shard is empty (or reached no layer) still joins the collective
        # with count 0, and the check runs on the global counts, alike on every rank: no
        # process is left waiting in a collective.
        parts, papers = [], []
        for (_, m), a in zip(layers, accs, strict=True):
            zeros = _buffers(m)[0].new_zeros(m.num_features, dtype=torch.float64)
            mo = a.moments if a.moments is not None else Moments(0.0, zeros, zeros)
            parts.append((mo.count, mo.mean, mo.m2))
            papers.append(zeros if a.paper is None else a.paper)
        for (count, mean, m2), paper in zip(
            *all_gather_moments(parts, group, sums=papers), strict=True
        ):
            merged.append((count, mean, m2, paper) if count > 0 else None)
    else:
        for a in accs:
            if a.moments is None or a.paper is None:
                merged.append(None)
            else:
                merged.append((a.moments.count, a.moments.mean, a.moments.m2, a.paper))
    missing = [name for (name, _), mg in zip(layers, merged, strict=True) if mg is None]
    if missing:
        raise ValueError(
            f"no batch reached the BN layer(s) {missing}; check that forward runs them, "
            "or remove them from the model"
        )
    with torch.no_grad():
        for (_, m), mg in zip(layers, merged, strict=True):
            assert mg is not None
            count, mean, m2, paper = mg
            if estimator == "pooled":
                unbiased = getattr(m, "store_unbiased", True)
                var = Moments(count, mean, m2).var(unbiased)  # (eq. 21)
            else:
                var = paper / count  # (eq. 18), batches weighted by size
            running_mean, running_var = _buffers(m)
            running_mean.copy_(mean.to(running_mean))
            running_var.copy_(var.to(running_var))


def recompute_statistics(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    mode: str = "train",
    num_batches: int | None = None,
    num_samples: int | None = None,
    estimator: str = "pooled",
    forward: Callable[[nn.Module, Any], Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    process_group: Any = None,
) -> nn.Module:
    """Set every BN layer's running statistics to population statistics of ``batches``.

    ``running_mean = sum_b n_b mu_b / N`` and ``running_var = M2 / (N - 1)`` (pooled, the
    exact statistics of the concatenated data; ``M2 / N`` for a layer storing biased
    variances), or Algorithm 2's ``E_B[mu_B]`` and ``m/(m-1) E_B[s2_B]`` with
    ``estimator="paper"``. ``num_batches_tracked`` is left as it was. The model is modified
    in place and returned; its training flags, the layers' momenta and counters are
    restored and the temporary hooks removed, even if a batch fails.

    Two modes decide what each BN layer's input is while it is measured:

    - ``mode="train"`` (Algorithm 2, one pass): earlier BN layers normalize with batch
      statistics, as in training. The first BN layer's result does not depend on how the
      data is batched; deeper layers' results do, a little, through the batch statistics
      of the layers before them.
    - ``mode="eval"`` (one pass per BN layer, each stopping at that layer): earlier BN layers
      use their freshly recomputed statistics, so every layer gets the exact statistics of
      the inputs it sees at inference, independent of the batching. Needs ``batches`` that
      can be iterated several times (a list, a DataLoader).

    Args:
        model: any module containing BN layers (``torch.nn`` or ours).
        batches: iterable of input tensors, of (input, ...) tuples/lists, or of anything
            ``forward`` understands (e.g. a DataLoader).
        mode: "train" or "eval", see above.
        num_batches: use at most this many batches.
        num_samples: use at most this many samples (the first axis of each input); the
            last batch is cut to fit (not with ``forward``).
        estimator: "pooled" (exact statistics of the data) or "paper" (Algorithm 2).
        forward: ``forward(model, batch)`` runs the model; default ``model(input)``.
        device: move inputs to this device; default the model's.
        progress: draw a progress bar on stderr.
        process_group: with torch.distributed initialized, the group to all-reduce over
            (default: the world). Every process must call this function.

    Returns:
        ``model``, with new running statistics.

    Raises:
        ValueError: an unknown estimator or mode, no BN layer with running statistics, no
            batch, or a layer that no batch reached.
        TypeError: a batch it cannot feed to the model, or a one-shot iterator with
            ``mode="eval"``.

    Example:
        >>> recompute_statistics(model, train_loader, num_batches=100)
        >>> model.eval()
    """
    if estimator not in ("pooled", "paper"):
        raise ValueError(f"estimator must be 'pooled' or 'paper', got {estimator!r}")
    if mode not in ("train", "eval"):
        raise ValueError(
            f"mode must be 'train' (Algorithm 2) or 'eval' (layer by layer), got {mode!r}"
        )
    for name, value in (("num_batches", num_batches), ("num_samples", num_samples)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {value}")
    layers = bn_layers(model)
    if not layers:
        raise ValueError(
            "recompute_statistics found no batch-norm layer with running statistics in the model "
            "(track_running_stats=False layers have none to recompute)"
        )
    if mode == "eval" and iter(batches) is batches:
        raise TypeError(
            "mode='eval' makes one pass per BN layer, so batches must be re-iterable "
            "(a list or a DataLoader), not a one-shot iterator or generator"
        )
    device = torch.device(device) if device is not None else _model_device(model)

    def run_pass(hooked: list[_BatchNorm], stop: bool, label: str) -> list[_Accumulator]:
        accs = {id(m): _Accumulator() for m in hooked}

        def hook(module: _BatchNorm, args: tuple[Any, ...]) -> None:
            x = args[0]
            axis = _layer_axis(module) % x.ndim
            n = count_per_channel(x, axis)
            if n > 0:
                mean, var = batch_stats(x.detach(), axis)
                accs[id(module)].add(n, mean, var)
            if stop:
                raise _StopForward

        handles = [m.register_forward_pre_hook(hook) for m in hooked]
        bar = Progress(num_batches, unit="batches", enabled=progress, label=label)
        seen_batches = seen_samples = 0
        try:
            with torch.no_grad():
                for batch in batches:
                    if num_batches is not None and seen_batches >= num_batches:
                        break
                    if num_samples is not None and seen_samples >= num_samples:
                        break
                    try:
                        if forward is None:
                            x = _first_input(batch)
                            if num_samples is not None:
                                x = x[: num_samples - seen_samples]
                            seen_samples += x.shape[0]
                            model(x.to(device) if device is not None else x)
                        else:
                            forward(model, batch)
                    except _StopForward:
                        pass
                    seen_batches += 1
                    bar.update()
        finally:
            bar.close()
            for h in handles:
                h.remove()
        if seen_batches == 0 and active_group(process_group) is None:
            raise ValueError("recompute_statistics got no batch: the iterable was empty")
        return [accs[id(m)] for m in hooked]

    was_training = {id(m): m.training for m in model.modules()}
    momenta = {id(m): m.momentum for _, m in layers}
    counters = {
        id(m): m.num_batches_tracked.clone() for _, m in layers if m.num_batches_tracked is not None
    }
    try:
        model.eval()
        if mode == "train":
            for _, m in layers:
                # Batch statistics in the forward (Algorithm 2), buffers left as they are.
                m.train()
                m.momentum = 0.0
            accs = run_pass([m for _, m in layers], stop=False, label="population statistics")
            _finalize(layers, accs, estimator, process_group)
        else:
            for i, (name, m) in enumerate(
                _execution_order(model, layers, batches, forward, device)
            ):
                label = f"population statistics {i + 1}/{len(layers)} ({name})"
                accs = run_pass([m], stop=True, label=label)
                _finalize([(name, m)], accs, estimator, process_group)
    finally:
        for sub in model.modules():
            sub.training = was_training[id(sub)]
        for _, bn in layers:
            bn.momentum = momenta[id(bn)]
            if id(bn) in counters and bn.num_batches_tracked is not None:
                bn.num_batches_tracked.copy_(counters[id(bn)])
    return model


def _execution_order(
    model: nn.Module,
    layers: list[tuple[str, _BatchNorm]],
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None,
    device: torch.device | None,
) -> list[tuple[str, _BatchNorm]]:
    """The BN layers in the order one forward pass (of the first batch, in eval) runs them.

    Layers the pass does not reach keep their registration order, after the others.
    """
    order: list[int] = []

    def hook(module: _BatchNorm, args: tuple[Any, ...]) -> None:
        if id(module) not in order:
            order.append(id(module))

    handles = [m.register_forward_pre_hook(hook) for _, m in layers]
    try:
        with torch.no_grad():
            for batch in batches:
                if forward is None:
                    x = _first_input(batch)
                    model(x.to(device) if device is not None else x)
                else:
                    forward(model, batch)
                break
    finally:
        for h in handles:
            h.remove()
    rank = {key: i for i, key in enumerate(order)}
    return sorted(layers, key=lambda nm: rank.get(id(nm[1]), len(order)))
