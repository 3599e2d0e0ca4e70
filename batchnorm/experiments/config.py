"""One flat, typed experiment config, settable from the command line and from a preset file.

Every field of :class:`Config` is a command-line option (``--batch-size 60``,
``--widths 100,100,100``, ``--augment`` / ``--no-augment``) and a key of a preset file
(JSON, or TOML on Python >= 3.11)::

    # my_run.toml
    model = "mlp"
    activation = "sigmoid"
    norm = "ours"
    optimizer = "sgd"
    lr = 0.5
    batch_size = 60
    steps = 50000

The run folder is named from the config's hash (:meth:`Config.key`), so a finished run
with the same config is found and reused instead of recomputed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["Config", "load_preset", "add_config_arguments", "config_from_args"]

#: Fields that do not change what is computed (only how fast, or its label): left out of the hash.
NON_RESULT_FIELDS = ("name", "threads")
#: Fields added after runs were published: left out of the hash while at their default, so a
#: config that does not use them keeps its run folder (and its finished run is still reused).
LATER_FIELDS: dict[str, Any] = {"eval_first": True, "final_eval": "all", "watch_layer": False}
#: Bumped when the training loop changes what it computes, so old runs are not reused.
LOOP_VERSION = 2


@dataclass
class Config:
    """An experiment: data, network, optimization, evaluation. Defaults: article 001's LeNet."""

    name: str = ""  # free label, shown in plots (not part of the hash)
    # data
    dataset: str = "mnist"  # mnist | fashion-mnist | idx | synthetic
    data_dir: str = ""  # folder of IDX files (dataset idx; optional for mnist / fashion-mnist)
    train_samples: int = 0  # use the first N training images (0 = all)
    augment: bool = False  # random rotation, shear, zoom and shift per batch
    aug_rotation: float = 10.0  # degrees, uniform in [-a, a]
    aug_shear: float = 10.0  # degrees
    aug_zoom: float = 0.1  # scale uniform in [1 - z, 1 + z]
    aug_shift: float = 0.08  # fraction of the image size
    shuffle: bool = True  # reshuffle the training set every epoch (else the same batches in order)
    # network
    model: str = "lenet"  # lenet (article 001, 3x3 convs) | lenet5 (5x5 convs) | mlp
    widths: tuple[int, ...] = (100, 100, 100)  # hidden widths of the mlp
    activation: str = "relu"  # relu | sigmoid | tanh
    norm: str = "ours"  # none | ours | torch | groupnorm | layernorm
    norm_groups: int = 2  # groups of groupnorm (gcd with the channel count)
    bn_momentum: float = 0.1  # running = (1 - m) * running + m * batch (PyTorch convention)
    bn_eps: float = 1e-5
    dropout: float = 0.0  # after the activation of each hidden fully connected layer
    init: str = "default"  # default (PyTorch's) | normal
    init_std: float = 0.01  # std of the normal init
    # optimization
    optimizer: str = "adam"  # sgd | momentum | adam
    lr: float = 1e-3
    momentum: float = 0.9  # of the 'momentum' optimizer
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 20  # train for this many epochs, or
    steps: int = 0  # this many steps (steps > 0 wins)
    # evaluation
    eval_stats: str = "running"  # running | population | batch
    eval_every: int = 0  # steps between evaluations (0 = every epoch, or steps / 50)
    eval_first: bool = True  # also evaluate before the first step (step 0)
    final_eval: str = "all"  # all: every statistic, small batches, single images | running only
    eval_samples: int = (
        0  # test images per evaluation during training (0 = all; the final one uses all)
    )
    eval_batch_size: int = 1000
    population_samples: int = 10000  # training images for recomputed statistics (0 = all)
    watch_unit: int = -1  # log percentiles of this last-hidden-layer unit's input to its activation
    watch_layer: bool = False  # also log them for every unit of that layer ("layer_percentiles")
    # run
    seed: int = 0
    threads: int = 1  # torch threads (0 = all cores); 1: these small nets gain nothing from more
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field with an impossible value."""
        choices = _choices()
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        positive = ("batch_size", "eval_batch_size", "lr", "bn_eps", "norm_groups")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.epochs <= 0 and self.steps <= 0:
            raise ValueError(
                f"set epochs > 0 or steps > 0 (got epochs={self.epochs}, steps={self.steps})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1], got {self.bn_momentum}")
        if self.model == "mlp" and not self.widths:
            raise ValueError("an mlp needs at least one hidden width, e.g. widths=100,100,100")
        if self.dataset == "idx" and not self.data_dir:
            raise ValueError("dataset='idx' needs data_dir, a folder with the four IDX files")

    # ------------------------------------------------------------------ identity

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**{k: _coerce(cls, k, v) for k, v in d.items()})

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """12 hex digits of the SHA-256 of the result-relevant fields (and the loop version)."""
        d = {
            k: v
            for k, v in self.to_dict().items()
            if k not in NON_RESULT_FIELDS and not (k in LATER_FIELDS and v == LATER_FIELDS[k])
        }
        d["_loop_version"] = LOOP_VERSION
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def run_name(self) -> str:
        """Folder name: ``<model>-<norm>-<key>``, e.g. ``lenet-ours-3f2a9c0d1b7e``."""
        return f"{self.model}-{self.norm}-{self.key()}"

    def label(self) -> str:
        return self.name or f"{self.model} {self.norm}"


# --------------------------------------------------------------------------- parsing


def _choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of the string fields that take a fixed set."""
    from .data import DATASETS
    from .models import ACTIVATIONS, MODELS, NORMS

    return {
        "dataset": DATASETS,
        "model": MODELS,
        "activation": tuple(ACTIVATIONS),
        "norm": NORMS,
        "init": ("default", "normal"),
        "optimizer": ("sgd", "momentum", "adam"),
        "eval_stats": ("running", "population", "batch"),
        "final_eval": ("all", "running"),
    }


