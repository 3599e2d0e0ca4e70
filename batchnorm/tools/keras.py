"""Keras ``BatchNormalization`` weights in and out, with the conventions translated.

Keras (2 and 3, any backend) and PyTorch differ in four ways; the translation is:

=====================  ======================================  ==================================
                       Keras ``BatchNormalization``            PyTorch / batchnorm
=====================  ======================================  ==================================
momentum               weight of the *old* value:              weight of the *new* batch:
                       ``mv = m * mv + (1 - m) * batch``       ``run = (1 - p) * run + p * batch``
                       default 0.99                            default 0.1; ``p = 1 - m``
epsilon                1e-3                                    1e-5 (copied, never defaulted)
moving variance        EMA of the *biased* batch variances     EMA of the *unbiased* ones,
                                                               ``var_B * n / (n - 1)``
channel axis           -1 (channels-last)                      1 (NCHW); ours: any ``axis``
not trainable          ``trainable=False`` uses the moving     ``stats_mode="frozen"``
                       statistics even when training=True
=====================  ======================================  ==================================

The variance is the one convention that does not translate by itself. Keras's moving
variance is ``sum_t (1-m) m^(T-t) var_t`` over biased batch variances; torch's running
variance is the same sum over ``var_t * n/(n-1)``, with ``n`` the number of values per
channel in a batch (batch size times spatial positions). Inference uses the stored value as
is in both, so copying it verbatim gives *identical inference outputs*. What differs is how
training continues: a layer with ``store_unbiased=False`` (ours, the default of
:func:`from_keras`) keeps adding biased variances exactly as Keras would, so training and
inference both match. A torch layer always adds unbiased ones; pass ``batch_count=n`` to
rescale the stored value by ``n / (n - 1)`` (exact only if every batch had ``n`` values, and
then inference differs from Keras's by that factor) or leave it to copy verbatim.

This module needs neither Keras nor h5py to translate arrays; reading a Keras layer uses
the layer's own variables and reading a ``.weights.h5`` file needs ``h5py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core import validate
from ..nn.batchnorm import BatchNorm

__all__ = ["KerasBatchNorm", "from_keras", "to_keras", "load_keras_weights"]

_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")


@dataclass
class KerasBatchNorm:
    """A Keras ``BatchNormalization`` layer's state, in Keras's conventions.

    Attributes:
        gamma, beta: (C,) arrays, or None when ``scale`` / ``center`` is off.
        moving_mean, moving_variance: (C,) arrays; the variance is Keras's biased EMA.
        momentum: Keras convention, the weight of the old value (0.99).
        epsilon: added to the variance (Keras default 1e-3).
        axis: the channel axis of the Keras layer's input (-1 = channels-last).
        trainable: False means Keras normalizes with the moving statistics even in training.
    """

    gamma: np.ndarray | None
    beta: np.ndarray | None
    moving_mean: np.ndarray
    moving_variance: np.ndarray
    momentum: float = 0.99
    epsilon: float = 1e-3
    axis: int = -1
    trainable: bool = True

    @property
    def weights(self) -> list[np.ndarray]:
        """The arrays in ``layer.get_weights()`` / ``set_weights`` order."""
        return [
            w
            for w in (self.gamma, self.beta, self.moving_mean, self.moving_variance)
            if w is not None
        ]

    @property
    def config(self) -> dict[str, Any]:
        """Keyword arguments for ``keras.layers.BatchNormalization``."""
        return {
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.beta is not None,
            "scale": self.gamma is not None,
            "trainable": self.trainable,
        }

    def to_layer(self, input_shape: Sequence[int | None]) -> Any:
        """A built ``keras.layers.BatchNormalization`` holding these weights (imports keras).

        Args:
            input_shape: the layer's input shape, batch axis included (may be None).
        """
        import keras

        layer = keras.layers.BatchNormalization(**self.config)
        layer.build(tuple(input_shape))
        values = dict(
            zip(
                _NAMES, (self.gamma, self.beta, self.moving_mean, self.moving_variance), strict=True
            )
        )
        for var in layer.weights:
            value = values[var.name]
            assert value is not None  # keras built exactly the weights that are present
            var.assign(value.astype(np.dtype(var.dtype)))
        return layer


def _to_numpy(v: Any) -> np.ndarray:
    # A Keras variable's .value is a torch Parameter on the torch backend; np.asarray on the
    # variable itself goes through an __array__ without ``copy=`` (a NumPy 2 DeprecationWarning).
    v = getattr(v, "value", v)
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy().copy()
    return np.array(v)


def _from_keras_layer(layer: Any) -> KerasBatchNorm:
    if type(layer).__name__ != "BatchNormalization" or not hasattr(layer, "moving_mean"):
        raise TypeError(
            f"expected a built keras.layers.BatchNormalization, got {type(layer).__name__}"
        )
    if getattr(layer, "renorm", False):
        raise ValueError(
            "the Keras layer uses batch renormalization (renorm=True), which BatchNorm does not do"
        )
    axis = layer.axis if isinstance(layer.axis, int) else list(layer.axis)
    if not isinstance(axis, int):
        if len(axis) != 1:
            raise ValueError(
                f"the Keras layer normalizes over several axes {axis}; only one channel axis translates"
            )
        axis = axis[0]
    return KerasBatchNorm(
        gamma=_to_numpy(layer.gamma) if layer.scale else None,
        beta=_to_numpy(layer.beta) if layer.center else None,
        moving_mean=_to_numpy(layer.moving_mean),
        moving_variance=_to_numpy(layer.moving_variance),
        momentum=float(layer.momentum),
        epsilon=float(layer.epsilon),
        axis=axis,
        trainable=bool(layer.trainable),
    )


def _from_arrays(
    arrays: Sequence[Any], center: bool | None, scale: bool | None, **config: Any
) -> KerasBatchNorm:
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays)
    if n == 4:
        center, scale = (True if center is None else center), (True if scale is None else scale)
    elif n == 2:
        center, scale = (False if center is None else center), (False if scale is None else scale)
    elif n == 3 and center is None and scale is None:
        raise ValueError(
            "3 weight arrays are ambiguous: [gamma, moving_mean, moving_variance] (center=False) or "
            "[beta, moving_mean, moving_variance] (scale=False); pass center= or scale="
        )
    elif n == 3:
        center = (not scale) if center is None else center
        scale = (not center) if scale is None else scale
    if n != 2 + int(bool(center)) + int(bool(scale)):
        raise ValueError(
            f"expected [gamma, beta, moving_mean, moving_variance] (without gamma if scale=False, without "
            f"beta if center=False), got {n} arrays with center={center}, scale={scale}"
        )
    it = iter(arrays)
    gamma = next(it) if scale else None
    beta = next(it) if center else None
    return KerasBatchNorm(gamma, beta, next(it), next(it), **config)


def load_keras_weights(
    path: str | os.PathLike,
    layer_name: str | None = None,
    *,
    center: bool | None = None,
    scale: bool | None = None,
    **config: Any,
) -> KerasBatchNorm:
    """Read one ``BatchNormalization`` layer's weights from a Keras weights file (needs h5py).

    Reads the Keras 3 ``.weights.h5`` layout (``layers/<group>/vars/0..3``, the layer name in
    the ``vars`` group's ``name`` attribute) and the Keras 2 ``.h5`` layout (datasets named
    ``gamma:0``, ``beta:0``, ``moving_mean:0``, ``moving_variance:0``). A weights file holds
    no configuration: pass ``momentum``, ``epsilon``, ``axis`` if they differ from Keras's
    defaults (0.99, 1e-3, -1).

    Args:
        path: the file.
        layer_name: the layer's name (or its group's name in the file); needed when the file
            holds more than one BatchNormalization layer.
        center, scale: needed only for a Keras 3 layer with 3 variables (one of them off).
        **config: ``momentum``, ``epsilon``, ``axis``, ``trainable`` of :class:`KerasBatchNorm`.

    Returns:
        The layer's state.

    Raises:
        ValueError: no such layer, or several and no ``layer_name``.
    """
    import h5py

    found: dict[str, list[np.ndarray] | dict[str, np.ndarray]] = {}

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Group):
            return
        keys = list(obj.keys())
        base = name.rsplit("/", 1)[-1]
        if (
            base == "vars"
            and "batch_normalization" in name
            and keys
            and all(k.isdigit() for k in keys)
        ):
            group = name.rsplit("/", 2)[-2]
            label = obj.attrs.get("name", group)
            label = label.decode() if isinstance(label, bytes) else str(label)
            found[label] = [np.array(obj[k]) for k in sorted(keys, key=int)]
            if group != label:
                found.setdefault(group, found[label])
        named = {k.split(":")[0]: k for k in keys}
        if "moving_mean" in named and "moving_variance" in named:
            found[base] = {k: np.array(obj[v]) for k, v in named.items() if k in _NAMES}

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    layers = found
    unique = {id(v): k for k, v in layers.items()}
    if layer_name is None:
        if len(unique) != 1:
            raise ValueError(
                f"{os.fspath(path)!r} holds {len(unique)} BatchNormalization layers {sorted(layers)}; "
                "pass layer_name= to pick one"
                if unique
                else f"no BatchNormalization weights found in {os.fspath(path)!r}"
            )
        layer_name = next(iter(unique.values()))
    if layer_name not in layers:
        raise ValueError(
            f"no BatchNormalization layer {layer_name!r} in {os.fspath(path)!r}; found {sorted(layers)}"
        )
    w = layers[layer_name]
    if isinstance(w, dict):
        return KerasBatchNorm(
            w.get("gamma"), w.get("beta"), w["moving_mean"], w["moving_variance"], **config
        )
    return _from_arrays(w, center, scale, **config)


def _as_keras(
    source: Any, layer_name: str | None, center: bool | None, scale: bool | None, config: dict
) -> KerasBatchNorm:
    if isinstance(source, KerasBatchNorm):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load_keras_weights(source, layer_name, center=center, scale=scale, **config)
    if isinstance(source, (list, tuple)):
        return _from_arrays(source, center, scale, **config)
    kb = _from_keras_layer(source)
    for k, v in config.items():
        setattr(kb, k, v)
    return kb


def from_keras(
    source: Any,
    to: str | type[nn.Module] = "batchnorm",
    *,
    batch_count: int | None = None,
    layer_name: str | None = None,
    center: bool | None = None,
    scale: bool | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **config: Any,
) -> nn.Module:
    """A PyTorch BN layer equal to a Keras ``BatchNormalization`` layer.

    ``momentum = 1 - keras_momentum``, ``eps = epsilon``, gamma, beta, moving mean and
    variance copied. With ``to="batchnorm"`` the result is :class:`batchnorm.BatchNorm` on
    Keras's axis with ``store_unbiased=False``: exactly Keras in inference *and* in training
    (batch statistics, biased moving-variance update). A Keras layer with
    ``trainable=False`` becomes ``stats_mode="frozen"``, which is what Keras does with it.

    Args:
        source: a built ``keras.layers.BatchNormalization``, a :class:`KerasBatchNorm`, the
            list of ``layer.get_weights()`` arrays, or the path of a ``.weights.h5`` / ``.h5``
            file (see :func:`load_keras_weights`).
        to: ``"batchnorm"``, or a BN class for channels-first data of a fixed rank:
            ``torch.nn.BatchNorm1d/2d/3d`` or ``batchnorm.BatchNorm1d/2d/3d``.
        batch_count: values per channel in one Keras training batch (batch size times
            spatial positions). If given, the stored variance becomes unbiased
            (``moving_variance * n / (n - 1)``) and the layer stores unbiased variances from
            then on (torch's convention; inference then differs from Keras by that factor).
            If None, the variance is copied verbatim (inference exact); our layers then keep
            Keras's biased convention, a torch.nn layer cannot.
        layer_name, center, scale: for a file or a list of arrays (see
            :func:`load_keras_weights`).
        device, dtype: of the new layer.
        **config: ``momentum``, ``epsilon``, ``axis``, ``trainable`` in Keras's conventions,
            for sources that do not carry them (arrays, files) or to override them.

    Returns:
        The new layer, in training mode.

    Raises:
        ValueError: a channel axis a fixed-rank class cannot take, only one of gamma/beta
            for a torch.nn class, ``batch_count < 2``, epsilon <= 0.
        TypeError: an unsupported source or ``to``.

    Example:
        >>> bn = from_keras(keras_model.get_layer("batch_normalization"))
        >>> bn = from_keras("model.weights.h5", torch.nn.BatchNorm2d, layer_name="bn1")
    """
    kb = _as_keras(source, layer_name, center, scale, config)
    message = validate.check_statistics(
        torch.as_tensor(np.asarray(kb.moving_mean, dtype=np.float64)),
        torch.as_tensor(np.asarray(kb.moving_variance, dtype=np.float64)),
        f"from_keras({layer_name or type(source).__name__!s})",
    )
    if message is not None:
        raise validate.BatchNormError(
            message.replace("running_var", "moving_variance").replace("running_mean", "moving_mean")
        )
    c = int(np.asarray(kb.moving_mean).shape[0])
    if batch_count is not None and batch_count < 2:
        raise ValueError(
            f"batch_count is the number of values per channel in a batch and must be >= 2, got {batch_count}"
        )
    momentum = 1.0 - kb.momentum  # Keras weighs the old value, torch the new batch
    kw: dict[str, Any] = {"device": device, "dtype": dtype}
    if to == "batchnorm":
        bn: _BatchNorm = BatchNorm(
            c,
            kb.epsilon,
            momentum,
            axis=kb.axis,
            center=kb.beta is not None,
            scale=kb.gamma is not None,
            store_unbiased=batch_count is not None,
            **kw,
        )
    elif (
        isinstance(to, type)
        and issubclass(to, _BatchNorm)
        and to.__name__[-2:] in ("1d", "2d", "3d")
    ):
        if kb.axis not in (1, -1):
            raise ValueError(
                f"{to.__name__} has channels on axis 1; the Keras layer normalizes axis {kb.axis}"
            )
        if (kb.gamma is None) != (kb.beta is None):
            raise ValueError(
                f"{to.__name__} has both gamma and beta or neither; the Keras layer has only one: use to='batchnorm'"
            )
        bn = to(c, kb.epsilon, momentum, kb.gamma is not None, **kw)
        if isinstance(bn, BatchNorm):
            bn.store_unbiased = batch_count is not None
    else:
        raise TypeError(
            f"to must be 'batchnorm' or a BatchNorm1d/2d/3d class (torch.nn or batchnorm), got {to!r}"
        )
    var = np.asarray(kb.moving_variance, dtype=np.float64)
    if batch_count is not None:
        var = var * batch_count / (batch_count - 1)  # biased EMA -> unbiased EMA (eq. 16)
    assert bn.running_mean is not None and bn.running_var is not None  # tracked (built so)
    with torch.no_grad():
        bn.running_mean.copy_(torch.as_tensor(np.asarray(kb.moving_mean, dtype=np.float64)))
        bn.running_var.copy_(torch.as_tensor(var))
        if kb.gamma is not None and bn.weight is not None:
            bn.weight.copy_(torch.as_tensor(np.asarray(kb.gamma, dtype=np.float64)))
        if kb.beta is not None and bn.bias is not None:
            bn.bias.copy_(torch.as_tensor(np.asarray(kb.beta, dtype=np.float64)))
    if not kb.trainable:
        if not isinstance(bn, BatchNorm):
            raise ValueError(
                f"the Keras layer is not trainable (frozen statistics), which {type(bn).__name__} "
                "cannot express: use to='batchnorm'"
            )
        bn.stats_mode = "frozen"
        bn.requires_grad_(False)
    return bn


def to_keras(
    bn: nn.Module,
    *,
    batch_count: int | None = None,
    axis: int | None = None,
    momentum: float | None = None,
) -> KerasBatchNorm:
    """A BN layer's state in Keras's conventions (the inverse of :func:`from_keras`).

    ``keras_momentum = 1 - momentum``, ``epsilon = eps``, ``moving_variance = running_var``
    verbatim (inference exact), or ``running_var * (n - 1) / n`` with ``batch_count=n`` for
    a layer that stores unbiased variances (torch's convention), to continue Keras's biased
    EMA. Use ``.weights`` with ``layer.set_weights``, ``.config`` with
    ``keras.layers.BatchNormalization(**config)``, or ``.to_layer(input_shape)``.

    Args:
        bn: ours, ``torch.nn.BatchNorm*d`` or :class:`batchnorm.FrozenBatchNorm`.
        batch_count: values per channel in one batch, to turn an unbiased running variance
            into Keras's biased one; ignored for a layer with ``store_unbiased=False``.
        axis: the Keras layer's channel axis; default: the layer's own (1 for torch's; pass
            -1 for a channels-last Keras model).
        momentum: PyTorch-convention momentum to use when the layer has none
            (``momentum=None`` cumulative average, or a frozen layer); Keras needs one.

    Returns:
        A :class:`KerasBatchNorm`.

    Raises:
        ValueError: no running statistics, no momentum to translate, ``batch_count < 2``.
    """
    from ..nn.frozen import FrozenBatchNorm

    if not isinstance(bn, (_BatchNorm, FrozenBatchNorm)):
        raise TypeError(f"expected a batch-norm layer, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "the layer has no running statistics (track_running_stats=False); Keras layers always have them"
        )
    p = getattr(bn, "momentum", None) if momentum is None else momentum
    if p is None:
        raise ValueError(
            "the layer has momentum=None (cumulative average) or none at all (frozen); Keras has only an "
            "exponential moving average: pass momentum= (PyTorch convention, e.g. 0.01 for Keras's 0.99)"
        )
    if batch_count is not None and batch_count < 2:
        raise ValueError(f"batch_count must be >= 2, got {batch_count}")

    def as_np(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().to(torch.float64).numpy().astype(np.float32)

    var = bn.running_var.detach().cpu().to(torch.float64).numpy()
    if batch_count is not None and getattr(
        bn, "store_unbiased", not isinstance(bn, FrozenBatchNorm)
    ):
        var = var * (batch_count - 1) / batch_count
    frozen = isinstance(bn, FrozenBatchNorm) or getattr(bn, "stats_mode", None) in (
        "frozen",
        "running",
    )
    return KerasBatchNorm(
        gamma=None if bn.weight is None else as_np(bn.weight),
        beta=None if bn.bias is None else as_np(bn.bias),
        moving_mean=as_np(bn.running_mean),
        moving_variance=var.astype(np.float32),
        momentum=1.0 - p,
        epsilon=float(bn.eps),
        axis=getattr(bn, "axis", 1) if axis is None else axis,
        trainable=not frozen,
    )
