"""The queue between the watchers and intake: settled candidates, taken in batches.

Files seen through events go before files found by a scan, so a backlog found at start
does not delay what a modality is sending now. A batch is committed once every file in it
is durable, so its first file waits for its last: a batch holds ``batch`` files or about
``batch_bytes`` (at least one file), whichever comes first. After the queue has been
empty, batches start at one file and double up to ``batch``: the first file of a burst is
committed (and on its way to the peers) at once, while the rest are made durable behind it.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable

from forwarder.candidate import Candidate

BATCH_BYTES = 16 << 20


class Batches:
    """Thread-safe: watchers offer, the intake thread takes, requeues and defers."""

    def __init__(self, batch: int = 100, capacity: int = 2000, gather: float = 0.02,
                 batch_bytes: int = BATCH_BYTES):
        self.batch = batch
        self.batch_bytes = batch_bytes
        self.capacity = capacity
        self.gather = gather
        self._fresh: collections.deque[Candidate] = collections.deque()
        self._backlog: collections.deque[Candidate] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._ramp = 1  # the next batch's bound on files: 1 after the queue was empty

    def __len__(self) -> int:
        with self._cond:
            return len(self._fresh) + len(self._backlog)

    def offer(self, cand: Candidate) -> bool:
        """Never blocks. Files seen through events are taken while fewer than
        ``capacity`` of them wait, scan-found ones while fewer than ``capacity`` wait in
        all (False: offer it later)."""
        with self._cond:
            if self._closed:
                return False
            if len(self._fresh) + (0 if cand.fresh else len(self._backlog)) >= self.capacity:
                return False  # the watcher keeps it (bounded) or its next scan finds it
            (self._fresh if cand.fresh else self._backlog).append(cand)
            self._cond.notify_all()
        return True

    def take(self, stop: threading.Event,
             idle: Callable[[], None] = lambda: None) -> list[Candidate]:
        """The next batch, waiting for a first file (calling ``idle`` every second while
        none comes) and then up to ``gather`` seconds for the batch to fill (one flush for
        many files); empty once ``stop`` is set and nothing waits. The first batch after the
        queue was found empty is one file, taken without gathering; each batch after it
        may hold twice as many files as the one before, up to ``batch``."""
        with self._cond:
            if not self._fresh and not self._backlog:
                self._ramp = 1
            while not self._fresh and not self._backlog and not stop.is_set():
                idle()
                self._cond.wait(1.0)
            limit = min(self.batch, self._ramp)
            deadline = time.monotonic() + self.gather
            while not self._full(limit) and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            out: list[Candidate] = []
            size = 0
            while len(out) < limit and (line := self._fresh or self._backlog) and \
                    (not out or size + line[0].sig.size <= self.batch_bytes):
                out.append(line.popleft())  # a file over the bound alone: a batch of its own
                size += out[-1].sig.size
            if out:
                self._ramp = min(self.batch, limit * 2)
            self._cond.notify_all()
            return out

    def _full(self, limit: int) -> bool:
        """Enough waits for a whole batch: ``limit`` files or ``batch_bytes``."""
        if len(self._fresh) + len(self._backlog) >= limit:
            return True
        size = 0
        for cand in itertools.chain(self._fresh, self._backlog):
            size += cand.sig.size
            if size >= self.batch_bytes:
                return True
        return False

    def requeue(self, cands: list[Candidate]) -> None:
        """Back to the front of their lines, in order: taken next. Once closed, handed
        back to their watchers instead (they stay in the folder)."""
        with self._cond:
            if self._closed:
                self._hand_back(cands)
                return
            for c in reversed(cands):
                (self._fresh if c.fresh else self._backlog).appendleft(c)
            self._cond.notify_all()

    def defer(self, cands: list[Candidate]) -> None:
        """To the back of the backlog: what comes after may be taken first. Once closed,
        handed back to their watchers instead."""
        with self._cond:
            if self._closed:
                self._hand_back(cands)
                return
            self._backlog.extend(cands)
            self._cond.notify_all()

    def wake(self) -> None:
        """Have a waiting :meth:`take` look at its stop event now."""
        with self._cond:
            self._cond.notify_all()

    @staticmethod
    def _hand_back(cands: list[Candidate]) -> None:
        for c in cands:
            c.finished(False)

    def close(self) -> list[Candidate]:
        """Refuse further offers; what still waits, for its watchers to keep."""
        with self._cond:
            self._closed = True
            left = list(self._fresh) + list(self._backlog)
            self._fresh.clear()
            self._backlog.clear()
        return left