def _field_type(cls, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(cls, name: str, value: Any) -> Any:
    """Convert a preset or command-line value to the field's type (strict for bools)."""
    t = _field_type(cls, name)
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if typing.get_origin(t) is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        try:
            return tuple(int(v) for v in value)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{name} must be a list of ints like 100,100,100, got {value!r}"
            ) from e
    try:
        if t is float and isinstance(value, (int, float, str)):
            return float(value)
        if t is int and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if t is str:
            return str(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be {t.__name__}, got {value!r}") from e
    raise ValueError(f"{name} must be {getattr(t, '__name__', t)}, got {value!r}")


def load_preset(path: str | Path) -> dict[str, Any]:
    """Read a preset file (``.json``, or ``.toml`` on Python >= 3.11) into a dict of fields.

    Raises:
        ValueError: unreadable file or unknown field names.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read preset {path}: {e}") from e
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError as e:  # Python 3.10
            raise ValueError(
                f"TOML presets need Python >= 3.11; write {path} as JSON instead"
            ) from e
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"preset {path} is not valid TOML: {e}") from e
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"preset {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(
            f"preset {path} must hold a table of config fields, got {type(data).__name__}"
        )
    Config.from_dict(_with_defaults(data))  # validates names and types now
    return data


def _with_defaults(d: dict[str, Any]) -> dict[str, Any]:
    return {**Config().to_dict(), **d}


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Add one ``--field`` option per Config field (default: unset, so presets can fill it)."""
    g = p.add_argument_group("config fields (override the preset; defaults as listed)")
    defaults = Config()
    for f in fields(Config):
        t = _field_type(Config, f.name)
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if t is bool:
            g.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"(default {default})",
            )
        elif typing.get_origin(t) is tuple:
            g.add_argument(
                flag,
                dest=f.name,
                default=None,
                metavar="N,N,...",
                help=f"(default {','.join(map(str, default))})",
            )
        else:
            g.add_argument(
                flag,
                dest=f.name,
                default=None,
                metavar=f.name.upper(),
                help=(f"{' | '.join(allowed)}; " if (allowed := _choices().get(f.name)) else "")
                + f"(default {default!r})",
            )


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Config:
    """Defaults <- ``base`` (a preset's dict) <- the command-line options that were given."""
    d = _with_defaults(dict(base or {}))
    for f in fields(Config):
        v = getattr(args, f.name, None)
        if v is not None:
            d[f.name] = v
    return Config.from_dict(d)
