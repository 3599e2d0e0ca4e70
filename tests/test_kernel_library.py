"""The compiled kernel library is verified before it is loaded: a damaged, truncated, planted
or mismatched file is refused with one clear message (naming the file and the fix) and the
package runs on torch ops; a build without kernels says so through ``kernels.info()``; the
instruction set is chosen by the CPU or by ``BATCHNORM_CPU_ISA``.

Each case runs in a new process over a copy of the package, so nothing here touches the
installed library."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from batchnorm.core.kernels import _cpu

ROOT = Path(__file__).resolve().parents[1]
LIB = sorted(_cpu.HERE.glob("_cpu_ops*.so"))
pytestmark = pytest.mark.skipif(
    not LIB or not _cpu.MANIFEST.exists(), reason="the CPU kernels are not built here"
)

PROBE = """
import json, warnings, torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import batchnorm
    from batchnorm.core import kernels
    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    y = batchnorm.BatchNorm2d(3)(x)
    y.square().sum().backward()
    y2 = batchnorm.BatchNorm2d(3)(x)
print(json.dumps({"info": kernels.info(), "kernel": kernels.get(x.detach(), 1).name,
                  "warnings": [str(w.message) for w in caught],
                  "finite": bool(torch.isfinite(x.grad).all())}))
"""


def _copy_package(tmp_path: Path) -> Path:
    """A copy of the package (with its built library) under tmp_path; returns its kernels dir."""
    dst = tmp_path / "site"
    shutil.copytree(
        ROOT / "batchnorm", dst / "batchnorm", ignore=shutil.ignore_patterns("__pycache__")
    )
    return dst / "batchnorm" / "core" / "kernels"


def _probe(tmp_path: Path, **env: str) -> dict:
    run_env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), **env}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr  # never a crash (SIGBUS, SIGSEGV)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _assert_refused(result: dict, *phrases: str) -> None:
    assert result["info"]["path"] == "torch ops" and result["kernel"] == "native"
    assert result["finite"]
    (message,) = [w for w in result["warnings"] if "fast CPU kernels unavailable" in w]
    for phrase in phrases:
        assert phrase in message, message


def test_the_copy_itself_loads(tmp_path):
    _copy_package(tmp_path)
    result = _probe(tmp_path)
    assert result["info"]["path"] == "kernels" and result["kernel"] == "cpu"
    assert result["warnings"] == []


def test_truncated_library_is_refused_with_the_fix(tmp_path):
    kdir = _copy_package(tmp_path)
    (lib,) = kdir.glob("_cpu_ops*.so")
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 3])
    _assert_refused(_probe(tmp_path), lib.name, "SHA-256", "pip install", "build-kernels")


def test_planted_library_is_not_loaded(tmp_path):
    kdir = _copy_package(tmp_path)
    (lib,) = kdir.glob("_cpu_ops*.so")
    # A valid shared library of someone else's in its place, and one more beside it.
    other = next(Path(torch.__file__).parent.joinpath("lib").glob("libc10.so"))
    shutil.copy(other, lib)
    shutil.copy(other, kdir / "_cpu_ops_extra.so")
    _assert_refused(_probe(tmp_path), lib.name, "SHA-256")


def test_library_built_for_another_torch_is_refused(tmp_path):
    kdir = _copy_package(tmp_path)
    manifest = json.loads((kdir / "_cpu_ops.json").read_text())
    manifest["torch"] = "2.99.0"
    (kdir / "_cpu_ops.json").write_text(json.dumps(manifest))
    _assert_refused(_probe(tmp_path), "built against torch 2.99.0", torch.__version__)


def test_library_without_manifest_is_refused(tmp_path):
    kdir = _copy_package(tmp_path)
    (kdir / "_cpu_ops.json").unlink()
    _assert_refused(_probe(tmp_path), "no manifest")


def test_install_without_kernels_says_so_without_a_warning(tmp_path):
    kdir = _copy_package(tmp_path)
    for f in [*kdir.glob("_cpu_ops*.so"), kdir / "_cpu_ops.json"]:
        f.unlink()
    result = _probe(tmp_path)
    assert result["info"]["path"] == "torch ops" and result["kernel"] == "native"
    assert "not built at install" in result["info"]["reason"]
    assert result["warnings"] == [] and result["finite"]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_isa_forced_by_environment(tmp_path, isa):
    _copy_package(tmp_path)
    result = _probe(tmp_path, BATCHNORM_CPU_ISA=isa)
    if isa in _cpu.isas():
        assert result["info"]["isa"] == isa
        assert f"BATCHNORM_CPU_ISA={isa}" in result["info"]["reason"]
    else:  # not built here or not run by this CPU: the widest it runs, and why
        assert result["info"]["isa"] in _cpu.isas()
        assert "BATCHNORM_CPU_ISA" in result["info"]["reason"]


def test_unknown_isa_falls_back_and_says_why(tmp_path):
    _copy_package(tmp_path)
    result = _probe(tmp_path, BATCHNORM_CPU_ISA="sse9")
    assert result["info"]["path"] == "kernels" and result["info"]["isa"] == _cpu.isas()[0]
    assert "BATCHNORM_CPU_ISA=sse9 is not built here" in result["info"]["reason"]


def test_disabled_by_environment_variable(tmp_path):
    _copy_package(tmp_path)
    result = _probe(tmp_path, BATCHNORM_CPU_KERNELS="0")
    assert result["info"]["path"] == "torch ops" and result["warnings"] == []
