"""Bounded growth: failed jobs and quarantine older than an age removed on request (the
``purge`` command) or by the configured ``retention``, and the spool's own bookkeeping
(the ``seen`` rows of files no longer there, digests of old deliveries) pruned.

Nothing is removed unless an operator asked for it, by command or configuration: a
failed job is deleted with its object once no other destination still needs it; a
quarantined file with its ``.json``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from forwarder import paths
from forwarder.logs import event
from forwarder.spool.recovery import DELIVERED_KEEP

if TYPE_CHECKING:
    from forwarder.config import Retention
    from forwarder.spool import Spool

LOGGER = logging.getLogger(__name__)


def purge_failed(spool: Spool, older_than: float, now: float | None = None,
                 dry_run: bool = False) -> int:
    """Delete failed jobs last touched more than ``older_than`` seconds ago, and each
    object no job needs any more."""
    now = time.time() if now is None else now
    cutoff = now - older_than
    with spool._lock:
        rows = spool.db.execute("SELECT id, object_id FROM jobs WHERE state='failed' AND "
                                "coalesce(updated_at, created_at) < ?", (cutoff,)).fetchall()
    if not dry_run:
        _delete_jobs(spool, rows)
    return len(rows)


def purge_destination(spool: Spool, name: str, dry_run: bool = False) -> int | None:
    """Delete every job of ``name``, a destination the configuration no longer has (its
    jobs wait for it for ever otherwise, and keep their objects), and each object no
    other destination still needs: how many were not delivered yet; None when the spool
    holds no job of that name at all."""
    with spool._lock:
        rows = spool.db.execute("SELECT id, object_id, state FROM jobs WHERE destination=?",
                                (name,)).fetchall()
    if not rows:
        return None
    waiting = sum(1 for r in rows if r[2] != "done")
    if not dry_run:
        _delete_jobs(spool, [(r[0], r[1]) for r in rows])
        with spool._tx() as db:
            db.execute("DELETE FROM destinations WHERE name=?", (name,))
    return waiting


def _delete_jobs(spool: Spool, rows: list[tuple[int, int]]) -> None:
    """Delete the jobs (id, object id), then each of their objects no job needs, and any
    object an earlier purge, killed, left without jobs."""
    with spool._tx() as db:
        db.executemany("DELETE FROM jobs WHERE id=?", [(r[0],) for r in rows])
    with spool._lock:
        objects = {r[1] for r in rows} | {r[0] for r in spool.db.execute(
            "SELECT id FROM objects o WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE "
            "j.object_id = o.id)")}
    for oid in objects:
        with spool._lock:
            left = spool.db.execute("SELECT count(*) FROM jobs WHERE object_id=? AND "
                                    "state != 'done'", (oid,)).fetchone()[0]
            name = spool.db.execute("SELECT name FROM objects WHERE id=?", (oid,)).fetchone()
        if left or name is None:
            continue
        # the file first: a kill then leaves a row no job needs, which the next start or
        # purge removes; never a file without a row, which a start would take for the
        # last copy of something lost and quarantine
        (spool.objects / name[0]).unlink(missing_ok=True)
        with spool._tx() as db:
            db.execute("DELETE FROM jobs WHERE object_id=?", (oid,))
            db.execute("DELETE FROM objects WHERE id=?", (oid,))


def purge_quarantine(spool: Spool, older_than: float, now: float | None = None,
                     dry_run: bool = False) -> int:
    """Delete quarantined files (and their ``.json``) older than ``older_than`` seconds."""
    now = time.time() if now is None else now
    with spool._lock:
        rows = spool.db.execute("SELECT id, name FROM quarantine WHERE at < ?",
                                (now - older_than,)).fetchall()
    if dry_run or not rows:
        return len(rows)
    for _qid, name in rows:
        (spool.quarantine_dir / name).unlink(missing_ok=True)
        (spool.quarantine_dir / f"{name}.json").unlink(missing_ok=True)
    with spool._tx() as db:
        db.executemany("DELETE FROM quarantine WHERE id=?", [(r[0],) for r in rows])
    return len(rows)


def prune_bookkeeping(spool: Spool, now: float | None = None,
                      watched: Iterable[str] = ()) -> dict[str, int]:
    """``seen`` rows whose file is gone or is another file now; delivery digests older
    than their keeping time. ``watched``: the watch folders' paths; a file in a subfolder
    that is gone is forgotten when its watch folder holds files (so it is mounted)."""
    now = time.time() if now is None else now
    roots = [os.path.realpath(w) for w in watched]
    with spool._lock:
        seen = spool.db.execute("SELECT path, inode FROM seen").fetchall()
    gone = []
    present: dict[str, bool] = {}
    for path, inode in seen:
        real = paths.unshown(path)  # the index holds the shown form
        try:
            if os.lstat(real).st_ino == inode:
                continue
        except FileNotFoundError:
            pass
        except OSError:
            continue  # cannot tell: kept
        parent = os.path.dirname(real)
        if parent not in present:
            present[parent] = _holds_files(parent) or _below_root_holding_files(
                parent, roots, present)
        if present[parent]:
            gone.append((path, inode))
    with spool._tx(durable=False) as db:
        db.executemany("DELETE FROM seen WHERE path=? AND inode=?", gone)
        digests = db.execute("DELETE FROM delivered WHERE at < ?",
                             (now - DELIVERED_KEEP,)).rowcount
    return {"seen_pruned": len(gone), "delivered_digests_pruned": digests}


def _holds_files(folder: str) -> bool:
    """The folder is there with something in it: an empty or missing one may be a share
    not mounted now, whose files would be taken again if their rows were pruned."""
    try:
        with os.scandir(folder) as it:
            return any(True for _ in it)
    except OSError:
        return False


def _below_root_holding_files(folder: str, roots: list[str],
                              present: dict[str, bool]) -> bool:
    """``folder`` is gone, below a watch folder that holds files: a subfolder removed (a
    day's or a study's folder cleaned away). Not one that is there and empty, which may
    be a share's mount point below the watch folder, its share not mounted now."""
    root = next((r for r in roots if folder.startswith(r.rstrip("/") + "/")), None)
    if root is None or os.path.lexists(folder):
        return False
    if root not in present:
        present[root] = _holds_files(root)
    return present[root]


