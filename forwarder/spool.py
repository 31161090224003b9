"""Durable store: SQLite (WAL, synchronous=FULL) index + ``objects/`` files; jobs, claims, outcomes.

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
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from forwarder import claims, durable, recovery, retry, room, seen, spoolindex
from forwarder.dicomfile import Probe
from forwarder.durable import filesystem_type
from forwarder.errors import SpoolError, SpoolFull
from forwarder.retry import Backoff

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
  id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, sha256 TEXT NOT NULL, size INTEGER,
  sop_class TEXT, sop_instance TEXT, transfer_syntax TEXT, study TEXT,
  meta_consistent INTEGER, source TEXT, watch TEXT, accepted_at REAL);
CREATE INDEX IF NOT EXISTS objects_sha ON objects(sha256);
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY, object_id INTEGER NOT NULL REFERENCES objects(id),
  destination TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  aborts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, created_at REAL NOT NULL,
  updated_at REAL, last_error TEXT, owner TEXT, claim_seq INTEGER,
  deaths INTEGER NOT NULL DEFAULT 0, done_mark INTEGER);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(destination, state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_object ON jobs(object_id);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(destination, state);
CREATE TABLE IF NOT EXISTS destinations (
  name TEXT PRIMARY KEY, state TEXT NOT NULL DEFAULT 'ok', until REAL, reason TEXT,
  failures INTEGER NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0, updated_at REAL,
  streak INTEGER NOT NULL DEFAULT 0, last_failed INTEGER);
CREATE TABLE IF NOT EXISTS seen (
  path TEXT NOT NULL, inode INTEGER NOT NULL, size INTEGER, mtime_ns INTEGER,
  PRIMARY KEY (path, inode));
CREATE TABLE IF NOT EXISTS quarantine (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL, source TEXT, reason TEXT, at REAL);
CREATE TABLE IF NOT EXISTS intake (
  name TEXT PRIMARY KEY, source TEXT NOT NULL, inode INTEGER, size INTEGER, mtime_ns INTEGER,
  committed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS delivered (sha256 TEXT PRIMARY KEY, at REAL NOT NULL);
"""


@dataclass(frozen=True)
class Incoming:
    """One input for :meth:`Spool.accept`: an open source file and where it must go."""

    fd: int  # opened by intake with O_NOFOLLOW; read from, never closed here
    source: str
    probe: Probe
    destinations: tuple[str, ...]
    watch: str = ""
    link_ok: bool = True  # False: copy even on the same filesystem (other hard links)
    stat: os.stat_result | None = None
    remember: bool = False  # keep_source: record (path, inode, size, mtime) as seen
    path: str | None = None  # the source's real path, to hard-link it by (None: copy)


@dataclass(frozen=True)
class Job:
    id: int
    object_id: int
    destination: str
    attempts: int
    aborts: int
    created_at: float
    path: Path
    probe: Probe


@dataclass(frozen=True)
class Health:
    state: str  # ok | backoff | held
    until: float | None
    reason: str | None
    failures: int


