"""``batchnorm bench --device cuda`` (batchnorm/cli/bench_cuda.py): what runs without a GPU:
the cells it builds, its argument wiring into ``batchnorm bench``, the floor arithmetic and the
table on fake timings, and the clear refusal where there is no CUDA device."""

from __future__ import annotations

import pytest
import torch

from batchnorm.cli import bench_cuda as B
from batchnorm.cli import build_parser


def test_default_cells_are_the_issues_shapes_in_both_layouts():
    cells = B.parse_cells(B.default_cells(), B.DEFAULT_DTYPES, B.DEFAULT_MODES)
    names = {c.name for c in cells}
    assert names == {
        "32x64x56x56",
        "32x64x56x56-cl",
        "128x256x14x14",
        "128x256x14x14-cl",
        "8x32x112x112",
        "8x32x112x112-cl",
        "64x128x56x56",
        "64x128x56x56-cl",
        "256x64x112x112",
        "256x64x112x112-cl",
        "4096x1024",
        "65536x1024",
    }
    assert len(cells) == 12 * 2 * 2  # names x {float32, bfloat16} x {train, fwd+bwd}
    big = next(c for c in cells if c.name == "256x64x112x112-cl" and c.dtype == "bfloat16")
    assert big.channels_last and big.shape == (256, 64, 112, 112)
    assert big.nbytes() == 256 * 64 * 112 * 112 * 2
    assert {c.passes for c in cells} == {3, 8}


@pytest.mark.parametrize(
    ("shapes", "dtypes", "modes", "match"),
    [
        ("4096x1024-cl", "float32", "train", "channels-last needs a 4-D shape"),
        ("32x64x56x57", "float32", "train", "unknown shape"),
        ("4096x1024", "float64", "train", "unknown dtypes or modes"),
        ("4096x1024", "float32", "bwd", "unknown dtypes or modes"),
    ],
)
def test_bad_cells_are_refused_by_name(shapes: str, dtypes: str, modes: str, match: str):
    with pytest.raises(ValueError, match=match):
        B.parse_cells(shapes, dtypes, modes)


def test_floor_and_ratios_from_fake_timings():
    cell = B.Cell("4096x1024", (4096, 1024), False, "float32", "train")
    times = {
        "copy": [1.0, 1.2, 0.8],  # median 1.0 ms for a read + a write
        "native": [4.0, 6.0, 3.0],
        "ours": [2.0, 3.0, 1.5],
    }
    row = B.summarize(cell, times)
    assert row["copy_ms"] == 1.0 and row["floor_ms"] == 1.5  # 3 passes = 1.5 copies
    assert row["copy_tbs"] == pytest.approx(2 * 4096 * 1024 * 4 / 1e-3 / 1e12)
    assert row["ours_ms"] == 2.0 and row["ours_floor_pct"] == pytest.approx(75.0)
    assert row["native_ms"] == 4.0 and row["native_floor_pct"] == pytest.approx(37.5)
    assert row["native_over_ours"] == 2.0  # median of the paired ratios 2, 2, 2
    assert row["best_other_over_ours"] == 2.0
    assert "compile_ms" not in row and "compile_over_ours" not in row
    fb = B.summarize(B.Cell("x", (2, 2), False, "float32", "fwd+bwd"), {"copy": [2.0]})
    assert fb["floor_ms"] == 8.0  # 8 passes = 4 copies
    line = B.format_row({**row, "path": "triton-cuda", "errors": {}})
    assert line.split()[:6] == ["4096x1024", "float32", "train", "4.000", "-", "2.000"]
    assert "triton-cuda" in line and "errors" not in line
    assert len(line.split()) == 17  # 16 columns + the path
    assert line.index("triton-cuda") == B.HEADER.index("path")  # the columns line up
    failed = B.format_row({**row, "path": "native", "errors": {"compile": "BackendError"}})
    assert failed.endswith("errors: {'compile': 'BackendError'}")


def test_bench_device_option_dispatches_with_cuda_defaults(capsys: pytest.CaptureFixture[str]):
    parser = build_parser()
    args = parser.parse_args(["bench", "--device", "cuda"])
    ns = B.from_cpu_bench(args)
    assert ns.shapes == B.default_cells() and ns.modes == B.DEFAULT_MODES
    assert ns.dtypes == B.DEFAULT_DTYPES and ns.repeat == 20
    args = parser.parse_args(
        [
            "bench",
            "--device",
            "cuda",
            "--shapes",
            "4096x1024",
            "--modes",
            "eval",
            "--dtypes",
            "bfloat16",
            "--repeat",
            "5",
            "--no-compile",
            "--out",
            "somewhere",
        ]
    )
    ns = B.from_cpu_bench(args)
    assert (ns.shapes, ns.modes, ns.dtypes, ns.repeat) == ("4096x1024", "eval", "bfloat16", 5)
    assert ns.no_compile and ns.out == "somewhere"
    assert parser.parse_args(["bench"]).device == "cpu"
    if not torch.cuda.is_available():
        from batchnorm.cli import main

        assert main(["bench", "--device", "cuda", "--shapes", "4096x1024"]) == 2
        assert "no CUDA device here" in capsys.readouterr().err


def test_standalone_parser_and_sweep_tunings_are_valid():
    import argparse

    from batchnorm.core.kernels.triton import Tuning

    p = argparse.ArgumentParser()
    B.add_arguments(p)
    ns = p.parse_args(["--sweep", "--shapes", "32x64x56x56-cl"])
    assert ns.sweep and B.parse_cells(ns.shapes, ns.dtypes, ns.modes)
    for kw in B.SWEEP.values():
        Tuning(**kw)  # every sweep entry names real Tuning fields


def test_measure_runs_end_to_end_with_cpu_stand_ins(monkeypatch: pytest.MonkeyPatch):
    """measure() on a tiny cell with CPU tensors, CUDA events and synchronize replaced by
    host-clock stand-ins: every code path of a cell but the device runs (native and ours; the
    compile path is the same callable wrapped in torch.compile)."""
    import time

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            self.t = 0.0

        def record(self) -> None:
            self.t = time.perf_counter()

        def synchronize(self) -> None:
            pass

        def elapsed_time(self, end: Event) -> float:
            return (end.t - self.t) * 1e3

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    flush = torch.empty(1024)
    for mode in ("train", "eval", "fwd+bwd"):
        cell = B.Cell("tiny", (4, 3, 5, 7), True, "float32", mode)
        row = B.measure(cell, ["native", "ours"], 3, 1, flush, 4, torch.device("cpu"))
        assert row["errors"] == {} and row["path"] in ("cpu", "native")
        assert row["ours_ms"] > 0 and row["native_ms"] > 0 and row["copy_ms"] > 0
        assert row["ours_wall_ms"] > 0 and row["native_host_ms"] > 0
        if mode != "fwd+bwd":
            assert row["max_abs_diff_ours_native"] < 1e-4
        assert B.format_row(row).startswith("tiny")
