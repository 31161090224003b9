"""The spool index: its schema and numbered migrations, the connections (read-write for the
daemon, read-only for the commands that only look), transactions, and the index's health.

SQLite in WAL mode, ``synchronous=FULL``. The schema's version is ``PRAGMA user_version``:
a new index is created at :data:`VERSION`; an older one is brought up to it by
:data:`MIGRATIONS` (columns and tables are only ever added) in the same transaction that
records the new version.

An index deleted or emptied while objects wait in ``objects/`` is never silently
recreated: every queued job would be gone and every object taken for an orphan. A
damaged index (SQLite: "file is not a database", "malformed") is named with the way
out. Both refuse with exit 78 (no restart loop).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from forwarder.errors import SpoolError, SpoolFull, SpoolIndexError, SpoolUnusable
from forwarder.spool import durable

INDEX = "index.sqlite"
UNFINISHED = "rebuild.unfinished"  # a spool rebuild at work, or killed: the index is partial
DAMAGED = ("not a database", "malformed", "disk image", "corrupt")
HOW = "run 'dicom-forwarder spool rebuild -c CONFIG' with the service stopped"

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
  id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, sha256 TEXT NOT NULL, size INTEGER,
  sop_class TEXT, sop_instance TEXT, transfer_syntax TEXT, study TEXT,
  meta_consistent INTEGER, source TEXT, watch TEXT, accepted_at REAL);
CREATE INDEX IF NOT EXISTS objects_sha ON objects(sha256);
CREATE INDEX IF NOT EXISTS objects_sop ON objects(sop_instance);
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
  streak INTEGER NOT NULL DEFAULT 0, last_failed INTEGER, last_done_at REAL);
CREATE TABLE IF NOT EXISTS seen (
  path TEXT NOT NULL, inode INTEGER NOT NULL, size INTEGER, mtime_ns INTEGER,
  ctime_ns INTEGER, sha256 TEXT, PRIMARY KEY (path, inode));
CREATE TABLE IF NOT EXISTS quarantine (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL, source TEXT, reason TEXT, at REAL);
CREATE TABLE IF NOT EXISTS intake (
  name TEXT PRIMARY KEY, source TEXT NOT NULL, inode INTEGER, size INTEGER, mtime_ns INTEGER,
  committed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS delivered (sha256 TEXT PRIMARY KEY, at REAL NOT NULL);
"""

# Columns added to the first tables before the index had a version: an unversioned index
# may lack any of them (claims and destination health, seen's content check, last success).
_UNVERSIONED_COLUMNS = {
    "jobs": {"owner": "TEXT", "claim_seq": "INTEGER", "deaths": "INTEGER NOT NULL DEFAULT 0",
             "done_mark": "INTEGER"},
    "destinations": {"streak": "INTEGER NOT NULL DEFAULT 0", "last_failed": "INTEGER",
                     "last_done_at": "REAL"},
    "seen": {"ctime_ns": "INTEGER", "sha256": "TEXT"},
}


