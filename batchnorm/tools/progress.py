"""A small progress bar on stderr (no dependency): counts, rate, elapsed time and ETA.

The one progress bar of the package: population statistics and the experiments both draw
with it.
"""

from __future__ import annotations

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
    """``[####....]  42% 1234/2900 steps  01:10<01:35  lenet ours seed 0``.

    ``weight`` scales what one ``update()`` counts, so runs of unequal cost share one bar.
    With ``total=None`` (an unknown amount of work) it shows the count and the elapsed time.

    Redraws at most every ``interval`` seconds; on a terminal in place (carriage return),
    otherwise one line per redraw (at most every 30 s) so logs stay short.

    Args:
        total: the amount of work (e.g. training steps of all pending runs), or None.
        unit: what is counted.
        enabled: False makes every method a no-op.
        stream: where to draw (default stderr).
        label: a fixed text before the bar.
    """

    def __init__(
        self,
        total: int | None,
        unit: str = "steps",
        enabled: bool = True,
        stream: TextIO | None = None,
        label: str = "",
    ) -> None:
        self.total = None if total is None else max(1, int(total))
        self.unit, self.enabled, self.label = unit, enabled, label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.5 if self.tty else 30.0
        self.done, self.note = 0.0, ""
        self.weight = 1.0  # work per update() call, e.g. the relative cost of one step of a model
        self.start = time.perf_counter()
        self._last = 0.0

    def set_note(self, note: str) -> None:
        self.note = note
        self._draw(force=True)

    def update(self, n: int = 1) -> None:
        self.done += n * self.weight
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self.start
        prefix = f"{self.label} " if self.label else ""
        if self.total is None:
            line = f"{prefix}{self.done:.0f} {self.unit} {_fmt(elapsed)}  {self.note}"
        else:
            # Weighted float increments can sum a hair past the total: show at most the total.
            frac = min(1.0, self.done / self.total)
            eta = elapsed / frac - elapsed if frac > 0 else 0.0
            bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
            line = (
                f"{prefix}[{bar}] {100 * frac:3.0f}% {min(self.done, self.total):.0f}/"
                f"{self.total} {self.unit} {_fmt(elapsed)}<{_fmt(eta)}  {self.note}"
            )
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(force=True)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
