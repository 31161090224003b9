"""One association of a destination, in its own process: claim, associate, C-STORE, record.

A worker claims up to ``batch`` due jobs, sends them on its association, and keeps that
association open for ``idle_release`` so the next files go without a new handshake; a
ring on its bell (a new job) wakes it at once. What a response means is decided by
:mod:`forwarder.outcome`; this module only carries it out: the spool records job
outcomes, destination-level faults put the destination in ``backoff`` or ``held``, and a
C-ECHO probe with the full settings (by worker 0 only, so never a storm) decides when it
is healthy again. Workers share nothing but the spool, so a slow or dead peer never delays
another destination, and parallel associations run on as many cores as there are.

The bell's write end is held by the daemon alone: end of file on it means stop, whether
the daemon asked (:meth:`forwarder.sender.DestinationSender.stop`) or died.
"""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pynetdicom.association import Association

from forwarder import logs, outcome, pdnpatch, redact, retry
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
from forwarder.logs import event, probe_fields
from forwarder.negotiation import Context, TooManyContexts, plan_contexts
from forwarder.spool import Job, Spool

LOGGER = logging.getLogger(__name__)
EXPIRE_EVERY = 60.0
DONE_FLUSH = 1  # done is committed per file (no fsync needed): a kill resends only in-flight


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is started with (pickled to it)."""

    dest: Destination
    calling_ae: str
    spool: str
    index: int
    log: tuple[str, str, bool] | None = None  # logs.setup(level, target, phi); None: as is


def backoff_policy(dest: Destination) -> retry.Backoff:
    r = dest.retry
    return retry.Backoff(r.initial, r.max, r.multiplier, r.jitter, r.max_age)


def main(spec: WorkerSpec, bell_end: Connection) -> None:
    """The worker process: runs until the bell reaches end of file, SIGTERM, or a fault.
    Exit status 0 after a clean stop, 1 after a fault the daemon must not survive."""
    term: list[int] = []  # a SIGTERM before the worker exists is kept, never fatal
    signal.signal(signal.SIGTERM, lambda signum, _frame: term.append(signum))
    bell = bell_end.fileno()  # read raw: single bytes, no message framing
    try:  # ps -o comm and top show which destination a process serves
        Path("/proc/self/comm").write_text(f"fwd-{spec.dest.name}-{spec.index}"[:15])
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the daemon, which stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if spec.log is not None:
        logs.setup(*spec.log)
    os.set_blocking(bell, False)
    wakeup_r, wakeup_w = os.pipe()  # a signal ends any wait at once
    os.set_blocking(wakeup_w, False)
    signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
    try:
        spool = Spool(spec.spool)
    except ForwarderError as exc:
        LOGGER.critical("sender %s-%d cannot open the spool: %s", spec.dest.name, spec.index,
                        exc)
        sys.exit(1)
    worker = Worker(spec, spool, bell, wakeup_r)
    signal.signal(signal.SIGTERM, lambda *_: worker.halt())
    if term:
        worker.halt()
    try:
        sys.exit(worker.run())
    finally:
        spool.close()


class Worker:
    """One association's worth of work for a destination."""

    def __init__(self, spec: WorkerSpec, spool: Spool, bell: int, wakeup: int | None = None,
                 rand: random.Random | None = None):
        self.dest = spec.dest
        self.name = spec.dest.name
        self.index = spec.index
        self.spool = spool
        self.bell = bell
        self.policy = backoff_policy(spec.dest)
        self.rand = rand or random.Random()
        self.tag = f"{self.name}-{self.index}"
        self.phi = spec.log[2] if spec.log else True  # peers' error comments in reasons
        self._halted = False
        self._waits = [bell] if wakeup is None else [bell, wakeup]
        self.assoc: Association | None = None
        self.proposed: set[tuple[str, str]] = set()
        self.opened_at = 0.0
        self.last_used = 0.0
        self.msg_id = 0
        self.next_expire = 0.0
        self.peer: PeerSettings | None = None
        self._peer_error: str | None = None
        try:
            self.peer = peer_for(spec.dest, spec.calling_ae)
        except ForwarderError as exc:  # an unreadable secret: hold, keep the jobs
            self._peer_error = str(exc)

    @property
    def fields(self) -> dict[str, Any]:
        return {"DESTINATION": self.name, "PEER": self.dest.peer,
                "CALLED_AE": self.dest.called_ae_title}

    # --- stopping and waiting ------------------------------------------------------

    def halt(self) -> None:
        """Stop after the C-STORE in flight (SIGTERM)."""
        self._halted = True

    def _drain(self) -> None:
        """Take the wake-ups rung so far; end of file on the bell means stop."""
        try:
            while True:
                if not os.read(self.bell, 4096):
                    self._halted = True
                    return
        except BlockingIOError:
            pass

    @property
    def stopping(self) -> bool:
        if not self._halted:
            self._drain()
        return self._halted

    def _wait(self, timeout: float) -> None:
        """Until the bell rings, a signal comes, or ``timeout``."""
        if not self._halted:
            select.select(self._waits, [], [], max(0.0, timeout))

    # --- the loop ----------------------------------------------------------------

    def run(self) -> int:
        if self._peer_error and self.index == 0:
            self.degrade(outcome.Action(outcome.HOLD, self._peer_error))
        try:
            while not self.stopping:
                if not self._healthy():
                    continue
                if self.index == 0 and time.monotonic() >= self.next_expire:
                    self._expire()
                jobs = self.spool.claim(self.name, self.dest.batch)
                if not jobs:
                    self._idle()
                    continue
                self._send(jobs)
        except SpoolFull:  # the spool's reserve should prevent it; if not, restart clean
            LOGGER.error("spool full: sender %s cannot record outcomes; stopping the daemon",
                         self.tag)
            return 1
        except Exception as exc:  # a spool fault or a bug: never a silently dead destination
            LOGGER.critical("sender %s stopped: %s", self.tag, exc,
                            exc_info=not isinstance(exc, SpoolError))
            return 1
        finally:
            self._close()
        return 0

    def _healthy(self) -> bool:
        health = self.spool.health(self.name)
        if health.state == "ok":
            return True
        self._close()
        now = time.time()
        if health.until is not None and now < health.until:
            self._wait(min(health.until - now, 1.0))
        elif self.index == 0:  # one probe per destination, not a storm
            self.probe()
        else:
            self._wait(0.2)
        return False

    def _expire(self) -> None:
        self.next_expire = time.monotonic() + EXPIRE_EVERY
        n = self.spool.expire(self.name, self.policy.max_age)
        if n:
            event(LOGGER, "expired", "%d job(s) for %s older than %.0fs failed: expired (kept; "
                  "requeue with 'dicom-forwarder retry')", n, self.name, self.policy.max_age,
                  level=logging.ERROR, **self.fields)

    def _idle(self) -> None:
        now = time.monotonic()
        if self.assoc is not None:
            left = self.last_used + self.dest.idle_release - now
            if left <= 0:
                self._close()
                return
            pdnpatch.pace(self.assoc, idle=True)
            self._wait(min(left, 1.0))
            return
        due = self.spool.next_due(self.name)
        wait = 5.0 if due is None else max(0.0, min(5.0, due - time.time()))
        self._wait(max(wait, 0.01))

    # --- destination health ----------------------------------------------------------

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
        return (self.assoc is not None and self.assoc.is_established
                and time.monotonic() - self.opened_at < self.dest.max_association_age
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
                contexts = plan_contexts([*needs, need], self.dest.propose, self.dest.combine)
            except TooManyContexts:
                return jobs[:i], jobs[i:], contexts
            needs.append(need)
        return jobs, [], contexts

    def _open(self, jobs: list[Job]) -> list[Job] | None:
        """Associate for ``jobs``; the jobs it carries, or None when it failed (handled)."""
        take, rest, contexts = self._fit(jobs)
        if rest:
            self.spool.release([j.id for j in rest])
        if self.peer is None:  # another worker may not have marked the destination held yet
            self.spool.release([j.id for j in take])
            self.degrade(outcome.Action(outcome.HOLD, self._peer_error or "no peer settings"))
            return None
        try:
            assoc = open_association(self.peer, contexts)
        except AssociationFailed as exc:
            action = outcome.association_failure(exc.kind, str(exc), exc.result, exc.source,
                                                 exc.reason)
            if action.kind == outcome.FAIL:  # the peer takes none of these SOP classes
                for j in take:
                    self._fail(j, action.reason, attempted=False)
                return None
            self.spool.release([j.id for j in take])
            self.degrade(action)
            return None
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.spool.release([j.id for j in take])
            self.degrade(outcome.Action(outcome.BACKOFF,
                                        f"cannot set up the association: {exc}"))
            return None
        self.assoc = assoc
        self.proposed = {(j.probe.sop_class_uid, j.probe.transfer_syntax) for j in take}
        self.opened_at = time.monotonic()
        event(LOGGER, "association", "%s: association open on worker %d (%d contexts, %d "
              "accepted)", self.name, self.index, len(contexts), len(assoc.accepted_contexts),
              level=logging.DEBUG, **self.fields)
        return take

    # --- sending -----------------------------------------------------------------

    def _send(self, jobs: list[Job]) -> None:
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
                if self.stopping or not self.assoc.is_established:
                    self.spool.release([j.id for j in jobs[i:]])
                    return
                if not self._store(job, done):
                    self.spool.release([j.id for j in jobs[i + 1:]])
                    return
                if len(done) >= DONE_FLUSH:
                    self.spool.done(done)
                    done = []
        finally:
            self.spool.done(done)
            self.last_used = time.monotonic()

    def _store(self, job: Job, done: list[int]) -> bool:
        """Send one job and record what happened; False when the association is unusable."""
        assert self.assoc is not None
        self.msg_id = self.msg_id % 65535 + 1
        started = time.monotonic()
        try:
            result = store_file(self.assoc, job.path, job.probe, self.dest.decompress, None,
                                self.msg_id)
        except FileNotFoundError:
            self._fail(job, "the spool's copy of the file is missing")
            return True
        except (OSError, RuntimeError, AttributeError) as exc:  # connection lost mid-store
            LOGGER.debug("C-STORE interrupted: %s", exc)
            result = StoreResult(None)
        result = replace(result, comment=redact.comment(result.comment, self.phi))
        if result.refused:
            self._fail(job, result.refused)
            return True
        if result.status is None:
            elapsed = time.monotonic() - started
            self.assoc.join(2.0)  # its reactor records a peer's A-ABORT, then ends
            action = outcome.no_response(job.aborts, outcome.no_response_cause(
                elapsed, self.dest.timeouts.dimse, self.assoc.is_aborted))
            if action.kind == outcome.FAIL:
                self._fail(job, action.reason)
            else:
                self.spool.retry(job.id, action.reason, self.policy, aborted=True, delay=0.0)
                event(LOGGER, "retry", "%s: %s", job.probe.sop_instance_uid, action.reason,
                      level=logging.WARNING, ATTEMPT=job.attempts + 1, **self._fields(job))
            if self.assoc.is_established:
                self.assoc.abort()
            self._close()
            return False
        action = outcome.store_status(result.status, result.comment, job.attempts,
                                      self.dest.warning_is_success)
        status = outcome.status_text(result.status)
        if action.kind == outcome.DONE:
            done.append(job.id)
            event(LOGGER, "stored", "%s stored at %s (%s)%s", job.probe.sop_instance_uid,
                  self.name, status, f": {action.reason}" if action.warning else "",
                  level=logging.WARNING if action.warning else logging.INFO,
                  DICOM_STATUS=status, ATTEMPT=job.attempts + 1, **self._fields(job))
            return True
        if action.kind == outcome.FAIL:
            self._fail(job, action.reason, status)
            return True
        if action.kind == outcome.RETRY:
            due = self.spool.retry(job.id, action.reason, self.policy)
            event(LOGGER, "retry", "%s: %s; next attempt in %.0fs", job.probe.sop_instance_uid,
                  action.reason, due - time.time(), level=logging.WARNING, DICOM_STATUS=status,
                  ATTEMPT=job.attempts + 1, **self._fields(job))
            return True
        if action.kind == outcome.RESEND:
            self.spool.retry(job.id, action.reason, self.policy, delay=0.0)
            self._close()
            return False
        # HOLD: the peer refuses us, not the file
        self.spool.release([job.id])
        self.degrade(action)
        self._close()
        return False

    def _fields(self, job: Job) -> dict[str, Any]:
        return {**probe_fields(job.probe), **self.fields}

    def _fail(self, job: Job, reason: str, status: str | None = None,
              attempted: bool = True) -> None:
        self.spool.fail(job.id, reason, attempted=attempted)
        event(LOGGER, "failed", "%s failed at %s: %s (kept; 'dicom-forwarder retry' requeues "
              "it)", job.probe.sop_instance_uid, self.name, reason, level=logging.ERROR,
              DICOM_STATUS=status, ATTEMPT=job.attempts + 1, REASON=reason, **self._fields(job))