class Spool:
    """The spool directory. Thread-safe: one connection, serialised by a lock."""

    def __init__(self, root: str | os.PathLike[str], rand: random.Random | None = None,
                 reserve: int = 1 << 20, rebuild: bool = False,
                 readonly: bool = False):
        """``readonly``: for the commands that only look (status, failed, quarantine):
        nothing is created or changed, and a path without a spool index is an error."""
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.quarantine_dir = self.root / "quarantine"
        self.tmp = self.root / "tmp"
        self._lock = threading.RLock()
        self._listeners: list[Callable[[], None]] = []
        if readonly:
            self._open_readonly()
            return
        for d in (self.root, self.objects, self.quarantine_dir, self.tmp):
            durable.make_dir(d)
        kind = filesystem_type(self.root)
        if kind in durable.REMOTE_FS:
            raise SpoolError(f"spool {self.root} is on {kind}: SQLite's WAL needs a local "
                             "disk; put the spool on local storage (watch folders may be remote)")
        self._rand = rand or random.Random()
        if not rebuild:
            spoolindex.check_before_open(self.root)
        index = self.root / "index.sqlite"
        try:
            if not index.exists():  # SQLite gives its -wal and -shm the index's mode
                with contextlib.suppress(FileExistsError):  # made by another process
                    os.close(durable.create(index))
            self.db = sqlite3.connect(index, check_same_thread=False,
                                      isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            # checkpoint often and truncate the WAL after it: the log never takes more
            # than about a MiB of the space the objects need
            self.db.execute("PRAGMA wal_autocheckpoint=200")
            self.db.execute("PRAGMA journal_size_limit=1048576")
            self.db.executescript(SCHEMA)
            claims.add_columns(self.db)
            seen.migrate(self.db)
            if "last_done_at" not in {r[1] for r in self.db.execute(
                    "PRAGMA table_info(destinations)")}:  # spools made before it existed
                self.db.execute("ALTER TABLE destinations ADD COLUMN last_done_at REAL")
        except sqlite3.Error as exc:
            if spoolindex.is_damage(exc):
                raise spoolindex.damaged(self.root / "index.sqlite", exc) from exc
            raise SpoolError(f"cannot open the spool index {self.root / 'index.sqlite'}: "
                             f"{exc} (check its permissions and free space)") from exc
        self._syncfs_ok = True
        # free space kept for the index: outcomes must be recordable when the disk fills
        self.reserve = reserve

    def _open_readonly(self) -> None:
        index = self.root / "index.sqlite"
        if not index.is_file():
            raise SpoolError(f"no spool at {self.root} ({index} does not exist): check the "
                             "configuration's 'spool' path; nothing was created")
        # no WAL file: everything is in the index and no daemon writes (it keeps one while
        # it runs); immutable then stops SQLite creating -wal/-shm files beside it
        wal = index.with_name(index.name + "-wal").exists()
        mode = "mode=ro" if wal else "mode=ro&immutable=1"
        try:
            self.db = sqlite3.connect(f"{index.absolute().as_uri()}?{mode}", uri=True,
                                      check_same_thread=False, isolation_level=None, timeout=30)
            self.db.execute("SELECT count(*) FROM jobs").fetchone()
        except sqlite3.Error as exc:
            if spoolindex.is_damage(exc):
                raise spoolindex.damaged(index, exc) from exc
            raise SpoolError(f"cannot read the spool index {index}: {exc} (run this as root "
                             "or as the service user)") from exc

    def listen(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (quick, never blocking) whenever jobs may have become due."""
        self._listeners = [*self._listeners, listener]

    def unlisten(self, listener: Callable[[], None]) -> None:
        self._listeners = [f for f in self._listeners if f != listener]

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction. ``durable``: fsynced at commit (synchronous=FULL), needed before
        a source may be removed. Outcome bookkeeping (claim, done, retry...) is committed
        without an fsync: it survives a killed process (the data is in the kernel), and a
        power cut can only make a job be sent again, which at-least-once allows."""
        with self._lock:
            if not durable:
                self.db.execute("PRAGMA synchronous=NORMAL")
            try:
                self.db.execute("BEGIN IMMEDIATE")
                yield self.db
                self.db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._rollback()
                if "full" in str(exc).lower():
                    raise SpoolFull(f"spool full: {exc}") from exc
                raise SpoolError(f"spool index write failed: {exc}") from exc
            except BaseException:
                self._rollback()
                raise
            finally:
                if not durable:
                    self.db.execute("PRAGMA synchronous=FULL")

    def _rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    # --- intake ------------------------------------------------------------------

    def _place(self, item: Incoming, name: str, defer_sync: bool) -> tuple[str, str, int]:
        """Put the source's bytes at objects/<name>; return (name, sha256, size)."""
        try:
            sha, size = durable.place(item.fd, item.source, self.tmp / name,
                                      self.objects / name, item.link_ok, defer_sync, item.path)
        except OSError as exc:
            if exc.errno in durable.FULL:
                raise SpoolFull(f"spool full while taking {item.source}") from exc
            raise SpoolError(f"cannot write {self.tmp / name}: {exc.strerror}") from exc
        return name, sha, size

    def accept(self, items: Iterable[Incoming], now: float | None = None) -> list[int]:
        """Take a batch durably with one commit; return each item's object id (0 if every
        destination already had the identical content pending). Only after this returns
        may the caller remove the sources."""
        now = time.time() if now is None else now
        placed: list[tuple[Incoming, str, str, int]] = []
        batch = list(items)
        room.check(self.root, self.reserve, [(i.fd, i.link_ok) for i in batch])
        group = len(batch) > 1 and self._syncfs_ok
        names = [uuid.uuid4().hex for _ in batch]
        tracked = [(n, i.source, i.stat.st_ino, i.stat.st_size, i.stat.st_mtime_ns)
                   for n, i in zip(names, batch, strict=True)
                   if i.stat is not None and not i.remember]
        with self._tx(durable=False) as db:  # see forwarder.recovery
            db.execute("DELETE FROM intake WHERE committed = 1")  # the previous batch
            db.executemany("INSERT INTO intake (name, source, inode, size, mtime_ns) VALUES "
                           "(?, ?, ?, ?, ?)", tracked)
        try:
            for item, name in zip(batch, names, strict=True):
                placed.append((item, *self._place(item, name, group)))
            if not placed:
                return []
            room.check(self.root, self.reserve, [])  # as really written: undone if too much
            if group and durable.syncfs(self.objects):
                pass  # one flush of the spool's filesystem covered every file and rename
            else:
                if group:  # syncfs is missing: the deferred per-file fsyncs, now
                    self._syncfs_ok = False
                    for _item, name, _sha, _size in placed:
                        fd = os.open(self.objects / name, os.O_RDONLY)
                        try:
                            durable.fsync(fd, name)
                        finally:
                            os.close(fd)
                durable.fsync_dir(self.objects)
            ids: list[int] = []
            with self._tx() as db:
                for item, name, sha, size in placed:
                    # CROSS JOIN keeps objects (found by sha256) as the outer loop:
                    # otherwise SQLite may walk every pending job of the destination
                    dests = [d for d in item.destinations if not db.execute(
                        "SELECT 1 FROM objects o CROSS JOIN jobs j ON o.id = j.object_id "
                        "WHERE o.sha256 = ? AND j.destination = ? AND j.state IN "
                        "('pending', 'sending') LIMIT 1", (sha, d)).fetchone()]
                    if item.remember and item.stat is not None:
                        seen.record(db, item.source, item.stat, sha)
                    if not dests:
                        ids.append(0)
                        continue
                    p = item.probe
                    cur = db.execute(
                        "INSERT INTO objects (name, sha256, size, sop_class, sop_instance, "
                        "transfer_syntax, study, meta_consistent, source, watch, accepted_at) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (name, sha, size, p.sop_class_uid, p.sop_instance_uid, p.transfer_syntax,
                         p.study_instance_uid, int(p.meta_consistent), item.source, item.watch,
                         now))
                    oid = int(cur.lastrowid or 0)
                    db.executemany(
                        "INSERT INTO jobs (object_id, destination, state, next_attempt_at, "
                        "created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?)",
                        [(oid, d, now, now, now) for d in dests])
                    ids.append(oid)
                db.executemany("UPDATE intake SET committed = 1 WHERE name = ?",
                               [(n,) for n in names])
        except BaseException:
            for _item, name, _sha, _size in placed:
                (self.objects / name).unlink(missing_ok=True)
            self._forget_intake(names)
            raise
        for (_item, name, _sha, _size), oid in zip(placed, ids, strict=False):
            if oid == 0:
                (self.objects / name).unlink(missing_ok=True)
        self._notify()
        return ids

    def _forget_intake(self, names: list[str]) -> None:
        try:
            with self._tx(durable=False) as db:
                db.executemany("DELETE FROM intake WHERE name = ?", [(n,) for n in names])
        except (SpoolError, sqlite3.Error):
            pass  # left for the next start, where the names match no object

    def is_seen(self, path: str, st: os.stat_result, fd: int | None = None) -> bool:
        """Was this file taken before and left in place, and is it unchanged since
        (see :mod:`forwarder.seen`)? ``fd``: the file, open, to compare content."""
        with self._lock:
            return seen.lookup(self.db, path, st, fd)

    def remember(self, path: str, st: os.stat_result, sha: str | None = None) -> None:
        """Record a file left in place so it is never taken twice while unchanged."""
        with self._tx() as db:
            seen.record(db, path, st, sha)

    def quarantine(self, fd: int | None, source: str, reason: str, move: Path | None = None,
                   now: float | None = None) -> Path:
        """Keep a rejected input in quarantine/ with ``<id>.json`` saying why."""
        now = time.time() if now is None else now
        name = uuid.uuid4().hex
        dest = self.quarantine_dir / name
        meta = self.quarantine_dir / f"{name}.json"
        info = {"source": source, "reason": reason, "at": now, "file": name}
        try:  # the reason first, then the data, each durable before the source is gone
            durable.write_durably((json.dumps(info, indent=1) + "\n").encode(),
                                  self.tmp / f"{name}.json", meta)
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
                durable.copy(fd, dest)
            durable.fsync_dir(self.quarantine_dir)
        except OSError as exc:
            if not dest.exists():
                meta.unlink(missing_ok=True)
            if exc.errno in durable.FULL:
                raise SpoolFull(f"spool full while quarantining {source}") from exc
            raise SpoolError(f"cannot write quarantine: {exc.strerror}") from exc
        with self._tx() as db:
            db.execute("INSERT INTO quarantine (name, source, reason, at) VALUES (?,?,?,?)",
                       (name, source, reason, now))
        return dest

    # --- sending -----------------------------------------------------------------

    def claim(self, destination: str, limit: int, now: float | None = None,
              exclude_classes: Iterable[str] = (), owner: str | None = None) -> list[Job]:
        """Atomically move up to ``limit`` due jobs of ``destination`` to ``sending``,
        claimed by ``owner`` (a worker; see :mod:`forwarder.claims`) in the order returned.

        Half the batch is the longest-waiting jobs, half the newest, so a backlog of
        thousands does not make a study that arrives now wait behind all of it.
        """
        now = time.time() if now is None else now
        excluded = tuple(exclude_classes)
        skip = f" AND o.sop_class NOT IN ({','.join('?' * len(excluded))})" if excluded else ""
        query = ("SELECT j.id, j.object_id, j.attempts, j.aborts, j.created_at, o.name, "
                 "o.sop_class, o.sop_instance, o.transfer_syntax, o.study, o.meta_consistent "
                 "FROM jobs j JOIN objects o ON o.id = j.object_id "
                 "WHERE j.destination = ? AND j.state = 'pending' AND j.next_attempt_at <= ?"
                 f"{skip} ")
        oldest = limit - limit // 2
        with self._tx(durable=False) as db:
            rows = db.execute(query + "ORDER BY j.next_attempt_at, j.id LIMIT ?",
                              (destination, now, *excluded, oldest)).fetchall()
            if len(rows) == oldest and limit // 2:
                taken = [r[0] for r in rows]
                rows += db.execute(
                    query + f"AND j.id NOT IN ({','.join('?' * len(taken))}) "
                    "ORDER BY j.id DESC LIMIT ?",
                    (destination, now, *excluded, *taken, limit // 2)).fetchall()
            db.executemany("UPDATE jobs SET state='sending', updated_at=?, owner=?, "
                           "claim_seq=? WHERE id=?",
                           [(now, owner, i, r[0]) for i, r in enumerate(rows)])
        return [Job(r[0], r[1], destination, r[2], r[3], r[4], self.objects / r[5],
                    Probe(r[6], r[7], r[8], r[9], True, bool(r[10]))) for r in rows]

    def done(self, job_ids: Iterable[int], now: float | None = None,
             owner: str | None = None) -> None:
        """Mark stored; delete each object whose jobs are all done. With ``owner``, only
        jobs that owner still claims (so does every outcome below)."""
        now = time.time() if now is None else now
        ids = list(job_ids)
        if not ids:
            return
        with self._tx(durable=False) as db:
            for jid in ids:
                row = db.execute("UPDATE jobs SET state='done', updated_at=?, deaths=0 WHERE "
                                 f"id=? AND {claims.MINE} RETURNING destination, object_id",
                                 (now, jid, owner, owner)).fetchone()
                if row:
                    db.execute("INSERT INTO destinations (name, done, last_done_at) VALUES "
                               "(?, 1, ?) ON CONFLICT(name) DO UPDATE SET done = done + 1, "
                               "streak = 0, last_done_at = excluded.last_done_at",
                               (row[0], now))
            objects = {r[0] for r in db.execute(
                f"SELECT DISTINCT object_id FROM jobs WHERE id IN ({','.join('?' * len(ids))})",
                ids)}
        for oid in objects:
            self._collect(oid)

    def _collect(self, oid: int) -> None:
        with self._lock:
            left = self.db.execute("SELECT count(*) FROM jobs WHERE object_id=? AND "
                                   "state != 'done'", (oid,)).fetchone()[0]
            if left:
                return
            row = self.db.execute("SELECT name, sha256 FROM objects WHERE id=?",
                                  (oid,)).fetchone()
            if row:
                (self.objects / row[0]).unlink(missing_ok=True)
            with self._tx(durable=False) as db:
                if row:  # kept a while: recovery knows this content was delivered
                    db.execute("INSERT OR REPLACE INTO delivered VALUES (?, ?)",
                               (row[1], time.time()))
                db.execute("DELETE FROM jobs WHERE object_id=?", (oid,))
                db.execute("DELETE FROM objects WHERE id=?", (oid,))

    def retry(self, job_id: int, error: str, policy: Backoff, now: float | None = None,
              aborted: bool = False, count_attempt: bool = True,
              delay: float | None = None, owner: str | None = None) -> float | None:
        """Back to ``pending`` for a later attempt (after ``delay``, or the job's backoff);
        return when it is due, None when the job is no longer claimed (by ``owner``)."""
        now = time.time() if now is None else now
        with self._tx(durable=False) as db:
            row = db.execute(f"SELECT attempts FROM jobs WHERE id=? AND {claims.MINE}",
                             (job_id, owner, owner)).fetchone()
            if row is None:
                return None
            attempts = row[0] + (1 if count_attempt else 0)
            due = now + delay if delay is not None else \
                retry.next_attempt(now, max(attempts, 1), policy, self._rand.random())
            db.execute("UPDATE jobs SET state='pending', attempts=?, aborts=aborts+?, "
                       "next_attempt_at=?, last_error=?, updated_at=?, deaths=0, owner=NULL "
                       "WHERE id=?",
                       (attempts, 1 if aborted else 0, due, error, now, job_id))
        self._notify()
        return due

    def release(self, job_ids: Iterable[int], now: float | None = None,
                owner: str | None = None) -> None:
        """Return claimed jobs unattempted (shutdown, or the association cannot carry them)."""
        now = time.time() if now is None else now
        with self._tx(durable=False) as db:
            db.executemany("UPDATE jobs SET state='pending', updated_at=?, owner=NULL WHERE "
                           f"id=? AND {claims.MINE}", [(now, j, owner, owner) for j in job_ids])
        self._notify()

    def fail(self, job_id: int, reason: str, now: float | None = None,
             attempted: bool = True, owner: str | None = None) -> bool:
        """``failed`` with the reason; the object is kept until an operator acts. False
        when the job is no longer claimed (by ``owner``): nothing changed."""
        now = time.time() if now is None else now
        with self._tx(durable=False) as db:
            return db.execute("UPDATE jobs SET state='failed', attempts=attempts+?, "
                              "last_error=?, updated_at=?, owner=NULL WHERE id=? AND "
                              f"{claims.MINE}", (1 if attempted else 0, reason, now, job_id,
                                                 owner, owner)).rowcount > 0

    def expire(self, destination: str, max_age: float, now: float | None = None) -> int:
        """Pending jobs older than ``max_age`` end ``failed``, reason ``expired``."""
        now = time.time() if now is None else now
        with self._tx(durable=False) as db:
            cur = db.execute("UPDATE jobs SET state='failed', last_error='expired', "
                             "updated_at=? WHERE destination=? AND state='pending' AND "
                             "created_at < ?", (now, destination, now - max_age))
            return cur.rowcount

    def older_than(self, destination: str, age: float,
                   now: float | None = None) -> tuple[int, float]:
        """Pending jobs that have waited more than ``age``: how many, and the oldest's age."""
        now = time.time() if now is None else now
        with self._lock:
            n, first = self.db.execute("SELECT count(*), min(created_at) FROM jobs WHERE "
                                       "destination=? AND state='pending' AND created_at < ?",
                                       (destination, now - age)).fetchone()
        return int(n), (now - first) if first is not None else 0.0

    def requeue_failed(self, destination: str | None = None, now: float | None = None) -> int:
        """Operator retry: ``failed`` -> ``pending``, due now, attempts reset."""
        now = time.time() if now is None else now
        where = "state='failed'" + (" AND destination=?" if destination else "")
        args = (now, now, destination) if destination else (now, now)
        with self._tx() as db:
            cur = db.execute(f"UPDATE jobs SET state='pending', attempts=0, aborts=0, "
                             f"deaths=0, next_attempt_at=?, updated_at=? WHERE {where}", args)
            n = cur.rowcount
        self._notify()
        return n

    def next_due(self, destination: str) -> float | None:
        with self._lock:
            row = self.db.execute("SELECT min(next_attempt_at) FROM jobs WHERE destination=? "
                                  "AND state='pending'", (destination,)).fetchone()
        return row[0] if row else None

    # --- destination health ------------------------------------------------------

    def note_failure(self, destination: str, job_id: int) -> tuple[int, bool]:
        """A C-STORE of ``job_id`` failed without an answer that blames the file: the run
        of different files failing at the destination with none stored between, and
        whether a file was stored there since this job's previous such failure."""
        with self._tx(durable=False) as db:
            db.execute("INSERT INTO destinations (name) VALUES (?) ON CONFLICT DO NOTHING",
                       (destination,))
            done, streak, last = db.execute("SELECT done, streak, last_failed FROM "
                                            "destinations WHERE name=?", (destination,)).fetchone()
            mark = db.execute("SELECT done_mark FROM jobs WHERE id=?", (job_id,)).fetchone()
            if last != job_id or streak == 0:
                streak += 1
            db.execute("UPDATE destinations SET streak=?, last_failed=? WHERE name=?",
                       (streak, job_id, destination))
            db.execute("UPDATE jobs SET done_mark=? WHERE id=?", (done, job_id))
        return streak, mark is None or mark[0] is None or done > mark[0]

    def health(self, destination: str) -> Health:
        with self._lock:
            row = self.db.execute("SELECT state, until, reason, failures FROM destinations "
                                  "WHERE name=?", (destination,)).fetchone()
        return Health(*row) if row else Health("ok", None, None, 0)

    def resume(self, destination: str, now: float | None = None) -> tuple[Health, int]:
        """Operator resume: a held or backed-off destination is probed at once (its worker
        polls its health every second) and its pending jobs are due now; the health it
        had and how many jobs were waiting."""
        now = time.time() if now is None else now
        before = self.health(destination)
        with self._tx(durable=False) as db:
            db.execute("UPDATE destinations SET until=? WHERE name=? AND state != 'ok'",
                       (now, destination))
            n = db.execute("UPDATE jobs SET next_attempt_at=? WHERE destination=? AND "
                           "state='pending' AND next_attempt_at > ?",
                           (now, destination, now)).rowcount
        self._notify()
        return before, n

    def set_health(self, destination: str, state: str, until: float | None = None,
                   reason: str | None = None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx(durable=False) as db:
            db.execute("INSERT INTO destinations (name, state, until, reason, failures, "
                       "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                       "state=excluded.state, until=excluded.until, reason=excluded.reason, "
                       "failures=CASE WHEN excluded.state='ok' THEN 0 ELSE failures+1 END, "
                       "updated_at=excluded.updated_at",
                       (destination, state, until, reason, 0 if state == "ok" else 1, now))

    # --- recovery and reporting ------------------------------------------------

    def recover(self, cap: Backoff | None = None, now: float | None = None) -> dict[str, int]:
        """At start: ``sending`` -> ``pending``; clear tmp/; report (never drop) orphans."""
        now = time.time() if now is None else now
        report = {"requeued": 0, "tmp_removed": 0, "orphan_objects": 0,
                  "orphan_links_removed": 0, "orphans_source_remains": 0,
                  "orphans_already_queued": 0, "missing_objects": 0, "finished_cleanup": 0}
        with self._lock:
            spoolindex.quick_check(self.db, self.root / "index.sqlite")
        for f in self.tmp.iterdir():
            f.unlink(missing_ok=True)
            report["tmp_removed"] += 1
        with self._tx() as db:
            report["requeued"] = db.execute(
                "UPDATE jobs SET state='pending', updated_at=?, owner=NULL "
                "WHERE state='sending'",
                (now,)).rowcount
            if cap is not None:
                limit = now + cap.max * (1 + cap.jitter)
                db.execute("UPDATE jobs SET next_attempt_at=? WHERE state='pending' AND "
                           "next_attempt_at > ?", (limit, limit))
        with self._lock:
            known = {r[0]: r[1] for r in self.db.execute("SELECT name, id FROM objects")}
        on_disk = {p.name for p in self.objects.iterdir()}
        report["committed_sources_removed"] = recovery.committed_sources(self)
        report["quarantine_relisted"] = recovery.quarantine_records(self, now)
        recovery.orphans(self, on_disk - set(known), report, now)
        recovery.finish(self, now)
        for name in set(known) - on_disk:
            oid = known[name]
            with self._tx() as db:
                cur = db.execute("UPDATE jobs SET state='failed', last_error='object file missing "
                                 "from the spool', updated_at=? WHERE object_id=? AND state "
                                 "!= 'done'", (now, oid))
            if cur.rowcount:
                report["missing_objects"] += 1
            else:
                self._collect(oid)
                report["finished_cleanup"] += 1
        with self._lock:
            done_objects = [r[0] for r in self.db.execute(
                "SELECT o.id FROM objects o WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE "
                "j.object_id = o.id AND j.state != 'done')")]
        for oid in done_objects:
            self._collect(oid)
            report["finished_cleanup"] += 1
        return report

    def status(self, destinations: Iterable[str], now: float | None = None) -> dict:
        """The ``status --json`` contract."""
        now = time.time() if now is None else now
        out: dict[str, dict] = {}
        with self._lock:
            counts: dict[tuple[str, str], int] = {
                (r[0], r[1]): r[2] for r in self.db.execute(
                    "SELECT destination, state, count(*) FROM jobs GROUP BY 1, 2")}
            names = list(dict.fromkeys([*destinations, *(d for d, _ in counts)]))
            for name in names:
                oldest = self.db.execute(
                    "SELECT min(created_at) FROM jobs WHERE destination=? AND state='pending'",
                    (name,)).fetchone()[0]
                h = self.health(name)
                done = self.db.execute("SELECT done FROM destinations WHERE name=?",
                                       (name,)).fetchone()
                last = self.db.execute(
                    "SELECT last_error FROM jobs WHERE destination=? AND last_error IS NOT NULL "
                    "ORDER BY updated_at DESC LIMIT 1", (name,)).fetchone()
                out[name] = {
                    "pending": counts.get((name, "pending"), 0),
                    "sending": counts.get((name, "sending"), 0),
                    "done": (done[0] if done else 0),
                    "failed": counts.get((name, "failed"), 0),
                    "oldest_pending_s": None if oldest is None else round(now - oldest, 3),
                    "state": h.state,
                    "last_error": h.reason or (last[0] if last else None),
                }
            quarantined = self.db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        return {"destinations": out, "quarantined": quarantined}

    def last_success(self) -> dict[str, float]:
        """Per destination, when the peer last confirmed a C-STORE (epoch seconds)."""
        with self._lock:
            try:
                rows = self.db.execute("SELECT name, last_done_at FROM destinations "
                                       "WHERE last_done_at IS NOT NULL").fetchall()
            except sqlite3.OperationalError:  # a spool from before the column, read-only
                return {}
        return dict(rows)

    def failed_jobs(self, destination: str | None = None) -> list[dict]:
        with self._lock:
            rows = self.db.execute(
                "SELECT j.id, j.destination, o.sop_instance, o.sop_class, o.source, o.name, "
                "j.attempts, j.last_error, j.updated_at FROM jobs j JOIN objects o ON "
                "o.id = j.object_id WHERE j.state='failed'" +
                (" AND j.destination=?" if destination else "") + " ORDER BY j.id",
                (destination,) if destination else ()).fetchall()
        keys = ("job", "destination", "sop_instance_uid", "sop_class_uid", "source", "object",
                "attempts", "reason", "at")
        return [dict(zip(keys, r, strict=False)) for r in rows]

    def quarantined(self) -> list[dict]:
        with self._lock:
            rows = self.db.execute("SELECT name, source, reason, at FROM quarantine ORDER BY id")
            return [{"file": str(self.quarantine_dir / r[0]), "source": r[1], "reason": r[2],
                     "at": r[3]} for r in rows]

    def counts(self) -> dict[str, int]:
        """Jobs by state, for tests and the daemon's STATUS= line."""
        with self._lock:
            return {r[0]: r[1] for r in self.db.execute(
                "SELECT state, count(*) FROM jobs GROUP BY 1")}
