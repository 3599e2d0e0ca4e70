"""Fold inference-mode batch norm into the weights of a neighbouring linear or conv layer.

At inference BN is one fixed affine map per channel (eq. 23)::

    scale = gamma / sqrt(running_var + eps),   shift = beta - running_mean * scale

so a layer ``z = W x + b`` followed by BN becomes one layer (eq. 25)::

    W' = W * scale   (per output channel),   b' = b * scale + shift

and BN *before* a layer, ``W (x * scale + shift) + b``, becomes ``W' = W * scale`` (per
input channel), ``b' = b + W shift``. The second fold is exact for ``Linear`` (BN over the
last axis) and for convolutions that pad with reflect/replicate/circular padding or not at
all; it is *not* exact for a convolution with zero padding, whose padded border would see 0
where the BN output is ``shift``. Folds are computed in float64 and cast back to the
layer's dtype.

:func:`fold_layer_bn` and :func:`fold_bn_layer` are pure functions on one pair;
:func:`fold` finds every foldable pair in a model (nested ``Sequential`` and, with
``torch.fx`` symbolic tracing, any module) and returns a new model and a :class:`FoldReport`
with the error measured on a probe batch.

Compared with ``torch.fx.experimental.optimization.fuse`` (torch 2.13): that one matches exact
types only (not ConvTranspose, not subclasses such as ours), returns a ``GraphModule``, does
not measure its result, and folds a conv that is called twice into the first BN, silently
changing the second call. :func:`fold` keeps the model's class, handles every layer kind, skips
shared layers with the reason, and reports the error on a probe batch. Like ``fuse`` it refuses
a model in training mode (a ValueError, not an AssertionError) and a BN without statistics.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ..core import functional as F
from ..nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from ..nn.frozen import FrozenBatchNorm

__all__ = ["fold", "fold_layer_bn", "fold_bn_layer", "FoldReport", "FOLDABLE_LAYERS"]

_Layer = nn.Linear | _ConvNd  # what FOLDABLE_LAYERS hold, for the type checker

FOLDABLE_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_BN_TYPES = (_BatchNorm, FrozenBatchNorm)


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, _BN_TYPES)


def _bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` of eq. 23 in float64, after checking that BN has fixed statistics."""
    if not _is_bn(bn):
        raise TypeError(f"expected a batch-norm layer (ours or torch.nn), got {type(bn).__name__}")
    if getattr(bn, "activation", None) not in (None, "identity"):
        raise ValueError(
            f"{type(bn).__name__} applies an activation ({bn.activation}) after normalizing, which "
            "a folded layer would drop; fold a plain BN followed by the activation instead"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"{type(bn).__name__} has no running statistics (track_running_stats=False): it "
            "normalizes with batch statistics even in eval, so it is not a fixed affine map and "
            "cannot be folded; compute statistics first (batchnorm.recompute_statistics)"
        )
    if getattr(bn, "stats_mode", None) == "batch":
        raise ValueError(
            f"{type(bn).__name__} has stats_mode='batch' (batch statistics in eval too), so it "
            "cannot be folded; set_stats_mode(layer, None) first"
        )
    b = cast(_BatchNorm, bn)  # or a FrozenBatchNorm: the same attributes
    assert b.running_mean is not None and b.running_var is not None  # checked above
    return F.inference_affine(b.running_mean, b.running_var, b.weight, b.bias, b.eps)


def _channels(layer: nn.Module, side: str) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features if side == "out" else layer.in_features
    conv = cast(_ConvNd, layer)
    return conv.out_channels if side == "out" else conv.in_channels


def _check_layer(layer: nn.Module) -> None:
    if not isinstance(layer, FOLDABLE_LAYERS):
        raise TypeError(
            f"can fold batch norm only into {[t.__name__ for t in FOLDABLE_LAYERS]}, got {type(layer).__name__}"
        )


def _check_bn_axis(bn: nn.Module, layer: nn.Module, where: str) -> None:
    axis = getattr(bn, "axis", 1)
    if isinstance(layer, nn.Linear):
        ok = axis in (1, -1)  # (N, C): axis 1 is the last axis
        want = "the last axis (axis=-1, or axis=1 on (N, C) input)"
    else:
        rank = cast(_ConvNd, layer).weight.dim()  # conv input rank = kernel dims + 2 = weight rank
        ok = axis % rank == 1
        want = "axis 1 (NCHW)"
    if not ok:
        raise ValueError(
            f"the BN {where} a {type(layer).__name__} normalizes axis {axis}, but the layer's channels "
            f"are on {want}; fold only a BN over the layer's channel axis"
        )


