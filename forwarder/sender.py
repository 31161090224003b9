"""Per-destination workers: claim due jobs, reuse or open associations, C-STORE, report.

Each destination has up to ``associations`` workers. A worker claims up to ``batch`` due
jobs, sends them on its association, and keeps that association open for
``idle_release`` so the next files go without a new handshake; a new job wakes an idle
worker at once. What a response means is decided by :mod:`forwarder.outcome`; this
module only carries it out: the spool records job outcomes, destination-level faults
put the destination in ``backoff`` or ``held``, and a C-ECHO probe with the full
settings decides when it is healthy again. Destinations share nothing but the spool,
so a slow or dead peer never delays another.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pynetdicom.association import Association

from forwarder import outcome, pdnpatch, retry
from forwarder.association import (
    AssociationFailed,
    PeerSettings,
    echo,
    open_association,
    peer_for,
)
from forwarder.config import Destination
from forwarder.cstore import StoreResult, store_file
from forwarder.errors import ForwarderError, SpoolError, SpoolFull
from forwarder.logs import event
from forwarder.negotiation import Context, TooManyContexts, plan_contexts
from forwarder.spool import Job, Spool

LOGGER = logging.getLogger(__name__)
EXPIRE_EVERY = 60.0
DONE_FLUSH = 1  # done is committed per file (no fsync needed): a kill resends only in-flight


def backoff_policy(dest: Destination) -> retry.Backoff:
    r = dest.retry
    return retry.Backoff(r.initial, r.max, r.multiplier, r.jitter, r.max_age)


class DestinationSender:
    """The workers of one destination; a context manager."""

    def __init__(self, dest: Destination, calling_ae: str, spool: Spool,
                 rand: random.Random | None = None,
                 on_fatal: Callable[[BaseException], None] | None = None):
        self.dest = dest
        self.on_fatal = on_fatal
        self.name = dest.name
        self.calling_ae = calling_ae
        self.spool = spool
        self.policy = backoff_policy(dest)
        self.rand = rand or random.Random()
        self._stop = threading.Event()
        self._probe_lock = threading.Lock()
        self._workers: list[_Worker] = []
        self.associations_opened = 0
        self.stored = 0
        self.peer: PeerSettings | None = None
        self._peer_error: str | None = None
        try:
            self.peer = peer_for(dest, calling_ae)
        except ForwarderError as exc:  # an unreadable secret: hold, keep the jobs
            self._peer_error = str(exc)

    @property
    def fields(self) -> dict[str, Any]:
        return {"DESTINATION": self.name, "PEER": self.dest.peer,
                "CALLED_AE": self.dest.called_ae_title}

    def start(self) -> DestinationSender:
        if self._peer_error:
            self.degrade(outcome.Action(outcome.HOLD, self._peer_error))
        for i in range(self.dest.associations):
            w = _Worker(self, i)
            w.thread.start()
            self._workers.append(w)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the C-STOREs in flight, return the other claimed jobs, release (A-RELEASE)."""
        self._stop.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.thread.join(max(0.1, deadline - time.monotonic()))

    def __enter__(self) -> DestinationSender:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wake(self) -> None:
        self.spool._notify()

    @property
    def alive(self) -> bool:
        """Every worker thread runs."""
        return all(w.thread.is_alive() for w in self._workers)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def degrade(self, action: outcome.Action, now: float | None = None) -> None:
        """Destination-level fault: backoff with jitter, or held and probed slowly."""
        now = time.time() if now is None else now
        health = self.spool.health(self.name)
        if action.kind == outcome.HOLD:
            until = now + self.policy.max
            self.spool.set_health(self.name, "held", until, action.reason, now=now)
            event(LOGGER, "destination_held", "%s held: %s; jobs are kept, next probe in %.0fs",
                  self.name, action.reason, until - now, level=logging.ERROR,
                  REASON=action.reason, **self.fields)
        else:
            until = now + retry.delay(health.failures + 1, self.policy, self.rand.random())
            self.spool.set_health(self.name, "backoff", until, action.reason, now=now)
            event(LOGGER, "destination_backoff", "%s unavailable: %s; next try in %.1fs",
                  self.name, action.reason, until - now, level=logging.WARNING,
                  REASON=action.reason, **self.fields)

    def probe(self) -> bool:
        """C-ECHO with the full settings; on success the destination is ``ok`` again."""
        if self.peer is None:
            self.degrade(outcome.Action(outcome.HOLD, self._peer_error or "no peer settings"))
            return False
        try:
            answer = echo(self.peer)
        except AssociationFailed as exc:
            self.degrade(outcome.association_failure(exc.kind, str(exc), exc.result,
                                                     exc.source, exc.reason))
            return False
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.degrade(outcome.Action(outcome.BACKOFF, f"cannot reach the peer: {exc}"))
            return False
        self.spool.set_health(self.name, "ok")
        event(LOGGER, "destination_ok", "%s reachable again (%s)", self.name, answer,
              **self.fields)
        return True


