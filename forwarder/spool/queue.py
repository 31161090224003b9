"""The job state machine: claim due jobs, record each outcome (done, retry, release, fail),
expire, requeue; an object is deleted once every job of it is done.

A job is ``pending`` until a worker claims it (``sending``); every outcome is recorded only
while the job is still claimed by the same owner (see :mod:`forwarder.spool.claims`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from forwarder import retry as backoff
from forwarder.model import Job, Probe
from forwarder.retry import Backoff
from forwarder.spool import claims

if TYPE_CHECKING:
    from forwarder.spool import Spool


MANY_DUE = 2000  # due jobs from which the newest half is walked, not sorted
# the job ``j`` (of object ``o``) is not behind an earlier version of its instance still
# waiting or being sent to its destination; CROSS JOIN: the instance's objects first
# (objects_sop), never the destination's waiting jobs one by one
_NOT_BEHIND = ("NOT EXISTS (SELECT 1 FROM objects e CROSS JOIN jobs k ON k.object_id = e.id "
               "WHERE e.sop_instance = o.sop_instance AND k.destination = j.destination "
               "AND k.id < j.id AND k.state IN ('pending', 'sending'))")


def claim(spool: Spool, destination: str, limit: int, now: float | None = None,
          owner: str | None = None) -> list[Job]:
    """Atomically move up to ``limit`` due jobs of ``destination`` to ``sending``,
    claimed by ``owner`` (a worker; see :mod:`forwarder.spool.claims`) in the order returned.

    Half the batch is the longest-waiting jobs, half the newest (sent in the order they
    came), so a backlog of thousands does not make a study that arrives now wait behind
    all of it. A job waits while an earlier one of the same SOP Instance UID for the
    same destination is waiting or being sent: a corrected version of an image queued
    while the first still waits does not reach the peer before it, where the first would
    overwrite the correction.
    """
    now = time.time() if now is None else now
    query = ("SELECT j.id, j.object_id, j.attempts, j.aborts, j.created_at, o.name, "
             "o.sop_class, o.sop_instance, o.transfer_syntax, o.study, o.meta_consistent "
             "FROM jobs j {} JOIN objects o ON o.id = j.object_id "
             "WHERE j.destination = ? AND j.state = 'pending' AND j.next_attempt_at <= ? "
             f"AND {_NOT_BEHIND} ")
    oldest = limit - limit // 2
    with spool._tx(durable=False) as db:
        rows = db.execute(query.format("") + "ORDER BY j.next_attempt_at, j.id LIMIT ?",
                          (destination, now, oldest)).fetchall()
        if len(rows) == oldest and limit // 2:
            taken = [r[0] for r in rows]
            many = db.execute("SELECT count(*) FROM (SELECT 1 FROM jobs WHERE destination=? "
                              "AND state='pending' AND next_attempt_at <= ? LIMIT ?)",
                              (destination, now, MANY_DUE)).fetchone()[0] == MANY_DUE
            # many due: (destination, state, id) walked from the newest down, never the
            # whole backlog sorted; few: those few sorted (the walk would pass over every
            # job waiting its backoff). Named, so that statistics (ANALYZE) change neither.
            rows += sorted(db.execute(
                query.format("INDEXED BY jobs_state" if many else "INDEXED BY jobs_due")
                + f"AND j.id NOT IN ({','.join('?' * len(taken))}) "
                "ORDER BY j.id DESC LIMIT ?",
                (destination, now, *taken, limit // 2)).fetchall())  # by id: the first column
        db.executemany("UPDATE jobs SET state='sending', updated_at=?, owner=?, "
                       "claim_seq=? WHERE id=?",
                       [(now, owner, i, r[0]) for i, r in enumerate(rows)])
    return [Job(r[0], r[1], destination, r[2], r[3], r[4], spool.objects / r[5],
                Probe(r[6], r[7], r[8], r[9], True, bool(r[10]))) for r in rows]


def done(spool: Spool, job_ids: Iterable[int], now: float | None = None,
         owner: str | None = None) -> None:
    """Mark stored; delete each object whose jobs are all done, in the same transaction.
    With ``owner``, only jobs that owner still claims (so does every outcome below)."""
    now = time.time() if now is None else now
    ids = list(job_ids)
    if not ids:
        return
    with spool._tx(durable=False) as db:
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
        gone = [name for oid in objects if (name := _forget(db, oid, now))]
    _remove(spool, gone)


def collect(spool: Spool, oid: int) -> None:
    """Delete object ``oid`` if every job of it is done."""
    with spool._tx(durable=False) as db:
        name = _forget(db, oid, time.time())
    _remove(spool, [name] if name else [])


def _forget(db: sqlite3.Connection, oid: int, now: float) -> str | None:
    """Inside a transaction: drop a delivered object's rows, remembering its content as
    delivered; its file's name, or None while a job of it is not done."""
    if db.execute("SELECT 1 FROM jobs WHERE object_id=? AND state != 'done' LIMIT 1",
                  (oid,)).fetchone():
        return None
    delivered = db.execute("DELETE FROM jobs WHERE object_id=?", (oid,)).rowcount
    row = db.execute("DELETE FROM objects WHERE id=? RETURNING name, sha256",
                     (oid,)).fetchone()
    if row is None:
        return None
    if delivered:  # kept a while: recovery knows this content was delivered (an object
        # with no job at all was purged, never delivered)
        db.execute("INSERT OR REPLACE INTO delivered VALUES (?, ?)", (row[1], now))
    return str(row[0])


