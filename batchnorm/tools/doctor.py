"""The model doctor: find batch-norm mistakes in a model, with the line to fix.

:func:`diagnose` runs one forward pass of a *copy* of the model on an example input (the
model itself is never touched: no running statistic moves), with forward hooks that record
which module produced each tensor a BN layer receives (data flow by tensor identity, so
containers and residual branches are followed; a functional op such as ``F.relu`` in a
``forward`` hides the producer and the check is skipped). Checks (``Finding.code``):

- ``bias-before-bn``: a Conv/Linear with a bias feeding BN: the bias cancels in ``x - mean``
  (docs/math.md eq. 25); use ``bias=False``.
- ``bn-after-activation``: BN fed by a non-linearity; the paper places BN before it
  (``g(BN(Wu))``).
- ``momentum-convention``: a momentum >= 0.5, which looks like Keras's convention (0.99, 0.9
  weigh the *old* value there); in torch momentum weighs the new batch (0.1 default).
- ``eps-origin``: an eps that differs from the one the weights were trained with
  (``weights_from="keras"`` expects 1e-3, ``"torch"`` 1e-5); without ``weights_from``, BN
  layers of one model with different eps values (a heuristic: it may be deliberate).
- ``train-mode-inference``: BN in training mode inside a model in eval mode, or any BN in
  training mode with ``inference=True``.
- ``frozen-bn-updating``: BN whose gamma and beta are frozen (requires_grad False) but which
  is in training mode with running statistics, so its statistics still move.
- ``dropout-before-bn``: dropout feeding BN (its train/test variance shift reaches BN's
  statistics; Li et al. 2019).
- ``running-var``: running variance zero, negative, NaN/inf, or below eps (``tiny``), or a
  non-finite running mean.
- ``batch-of-one``: BN in training mode that sees one sample (one value per channel: an
  error; with spatial positions: statistics of one sample only).
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core.stats import count_per_channel
from ..nn.batchnorm import frozen_params_updating

__all__ = ["Finding", "diagnose", "format_findings"]

_LINEAR = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.LazyLinear)
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
)
_DROPOUT = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_EPS_BY_ORIGIN = {"torch": 1e-5, "keras": 1e-3}


@dataclass(frozen=True)
class Finding:
    """One mistake: what, where (module path and source line) and how to fix it.

    Attributes:
        code: the check's name, e.g. ``"bias-before-bn"``.
        severity: ``"error"`` (wrong results), ``"warning"`` (likely a mistake) or ``"info"``
            (a heuristic worth a look).
        module: qualified module path in the model, e.g. ``"features.1"`` (``""``: the root).
        message: what is wrong, with the values seen.
        fix: what to change.
        location: ``"file.py:line"`` of the line that defines the module, where found.
    """

    code: str
    severity: str
    module: str
    message: str
    fix: str
    location: str | None = None

    def __str__(self) -> str:
        where = f"{self.location} " if self.location else ""
        return f"{where}[{self.severity}] {self.code} at {self.module or '<root>'}: {self.message} Fix: {self.fix}"


def _location(model: nn.Module, path: str) -> str | None:
    """``file:line`` of the assignment that defines module ``path``.

    Walks up the path to the nearest user-defined (non-``torch.nn``) class and finds
    ``self.<child> =`` (or ``self.add_module("<child>"``) in its source.
    """
    parts = path.split(".") if path else []
    modules = [model]
    for p in parts:
        modules.append(getattr(modules[-1], p))
    for depth in range(len(parts) - 1, -1, -1):
        owner, child = modules[depth], parts[depth]
        cls = type(owner)
        if cls.__module__.startswith("torch.") or cls.__module__.startswith("batchnorm."):
            continue
        try:
            lines, start = inspect.getsourcelines(cls)
            file = inspect.getsourcefile(cls)
        except (OSError, TypeError):
            return None
        pattern = re.compile(
            rf"self\.{re.escape(child)}\s*(:[^=]*)?=(?!=)|add_module\(\s*['\"]{re.escape(child)}['\"]"
        )
        for i, line in enumerate(lines):
            if pattern.search(line):
                return f"{file}:{start + i}"
        return f"{file}:{start}"
    return None


def _check_buffers(name: str, bn: _BatchNorm) -> list[Finding]:
    out: list[Finding] = []
    if bn.running_var is None or bn.running_mean is None:
        return out
    rv, rm = bn.running_var.detach().double(), bn.running_mean.detach().double()
    bad = ~torch.isfinite(rv) | ~torch.isfinite(rm)
    if bad.any():
        out.append(
            Finding(
                "running-var",
                "error",
                name,
                f"running statistics are NaN/inf in channels {torch.nonzero(bad).flatten().tolist()[:8]}.",
                "recompute them (batchnorm population statistics) or reset_running_stats() and retrain",
            )
        )
    nonpos = torch.isfinite(rv) & (rv <= 0)
    if nonpos.any():
        out.append(
            Finding(
                "running-var",
                "error",
                name,
                f"running_var is zero or negative in channels {torch.nonzero(nonpos).flatten().tolist()[:8]}: "
                f"those channels are divided by sqrt(eps) = {math.sqrt(bn.eps):.3g} at inference.",
                "recompute the statistics on real data; a channel that is constant in training is dead",
            )
        )
    tiny = torch.isfinite(rv) & (rv > 0) & (rv < bn.eps)
    if tiny.any():
        out.append(
            Finding(
                "running-var",
                "warning",
                name,
                f"running_var < eps = {bn.eps:g} in channels {torch.nonzero(tiny).flatten().tolist()[:8]} "
                f"(min {rv[tiny].min().item():.3g}): eps, not the data, sets their scale.",
                "check for dead channels, or for statistics that were never updated",
            )
        )
    return out


def diagnose(
    model: nn.Module,
    example_input: Tensor | tuple,
    *,
    inference: bool = False,
    weights_from: str | None = None,
) -> list[Finding]:
    """Audit ``model``'s batch-norm layers on one forward pass of a copy of it.

    Args:
        model: the model, in the mode (train/eval) you use it in; it is not modified.
        example_input: a tensor, or a tuple of positional arguments for ``forward``.
        inference: the model is meant for inference: flag every BN left in training mode.
        weights_from: ``"torch"`` or ``"keras"``: where the weights were trained; flags BN
            layers whose eps differs from that framework's default.

    Returns:
        The findings, in execution order of the BN layers.

    Raises:
        ValueError: an unknown ``weights_from``.
    """
    if weights_from is not None and weights_from not in _EPS_BY_ORIGIN:
        raise ValueError(
            f"weights_from must be one of {sorted(_EPS_BY_ORIGIN)} or None, got {weights_from!r}"
        )
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    # The forward may move running statistics: never on the user's model.
    work = copy.deepcopy(model)
    names = {m: n for n, m in work.named_modules()}
    producer: dict[int, tuple[nn.Module, Tensor]] = {}  # id(tensor) -> (module, tensor kept alive)
    order: list[tuple[str, _BatchNorm, nn.Module | None, Tensor | None]] = []

    def post(module: nn.Module, _inp, out) -> None:
        if isinstance(out, Tensor):
            producer[id(out)] = (module, out)

    def pre(module: nn.Module, inp) -> None:
        x = inp[0] if inp and isinstance(inp[0], Tensor) else None
        src = None
        if x is not None:
            # A view (flatten, reshape, a slice) of a module's output is a new tensor object
            # whose ._base is that output.
            src = producer.get(id(x), producer.get(id(x._base), (None, None)))[0]
        order.append((names[module], cast(_BatchNorm, module), src, x))

    handles = []
    for m in work.modules():
        if not list(m.children()) or isinstance(m, _BatchNorm):
            handles.append(m.register_forward_hook(post))
        if isinstance(m, _BatchNorm):
            handles.append(m.register_forward_pre_hook(pre))
    findings: list[Finding] = []
    try:
        with torch.no_grad():
            try:
                work(*args)
            except ValueError as err:
                if not any(isinstance(m, _BatchNorm) and m.training for m in work.modules()):
                    raise
                findings.append(
                    Finding(
                        "batch-of-one",
                        "error",
                        "",
                        f"the forward pass failed in training mode: {err}",
                        "train with batches of at least 2, or call model.eval() for inference",
                    )
                )
                order.clear()
                work.eval()  # structure and order only; the modes checked below are the model's own
                work(*args)
    finally:
        for h in handles:
            h.remove()

    modes = {n: m.training for n, m in model.named_modules()}
    seen: set[str] = set()
    eps_values: dict[float, list[str]] = {}
    for name, bn, src, x in order:
        if name in seen:
            continue
        seen.add(name)
        here = []
        training = modes.get(name, bn.training)
        out_features = getattr(src, "out_features", getattr(src, "out_channels", None))
        # The bias cancels only if it is per BN channel (same count; a permute may sit between).
        if (
            isinstance(src, _LINEAR)
            and getattr(src, "bias", None) is not None
            and out_features == bn.num_features
        ):
            here.append(
                Finding(
                    "bias-before-bn",
                    "warning",
                    names[src],
                    f"{type(src).__name__} {names[src]!r} has a bias and feeds {name!r}: BN subtracts the "
                    "mean, so the bias cancels and only costs parameters (BN's beta replaces it).",
                    f"construct {names[src]!r} with bias=False",
                )
            )
        if isinstance(src, _ACTIVATIONS):
            here.append(
                Finding(
                    "bn-after-activation",
                    "warning",
                    name,
                    f"{name!r} normalizes the output of {type(src).__name__} {names[src]!r}; the paper "
                    "normalizes the pre-activation, BN(Wu) then the non-linearity.",
                    f"move {name!r} before {names[src]!r} (conv/linear -> BN -> activation)",
                )
            )
        if isinstance(src, _DROPOUT):
            here.append(
                Finding(
                    "dropout-before-bn",
                    "warning",
                    name,
                    f"{type(src).__name__} {names[src]!r} feeds {name!r}: dropout changes the variance "
                    "between training and inference, so BN's running variance no longer matches at test time.",
                    "put dropout after the last BN (e.g. before the classifier), or drop it: BN regularizes",
                )
            )
        if bn.momentum is not None and bn.momentum >= 0.5:
            here.append(
                Finding(
                    "momentum-convention",
                    "warning",
                    name,
                    f"momentum={bn.momentum} weighs the *new* batch in torch (running = (1 - m) * running "
                    "+ m * batch), so the running statistics follow the last few batches; 0.9/0.99 is "
                    "the Keras convention, where momentum weighs the old value.",
                    f"use momentum={1 - bn.momentum:.3g} (the torch equivalent) or the default 0.1",
                )
            )
        if weights_from is not None and not math.isclose(
            bn.eps, _EPS_BY_ORIGIN[weights_from], rel_tol=0.01
        ):
            here.append(
                Finding(
                    "eps-origin",
                    "warning",
                    name,
                    f"eps={bn.eps:g}, but weights trained with {weights_from} use eps="
                    f"{_EPS_BY_ORIGIN[weights_from]:g} by default (heuristic: check the original model's "
                    "eps); a different eps changes every channel with small variance.",
                    f"construct {name!r} with eps={_EPS_BY_ORIGIN[weights_from]:g} (or the original value)",
                )
            )
        eps_values.setdefault(bn.eps, []).append(name)
        if training and (inference or not modes.get("", True)):
            why = "inference=True was asked" if inference else "the model itself is in eval mode"
            here.append(
                Finding(
                    "train-mode-inference",
                    "error",
                    name,
                    f"{name!r} is in training mode but {why}: it normalizes with each batch's "
                    "statistics and keeps moving its running statistics.",
                    "call model.eval() after any .train() call (a later .train() on a submodule undoes it)",
                )
            )
        if frozen_params_updating(bn, training=training):
            here.append(
                Finding(
                    "frozen-bn-updating",
                    "warning",
                    name,
                    f"{name!r} has frozen gamma/beta (requires_grad=False) but is in training mode, so its "
                    "running statistics still change with every batch.",
                    f"call model.{name}.eval() after model.train() (or use a frozen BN layer)",
                )
            )
        if training and x is not None and x.ndim >= 2 and x.shape[0] == 1:
            per_channel = count_per_channel(x, getattr(bn, "axis", 1) % x.ndim)
            if per_channel == 1:
                here.append(
                    Finding(
                        "batch-of-one",
                        "error",
                        name,
                        f"{name!r} receives a batch of 1 with one value per channel in training mode: "
                        "every output is beta and the variance is undefined.",
                        "use batches of at least 2, or call model.eval() for single samples",
                    )
                )
            else:
                here.append(
                    Finding(
                        "batch-of-one",
                        "warning",
                        name,
                        f"{name!r} receives a batch of 1 in training mode: its statistics are those of "
                        f"one sample's {per_channel} positions, not of the data.",
                        "use batches of at least 2 (and more than a handful), or model.eval()",
                    )
                )
        here += _check_buffers(name, dict(model.named_modules()).get(name, bn))
        findings += here
    if any(f.code == "batch-of-one" and f.module for f in findings):
        # The failed forward is explained by a layer's own finding: drop the generic one.
        findings = [f for f in findings if f.code != "batch-of-one" or f.module]
    if weights_from is None and len(eps_values) > 1:
        detail = "; ".join(
            f"eps={e:g}: {', '.join(ns[:3])}{' ...' if len(ns) > 3 else ''}"
            for e, ns in eps_values.items()
        )
        findings.append(
            Finding(
                "eps-origin",
                "info",
                "",
                f"the BN layers use different eps values ({detail}). Heuristic: this happens when "
                "weights from another framework (Keras: 1e-3, torch: 1e-5) meet layers built with "
                "this one's default.",
                "give every layer the eps its weights were trained with (weights_from= checks it)",
            )
        )
    located = []
    for f in findings:
        loc = _location(model, f.module) if f.module else None
        located.append(Finding(f.code, f.severity, f.module, f.message, f.fix, loc))
    return located


def format_findings(findings: list[Finding]) -> str:
    """One line per finding, or a line saying there are none."""
    if not findings:
        return "no batch-norm problems found"
    return "\n".join(str(f) for f in findings)
