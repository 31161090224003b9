"""Who holds a claimed job, and what happens to its claims when that worker dies.

Every claim names its owner: the worker process (its PID) and the start of the sender
that made it (a random token), so a worker that outlives its daemon, or a worker that
was replaced, can never overwrite a job that was requeued and claimed again: each
outcome (done, retry, fail, release) is recorded only while the job is still ``sending``
for the same owner.

A worker that dies (a crash in a codec, the kernel's OOM killer, a bug) leaves its claims
behind. The job it was working on (the first of its batch still ``sending``: a batch is
sent in claim order) counts one death; the others go back unattempted. A job that has
killed ``MAX_DEATHS`` workers fails with that reason, so it cannot take the next worker
down with it, again and again.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forwarder.spool import Spool

MAX_DEATHS = 3
# the WHERE clause of every outcome: bind (owner, owner); a None owner checks the state only
MINE = "state='sending' AND (? IS NULL OR owner=?)"

def new_token() -> str:
    """One per start of a destination's workers."""
    return uuid.uuid4().hex[:12]


def owner_of(token: str, pid: int | None = None) -> str:
    return f"{os.getpid() if pid is None else pid}@{token}"


@dataclass(frozen=True)
class Reclaimed:
    released: int
    blamed: str | None  # SOP Instance UID of the job that was in flight, if any
    deaths: int
    failed: bool


def reclaim(spool: Spool, owner: str, why: str, now: float | None = None) -> Reclaimed:
    """The worker ``owner`` died (``why``): count a death against the job it was sending,
    fail that job after ``MAX_DEATHS``, and return every claim of it to ``pending``."""
    now = time.time() if now is None else now
    with spool._tx(durable=False) as db:
        rows = db.execute("SELECT j.id, j.deaths, o.sop_instance FROM jobs j JOIN objects o "
                          "ON o.id = j.object_id WHERE j.state='sending' AND j.owner=? "
                          "ORDER BY j.claim_seq, j.id", (owner,)).fetchall()
        if not rows:
            return Reclaimed(0, None, 0, False)
        (first, deaths, uid), rest = rows[0], rows[1:]
        deaths += 1
        failed = deaths >= MAX_DEATHS
        if failed:
            reason = (f"its sender process died {deaths} times while sending this file "
                      f"(last: {why}); given up so it cannot stop the others")
            db.execute("UPDATE jobs SET state='failed', deaths=?, last_error=?, updated_at=?, "
                       "owner=NULL WHERE id=?", (deaths, reason, now, first))
        else:
            db.execute("UPDATE jobs SET state='pending', deaths=?, last_error=?, "
                       "updated_at=?, owner=NULL WHERE id=?",
                       (deaths, f"its sender process died while sending it ({why})", now,
                        first))
        db.executemany("UPDATE jobs SET state='pending', updated_at=?, owner=NULL WHERE id=?",
                       [(now, r[0]) for r in rest])
    spool._notify()
    return Reclaimed(len(rest), uid, deaths, failed)