class _Worker:
    """One association's worth of work for a destination, in its own thread."""

    def __init__(self, sender: DestinationSender, index: int):
        self.s = sender
        self.index = index
        self.assoc: Association | None = None
        self.proposed: set[tuple[str, str]] = set()
        self.opened_at = 0.0
        self.last_used = 0.0
        self.msg_id = 0
        self.next_expire = 0.0
        self.thread = threading.Thread(target=self.run, name=f"fwd-send-{sender.name}-{index}",
                                       daemon=True)

    # --- the loop ----------------------------------------------------------------

    def run(self) -> None:
        s = self.s
        try:
            while not s.stopping:
                if not self._healthy():
                    continue
                if self.index == 0 and time.monotonic() >= self.next_expire:
                    self._expire()
                generation = s.spool.generation
                jobs = s.spool.claim(s.name, s.dest.batch)
                if not jobs:
                    self._idle(generation)
                    continue
                self._send(jobs)
        except SpoolFull:  # the spool's reserve should prevent it; if not, restart clean
            LOGGER.error("spool full: %s cannot record outcomes; stopping the daemon",
                         self.thread.name)
            if s.on_fatal is not None:
                s.on_fatal(SpoolError("spool full: outcomes cannot be recorded"))
        except Exception as exc:  # a spool fault or a bug: never a silently dead destination
            LOGGER.critical("sender %s stopped: %s", self.thread.name, exc,
                            exc_info=not isinstance(exc, SpoolError))
            if s.on_fatal is None:
                raise
            s.on_fatal(exc)
        finally:
            self._close()

    def _healthy(self) -> bool:
        s = self.s
        health = s.spool.health(s.name)
        if health.state == "ok":
            return True
        self._close()
        now = time.time()
        if health.until is not None and now < health.until:
            s._stop.wait(min(health.until - now, 1.0))
            return False
        if s._probe_lock.acquire(blocking=False):  # one probe per destination, not a storm
            try:
                if s.spool.health(s.name).state != "ok":
                    s.probe()
            finally:
                s._probe_lock.release()
        else:
            s._stop.wait(0.2)
        return False

    def _expire(self) -> None:
        s = self.s
        self.next_expire = time.monotonic() + EXPIRE_EVERY
        n = s.spool.expire(s.name, s.policy.max_age)
        if n:
            event(LOGGER, "expired", "%d job(s) for %s older than %.0fs failed: expired (kept; "
                  "requeue with 'dicom-forwarder retry')", n, s.name, s.policy.max_age,
                  level=logging.ERROR, **s.fields)

    def _idle(self, generation: int) -> None:
        s = self.s
        now = time.monotonic()
        if self.assoc is not None:
            left = self.last_used + s.dest.idle_release - now
            if left <= 0:
                self._close()
                return
            pdnpatch.pace(self.assoc, idle=True)
            s.spool.wait_changed(generation, min(left, 1.0))
            return
        due = s.spool.next_due(s.name)
        wait = 5.0 if due is None else max(0.0, min(5.0, due - time.time()))
        s.spool.wait_changed(generation, max(wait, 0.01))

    # --- associations ------------------------------------------------------------

    def _close(self) -> None:
        assoc, self.assoc = self.assoc, None
        self.proposed = set()
        if assoc is not None and assoc.is_established:
            try:
                assoc.release()
            except Exception:  # noqa: BLE001 - a release that fails leaves nothing to keep
                assoc.abort()

    def _covers(self, jobs: Sequence[Job]) -> bool:
        s = self.s
        return (self.assoc is not None and self.assoc.is_established
                and time.monotonic() - self.opened_at < s.dest.max_association_age
                and all((j.probe.sop_class_uid, j.probe.transfer_syntax) in self.proposed
                        for j in jobs))

    def _fit(self, jobs: list[Job]) -> tuple[list[Job], list[Job], list[Context]]:
        """The leading jobs whose contexts fit in one association (PS3.8 9.3.2.2: 128),
        the others, and the contexts planned for the first."""
        needs: list[tuple[str, str]] = []
        contexts: list[Context] = []
        for i, j in enumerate(jobs):
            need = (j.probe.sop_class_uid, j.probe.transfer_syntax)
            if need in needs:
                continue
            try:
                contexts = plan_contexts([*needs, need], self.s.dest.propose,
                                         self.s.dest.combine)
            except TooManyContexts:
                return jobs[:i], jobs[i:], contexts
            needs.append(need)
        return jobs, [], contexts

    def _open(self, jobs: list[Job]) -> list[Job] | None:
        """Associate for ``jobs``; the jobs it carries, or None when it failed (handled)."""
        s = self.s
        take, rest, contexts = self._fit(jobs)
        if rest:
            s.spool.release([j.id for j in rest])
        assert s.peer is not None
        try:
            assoc = open_association(s.peer, contexts)
        except AssociationFailed as exc:
            action = outcome.association_failure(exc.kind, str(exc), exc.result, exc.source,
                                                 exc.reason)
            if action.kind == outcome.FAIL:  # the peer takes none of these SOP classes
                for j in take:
                    self._fail(j, action.reason, attempted=False)
                return None
            s.spool.release([j.id for j in take])
            s.degrade(action)
            return None
        except (OSError, ssl.SSLError, ValueError) as exc:
            s.spool.release([j.id for j in take])
            s.degrade(outcome.Action(outcome.BACKOFF, f"cannot set up the association: {exc}"))
            return None
        self.assoc = assoc
        self.proposed = {(j.probe.sop_class_uid, j.probe.transfer_syntax) for j in take}
        self.opened_at = time.monotonic()
        s.associations_opened += 1
        event(LOGGER, "association", "%s: association %d open (%d contexts, %d accepted)",
              s.name, s.associations_opened, len(contexts), len(assoc.accepted_contexts),
              level=logging.DEBUG, **s.fields)
        return take

    # --- sending -----------------------------------------------------------------

    def _send(self, jobs: list[Job]) -> None:
        s = self.s
        if not self._covers(jobs):
            self._close()
            opened = self._open(jobs)
            if opened is None:
                return
            jobs = opened
        assert self.assoc is not None
        pdnpatch.pace(self.assoc, idle=False)
        done: list[int] = []
        try:
            for i, job in enumerate(jobs):
                if s.stopping or not self.assoc.is_established:
                    s.spool.release([j.id for j in jobs[i:]])
                    return
                if not self._store(job, done):
                    s.spool.release([j.id for j in jobs[i + 1:]])
                    return
                if len(done) >= DONE_FLUSH:
                    s.spool.done(done)
                    done = []
        finally:
            s.spool.done(done)
            self.last_used = time.monotonic()

    def _store(self, job: Job, done: list[int]) -> bool:
        """Send one job and record what happened; False when the association is unusable."""
        s = self.s
        assert self.assoc is not None
        self.msg_id = self.msg_id % 65535 + 1
        try:
            result = store_file(self.assoc, job.path, job.probe, s.dest.decompress, None,
                                self.msg_id)
        except FileNotFoundError:
            self._fail(job, "the spool's copy of the file is missing")
            return True
        except (OSError, RuntimeError, AttributeError) as exc:  # connection lost mid-store
            LOGGER.debug("C-STORE interrupted: %s", exc)
            result = StoreResult(None)
        if result.refused:
            self._fail(job, result.refused)
            return True
        if result.status is None:
            action = outcome.no_response(job.aborts, "no response (association aborted, "
                                         "connection lost or DIMSE timeout)")
            if action.kind == outcome.FAIL:
                self._fail(job, action.reason)
            else:
                s.spool.retry(job.id, action.reason, s.policy, aborted=True, delay=0.0)
                event(LOGGER, "retry", "%s: %s", job.probe.sop_instance_uid, action.reason,
                      level=logging.WARNING, ATTEMPT=job.attempts + 1, **self._fields(job))
            if self.assoc.is_established:
                self.assoc.abort()
            self._close()
            return False
        action = outcome.store_status(result.status, result.comment, job.attempts,
                                      s.dest.warning_is_success)
        status = outcome.status_text(result.status)
        if action.kind == outcome.DONE:
            done.append(job.id)
            s.stored += 1
            event(LOGGER, "stored", "%s stored at %s (%s)%s", job.probe.sop_instance_uid,
                  s.name, status, f": {action.reason}" if action.warning else "",
                  level=logging.WARNING if action.warning else logging.INFO,
                  DICOM_STATUS=status, ATTEMPT=job.attempts + 1, **self._fields(job))
            return True
        if action.kind == outcome.FAIL:
            self._fail(job, action.reason, status)
            return True
        if action.kind == outcome.RETRY:
            due = s.spool.retry(job.id, action.reason, s.policy)
            event(LOGGER, "retry", "%s: %s; next attempt in %.0fs", job.probe.sop_instance_uid,
                  action.reason, due - time.time(), level=logging.WARNING, DICOM_STATUS=status,
                  ATTEMPT=job.attempts + 1, **self._fields(job))
            return True
        if action.kind == outcome.RESEND:
            s.spool.retry(job.id, action.reason, s.policy, delay=0.0)
            self._close()
            return False
        # HOLD: the peer refuses us, not the file
        s.spool.release([job.id])
        s.degrade(action)
        self._close()
        return False

    def _fields(self, job: Job) -> dict[str, Any]:
        p = job.probe
        return {"SOP_INSTANCE_UID": p.sop_instance_uid, "SOP_CLASS_UID": p.sop_class_uid,
                "STUDY_INSTANCE_UID": p.study_instance_uid, **self.s.fields}

    def _fail(self, job: Job, reason: str, status: str | None = None,
              attempted: bool = True) -> None:
        self.s.spool.fail(job.id, reason, attempted=attempted)
        event(LOGGER, "failed", "%s failed at %s: %s (kept; 'dicom-forwarder retry' requeues "
              "it)", job.probe.sop_instance_uid, self.s.name, reason, level=logging.ERROR,
              DICOM_STATUS=status, ATTEMPT=job.attempts + 1, REASON=reason, **self._fields(job))
