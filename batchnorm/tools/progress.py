"""A small progress bar on stderr (no dependency): share done, elapsed time, ETA, a note.

The one progress bar of the package: population statistics, ``batchnorm train`` and
``batchnorm reproduce`` (also with parallel worker processes, whose work the parent adds
to one bar) all draw with it.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

__all__ = ["Progress"]


def _fmt(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """``[########........]  42% 01:10 ETA 01:35  runs 12/147``.

    ``add(work)`` counts work in the bar's unit; ``update(n)`` counts ``n * weight`` (so runs
    of unequal cost per step share one bar). With ``total=None`` (an unknown amount of work)
    it shows the count and the elapsed time.

    The ETA (elapsed * remaining / done) is shown only once it can be estimated: after
    ``eta_after`` of the total and at least 5 s; before that it reads ``ETA --:--``.

    Redraws at most every ``interval`` seconds; on a terminal in place (carriage return, the
    line cut to the terminal's width, 80 columns if unknown, so it never wraps), otherwise one
    line per redraw (at most every 30 s) so logs stay short.

    Args:
        total: the amount of work (e.g. training steps of all pending runs), or None.
        unit: what is counted (shown when ``show_count``).
        enabled: False makes every method a no-op.
        stream: where to draw (default stderr).
        label: a fixed text before the bar.
        show_count: show ``done/total unit`` (off when the unit means nothing to a reader,
            e.g. estimated work).
        eta_after: the share of the total after which an ETA is shown.
    """

    def __init__(
        self,
        total: float | None,
        unit: str = "steps",
        enabled: bool = True,
        stream: TextIO | None = None,
        label: str = "",
        show_count: bool = True,
        eta_after: float = 0.01,
    ) -> None:
        self.total = None if total is None else max(1.0, float(total))
        self.unit, self.enabled, self.label = unit, enabled, label
        self.show_count, self.eta_after = show_count, eta_after
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.5 if self.tty else 30.0
        self.done, self.note = 0.0, ""
        self.weight = 1.0  # work per update() call, e.g. the relative cost of one step of a model
        self.start = time.perf_counter()
        self._last = 0.0

    def set_note(self, note: str) -> None:
        """Change the text after the bar (redrawn now on a terminal; in a log, with the next line)."""
        self.note = note
        self._draw(force=self.tty)

    def update(self, n: float = 1) -> None:
        """Count ``n`` items of ``weight`` work each."""
        self.add(n * self.weight)

    def add(self, work: float) -> None:
        """Count ``work`` units of work."""
        self.done += work
        self._draw()

    def line(self, now: float | None = None) -> str:
        """The bar as text (not cut to any width)."""
        now = time.perf_counter() if now is None else now
        elapsed = now - self.start
        prefix = f"{self.label} " if self.label else ""
        if self.total is None:
            return f"{prefix}{self.done:.0f} {self.unit} {_fmt(elapsed)}  {self.note}".rstrip()
        # Weighted float increments can sum a hair past the total: show at most the total.
        frac = min(1.0, self.done / self.total)
        if frac >= 1.0:
            eta = "done"
        elif frac >= self.eta_after and elapsed >= 5.0:
            eta = "ETA " + _fmt(elapsed / frac - elapsed)
        else:
            eta = "ETA --:--"  # too early to estimate
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        count = (
            f" {min(self.done, self.total):.0f}/{self.total:.0f} {self.unit}"
            if self.show_count
            else ""
        )
        return (
            f"{prefix}[{bar}] {100 * frac:3.0f}%{count} {_fmt(elapsed)} {eta}  {self.note}".rstrip()
        )

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        line = self.line(now)
        if self.tty:
            # One column less than the terminal: writing into the last column wraps on some.
            width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
            self.stream.write("\r" + line[:width].ljust(width))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(force=True)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
