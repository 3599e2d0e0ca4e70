"""The experiments' networks: the LeNet of article 001, the classic LeNet-5, and MLPs.

Every hidden layer is ``linear-or-conv -> [norm] -> activation [-> dropout]``: the
normalization sits before the non-linearity (the paper, section 3.2), and a layer followed by
batch norm has no bias, since BN's beta subsumes it (``BN(Wu + b) = BN(Wu)``).

Normalizations (``norm``):

- ``none``: no normalization (the layers keep their bias);
- ``ours``: :class:`batchnorm.BatchNorm1d` / :class:`batchnorm.BatchNorm2d`;
- ``torch``: ``torch.nn.BatchNorm1d`` / ``torch.nn.BatchNorm2d`` (the reference);
- ``groupnorm``: ``torch.nn.GroupNorm`` with ``gcd(norm_groups, C)`` groups (batch-independent);
- ``layernorm``: ``GroupNorm(1, C)`` after a convolution (all of C, H, W) and
  ``torch.nn.LayerNorm(C)`` after a linear layer (batch-independent).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..nn import batchnorm as bn_modules

__all__ = [
    "NORMS",
    "MODELS",
    "ACTIVATIONS",
    "MaxPool2x2",
    "build_model",
    "norm_layer",
    "init_weights",
]

NORMS = ("none", "ours", "torch", "groupnorm", "layernorm")
MODELS = ("lenet", "lenet5", "mlp")
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
BATCH_NORMS = ("ours", "torch")


def norm_layer(
    norm: str,
    channels: int,
    conv: bool,
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
    groups: int = 2,
) -> nn.Module | None:
    """One normalization layer for ``channels`` features, or None for ``norm="none"``."""
    if norm == "none":
        return None
    if norm == "ours":
        ours = bn_modules.BatchNorm2d if conv else bn_modules.BatchNorm1d
        return ours(channels, eps=eps, momentum=momentum)
    if norm == "torch":
        cls = nn.BatchNorm2d if conv else nn.BatchNorm1d
        return cls(channels, eps=eps, momentum=momentum)
    if norm == "groupnorm":
        return nn.GroupNorm(math.gcd(groups, channels), channels, eps=eps)
    if norm == "layernorm":
        return nn.GroupNorm(1, channels, eps=eps) if conv else nn.LayerNorm(channels, eps=eps)
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def _block(layer_cls, in_f: int, out_f: int, conv: bool, cfg, **kw) -> list[nn.Module]:
    """``layer -> [norm] -> activation [-> dropout]``; the layer has a bias only without norm."""
    norm = norm_layer(
        cfg.norm, out_f, conv, momentum=cfg.bn_momentum, eps=cfg.bn_eps, groups=cfg.norm_groups
    )
    # Under any normalization that subtracts a per-channel mean the bias is redundant.
    out: list[nn.Module] = [layer_cls(in_f, out_f, bias=norm is None, **kw)]
    if norm is not None:
        out.append(norm)
    out.append(ACTIVATIONS[cfg.activation]())
    if cfg.dropout > 0 and not conv:
        out.append(nn.Dropout(cfg.dropout))
    return out


class _MaxPool2x2Fn(torch.autograd.Function):
    """The forward on ``batchnorm::max_pool2x2`` (csrc/pool.cpp: torch's values and indices),
    the backward torch's own ``max_pool2d_with_indices_backward`` on those indices."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y, idx = torch.ops.batchnorm.max_pool2x2(x)
        ctx.save_for_backward(x, idx)
        return cast(Tensor, y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        x, idx = ctx.saved_tensors
        return cast(
            Tensor,
            torch.ops.aten.max_pool2d_with_indices_backward(
                grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, idx
            ),
        )


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)``, the same values and gradients bit for bit (tested), faster on CPU.

    torch's CPU max pooling spends about a quarter of the LeNet's training step on one thread
    (2.6 ms of about 10 ms at batch 128), being generic over window, stride and padding; the
    package's kernel library has a loop for this one case (csrc/pool.cpp). Used for plain
    eager calls on contiguous float32/float64 CPU tensors where the library is loaded;
    anything else (and ``torch.jit``, ``torch.compile``) runs ``nn.MaxPool2d``'s own forward.
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, input: Tensor) -> Tensor:
        if (
            type(input) is Tensor
            and input.device.type == "cpu"
            and input.dtype in (torch.float32, torch.float64)
            and input.dim() == 4
            and input.shape[2] >= 2
            and input.shape[3] >= 2
            and input.is_contiguous()
            and not torch.jit.is_scripting()
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and _pool_kernel()
        ):
            return cast(Tensor, _MaxPool2x2Fn.apply(input))
        return cast(Tensor, super().forward(input))


