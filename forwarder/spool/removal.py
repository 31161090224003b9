"""Delivered objects' files removed beside the sender, not in its way.

Removing a file costs the sender 0.1 to 1 ms on ext4 while intake's fsyncs hold the
journal: as much as the rest of a small file's C-STORE. A worker hands the names to one
thread that unlinks them while the next file is sent. The rows are already gone; a file
not yet removed when the process dies is content listed as delivered, which recovery
removes at the next start (:func:`forwarder.spool.recovery.orphans`).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

_END = None


class Remover:
    """Unlinks the paths given to :meth:`remove` on a thread of its own, in order."""

    def __init__(self) -> None:
        self._paths: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fwd-remove", daemon=True)
        self._thread.start()

    def remove(self, paths: list[Path]) -> None:
        for path in paths:
            self._paths.put(path)

    def close(self, timeout: float = 10.0) -> None:
        """Remove what is queued, then stop."""
        self._paths.put(_END)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (path := self._paths.get()) is not _END:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # recovery removes it at the next start
