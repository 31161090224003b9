"""Intake into the spool: a batch of sources placed durably and committed with their jobs,
files left in place remembered, rejected inputs kept in quarantine with the reason.

An object is complete or absent: it is written into ``tmp/``, fsynced, renamed into
``objects/`` and the directory fsynced before its jobs are committed; only after that
commit may intake remove the source (Postfix's cleanup order). A failed write or fsync
raises :class:`SpoolError` and is never retried; a full disk raises :class:`SpoolFull`
with nothing half-written left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from forwarder.errors import SpoolError, SpoolFull
from forwarder.model import Accepted, Incoming, Probe
from forwarder.spool import durable, room, seen

if TYPE_CHECKING:
    from forwarder.spool import Spool


def _place(spool: Spool, item: Incoming, name: str, defer_sync: bool,
           unsynced: list[tuple[int, str]]) -> tuple[str, str, int]:
    """Put the source's bytes at objects/<name>; return (name, sha256, size). With
    ``defer_sync`` the object's descriptor, still to be flushed, goes to ``unsynced``."""
    try:
        sha, size, fd = durable.place(item.fd, item.source, spool.tmp / name,
                                      spool.objects / name, item.link_ok, defer_sync,
                                      item.path)
    except OSError as exc:
        if exc.errno in durable.FULL:
            raise SpoolFull(f"spool full while taking {item.source}") from exc
        raise SpoolError(f"cannot write {spool.tmp / name}: {exc.strerror}") from exc
    if fd is not None:
        unsynced.append((fd, f"{spool.objects / name} (taken from {item.source})"))
    return name, sha, size


def accept(spool: Spool, items: Iterable[Incoming], now: float | None = None) -> list[Accepted]:
    """Take a batch durably with one commit; return what became of each item: its object
    id and the destinations it was queued for (0 and none if every destination already
    had the identical content pending). Only after this returns may the caller remove
    the sources."""
    now = time.time() if now is None else now
    placed: list[tuple[Incoming, str, str, int]] = []
    unsynced: list[tuple[int, str]] = []
    batch = list(items)
    room.check(spool.root, spool.reserve, [(i.fd, i.link_ok) for i in batch])
    group = len(batch) > 1  # placed unflushed, then flushed together
    names = [uuid.uuid4().hex for _ in batch]
    tracked = [(n, i.source, i.stat.st_ino, i.stat.st_size, i.stat.st_mtime_ns)
               for n, i in zip(names, batch, strict=True) if i.stat is not None]
    with spool._tx(durable=False) as db:  # see forwarder.spool.recovery
        db.execute("DELETE FROM intake WHERE committed = 1")  # the previous batch
        db.executemany("INSERT INTO intake (name, source, inode, size, mtime_ns) VALUES "
                       "(?, ?, ?, ?, ?)", tracked)
    try:
        try:
            for item, name in zip(batch, names, strict=True):
                placed.append((item, *_place(spool, item, name, group, unsynced)))
            if not placed:
                return []
            room.check(spool.root, spool.reserve, [])  # as really written: undone if too much
            durable.flush(unsynced)
        finally:
            for fd, _what in unsynced:
                os.close(fd)
        durable.fsync_dir(spool.objects)
        # the names of the files left in place, looked up before the lock is taken
        kept = {id(item): seen.key(item.source, fresh=True) for item, *_ in placed
                if item.remember and item.stat is not None}
        ids: list[Accepted] = []
        with spool._tx() as db:
            for item, name, sha, size in placed:
                # CROSS JOIN keeps objects (found by sha256) as the outer loop:
                # otherwise SQLite may walk every pending job of the destination
                dests = [d for d in item.destinations if not db.execute(
                    "SELECT 1 FROM objects o CROSS JOIN jobs j ON o.id = j.object_id "
                    "WHERE o.sha256 = ? AND j.destination = ? AND j.state IN "
                    "('pending', 'sending') LIMIT 1", (sha, d)).fetchone()]
                if id(item) in kept and item.stat is not None:
                    seen.record(db, kept[id(item)], item.stat, sha)
                if not dests:
                    ids.append(Accepted(0, ()))
                    continue
                ids.append(Accepted(add_object(db, name, sha, size, item.probe, item.source,
                                               item.watch, dests, now), tuple(dests)))
            db.executemany("UPDATE intake SET committed = 1 WHERE name = ?",
                           [(n,) for n in names])
    except BaseException:
        for _item, name, _sha, _size in placed:
            (spool.objects / name).unlink(missing_ok=True)
        _forget_intake(spool, names)
        raise
    for (_item, name, _sha, _size), done in zip(placed, ids, strict=False):
        if done.object_id == 0:
            (spool.objects / name).unlink(missing_ok=True)
    spool._notify()
    return ids