_POOL_KERNEL: list[bool] = []  # asked once per process


def _pool_kernel() -> bool:
    if not _POOL_KERNEL:
        from ..core.kernels import _cpu

        _POOL_KERNEL.append(_cpu.load() and hasattr(torch.ops.batchnorm, "max_pool2x2"))
    return _POOL_KERNEL[0]


def _lenet(cfg, kernel: int, in_shape: tuple[int, int, int], classes: int) -> nn.Sequential:
    # Article 001: 28x28 -> conv3 -> 26x26x6 -> pool -> 13x13x6 -> conv3 -> 11x11x16 -> pool
    # -> 5x5x16 = 400.  LeNet-5: conv5 (padding 2) -> 28x28x6 -> 14 -> conv5 -> 10 -> 5x5x16.
    c, h, w = in_shape
    pad = 0 if kernel == 3 else 2
    layers = _block(nn.Conv2d, c, 6, True, cfg, kernel_size=kernel, padding=pad)
    layers.append(MaxPool2x2())
    layers += _block(nn.Conv2d, 6, 16, True, cfg, kernel_size=kernel)
    layers.append(MaxPool2x2())
    layers.append(nn.Flatten())
    h1, w1 = (h + 2 * pad - kernel + 1) // 2, (w + 2 * pad - kernel + 1) // 2
    flat = 16 * ((h1 - kernel + 1) // 2) * ((w1 - kernel + 1) // 2)
    layers += _block(nn.Linear, flat, 120, False, cfg)
    layers += _block(nn.Linear, 120, 84, False, cfg)
    layers.append(nn.Linear(84, classes))
    return nn.Sequential(*layers)


def _mlp(cfg, in_shape: tuple[int, int, int], classes: int) -> nn.Sequential:
    widths = [math.prod(in_shape), *cfg.widths]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += _block(nn.Linear, a, b, False, cfg)
    layers.append(nn.Linear(widths[-1], classes))
    return nn.Sequential(*layers)


def init_weights(model: nn.Module, init: str, std: float) -> None:
    """``default``: keep PyTorch's initialization; ``normal``: W ~ N(0, std^2), biases 0.

    Normalization layers keep gamma = 1, beta = 0.
    """
    if init == "default":
        return
    if init != "normal":
        raise ValueError(f"unknown init {init!r}; choose 'default' or 'normal'")
    if not std > 0:
        raise ValueError(f"init_std must be > 0 for init='normal', got {std}")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()


def build_model(
    cfg, in_shape: tuple[int, int, int] = (1, 28, 28), classes: int = 10
) -> nn.Sequential:
    """The network a config asks for (``cfg.model``, ``norm``, ``activation``, ``dropout``, init).

    Args:
        cfg: a :class:`batchnorm.experiments.config.Config` (or anything with its fields).
        in_shape: (C, H, W) of one input image.
        classes: number of output logits.

    Returns:
        An ``nn.Sequential`` mapping (N, C, H, W) to (N, classes) logits.
    """
    if cfg.activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {cfg.activation!r}; choose one of {', '.join(ACTIVATIONS)}"
        )
    if cfg.model == "lenet":
        model = _lenet(cfg, 3, in_shape, classes)
    elif cfg.model == "lenet5":
        model = _lenet(cfg, 5, in_shape, classes)
    elif cfg.model == "mlp":
        model = _mlp(cfg, in_shape, classes)
    else:
        raise ValueError(f"unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    init_weights(model, cfg.init, cfg.init_std)
    return model
