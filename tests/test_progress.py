"""The one progress bar: in place on a terminal within its width, no ETA before it can
estimate one, a line per redraw in a log."""

from __future__ import annotations

import io

from batchnorm.tools import progress as P


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_redraws_in_place_within_80_columns(monkeypatch):
    monkeypatch.setattr(
        P.shutil, "get_terminal_size", lambda fallback: __import__("os").terminal_size((80, 24))
    )
    out = _Tty()
    bar = P.Progress(1000.0, unit="work", show_count=False, stream=out)
    bar.set_note("runs 3/147, 2 running, a long note that would not fit on the line at all " * 2)
    bar.add(500)
    bar.close()
    frames = out.getvalue().split("\r")[1:]
    assert frames and all(len(f.rstrip("\n")) == 79 for f in frames)  # never wraps
    assert out.getvalue().endswith("\n")


def test_no_eta_before_it_can_estimate(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(P.time, "perf_counter", lambda: clock[0])
    bar = P.Progress(1000.0, stream=io.StringIO(), show_count=False)
    clock[0] += 2.0
    bar.done = 500.0
    assert "ETA --:--" in bar.line()  # 2 s: too early, however much is done
    clock[0] += 8.0
    bar.done = 5.0
    assert "ETA --:--" in bar.line()  # 0.5% done: too little to extrapolate
    bar.done = 250.0
    assert "ETA 00:30" in bar.line() and " 25%" in bar.line()  # 10 s for a quarter
    bar.done = 1000.0
    assert "done" in bar.line()


def test_log_gets_one_line_per_redraw():
    out = io.StringIO()
    bar = P.Progress(10, unit="steps", stream=out)
    bar.update(3)
    bar.close()
    lines = out.getvalue().splitlines()
    assert (
        "\r" not in out.getvalue() and lines[-1].startswith("[######") and "3/10 steps" in lines[-1]
    )