def apply(spool: Spool, policy: Retention, now: float | None = None,
          watched: Iterable[str] = ()) -> dict[str, int]:
    """One run of the configured retention; an event when anything was purged."""
    report = prune_bookkeeping(spool, now, watched)
    report["failed_purged"] = purge_failed(spool, policy.failed, now) \
        if policy.failed is not None else 0
    report["quarantine_purged"] = purge_quarantine(spool, policy.quarantine, now) \
        if policy.quarantine is not None else 0
    if report["failed_purged"] or report["quarantine_purged"]:
        event(LOGGER, "purged", "retention: %d failed job(s) and %d quarantined file(s) "
              "past their keeping time deleted", report["failed_purged"],
              report["quarantine_purged"], FAILED=report["failed_purged"],
              QUARANTINE=report["quarantine_purged"])
    LOGGER.debug("retention: %s", report)
    return report


class Keeper:
    """Runs :func:`apply` in a thread of its own every ``policy.every`` (first at once), so
    the daemon's main loop never waits for it; a failure is logged, never fatal."""

    def __init__(self, spool: Spool):
        self.spool = spool
        self._thread: threading.Thread | None = None
        self._due = 0.0

    def tick(self, policy: Retention, watched: Iterable[str] = ()) -> None:
        if time.monotonic() < self._due or (self._thread and self._thread.is_alive()):
            return
        self._due = time.monotonic() + policy.every
        self._thread = threading.Thread(target=self._run, args=(policy, tuple(watched)),
                                        name="fwd-retention", daemon=True)
        self._thread.start()

    def _run(self, policy: Retention, watched: tuple[str, ...]) -> None:
        try:
            apply(self.spool, policy, watched=watched)
        except Exception as exc:  # noqa: BLE001 - retention never stops the daemon
            LOGGER.error("retention run failed: %s", exc)

    def join(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