def add_object(db: sqlite3.Connection, name: str, sha: str, size: int, probe: Probe,
               source: str, watch: str, destinations: Iterable[str], now: float) -> int:
    """The row of an object placed at objects/``name`` and a pending job for each
    destination, inside the caller's transaction; the object's id."""
    p = probe
    cur = db.execute(
        "INSERT INTO objects (name, sha256, size, sop_class, sop_instance, transfer_syntax, "
        "study, meta_consistent, source, watch, accepted_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (name, sha, size, p.sop_class_uid, p.sop_instance_uid, p.transfer_syntax,
         p.study_instance_uid, int(p.meta_consistent), source, watch, now))
    oid = int(cur.lastrowid or 0)
    db.executemany("INSERT INTO jobs (object_id, destination, state, next_attempt_at, "
                   "created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?)",
                   [(oid, d, now, now, now) for d in destinations])
    return oid


def _forget_intake(spool: Spool, names: list[str]) -> None:
    try:
        with spool._tx(durable=False) as db:
            db.executemany("DELETE FROM intake WHERE name = ?", [(n,) for n in names])
    except (SpoolError, sqlite3.Error):
        pass  # left for the next start, where the names match no object


def is_seen(spool: Spool, path: str, st: os.stat_result, fd: int | None = None) -> bool:
    """Was this file taken before and left in place, and is it unchanged since
    (see :mod:`forwarder.spool.seen`)? ``fd``: the file, open, to compare content."""
    name = seen.key(path)
    with spool._lock:
        return seen.lookup(spool.db, name, st, fd)


def left_unchanged(spool: Spool, path: str, st: os.stat_result) -> bool:
    """Was this file taken and left in place, and is it untouched since (its index row
    alone; see :func:`forwarder.spool.seen.unchanged`)? False when the index cannot
    be read: intake then decides, as for any file."""
    name = seen.key(path)
    try:
        with spool._lock:
            return seen.unchanged(spool.db, name, st)
    except sqlite3.Error:
        return False


def remember(spool: Spool, path: str, st: os.stat_result, sha: str | None = None) -> None:
    """Record a file left in place so it is never taken twice while unchanged."""
    name = seen.key(path, fresh=True)
    with spool._tx() as db:
        seen.record(db, name, st, sha)


def quarantine(spool: Spool, fd: int | None, source: str, reason: str, move: Path | None = None,
               now: float | None = None) -> Path:
    """Keep a rejected input in quarantine/ with ``<id>.json`` saying why."""
    now = time.time() if now is None else now
    name = uuid.uuid4().hex
    dest = spool.quarantine_dir / name
    meta = spool.quarantine_dir / f"{name}.json"
    info = {"source": source, "reason": reason, "at": now, "file": name}
    copied = spool.tmp / name  # a copy is whole at ``dest`` or not there at all
    try:  # the reason first, then the data, each durable before the source is gone
        durable.write_durably((json.dumps(info, indent=1) + "\n").encode(),
                              spool.tmp / f"{name}.json", meta)
        if move is not None:
            try:
                if fd is not None:
                    durable.fsync(fd, source)
                else:
                    durable.sync_path(move)
                os.rename(move, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                move = None
            else:
                with contextlib.suppress(OSError):  # another account's file: as it is
                    os.chmod(dest, durable.FILE_MODE)
        if move is None and fd is not None:
            room.check(spool.root, spool.reserve, [(fd, False)])  # the senders' reserve
            durable.copy(fd, copied)
            os.rename(copied, dest)
        durable.fsync_dir(spool.quarantine_dir)
    except (OSError, SpoolFull) as exc:
        copied.unlink(missing_ok=True)
        if not dest.exists():
            meta.unlink(missing_ok=True)
        if isinstance(exc, SpoolFull):
            raise SpoolFull(f"{exc} while quarantining {source}") from exc
        if exc.errno in durable.FULL:
            raise SpoolFull(f"spool full while quarantining {source}") from exc
        raise SpoolError(f"cannot write quarantine: {exc.strerror}") from exc
    with spool._tx() as db:
        db.execute("INSERT INTO quarantine (name, source, reason, at) VALUES (?,?,?,?)",
                   (name, source, reason, now))
    return dest
