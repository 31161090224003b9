"""The spool at start: jobs a killed daemon left ``sending`` go back to ``pending``, due
no later than the backoff cap (times are wall-clock and survive the restart, so a clock
stepped back cannot make a job wait longer than any backoff), ``tmp/`` is cleared, and
what a killed intake left behind, settled at start without losing or resending.

Before a batch's objects are placed, :func:`forwarder.spool.accept.accept` records each
one's name with its source's identity (path, inode, size, mtime) in the ``intake`` table;
the commit marks them ``committed``; the next batch clears them (by then intake has removed
the sources). So at start:

- a committed source still there (killed after the commit, before its removal) is
  removed as intake would have done, instead of being taken and sent again, unless the
  commit remembered it as left in place (``keep_source``);
- an object without jobs (killed before the commit) is removed when its source is still
  there unchanged (it is taken again), or its content is already queued or was delivered
  lately; only an object that would otherwise be lost is quarantined.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from forwarder import paths, retry
from forwarder.retry import Backoff
from forwarder.spool import durable, queue, seen
from forwarder.spool.db import INDEX, quick_check

if TYPE_CHECKING:
    from forwarder.spool import Spool

DELIVERED_KEEP = 7 * 86400.0  # how long the digest of a delivered object is kept


def recover(spool: Spool, cap: Backoff | None = None, now: float | None = None) -> dict[str, int]:
    """At start: ``sending`` -> ``pending``; clear tmp/; report (never drop) orphans."""
    now = time.time() if now is None else now
    report = {"requeued": 0, "tmp_removed": 0, "orphan_objects": 0,
              "orphan_links_removed": 0, "orphans_source_remains": 0,
              "orphans_already_queued": 0, "missing_objects": 0, "finished_cleanup": 0}
    with spool._lock:
        quick_check(spool.db, spool.root / INDEX)
    for f in spool.tmp.iterdir():
        f.unlink(missing_ok=True)
        report["tmp_removed"] += 1
    with spool._tx() as tx:
        report["requeued"] = tx.execute(
            "UPDATE jobs SET state='pending', updated_at=?, owner=NULL "
            "WHERE state='sending'",
            (now,)).rowcount
        if cap is not None:
            latest = retry.latest(now, cap)
            tx.execute("UPDATE jobs SET next_attempt_at=? WHERE state='pending' AND "
                       "next_attempt_at > ?", (latest, latest))
    with spool._lock:
        known = {r[0]: r[1] for r in spool.db.execute("SELECT name, id FROM objects")}
    on_disk = {p.name for p in spool.objects.iterdir()}
    report["committed_sources_removed"] = committed_sources(spool)
    report["quarantine_relisted"] = quarantine_records(spool, now)
    orphans(spool, on_disk - set(known), report, now)
    finish(spool, now)
    for name in set(known) - on_disk:
        oid = known[name]
        with spool._tx() as tx:
            cur = tx.execute("UPDATE jobs SET state='failed', last_error='object file missing "
                             "from the spool', updated_at=? WHERE object_id=? AND state "
                             "!= 'done'", (now, oid))
        if cur.rowcount:
            report["missing_objects"] += 1
        else:
            queue.collect(spool, oid)
            report["finished_cleanup"] += 1
    with spool._lock:
        done_objects = [r[0] for r in spool.db.execute(
            "SELECT o.id FROM objects o WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE "
            "j.object_id = o.id AND j.state != 'done')")]
    for oid in done_objects:
        queue.collect(spool, oid)
        report["finished_cleanup"] += 1
    return report


def _unchanged(source: str, inode: int, size: int, mtime_ns: int) -> bool:
    """``source`` (as the index shows it) still names that file, unwritten since."""
    try:
        st = os.lstat(paths.unshown(source))
    except OSError:
        return False
    return (st.st_ino, st.st_size, st.st_mtime_ns) == (inode, size, mtime_ns)


def _sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as fp:
            return durable.digest(fp.fileno())
    except OSError:
        return None


def committed_sources(spool: Spool) -> int:
    """Remove sources whose batch committed but which intake had not removed yet (not
    those it left in place: the commit remembered them as seen)."""
    with spool._lock:
        rows = spool.db.execute("SELECT source, inode, size, mtime_ns FROM intake WHERE "
                                "committed = 1").fetchall()
    names = [seen.key(r[0], fresh=True) for r in rows]
    with spool._lock:  # left in place by this very commit: remembered as it was taken
        kept = {i for i, (name, (_source, inode, size, mtime_ns)) in
                enumerate(zip(names, rows, strict=True)) if spool.db.execute(
                    "SELECT 1 FROM seen WHERE path = ? AND inode = ? AND size = ? AND "
                    "mtime_ns = ?", (name, inode, size, mtime_ns)).fetchone()}
    removed = 0
    for i, (source, inode, size, mtime_ns) in enumerate(rows):
        if i not in kept and _unchanged(source, inode, size, mtime_ns):
            try:
                os.unlink(paths.unshown(source))
                removed += 1
            except OSError:
                pass  # left for intake: at worst it is taken (and sent) once more
    return removed


def orphans(spool: Spool, names: set[str], report: dict[str, int], now: float) -> None:
    """Objects in objects/ without a row: remove what is not the last copy, quarantine
    the rest with the reason."""
    with spool._lock:
        intents = {r[0]: r[1:] for r in spool.db.execute(
            "SELECT name, source, inode, size, mtime_ns FROM intake WHERE committed = 0")}
    for name in sorted(names):
        orphan = spool.objects / name
        try:
            links = orphan.stat().st_nlink
        except OSError:
            continue
        intent = intents.get(name)
        if links > 1 or (intent is not None and _unchanged(*intent)):
            orphan.unlink()  # the source is still there and is taken again
            report["orphan_links_removed" if links > 1 else "orphans_source_remains"] += 1
            continue
        sha = _sha256(orphan)
        with spool._lock:
            known = sha is not None and spool.db.execute(
                "SELECT 1 FROM objects WHERE sha256 = ? UNION ALL SELECT 1 FROM delivered "
                "WHERE sha256 = ? LIMIT 1", (sha, sha)).fetchone()
        if known:
            orphan.unlink()
            report["orphans_already_queued"] += 1
            continue
        source = intent[0] if intent else None
        spool.quarantine(None, source or str(orphan),
                         "orphan object: in objects/ with no job (interrupted before its "
                         "commit) and its source is gone or changed; this is the last copy",
                         move=orphan, now=now)
        report["orphan_objects"] += 1


def quarantine_records(spool: Spool, now: float) -> int:
    """The quarantine table agrees with quarantine/ again after a kill inside
    :func:`forwarder.spool.accept.quarantine`: a record whose data never arrived is dropped
    (the input is still at its source), data with no row is listed, with its reason when
    known."""
    with spool._lock:
        listed = {r[0] for r in spool.db.execute("SELECT name FROM quarantine")}
    present = {p.name for p in spool.quarantine_dir.iterdir()}
    rows = []
    for name in sorted(present - listed):
        if name.endswith(".json"):
            if name[:-5] not in present and name[:-5] not in listed:
                (spool.quarantine_dir / name).unlink(missing_ok=True)
            continue
        info: dict = {}
        with contextlib.suppress(OSError, ValueError):
            info = json.loads((spool.quarantine_dir / f"{name}.json").read_text())
        rows.append((name, info.get("source"), info.get("reason") or "found in quarantine "
                     "without its record", info.get("at") or now))
    if rows:
        with spool._tx() as db:
            db.executemany("INSERT INTO quarantine (name, source, reason, at) "
                           "VALUES (?,?,?,?)", rows)
    return len(rows)


def finish(spool: Spool, now: float | None = None) -> None:
    """Forget the last batch's record and digests of deliveries past keeping."""
    now = time.time() if now is None else now
    with spool._tx(durable=False) as db:
        db.execute("DELETE FROM intake")
        db.execute("DELETE FROM delivered WHERE at < ?", (now - DELIVERED_KEEP,))
