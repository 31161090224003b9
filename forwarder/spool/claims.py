"""Who holds a claimed job, and what happens to its claims when that worker dies.

Every claim names its owner: the worker process (its PID) and the start of the sender
that made it (a random token), so a worker that outlives its daemon, or a worker that
was replaced, can never overwrite a job that was requeued and claimed again: each
outcome (done, retry, fail, release) is recorded only while the job is still ``sending``
for the same owner.

A worker that dies (a crash in a codec, the kernel's OOM killer, a bug) leaves its claims
behind, and its flight record (shared memory its sender reads): the job it was sending,
if any, counts one death; the job the peer had stored, whose done mark the worker keeps
until the next file's request is written, is recorded done (it is not sent again; its
sender logs it "stored" if the worker had not yet); the others go back unattempted. A
job that has killed ``MAX_DEATHS`` workers fails with that reason, so it cannot take the
next worker down with it, again and again. A worker that dies outside a C-STORE
(associating, waiting) blames no file: its sender's restart delay, growing, keeps that
from becoming a loop.
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
    unrecorded: str = ""  # why the stored job could not be recorded done (it is resent)
    # the journal fields (SOP_INSTANCE_UID, SOP_CLASS_UID, STUDY_INSTANCE_UID, ATTEMPT)
    # of the stored job recorded done, if any
    recorded_fields: dict[str, str | int] | None = None

    @property
    def recorded(self) -> str | None:
        """The SOP Instance UID of the stored job recorded done, if any."""
        return None if self.recorded_fields is None else \
            str(self.recorded_fields["SOP_INSTANCE_UID"])


def reclaim(spool: Spool, owner: str, why: str, now: float | None = None,
            in_flight: int = 0, stored: int = 0) -> Reclaimed:
    """The worker ``owner`` died (``why``) while sending job ``in_flight`` (0: none):
    record ``stored`` (0: none) done, count a death against the job in flight, fail it
    after ``MAX_DEATHS``, and return every other claim of that worker to ``pending``."""
    now = time.time() if now is None else now
    unrecorded = ""
    fields = None
    if stored:
        try:
            fields = _journal_fields(spool, stored, owner)
            spool.done([stored], now, owner=owner)
        except Exception as exc:  # noqa: BLE001 - the claims come back all the same
            unrecorded = f"{type(exc).__name__}: {exc}"
            fields = None
    with spool._tx(durable=False) as db:
        rows = db.execute("SELECT j.id, j.deaths, o.sop_instance FROM jobs j JOIN objects o "
                          "ON o.id = j.object_id WHERE j.state='sending' AND j.owner=? "
                          "ORDER BY j.claim_seq, j.id", (owner,)).fetchall()
        blamed = [r for r in rows if r[0] == in_flight]
        rest = [(now, r[0]) for r in rows if r[0] != in_flight]
        db.executemany("UPDATE jobs SET state='pending', updated_at=?, owner=NULL WHERE id=?",
                       rest)
        if not blamed:
            result = Reclaimed(len(rest), None, 0, False, unrecorded, fields)
        else:
            [(job, deaths, uid)] = blamed
            deaths += 1
            failed = deaths >= MAX_DEATHS
            if failed:
                reason = (f"its sender process died {deaths} times while sending this file "
                          f"(last: {why}); given up so it cannot stop the others")
                db.execute("UPDATE jobs SET state='failed', deaths=?, last_error=?, "
                           "updated_at=?, owner=NULL WHERE id=?", (deaths, reason, now, job))
            else:
                db.execute("UPDATE jobs SET state='pending', deaths=?, last_error=?, "
                           "updated_at=?, owner=NULL WHERE id=?",
                           (deaths, f"its sender process died while sending it ({why})", now,
                            job))
            result = Reclaimed(len(rest), uid, deaths, failed, unrecorded, fields)
    if rows:
        spool._notify()
    return result


def _journal_fields(spool: Spool, job: int, owner: str) -> dict[str, str | int] | None:
    """The journal fields of ``job``'s object while ``owner`` still claims it, and the
    attempt that stored it (as the worker counts it)."""
    with spool._lock:
        row = spool.db.execute("SELECT o.sop_instance, o.sop_class, o.study, j.attempts "
                               "FROM jobs j JOIN objects o ON o.id = j.object_id WHERE "
                               "j.id=? AND j.state='sending' AND j.owner=?",
                               (job, owner)).fetchone()
    if row is None:
        return None
    names = ("SOP_INSTANCE_UID", "SOP_CLASS_UID", "STUDY_INSTANCE_UID")
    fields: dict[str, str | int] = {k: str(v) for k, v in zip(names, row[:3], strict=True)
                                    if v is not None}
    fields["ATTEMPT"] = int(row[3]) + 1
    return fields