def _remove(spool: Spool, names: list[str]) -> None:
    """The files of objects whose rows are gone. A crash before this leaves a file with
    no row whose content is listed as delivered: recovery removes it."""
    spool._remove([spool.objects / name for name in names])


def retry(spool: Spool, job_id: int, error: str, policy: Backoff, now: float | None = None,
          aborted: bool = False, count_attempt: bool = True,
          delay: float | None = None, owner: str | None = None) -> float | None:
    """Back to ``pending`` for a later attempt (after ``delay``, or the job's backoff);
    return when it is due, None when the job is no longer claimed (by ``owner``)."""
    now = time.time() if now is None else now
    with spool._tx(durable=False) as db:
        row = db.execute(f"SELECT attempts FROM jobs WHERE id=? AND {claims.MINE}",
                         (job_id, owner, owner)).fetchone()
        if row is None:
            return None
        attempts = row[0] + (1 if count_attempt else 0)
        due = now + delay if delay is not None else \
            backoff.next_attempt(now, max(attempts, 1), policy, spool._rand.random())
        db.execute("UPDATE jobs SET state='pending', attempts=?, aborts=aborts+?, "
                   "next_attempt_at=?, last_error=?, updated_at=?, deaths=0, owner=NULL "
                   "WHERE id=?",
                   (attempts, 1 if aborted else 0, due, error, now, job_id))
    spool._notify()
    return due


def release(spool: Spool, job_ids: Iterable[int], now: float | None = None,
            owner: str | None = None) -> None:
    """Return claimed jobs unattempted (shutdown, or the association cannot carry them)."""
    now = time.time() if now is None else now
    with spool._tx(durable=False) as db:
        db.executemany("UPDATE jobs SET state='pending', updated_at=?, owner=NULL WHERE "
                       f"id=? AND {claims.MINE}", [(now, j, owner, owner) for j in job_ids])
    spool._notify()


def fail(spool: Spool, job_id: int, reason: str, now: float | None = None,
         attempted: bool = True, owner: str | None = None) -> bool:
    """``failed`` with the reason; the object is kept until an operator acts. False
    when the job is no longer claimed (by ``owner``): nothing changed."""
    now = time.time() if now is None else now
    with spool._tx(durable=False) as db:
        return db.execute("UPDATE jobs SET state='failed', attempts=attempts+?, "
                          "last_error=?, updated_at=?, owner=NULL WHERE id=? AND "
                          f"{claims.MINE}", (1 if attempted else 0, reason, now, job_id,
                                             owner, owner)).rowcount > 0


