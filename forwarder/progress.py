"""A one-line progress display (files, MB, rate) for long work on a terminal; silent otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws at most ten times a second; prints nothing when ``stream`` is not a tty."""

    def __init__(self, total_files: int, total_bytes: int, stream: TextIO | None = None,
                 label: str = "sent"):
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.label = label
        self.files = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def advance(self, nbytes: int) -> None:
        self.files += 1
        self.bytes += nbytes
        now = time.monotonic()
        if self.enabled and (now - self._drawn >= 0.1 or self.files == self.total_files):
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        mb = self.bytes / 1e6
        self.stream.write(
            f"\r{self.label} {self.files}/{self.total_files} files, "
            f"{mb:.1f}/{self.total_bytes / 1e6:.1f} MB, "
            f"{self.files / elapsed:.0f} files/s, {mb / elapsed:.1f} MB/s ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.files:
            self.stream.write("\n")
            self.stream.flush()
