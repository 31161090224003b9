"""The spool index's health at open, and ``dicom-forwarder spool rebuild``.

An index deleted or emptied while objects wait in ``objects/`` is never silently
recreated: every queued job would be gone and every object taken for an orphan. A
damaged index (SQLite: "file is not a database", "malformed") is named with the way
out. Both refuse with exit 78 (no restart loop). ``spool rebuild`` moves whatever index
there is aside and takes the spool's objects again through the current routes; objects
that are not DICOM or match no route go to quarantine with the reason.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from forwarder import recovery, router
from forwarder.errors import NotDicomError, SpoolIndexError, UsageError

if TYPE_CHECKING:
    from forwarder.config import Config
    from forwarder.spool import Spool

INDEX = "index.sqlite"
DAMAGED = ("not a database", "malformed", "disk image", "corrupt")
HOW = "run 'dicom-forwarder spool rebuild -c CONFIG' with the service stopped"


def check_before_open(root: Path) -> None:
    """Refuse an index that is missing or empty while ``objects/`` holds objects."""
    index = root / INDEX
    try:
        size: int | None = index.stat().st_size
    except FileNotFoundError:
        size = None
    if size:
        return
    objects = root / "objects"
    count = sum(1 for _ in objects.iterdir()) if objects.is_dir() else 0
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


def _healthy_jobs(index: Path) -> int:
    """Jobs in a readable index; -1 when it is missing, empty or damaged."""
    if not index.exists() or index.stat().st_size == 0:
        return -1
    try:
        db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
        try:
            if db.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok":
                return -1
            return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return -1


def rebuild(cfg: Config, force: bool = False, now: float | None = None) -> dict[str, int]:
    """Move the index aside and take ``objects/`` again through ``cfg``'s routes."""
    from forwarder.spool import Spool

    now = time.time() if now is None else now
    root = Path(cfg.spool)
    index = root / INDEX
    if not (root / "objects").is_dir():
        raise UsageError(f"{root} is not a spool (no objects/ directory)")
    jobs = _healthy_jobs(index)
    if jobs > 0 and not force:
        raise UsageError(f"the spool index {index} is readable and holds {jobs} job(s); "
                         "rebuild is for a missing, empty or damaged index (--force to "
                         "rebuild anyway)")
    report = {"moved_aside": 0, "queued": 0, "quarantined": 0, "quarantine_listed": 0}
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    for suffix in ("", "-wal", "-shm"):
        old = root / (INDEX + suffix)
        if old.exists():
            os.rename(old, root / f"{INDEX}{suffix}.damaged-{stamp}")
            report["moved_aside"] += 1
    spool = Spool(root, rebuild=True)
    try:
        report["quarantine_listed"] = recovery.quarantine_records(spool, now)
        for path in sorted(spool.objects.iterdir(), key=lambda p: p.stat().st_mtime):
            _retake(cfg, spool, path, now, report)
    finally:
        spool.close()
    return report


def _retake(cfg: Config, spool: Spool, path: Path, now: float,
            report: dict[str, int]) -> None:
    from forwarder.dicomfile import probe  # pydicom: only a rebuild reads headers

    source = f"{path} (spool rebuild)"
    try:
        with open(path, "rb") as fp:
            found = probe(fp, cfg.attribute_keywords)
            fp.seek(0)
            sha = hashlib.sha256()
            while chunk := fp.read(1 << 20):
                sha.update(chunk)
            digest = sha.hexdigest()
        size = path.stat().st_size
    except (NotDicomError, OSError) as exc:
        spool.quarantine(None, source, f"spool rebuild: {exc}", move=path, now=now)
        report["quarantined"] += 1
        return
    dests = router.route(cfg.routes, "", path.name, found.attributes).destinations
    if not dests:
        spool.quarantine(None, source, "spool rebuild: no route matches it now", move=path,
                         now=now)
        report["quarantined"] += 1
        return
    with spool._tx() as db:
        cur = db.execute(
            "INSERT INTO objects (name, sha256, size, sop_class, sop_instance, "
            "transfer_syntax, study, meta_consistent, source, watch, accepted_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (path.name, digest, size, found.sop_class_uid, found.sop_instance_uid,
             found.transfer_syntax, found.study_instance_uid, int(found.meta_consistent),
             source, "", now))
        db.executemany("INSERT INTO jobs (object_id, destination, state, next_attempt_at, "
                       "created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?)",
                       [(cur.lastrowid, d, now, now, now) for d in dests])
    report["queued"] += 1
