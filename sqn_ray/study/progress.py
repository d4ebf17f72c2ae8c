"""A compact live progress table for a running study (instead of Ray Tune's per-trial log flood).

On a terminal the three lines are redrawn in place about once a second; otherwise (a log file, CI) the block is
printed when the number of finished trials changes, at most every ``interval`` seconds, and at the end::

    [paper-toy] 41/330 trials done · 2 running · 287 queued · 1:12 elapsed · ETA 19:20
      solved 37 · budget 3 · diverged 1 · failed 0
      best loss 2.31e-05: toy-small/s-lsr1/memory=16,radius=1,sampling=hvp seed 4
"""
from __future__ import annotations

import math
import sys
import time
from typing import TextIO

__all__ = ["ProgressTable", "format_duration"]


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressTable:
    def __init__(self, name: str, total: int, metric: str, mode: str, *, stream: TextIO | None = None,
                 live: bool | None = None, interval: float | None = None):
        self.name, self.total, self.metric, self.mode = name, total, metric, mode
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.interval = interval if interval is not None else (1.0 if self.live else 15.0)
        self.start = time.monotonic()
        self._done_at_start: int | None = None
        self._last_draw = -math.inf
        self._last_done = -1
        self._lines_drawn = 0

    def lines(self, counts: dict[str, int], running: int, best: tuple | None) -> list[str]:
        done = sum(counts.get(s, 0) for s in ("solved", "budget", "diverged", "failed"))
        if self._done_at_start is None:
            self._done_at_start = done
        elapsed = time.monotonic() - self.start
        new = done - self._done_at_start
        remaining = max(self.total - done, 0)
        eta = 0.0 if remaining == 0 else (elapsed / new * remaining if new > 0 else None)
        queued = max(self.total - done - running, 0)
        out = [f"[{self.name}] {done}/{self.total} trials done · {running} running · {queued} queued · "
               f"{format_duration(elapsed)} elapsed · ETA {format_duration(eta)}",
               "  " + " · ".join(f"{s} {counts.get(s, 0)}" for s in ("solved", "budget", "diverged", "failed"))]
        if best is not None:
            value, label = best
            out.append(f"  best {self.metric} {value:.4g}: {label}")
        else:
            out.append(f"  best {self.metric}: -")
        return out

    def update(self, counts: dict[str, int], running: int, best: tuple | None, *, force: bool = False) -> None:
        now = time.monotonic()
        done = sum(counts.get(s, 0) for s in ("solved", "budget", "diverged", "failed"))
        if not force:
            if now - self._last_draw < self.interval:
                return
            if not self.live and done == self._last_done:
                return
        lines = self.lines(counts, running, best)
        if self.live and self._lines_drawn:
            self.stream.write(f"\x1b[{self._lines_drawn}F\x1b[J")
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._lines_drawn = len(lines) if self.live else 0
        self._last_draw, self._last_done = now, done