def expire(spool: Spool, destination: str, max_age: float, now: float | None = None) -> int:
    """Pending jobs older than ``max_age`` end ``failed``, reason ``expired``."""
    now = time.time() if now is None else now
    with spool._tx(durable=False) as db:
        cur = db.execute("UPDATE jobs SET state='failed', last_error='expired', "
                         "updated_at=? WHERE destination=? AND state='pending' AND "
                         "created_at < ?", (now, destination, now - max_age))
        return cur.rowcount


def clock_stepped(spool: Spool, destination: str, by: float, before: float) -> int:
    """The wall clock stepped ahead ``by`` seconds: the waiting jobs stamped no later than
    ``before`` (made before the step) keep the age they had, so the step expires none.
    The number of jobs moved."""
    with spool._tx(durable=False) as db:
        return db.execute("UPDATE jobs SET created_at = created_at + ? WHERE destination=? "
                          "AND state IN ('pending', 'sending') AND created_at <= ?",
                          (by, destination, before)).rowcount


def older_than(spool: Spool, destination: str, age: float,
               now: float | None = None) -> tuple[int, float]:
    """Pending jobs that have waited more than ``age``: how many, and the oldest's age."""
    now = time.time() if now is None else now
    with spool._lock:
        n, first = spool.db.execute("SELECT count(*), min(created_at) FROM jobs WHERE "
                                   "destination=? AND state='pending' AND created_at < ?",
                                   (destination, now - age)).fetchone()
    return int(n), (now - first) if first is not None else 0.0


def requeue_failed(spool: Spool, destinations: list[str], now: float | None = None) -> int:
    """Operator retry of the failed jobs of ``destinations``: ``failed`` -> ``pending``,
    due now, attempts reset, and its ``max_age`` counted again from now (else a job
    failed as expired would expire again at the next check, without one attempt)."""
    now = time.time() if now is None else now
    with spool._tx() as db:
        marks = ",".join("?" * len(destinations))
        cur = db.execute(f"UPDATE jobs SET state='pending', attempts=0, aborts=0, "
                         f"deaths=0, next_attempt_at=?, updated_at=?, created_at=? "
                         f"WHERE state='failed' AND destination IN ({marks})",
                         (now, now, now, *destinations))
        n = cur.rowcount
    spool._notify()
    return n


def clock_stepped_back(spool: Spool, destination: str, latest: float,
                       now: float | None = None) -> int:
    """Times are wall-clock: after the clock steps back, a job's next attempt or the
    destination's next probe written before the step may lie further ahead than any
    backoff allows (``latest``, see :func:`forwarder.retry.latest`). Make them due now
    rather than wait for the clock to catch up; the number of jobs moved."""
    now = time.time() if now is None else now
    with spool._tx(durable=False) as db:
        n = db.execute("UPDATE jobs SET next_attempt_at=? WHERE destination=? AND "
                       "state='pending' AND next_attempt_at > ?",
                       (now, destination, latest)).rowcount
        db.execute("UPDATE destinations SET until=? WHERE name=? AND state != 'ok' AND "
                   "until > ?", (now, destination, latest))
    spool._notify()
    return n


def next_due(spool: Spool, destination: str) -> float | None:
    """When the next job a claim could take is due (not one behind an earlier version:
    that is due when the earlier one is done); None when there is none."""
    with spool._lock:
        row = spool.db.execute("SELECT j.next_attempt_at FROM jobs j JOIN objects o ON "
                              "o.id = j.object_id WHERE j.destination=? AND "
                              f"j.state='pending' AND {_NOT_BEHIND} ORDER BY "
                              "j.next_attempt_at LIMIT 1", (destination,)).fetchone()
    return row[0] if row else None