def _new_params(module: nn.Module, weight: Tensor, bias: Tensor) -> nn.Module:
    """A copy of ``layer`` with float64 ``weight`` and ``bias`` cast back to its dtype."""
    layer = cast(_Layer, module)
    new = copy.deepcopy(layer)
    w = layer.weight
    grad = w.requires_grad if layer.bias is None else layer.bias.requires_grad
    new.weight = nn.Parameter(weight.to(w.dtype), requires_grad=w.requires_grad)
    new.bias = nn.Parameter(bias.to(w.dtype), requires_grad=grad)
    return new


def fold_layer_bn(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """The layer equal to ``bn(layer(x))`` with ``bn``'s running statistics (eq. 25).

    ``W' = W * scale`` per output channel, ``b' = b * scale + shift`` (b = 0 for a layer
    without bias). For ``ConvTranspose`` the weight is laid out ``(in, out / groups, *k)``,
    so output channel ``g * out/groups + j`` is column ``j`` of group ``g``. Exact up to
    rounding for any stride, padding, dilation and groups. ``bn``'s training flag is ignored:
    its running statistics are used.

    Args:
        layer: ``Linear``, ``Conv1d/2d/3d`` or ``ConvTranspose1d/2d/3d``.
        bn: a BN layer (ours, ``torch.nn.BatchNorm*d``, ``SyncBatchNorm`` or
            ``FrozenBatchNorm``) with ``num_features`` = the layer's output channels;
            ``affine=False`` and ``eps=0`` (with positive variances) are accepted.

    Returns:
        A new layer (the inputs are not modified); it always has a bias.

    Raises:
        TypeError: not a foldable layer or not a BN layer.
        ValueError: channel counts differ, the BN is over another axis, it has no running
            statistics, or ``var + eps <= 0`` somewhere.
    """
    _check_layer(layer)
    out = _channels(layer, "out")
    layer, bn = cast(_Layer, layer), cast(_BatchNorm, bn)
    if bn.num_features != out:
        raise ValueError(
            f"BN has {bn.num_features} channels but the {type(layer).__name__} before it outputs {out}"
        )
    _check_bn_axis(bn, layer, "after")
    scale, shift = _bn_affine(bn)  # (C_out,) float64
    w = layer.weight.detach().to(torch.float64)
    k = [1] * (w.dim() - 2)
    if isinstance(layer, _ConvNd) and layer.transposed:
        g = layer.groups
        # (in, out/g, *k) -> (g, in/g, out/g, *k): scale output channel g*out/g + j.
        w_g = w.reshape(g, w.shape[0] // g, *w.shape[1:])
        w_new = (w_g * scale.reshape(g, 1, out // g, *k)).reshape(w.shape)
    else:
        w_new = w * scale.reshape(-1, *([1] * (w.dim() - 1)))  # (out, ...)
    b = torch.zeros_like(scale) if layer.bias is None else layer.bias.detach().to(torch.float64)
    return _new_params(layer, w_new, b * scale + shift)


def fold_bn_layer(bn: nn.Module, layer: nn.Module) -> nn.Module:
    """The layer equal to ``layer(bn(x))`` with ``bn``'s running statistics, where exact.

    ``W' = W * scale`` per input channel and ``b' = b + sum(W * shift)`` over input
    channels and kernel positions. Exact for ``Linear`` on BN's channel axis and for
    ``Conv1d/2d/3d`` without zero padding; with zero padding the border would see 0 instead
    of BN's ``shift``, so it is refused. Transposed convolutions are refused too: an output
    position near the border receives fewer input positions, so ``shift`` does not add a
    constant.

    Args:
        bn: a BN layer whose ``num_features`` are the layer's input channels.
        layer: ``Linear`` or ``Conv1d/2d/3d``.

    Returns:
        A new layer with a bias.

    Raises:
        TypeError: not a foldable layer or not a BN layer.
        ValueError: the fold would not be exact (zero padding, transposed conv), or the
            checks of :func:`fold_layer_bn` fail.
    """
    _check_layer(layer)
    if isinstance(layer, _ConvNd):
        if layer.transposed:
            raise ValueError(
                f"folding a BN into the {type(layer).__name__} after it is not exact: border outputs "
                "receive fewer inputs, so BN's shift does not add a constant; fold into the layer before the BN"
            )
        zero_pad = layer.padding_mode == "zeros" and (
            layer.padding == "same"
            and any(k > 1 for k in layer.kernel_size)
            or not isinstance(layer.padding, str)
            and any(p > 0 for p in layer.padding)
        )
        if zero_pad:
            raise ValueError(
                f"folding a BN into the {type(layer).__name__} after it is not exact with zero padding "
                f"(padding={layer.padding}): the padded border sees 0 where BN outputs its shift; use "
                "padding=0 or a reflect/replicate/circular padding_mode, or fold into the layer before the BN"
            )
    cin = _channels(layer, "in")
    layer, bn = cast(_Layer, layer), cast(_BatchNorm, bn)
    if bn.num_features != cin:
        raise ValueError(
            f"BN has {bn.num_features} channels but the {type(layer).__name__} after it takes {cin}"
        )
    _check_bn_axis(bn, layer, "before")
    scale, shift = _bn_affine(bn)  # (C_in,) float64
    w = layer.weight.detach().to(torch.float64)
    out = w.shape[0]
    g = getattr(layer, "groups", 1)
    k = [1] * (w.dim() - 2)
    # (out, in/g, *k) -> (g, out/g, in/g, *k): input channel g*in/g + i of group g.
    w_g = w.reshape(g, out // g, *w.shape[1:])
    w_new = (w_g * scale.reshape(g, 1, cin // g, *k)).reshape(w.shape)
    b_shift = (
        (w_g * shift.reshape(g, 1, cin // g, *k)).sum(dim=tuple(range(2, w_g.dim()))).reshape(out)
    )
    b = (
        torch.zeros(out, dtype=torch.float64, device=w.device)
        if layer.bias is None
        else layer.bias.detach().to(torch.float64)
    )
    return _new_params(layer, w_new, b + b_shift)


# --------------------------------------------------------------------------- model-wide


@dataclass
class FoldReport:
    """What :func:`fold` did.

    Attributes:
        folded: ``(first, second, kind)`` in data order, qualified module names; kind is
            ``"layer->bn"`` or ``"bn->layer"``.
        skipped: ``(bn name, reason)`` for every BN left in the model.
        max_abs_error: max |folded(x) - model(x)| over all outputs on the probe batch, or
            None if no probe ran.
        probe: where the probe batch came from, or why none ran.
        notes: modules fx could not trace (their children were searched instead).
    """

    folded: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    max_abs_error: float | None = None
    probe: str = ""
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"folded {len(self.folded)} pair(s), skipped {len(self.skipped)} BN layer(s)"]
        lines += [f"  folded  {a} -> {b}  ({kind})" for a, b, kind in self.folded]
        lines += [f"  skipped {n}: {why}" for n, why in self.skipped]
        err = "n/a" if self.max_abs_error is None else f"{self.max_abs_error:.3g}"
        lines.append(f"max abs error {err} on {self.probe}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class _Tracer(torch.fx.Tracer):
    """Keeps BN and foldable layers (ours included) as single ``call_module`` nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_bn(m) or isinstance(m, FOLDABLE_LAYERS) or super().is_leaf_module(m, qualname)


def _find_pairs(
    module: nn.Module, prefix: str, report: FoldReport, before: bool
) -> list[tuple[str, str, str]]:
    """Candidate pairs in ``module`` by fx; where tracing fails, search its children."""
    try:
        graph = _Tracer().trace(module)
    except Exception as e:  # noqa: BLE001 - any trace failure means "search the children"
        report.notes.append(
            f"{prefix or type(module).__name__}: not traceable by torch.fx ({type(e).__name__}: {e}); searched its children"
        )
        pairs = []
        for name, child in module.named_children():
            pairs += _find_pairs(child, f"{prefix}.{name}" if prefix else name, report, before)
        return pairs
    full = lambda t: f"{prefix}.{t}" if prefix else t  # noqa: E731
    calls: dict[str, int] = {}
    # fx nodes are dynamically typed (a call_module node's target is the module's name).
    nodes: list[Any] = list(graph.nodes)
    for node in nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in nodes:
        if node.op != "call_module" or not _is_bn(module.get_submodule(node.target)):
            continue
        if calls[node.target] > 1:
            report.skipped.append((full(node.target), "called more than once in forward"))
            continue
        src: Any = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        src_is_layer = (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(module.get_submodule(str(src.target)), FOLDABLE_LAYERS)
        )
        if src_is_layer and calls[src.target] == 1 and len(src.users) == 1:
            pairs.append((full(src.target), full(node.target), "layer->bn"))
            continue
        users = list(node.users)
        dst: Any = users[0] if len(users) == 1 else None
        if (
            before
            and dst is not None
            and dst.op == "call_module"
            and isinstance(module.get_submodule(dst.target), FOLDABLE_LAYERS)
            and calls[dst.target] == 1
            and len(dst.args) == 1
            and dst.args[0] is node
        ):
            pairs.append((full(node.target), full(dst.target), "bn->layer"))
            continue
        if src_is_layer and calls[src.target] > 1:
            why = f"its input layer {full(src.target)!r} is called more than once (shared weights)"
        elif src_is_layer:
            why = f"the output of {full(src.target)!r} is also used elsewhere, so the BN cannot move into it"
        else:
            why = "not fed by a Linear/Conv layer's output alone, nor feeding one such layer alone"
        report.skipped.append((full(node.target), why))
    return pairs


def _random_probe(model: nn.Module) -> Tensor | None:
    """A small random batch shaped for the first Linear, Conv or BN layer in ``model``."""
    ref: Tensor | None = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    shape: tuple[int, ...]
    device = ref.device if ref is not None else None
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.get_default_dtype()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            shape = (4, m.in_features)
        elif isinstance(m, _ConvNd):
            shape = (4, m.in_channels, *([16] * len(m.kernel_size)))
        elif isinstance(m, (nn.BatchNorm1d, BatchNorm1d)):
            shape = (4, m.num_features)
        elif isinstance(m, (nn.BatchNorm2d, BatchNorm2d)):
            shape = (4, m.num_features, 8, 8)
        elif isinstance(m, (nn.BatchNorm3d, BatchNorm3d)):
            shape = (4, m.num_features, 4, 4, 4)
        else:
            continue
        gen = torch.Generator().manual_seed(0)
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return None


def _tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _call(model: nn.Module, x: Any) -> Any:
    with torch.no_grad():
        return model(*x) if isinstance(x, tuple) else model(x)


def fold(
    model: nn.Module, example_input: Any = None, *, before: bool = True
) -> tuple[nn.Module, FoldReport]:
    """Fold every foldable BN of an eval-mode model into its neighbouring layer.

    A pair is folded where a ``Linear``/``Conv``/``ConvTranspose`` layer's output feeds only
    a BN (always exact, :func:`fold_layer_bn`), or, with ``before=True``, where a BN's
    output feeds only a ``Linear`` or ``Conv`` layer and the fold is exact
    (:func:`fold_bn_layer`; a ``Linear`` needs BN over the last axis of a probe input).
    Pairs are found with ``torch.fx`` symbolic tracing (BN and the layers kept as leaves);
    where a module cannot be traced (data-dependent control flow), its children are
    searched, so nested ``Sequential`` always work. A layer or BN called more than once
    (shared weights) is left alone. The folded layer replaces the first module and
    ``nn.Identity`` the BN, so the model keeps its class and forward.

    Args:
        model: the model, in eval mode (``model.eval()``).
        example_input: a probe batch (a tensor, or a tuple of positional inputs). Without
            one, a random batch shaped for the first layer is tried.
        before: also fold BN into the layer after it where exact.

    Returns:
        ``(folded, report)``: a new model (``model`` is not modified) and a
        :class:`FoldReport` with the max abs difference of the outputs on the probe batch.

    Raises:
        ValueError: the model or a BN layer is in training mode, or a BN has no running
            statistics.

    Example:
        >>> folded, report = fold(model.eval(), example_input=x)
        >>> print(report)
    """
    if model.training:
        raise ValueError(
            "fold needs the model in eval mode: in training BN uses batch statistics, which no "
            "fixed weights can reproduce; call model.eval() first"
        )
    for name, m in model.named_modules():
        if not _is_bn(m):
            continue
        if m.training:
            raise ValueError(
                f"BN layer {name!r} is in training mode; call model.eval() before fold"
            )
        if m.running_mean is None or m.running_var is None:
            raise ValueError(
                f"BN layer {name!r} has no running statistics (track_running_stats=False), so it is not "
                "a fixed map at inference; compute statistics first or remove it from the model"
            )
    report = FoldReport()

    # Probe the original: reference outputs and each BN's input rank (a Linear after a BN
    # folds exactly only if the BN's channels are its input's last axis).
    probe = example_input if example_input is not None else _random_probe(model)
    ranks: dict[str, int] = {}
    reference = None
    if probe is None:
        report.probe = "no probe batch (no example_input, no Linear/Conv/BN to shape a random one)"
    else:
        report.probe = (
            "example_input"
            if example_input is not None
            else f"random input of shape {tuple(probe.shape)}"
        )

        def record(name: str):
            def hook(_m: nn.Module, args: tuple, _out: Any) -> None:
                ranks[name] = args[0].dim()

            return hook

        handles = [
            m.register_forward_hook(record(n)) for n, m in model.named_modules() if _is_bn(m)
        ]
        try:
            reference = _tensors(_call(model, probe))
        except Exception as e:  # noqa: BLE001 - a random probe of the wrong shape is expected to fail
            if example_input is not None:
                raise
            report.probe = f"no probe batch: a random input of shape {tuple(probe.shape)} failed ({type(e).__name__}); pass example_input"
            probe, ranks = None, {}
        finally:
            for h in handles:
                h.remove()

    folded_model = copy.deepcopy(model)
    pairs = _find_pairs(folded_model, "", report, before)
    # "layer->bn" first: a layer can take the BN after it and then the BN before it.
    pairs.sort(key=lambda p: p[2] != "layer->bn")
    used_bn: set[str] = set()
    for first, second, kind in pairs:
        bn_name, layer_name = (second, first) if kind == "layer->bn" else (first, second)
        if bn_name in used_bn:
            continue
        bn, layer = folded_model.get_submodule(bn_name), folded_model.get_submodule(layer_name)
        try:
            # A Linear acts on the last axis: BN must normalize that axis of its input. Known
            # from the probe; without one a Linear -> BN pair is assumed (N, C), as usual.
            rank, axis = ranks.get(bn_name), getattr(bn, "axis", 1)
            if isinstance(layer, nn.Linear) and (
                rank is not None and axis % rank != rank - 1 or rank is None and kind == "bn->layer"
            ):
                why = (
                    "its input rank is unknown (no probe ran)"
                    if rank is None
                    else f"it normalizes axis {axis} of a rank-{rank} input"
                )
                raise ValueError(
                    f"the Linear {'before' if kind == 'layer->bn' else 'after'} it acts on the last axis, but {why}"
                )
            new = fold_layer_bn(layer, bn) if kind == "layer->bn" else fold_bn_layer(bn, layer)
        except ValueError as e:
            report.skipped.append((bn_name, str(e)))
            continue
        folded_model.set_submodule(layer_name, new)
        folded_model.set_submodule(bn_name, nn.Identity())
        used_bn.add(bn_name)
        report.folded.append((first, second, kind))
    skipped_names = {n for n, _ in report.skipped}
    report.skipped = [(n, why) for n, why in report.skipped if n not in used_bn]
    for name, m in folded_model.named_modules():
        if _is_bn(m) and name not in used_bn and name not in skipped_names:
            report.skipped.append((name, "not reached by the search"))

    if probe is not None and reference is not None:
        out = _tensors(_call(folded_model, probe))
        errs = [
            (a.double() - b.double()).abs().max().item()
            for a, b in zip(out, reference, strict=True)
            if a.numel()
        ]
        report.max_abs_error = max(errs, default=0.0)
        if not all(math.isfinite(e) for e in errs):
            report.max_abs_error = math.inf
    return folded_model, report
