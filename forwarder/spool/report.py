"""What the spool holds, for ``status``, ``failed``, ``quarantine`` and the daemon's STATUS=
line: read only, so it works on the read-only connection of the commands that only look."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from forwarder.spool import health

if TYPE_CHECKING:
    from forwarder.spool import Spool


def status(spool: Spool, destinations: Iterable[str], now: float | None = None) -> dict:
    """The ``status --json`` contract."""
    now = time.time() if now is None else now
    out: dict[str, dict] = {}
    with spool._lock:
        counts: dict[tuple[str, str], int] = {
            (r[0], r[1]): r[2] for r in spool.db.execute(
                "SELECT destination, state, count(*) FROM jobs GROUP BY 1, 2")}
        names = list(dict.fromkeys([*destinations, *(d for d, _ in counts)]))
        for name in names:
            oldest = spool.db.execute(  # not delivered yet: waiting, or being sent
                "SELECT min(created_at) FROM jobs WHERE destination=? AND "
                "state IN ('pending', 'sending')", (name,)).fetchone()[0]
            h = health.get(spool, name)
            done = spool.db.execute("SELECT done FROM destinations WHERE name=?",
                                   (name,)).fetchone()
            last = spool.db.execute(  # a delivered job's past error is not one now
                "SELECT last_error FROM jobs WHERE destination=? AND last_error IS NOT NULL "
                "AND state != 'done' ORDER BY updated_at DESC LIMIT 1", (name,)).fetchone()
            out[name] = {
                "pending": counts.get((name, "pending"), 0),
                "sending": counts.get((name, "sending"), 0),
                "done": (done[0] if done else 0),
                "failed": counts.get((name, "failed"), 0),
                "oldest_pending_s": None if oldest is None else round(max(0.0, now - oldest), 3),
                "state": h.state,
                "last_error": h.reason or (last[0] if last else None),
            }
        quarantined = spool.db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    return {"destinations": out, "quarantined": quarantined}


def destination_names(spool: Spool) -> list[str]:
    """Every destination the spool has jobs or a record for, by name: what ``status``
    shows when the configuration cannot say which are configured."""
    with spool._lock:
        return [r[0] for r in spool.db.execute(
            "SELECT name FROM destinations UNION SELECT destination FROM jobs ORDER BY 1")]


def last_success(spool: Spool) -> dict[str, float]:
    """Per destination, when the peer last confirmed a C-STORE (epoch seconds)."""
    with spool._lock:
        try:
            rows = spool.db.execute("SELECT name, last_done_at FROM destinations "
                                   "WHERE last_done_at IS NOT NULL").fetchall()
        except sqlite3.OperationalError:  # a spool from before the column, read-only
            return {}
    return dict(rows)


def failed_jobs(spool: Spool, destination: str | None = None) -> list[dict]:
    with spool._lock:
        rows = spool.db.execute(
            "SELECT j.id, j.destination, o.sop_instance, o.sop_class, o.source, o.name, "
            "j.attempts, j.last_error, j.updated_at FROM jobs j JOIN objects o ON "
            "o.id = j.object_id WHERE j.state='failed'" +
            (" AND j.destination=?" if destination else "") + " ORDER BY j.id",
            (destination,) if destination else ()).fetchall()
    keys = ("job", "destination", "sop_instance_uid", "sop_class_uid", "source", "object",
            "attempts", "reason", "at")
    return [dict(zip(keys, r, strict=False)) for r in rows]


def quarantined(spool: Spool) -> list[dict]:
    with spool._lock:
        rows = spool.db.execute("SELECT name, source, reason, at FROM quarantine ORDER BY id")
        return [{"file": str(spool.quarantine_dir / r[0]), "source": r[1], "reason": r[2],
                 "at": r[3]} for r in rows]


def counts(spool: Spool) -> dict[str, int]:
    """Jobs by state, for tests and the daemon's STATUS= line."""
    with spool._lock:
        return {r[0]: r[1] for r in spool.db.execute(
            "SELECT state, count(*) FROM jobs GROUP BY 1")}
