"""Durable store: SQLite (WAL, synchronous=FULL) index + ``objects/`` files; jobs, claims, outcomes.

:class:`Spool` is the one handle callers hold: the directory, one connection serialised by
a lock, and the listeners told when jobs may have become due. Its methods are thin; the
work is in the package's modules:

- :mod:`~forwarder.spool.db`: schema, ``user_version`` migrations, connections, transactions
- :mod:`~forwarder.spool.accept`: intake and placement, files left in place, quarantine
- :mod:`~forwarder.spool.queue`: claim and outcomes (done, retry, release, fail, expire)
- :mod:`~forwarder.spool.claims`: who holds a claim, and a dead worker's claims
- :mod:`~forwarder.spool.health`: destination health rows
- :mod:`~forwarder.spool.recovery`: the spool at start
- :mod:`~forwarder.spool.report`: status, failed, quarantine (read-only)
- :mod:`~forwarder.spool.retention`, :mod:`~forwarder.spool.rebuild`: purge; a new index
- :mod:`~forwarder.spool.durable`, :mod:`~forwarder.spool.room`,
  :mod:`~forwarder.spool.seen`: durable files, the free-space reserve, files left in place
- :mod:`~forwarder.spool.removal`: delivered files removed beside a sender
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from forwarder.errors import SpoolUnusable
from forwarder.model import Accepted, Incoming, Job
from forwarder.retry import Backoff
from forwarder.spool import accept, db, durable, health, queue, recovery, report, room
from forwarder.spool.durable import filesystem_type
from forwarder.spool.health import Health

if TYPE_CHECKING:
    from forwarder.spool.removal import Remover

__all__ = ["Health", "Incoming", "Job", "Spool", "filesystem_type"]


RESERVE = 1 << 20  # bytes intake leaves free on the spool's file system for the senders


class Spool:
    """The spool directory. Thread-safe: one connection, serialised by a lock."""

    def __init__(self, root: str | os.PathLike[str], rand: random.Random | None = None,
                 reserve: int = RESERVE, rebuild: bool = False,
                 readonly: bool = False):
        """``readonly``: for the commands that only look (status, failed, quarantine):
        nothing is created or changed, and a path without a spool index is an error."""
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.quarantine_dir = self.root / "quarantine"
        self.tmp = self.root / "tmp"
        self._lock = threading.RLock()
        self._listeners: list[Callable[[], None]] = []
        self._sync = db.Synchronous()
        self._remover: Remover | None = None
        if readonly:
            db.check_before_open(self.root)
            self.db = db.connect_readonly(self.root)
            return
        for d in (self.root, self.objects, self.quarantine_dir, self.tmp):
            with durable.creating(d):
                durable.make_dir(d)
        why = durable.unusable_fs(filesystem_type(self.root))
        if why:
            raise SpoolUnusable(f"spool {self.root} is {why}")
        self._rand = rand or random.Random()
        if not rebuild:
            db.check_before_open(self.root)
        self.db = db.connect(self.root)
        # free space kept for the index: outcomes must be recordable when the disk fills
        self.reserve = reserve

    def listen(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (quick, never blocking) whenever jobs may have become due."""
        self._listeners = [*self._listeners, listener]

    def unlisten(self, listener: Callable[[], None]) -> None:
        self._listeners = [f for f in self._listeners if f != listener]

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def remove_aside(self) -> None:
        """From now on, delivered objects' files are removed on a thread of their own
        (:mod:`~forwarder.spool.removal`): for a sender, whose next file must not wait."""
        from forwarder.spool.removal import Remover

        self._remover = Remover()

    def _remove(self, paths: list[Path]) -> None:
        if self._remover is not None:
            self._remover.remove(paths)
            return
        for path in paths:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._remover is not None:
            self._remover.close()
        with self._lock:
            self.db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction (see :func:`forwarder.spool.db.transaction`)."""
        with db.transaction(self.db, self._lock, durable, self._sync) as conn:
            yield conn

    # --- intake (forwarder.spool.accept) ------------------------------------------

    def accept(self, items: Iterable[Incoming], now: float | None = None) -> list[Accepted]:
        """Take a batch durably with one commit; return what became of each item: its
        object id and the destinations it was queued for (see
        :func:`forwarder.spool.accept.accept`). Only after this returns may the caller
        remove the sources."""
        return accept.accept(self, items, now)

    def is_seen(self, path: str, st: os.stat_result, fd: int | None = None) -> bool:
        """Was this file taken before and left in place, and is it unchanged since?"""
        return accept.is_seen(self, path, st, fd)

    def left_unchanged(self, path: str, st: os.stat_result) -> bool:
        """Was this file taken and left in place, and is it untouched since? From the
        index alone, for a watcher's scan (any other thread than intake's may ask)."""
        return accept.left_unchanged(self, path, st)

    def remember(self, path: str, st: os.stat_result, sha: str | None = None) -> None:
        """Record a file left in place so it is never taken twice while unchanged."""
        accept.remember(self, path, st, sha)

    def quarantine(self, fd: int | None, source: str, reason: str, move: Path | None = None,
                   now: float | None = None) -> Path:
        """Keep a rejected input in quarantine/ with ``<id>.json`` saying why."""
        return accept.quarantine(self, fd, source, reason, move, now)

    # --- sending (forwarder.spool.queue) ------------------------------------------

    def claim(self, destination: str, limit: int, now: float | None = None,
              owner: str | None = None) -> list[Job]:
        """Move up to ``limit`` due jobs of ``destination`` to ``sending``, for ``owner``."""
        return queue.claim(self, destination, limit, now, owner)

    def done(self, job_ids: Iterable[int], now: float | None = None,
             owner: str | None = None) -> None:
        """Mark stored; delete each object whose jobs are all done."""
        queue.done(self, job_ids, now, owner)

    def retry(self, job_id: int, error: str, policy: Backoff, now: float | None = None,
              aborted: bool = False, count_attempt: bool = True,
              delay: float | None = None, owner: str | None = None) -> float | None:
        """Back to ``pending`` for a later attempt; when it is due, None if not claimed."""
        return queue.retry(self, job_id, error, policy, now, aborted, count_attempt, delay,
                           owner)

    def release(self, job_ids: Iterable[int], now: float | None = None,
                owner: str | None = None) -> None:
        """Return claimed jobs unattempted."""
        queue.release(self, job_ids, now, owner)

    def fail(self, job_id: int, reason: str, now: float | None = None,
             attempted: bool = True, owner: str | None = None) -> bool:
        """``failed`` with the reason; False when the job is no longer claimed."""
        return queue.fail(self, job_id, reason, now, attempted, owner)

    def expire(self, destination: str, max_age: float, now: float | None = None) -> int:
        """Pending jobs older than ``max_age`` end ``failed``, reason ``expired``."""
        return queue.expire(self, destination, max_age, now)

    def clock_stepped(self, destination: str, by: float, before: float) -> int:
        """The wall clock stepped ahead ``by`` seconds: waiting jobs stamped no later than
        ``before`` keep their age; the number moved."""
        return queue.clock_stepped(self, destination, by, before)

    def older_than(self, destination: str, age: float,
                   now: float | None = None) -> tuple[int, float]:
        """Pending jobs that have waited more than ``age``: how many, the oldest's age."""
        return queue.older_than(self, destination, age, now)

    def requeue_failed(self, destinations: list[str], now: float | None = None) -> int:
        """Operator retry of the failed jobs of ``destinations``: ``failed`` ->
        ``pending``, due now, attempts reset, its ``max_age`` counted from now."""
        return queue.requeue_failed(self, destinations, now)

    def next_due(self, destination: str) -> float | None:
        return queue.next_due(self, destination)

    def clock_stepped_back(self, destination: str, latest: float,
                           now: float | None = None) -> int:
        """Jobs and the next probe further ahead than ``latest`` (the clock stepped
        back) are due now; the number of jobs moved."""
        return queue.clock_stepped_back(self, destination, latest, now)

    # --- destination health (forwarder.spool.health) --------------------------------

    def note_failure(self, destination: str, job_id: int) -> tuple[int, bool]:
        """The failure run at ``destination``, and whether a file was stored since."""
        return health.note_failure(self, destination, job_id)

    def health(self, destination: str) -> Health:
        return health.get(self, destination)

    def resume(self, destination: str, now: float | None = None) -> tuple[Health, int]:
        """Operator resume: probed at once, pending jobs due now (and counted)."""
        return health.resume(self, destination, now)

    def set_health(self, destination: str, state: str, until: float | None = None,
                   reason: str | None = None, now: float | None = None) -> None:
        health.set_health(self, destination, state, until, reason, now)

    # --- recovery and reporting (forwarder.spool.recovery, .report) -----------------

    def recover(self, cap: Backoff | None = None, now: float | None = None) -> dict[str, int]:
        """At start: ``sending`` -> ``pending``; clear tmp/; report (never drop) orphans."""
        return recovery.recover(self, cap, now)

    def status(self, destinations: Iterable[str], now: float | None = None) -> dict:
        """The ``status --json`` contract."""
        return report.status(self, destinations, now)

    def destination_names(self) -> list[str]:
        """Every destination the spool has jobs or a record for."""
        return report.destination_names(self)

    def last_success(self) -> dict[str, float]:
        """Per destination, when the peer last confirmed a C-STORE (epoch seconds)."""
        return report.last_success(self)

    def failed_jobs(self, destination: str | None = None) -> list[dict]:
        return report.failed_jobs(self, destination)

    def quarantined(self) -> list[dict]:
        return report.quarantined(self)

    def counts(self) -> dict[str, int]:
        """Jobs by state, for tests and the daemon's STATUS= line."""
        return report.counts(self)

    def what_frees_space(self) -> str:
        """For intake's pause on a full spool: whether sending will make room by itself
        (see :func:`~forwarder.spool.room.what_frees_space`)."""
        try:
            jobs = self.counts()
        except sqlite3.Error:
            return "sending goes on and frees space as files are delivered"
        return room.what_frees_space(jobs)
