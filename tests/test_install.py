"""``pip install`` as a user does it: build the wheel from a copy of the source, install it into
a fresh virtual environment outside the checkout, and train a step there; once with a C++
compiler (the kernels are built into the wheel and load, verified) and once without one (the
install succeeds, says so, and the package runs on torch ops and says why).

No network: the wheel is built without build isolation against this environment's torch, and
the fresh environment sees torch and numpy through a path file (not this checkout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

PROBE = """
import json, torch, batchnorm
from batchnorm.core import kernels
bn = batchnorm.BatchNorm2d(4)
x = torch.randn(8, 4, 5, 5, requires_grad=True)
y = bn(x)
y.square().sum().backward()
ref = torch.nn.functional.batch_norm(x.detach(), None, None, training=True)
print(json.dumps({"file": batchnorm.__file__, "info": kernels.info(),
                  "kernel": kernels.get(x.detach(), 1).name,
                  "err": float((y.detach() - ref).abs().max()),
                  "grad_finite": bool(torch.isfinite(x.grad).all())}))
"""


def _source_copy(dst: Path) -> Path:
    """The files an sdist carries (MANIFEST.in), without any built library."""
    src = dst / "src"
    src.mkdir(parents=True)
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "csrc", src / "csrc")
    shutil.copytree(
        ROOT / "batchnorm",
        src / "batchnorm",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "_cpu_ops.json"),
    )
    return src


def _build_wheel(tmp: Path, env: dict[str, str]) -> tuple[Path, str]:
    src = _source_copy(tmp)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps", "-w",
         str(tmp / "wheel"), str(src)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (tmp / "wheel").glob("batchnorm-*.whl")
    return wheel, out.stdout + out.stderr


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # torch and numpy from this environment; the directory's own .pth files (this checkout's
    # editable install among them) are not processed from a path line.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
         "-q", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return py


def _probe(py: Path, cwd: Path) -> dict:
    out = subprocess.run(
        [str(py), "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no compiler"
)
def test_wheel_with_a_compiler_carries_verified_kernels(tmp_path):
    wheel, log = _build_wheel(tmp_path, dict(os.environ))
    py = _fresh_venv(tmp_path, wheel)
    result = _probe(py, tmp_path)
    assert str(tmp_path / "venv") in result["file"]  # the installed copy, not this checkout
    assert result["info"]["path"] == "kernels" and result["kernel"] == "cpu", result
    assert "sha256 verified" in result["info"]["reason"]
    assert result["err"] < 1e-4 and result["grad_finite"]


def test_wheel_without_a_compiler_installs_and_falls_back(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "CC": str(empty / "cc"), "CXX": str(empty / "c++")}
    wheel, log = _build_wheel(tmp_path, env)
    assert "could not build the CPU kernels" in log and "torch ops" in log
    py = _fresh_venv(tmp_path, wheel)
    result = _probe(py, tmp_path)
    assert str(tmp_path / "venv") in result["file"]
    assert result["info"]["path"] == "torch ops" and result["kernel"] == "native", result
    assert "not built at install" in result["info"]["reason"]
    assert result["err"] < 1e-4 and result["grad_finite"]
