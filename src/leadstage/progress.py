"""A progress bar for long CLI commands, on stderr, without a dependency.

On a terminal the line is redrawn in place; elsewhere (a log file, CI) a line
is written when the phase changes and then at most every ``interval`` seconds,
so logs stay readable.
"""

from __future__ import annotations

import time
from typing import TextIO


class ProgressBar:
    def __init__(self, stream: TextIO, *, width: int = 30, interval: float = 5.0) -> None:
        self._stream = stream
        self._width = width
        self._interval = interval
        self._tty = stream.isatty()
        self._phase: str | None = None
        self._phase_started = 0.0
        self._last_written = 0.0
        self._drawn = False

    def update(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        new_phase = phase != self._phase
        if new_phase:
            self._finish_line()
            self._phase, self._phase_started = phase, now
        finished = total > 0 and done >= total
        throttled = not self._tty and not new_phase and not finished
        if throttled and now - self._last_written < self._interval:
            return
        self._last_written = now
        line = self.render(phase, done, total, now - self._phase_started)
        if self._tty:
            self._stream.write("\r" + line + "\x1b[K")
            self._drawn = True
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def render(self, phase: str, done: int, total: int, elapsed: float) -> str:
        """``replaying [#########-----------]  45% 4,500/10,000  1,234/s  ETA 4s``."""
        rate = done / elapsed if elapsed > 0 else 0.0
        if total <= 0:
            return f"{phase} {done:,}"
        fraction = min(done / total, 1.0)
        filled = round(fraction * self._width)
        eta = f"  ETA {(total - done) / rate:,.0f}s" if rate > 0 and done < total else ""
        return (
            f"{phase} [{'#' * filled}{'-' * (self._width - filled)}] {fraction:4.0%} "
            f"{done:,}/{total:,}  {rate:,.0f}/s{eta}"
        )

    def _finish_line(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False

    def close(self) -> None:
        self._finish_line()