def _from_unversioned(db: sqlite3.Connection) -> None:
    """Version 0 -> 1: an index made before ``user_version`` was kept gets the tables
    (:data:`SCHEMA`) and columns it lacks."""
    _create(db)
    for table, columns in _UNVERSIONED_COLUMNS.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def _create(db: sqlite3.Connection) -> None:
    """Every table and index of :data:`SCHEMA` that is missing, inside the caller's
    transaction (``executescript`` would commit it)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def _seen_by_real_folder(db: sqlite3.Connection) -> None:
    """Version 1 -> 2: files left in place are remembered under their folder's real path,
    however the configuration spells it (:func:`forwarder.spool.seen.key`)."""
    from forwarder.spool import seen

    seen.rekey(db)


# Indexes added within a schema version, made at every read-write open: an older
# version of the same schema keeps them up to date without knowing them, so adding one
# refuses no downgrade.
ADDED_INDEXES = ["CREATE INDEX IF NOT EXISTS objects_sop ON objects(sop_instance)"]

# MIGRATIONS[n] brings an index at version n to n + 1; append, never edit.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_from_unversioned,
                                                          _seen_by_real_folder]
VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection) -> int:
    """Create the schema in a new index or bring an older one up to :data:`VERSION`, in one
    transaction; return the version found. An index from a newer version is refused."""
    db.execute("BEGIN IMMEDIATE")
    try:
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found > VERSION:
            raise SpoolUnusable(f"the spool index is at schema version {found}, newer than "
                                f"this version of dicom-forwarder knows ({VERSION}): run the "
                                "newer version, or restore the index it can read")
        empty = not db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
        if empty:
            _create(db)
        else:
            for step in MIGRATIONS[found:]:
                step(db)
        for statement in ADDED_INDEXES:
            db.execute(statement)
        if found != VERSION:
            db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    return found


def connect(root: Path) -> sqlite3.Connection:
    """The daemon's read-write connection to ``root``'s index, migrated to :data:`VERSION`."""
    index = root / INDEX
    db: sqlite3.Connection | None = None
    try:
        if not index.exists():  # SQLite gives its -wal and -shm the index's mode
            with contextlib.suppress(FileExistsError):  # made by another process
                os.close(durable.create(index))
        db = sqlite3.connect(index, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        # checkpoint often and truncate the WAL after it: the log never takes more
        # than about a MiB of the space the objects need
        db.execute("PRAGMA wal_autocheckpoint=200")
        db.execute("PRAGMA journal_size_limit=1048576")
        migrate(db)
    except BaseException as exc:
        if db is not None:
            db.close()
        if not isinstance(exc, sqlite3.Error):
            raise
        if is_damage(exc):
            raise damaged(index, exc) from exc
        raise SpoolError(f"cannot open the spool index {index}: "
                         f"{exc} (check its permissions and free space)") from exc
    return db


def connect_readonly(root: Path) -> sqlite3.Connection:
    """A connection that cannot change the index or create anything beside it."""
    index = root / INDEX
    if not index.is_file():
        raise SpoolError(f"no spool at {root} ({index} does not exist): check the "
                         "configuration's 'spool' path; nothing was created")
    # no WAL file: everything is in the index and no daemon writes (it keeps one while
    # it runs); immutable then stops SQLite creating -wal/-shm files beside it
    wal = index.with_name(index.name + "-wal").exists()
    mode = "mode=ro" if wal else "mode=ro&immutable=1"
    try:
        db = sqlite3.connect(f"{index.absolute().as_uri()}?{mode}", uri=True,
                             check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("SELECT count(*) FROM jobs").fetchone()
    except sqlite3.Error as exc:
        if is_damage(exc):
            raise damaged(index, exc) from exc
        raise SpoolError(f"cannot read the spool index {index}: {exc} (run this as root "
                         "or as the service user)") from exc
    return db


class Synchronous:
    """A connection's ``synchronous`` setting (FULL when opened), changed only when a
    transaction needs the other one: a statement less on each side of most commits."""

    def __init__(self) -> None:
        self.full = True

    def need(self, db: sqlite3.Connection, full: bool) -> None:
        if full != self.full:
            db.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
            self.full = full


@contextmanager
def transaction(db: sqlite3.Connection, lock: threading.RLock, durable: bool,
                sync: Synchronous) -> Iterator[sqlite3.Connection]:
    """One transaction. ``durable``: fsynced at commit (synchronous=FULL), needed before
    a source may be removed. Outcome bookkeeping (claim, done, retry...) is committed
    without an fsync: it survives a killed process (the data is in the kernel), and a
    power cut can only make a job be sent again, which at-least-once allows."""
    with lock:
        sync.need(db, durable)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            _rollback(db)
            if "full" in str(exc).lower():
                raise SpoolFull(f"spool full: {exc}") from exc
            raise SpoolError(f"spool index write failed: {exc}") from exc
        except BaseException:
            _rollback(db)
            raise


def _rollback(db: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


def check_before_open(root: Path) -> None:
    """Refuse an index that is missing or empty while ``objects/`` holds objects, and one
    a spool rebuild has not finished."""
    index = root / INDEX
    try:
        size: int | None = index.stat().st_size
    except FileNotFoundError:
        size = None
    except OSError as exc:  # the spool's folder cannot be searched
        raise SpoolError(f"cannot read the spool {root}: {exc.strerror} (run this as root "
                         "or as the service user)") from exc
    if (root / UNFINISHED).exists():
        raise SpoolIndexError(
            f"a spool rebuild of {root} has not finished (it was interrupted, or runs now): "
            "the index holds only part of the objects. Run 'dicom-forwarder spool rebuild "
            "-c CONFIG' again with the service stopped: it starts over")
    if size:
        return
    objects = root / "objects"
    try:
        count = sum(1 for _ in objects.iterdir()) if objects.is_dir() else 0
    except OSError as exc:
        raise SpoolError(f"cannot read the spool's objects {objects}: {exc.strerror} (run "
                         "this as root or as the service user)") from exc
    if count:
        state = "missing" if size is None else "empty"
        raise SpoolIndexError(
            f"the spool index {index} is {state} but {objects} holds {count} object(s): "
            "starting would lose every queued job. Restore the index from a backup, or "
            f"{HOW} to take the objects again through the current routes")


def is_damage(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.DatabaseError) and \
        any(word in str(exc).lower() for word in DAMAGED)


def damaged(index: Path, detail: object) -> SpoolIndexError:
    return SpoolIndexError(
        f"the spool index {index} is damaged ({detail}); {HOW}: it moves the damaged "
        "index aside and takes the spool's objects again through the current routes")


def quick_check(db: sqlite3.Connection, index: Path) -> None:
    """At start: a damaged index stops the daemon with the way out, not a traceback."""
    try:
        rows = db.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.DatabaseError as exc:
        raise damaged(index, exc) from exc
    if [r[0] for r in rows] != ["ok"]:
        raise damaged(index, "; ".join(str(r[0]) for r in rows))
