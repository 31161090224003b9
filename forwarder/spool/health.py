"""Destination health rows: ok, backoff or held until a time, with the reason; the run of
files failing at a destination with none stored between; the operator's resume."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forwarder.spool import Spool

# the reason a destination gone from the configuration, with jobs left, is held for
REMOVED = "removed from the configuration; its jobs are kept until it is configured again"


@dataclass(frozen=True)
class Health:
    state: str  # ok | backoff | held
    until: float | None
    reason: str | None
    failures: int


def note_failure(spool: Spool, destination: str, job_id: int) -> tuple[int, bool]:
    """A C-STORE of ``job_id`` failed without an answer that blames the file: the run
    of different files failing at the destination with none stored between, and
    whether a file was stored there since this job's previous such failure."""
    with spool._tx(durable=False) as db:
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


def get(spool: Spool, destination: str) -> Health:
    with spool._lock:
        row = spool.db.execute("SELECT state, until, reason, failures FROM destinations "
                              "WHERE name=?", (destination,)).fetchone()
    return Health(*row) if row else Health("ok", None, None, 0)


def resume(spool: Spool, destination: str, now: float | None = None) -> tuple[Health, int]:
    """Operator resume: a held or backed-off destination is probed at once (its worker
    polls its health every second) and its pending jobs are due now; the health it
    had and how many jobs are pending (waiting for a retry time or already due)."""
    now = time.time() if now is None else now
    before = get(spool, destination)
    with spool._tx(durable=False) as db:
        db.execute("UPDATE destinations SET until=? WHERE name=? AND state != 'ok'",
                   (now, destination))
        db.execute("UPDATE jobs SET next_attempt_at=? WHERE destination=? AND "
                   "state='pending' AND next_attempt_at > ?", (now, destination, now))
        n = db.execute("SELECT count(*) FROM jobs WHERE destination=? AND state='pending'",
                       (destination,)).fetchone()[0]
    spool._notify()
    return before, n


def set_health(spool: Spool, destination: str, state: str, until: float | None = None,
               reason: str | None = None, now: float | None = None) -> None:
    now = time.time() if now is None else now
    with spool._tx(durable=False) as db:
        db.execute("INSERT INTO destinations (name, state, until, reason, failures, "
                   "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                   "state=excluded.state, until=excluded.until, reason=excluded.reason, "
                   "failures=CASE WHEN excluded.state='ok' THEN 0 ELSE failures+1 END, "
                   "updated_at=excluded.updated_at",
                   (destination, state, until, reason, 0 if state == "ok" else 1, now))
