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

from forwarder import health, logs, outcome, pdnpatch, redact, retry
from forwarder.association import (
    AssociationFailed,
    PeerSettings,
    open_association,
)
from forwarder.config import Destination
from forwarder.cstore import StoreResult, store_file
from forwarder.errors import ForwarderError, SpoolError, SpoolFull
from forwarder.logs import event, probe_fields
from forwarder.negotiation import Context, TooManyContexts, plan_contexts
from forwarder.spool import Job, Spool, claims

LOGGER = logging.getLogger(__name__)
DONE_FLUSH = 1  # done is committed per file (no fsync needed): a kill resends only in-flight
EXIT_SPOOL = 3  # the spool cannot record outcomes: the daemon stops (any other exit: restart)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is started with (pickled to it)."""

    dest: Destination
    calling_ae: str
    spool: str
    index: int
    log: tuple[str, str, bool] | None = None  # logs.setup(level, target, phi); None: as is
    token: str = ""  # the sender's start: with the PID, the owner of this worker's claims


def backoff_policy(dest: Destination) -> retry.Backoff:
    r = dest.retry
    return retry.Backoff(r.initial, r.max, r.multiplier, r.jitter, r.max_age)


def stall_limit(dest: Destination) -> float:
    """How long a worker may go without a heartbeat before it counts as wedged: its
    longest legitimate wait (connect, associate, send a file, wait for the response)."""
    t = dest.timeouts
    return 10.0 + 2 * sum(60.0 if v is None else v for v in (t.connect, t.acse, t.dimse,
                                                              t.network))


def main(spec: WorkerSpec, bell_end: Connection, beat: Any = None) -> None:
    """The worker process: runs until the bell reaches end of file, SIGTERM, or a fault.
    Exit status 0 after a clean stop, ``EXIT_SPOOL`` when the spool cannot be used (the
    daemon stops), anything else after a bug (the daemon starts the worker again)."""
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
        sys.exit(EXIT_SPOOL)
    worker = Worker(spec, spool, bell, wakeup_r, beat=beat)
    signal.signal(signal.SIGTERM, lambda *_: worker.halt())
    if term:
        worker.halt()
    try:
        sys.exit(worker.run())
    finally:
        spool.close()


class Worker(health.DestinationHealth):
    """One association's worth of work for a destination."""

    def __init__(self, spec: WorkerSpec, spool: Spool, bell: int, wakeup: int | None = None,
                 rand: random.Random | None = None, beat: Any = None):
        self.dest = spec.dest
        self.name = spec.dest.name
        self.index = spec.index
        self.spool = spool
        self.bell = bell
        self.policy = backoff_policy(spec.dest)
        self.rand = rand or random.Random()
        self.tag = f"{self.name}-{self.index}"
        self.beat = beat  # shared double: time.monotonic() of the last sign of progress
        self.owner = claims.owner_of(spec.token)
        self.phi = spec.log[2] if spec.log else True  # peers' error comments in reasons
        self._halted = False
        self._waits = [bell] if wakeup is None else [bell, wakeup]
        self.assoc: Association | None = None
        self.proposed: set[tuple[str, str]] = set()
        self.opened_at = 0.0
        self.last_used = 0.0
        self.msg_id = 0
        self.next_expire = 0.0
        self._ageing = 0
        self._ageing_said = -health.EXPIRY_WARN_EVERY
        self.calling_ae = spec.calling_ae
        self.peer: PeerSettings | None = None
        self._peer_error: str | None = None
        self._read_peer()

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
        self._beat()
        if not self._halted:
            select.select(self._waits, [], [], max(0.0, timeout))
        self._beat()

    def _beat(self) -> None:
        if self.beat is not None:
            self.beat.value = time.monotonic()

    # --- the loop ----------------------------------------------------------------

    def run(self) -> int:
        if self._peer_error and self.index == 0:
            self.degrade(outcome.Action(outcome.HOLD, self._peer_error))
        try:
            while not self.stopping:
                self._beat()
                if self.index == 0 and time.monotonic() >= self.next_expire:
                    self._expire()  # during outages too: max_age is wall-clock age
                if not self._healthy():
                    continue
                jobs = self.spool.claim(self.name, self.dest.batch, owner=self.owner)
                if not jobs:
                    self._idle()
                    continue
                self._send(jobs)
        except SpoolFull:  # the spool's reserve should prevent it; if not, restart clean
            LOGGER.error("spool full: sender %s cannot record outcomes; stopping the daemon",
                         self.tag)
            return EXIT_SPOOL
        except SpoolError as exc:
            LOGGER.critical("sender %s stopped: %s", self.tag, exc)
            return EXIT_SPOOL
        except Exception as exc:  # a bug: this worker ends, the daemon starts another
            LOGGER.error("sender %s stopped by an unexpected error: %s: %s", self.tag,
                         type(exc).__name__, exc, exc_info=True)
            return 1
        finally:
            self._close()
        return 0

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
            self.spool.release([j.id for j in rest], owner=self.owner)
        peer = self._read_peer()
        if peer is None:
            self.spool.release([j.id for j in take], owner=self.owner)
            self.degrade(outcome.Action(outcome.HOLD, self._peer_error or "no peer settings"))
            return None
        try:
            assoc = open_association(peer, contexts)
        except AssociationFailed as exc:
            action = outcome.association_failure(exc.kind, str(exc), exc.result, exc.source,
                                                 exc.reason)
            if action.kind == outcome.FAIL:  # the peer takes none of these SOP classes
                for j in take:
                    self._fail(j, action.reason, attempted=False)
                return None
            self.spool.release([j.id for j in take], owner=self.owner)
            self.degrade(action)
            return None
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.spool.release([j.id for j in take], owner=self.owner)
            self.degrade(outcome.Action(outcome.BACKOFF,
                                        f"cannot set up the association: {exc}"))
            return None
        except Exception as exc:  # noqa: BLE001 - a bug or a missing module: not the files'
            LOGGER.error("%s: cannot set up the association: %s: %s", self.name,
                         type(exc).__name__, exc, exc_info=True)
            self.spool.release([j.id for j in take], owner=self.owner)
            self.degrade(outcome.Action(outcome.BACKOFF, "cannot set up the association: "
                                        f"{type(exc).__name__}: {exc}"))
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
                    self.spool.release([j.id for j in jobs[i:]], owner=self.owner)
                    return
                if not self._store(job, done):
                    self.spool.release([j.id for j in jobs[i + 1:]],
                                       owner=self.owner)
                    return
                if len(done) >= DONE_FLUSH:
                    self.spool.done(done, owner=self.owner)
                    done = []
        finally:
            self.spool.done(done, owner=self.owner)
            self.last_used = time.monotonic()

    def _store(self, job: Job, done: list[int]) -> bool:
        """Send one job and record what happened; False when the association is unusable."""
        assert self.assoc is not None
        self.msg_id = self.msg_id % 65535 + 1
        lost = ""
        started = time.monotonic()
        try:
            result = store_file(self.assoc, job.path, job.probe, self.dest.decompress, None,
                                self.msg_id)
        except FileNotFoundError:
            self._fail(job, "the spool's copy of the file is missing")
            return True
        except Exception as exc:  # noqa: BLE001 - the fault boundary around one job
            what = f"{type(exc).__name__}: {exc}"
            if self.assoc.is_established:  # the file's fault: it fails, the association stays
                LOGGER.error("%s: cannot prepare or send it to %s: %s",
                             job.probe.sop_instance_uid, self.name, what, exc_info=True)
                self._fail(job, f"cannot prepare or send this file: {what}")
                return True
            lost = f" ({what})"
            result = StoreResult(None)
        result = replace(result, comment=redact.comment(result.comment, self.phi))
        if result.refused:
            self._fail(job, result.refused)
            return True
        if result.status is None:
            elapsed = time.monotonic() - started
            self.assoc.join(2.0)  # its reactor records a peer's A-ABORT, then ends
            what = outcome.no_response_cause(elapsed, self.dest.timeouts.dimse,
                                             self.assoc.is_aborted) + lost
            self._alike(job, outcome.Action(
                outcome.RESEND, f"{what} during the C-STORE; sending it again on a new "
                "association"), None)
            if self.assoc is not None and self.assoc.is_established:
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
        if action.kind == outcome.RETRY and outcome.out_of_resources(result.status):
            return self._alike(job, action, status, refused=True)
        if action.kind == outcome.RETRY:
            self._retry(job, action.reason, status)
            return True
        if action.kind == outcome.RESEND:
            self.spool.retry(job.id, action.reason, self.policy, delay=0.0, owner=self.owner)
            self._close()
            return False
        # HOLD: the peer refuses us, not the file
        self.spool.release([job.id], owner=self.owner)
        self.degrade(action)
        self._close()
        return False

    def _alike(self, job: Job, action: outcome.Action, status: str | None,
               refused: bool = False) -> bool:
        """A failure the file or its peer may have caused: the file's when others are being
        stored around it, the destination's when they fail alike (:func:`outcome.alike`).
        False when the destination backs off (the association is not used further)."""
        streak, stored_since = self.spool.note_failure(self.name, job.id)
        verdict, alone = outcome.alike(action, job.aborts, streak, stored_since, refused)
        if verdict.kind == outcome.FAIL:
            self._fail(job, verdict.reason, status)
            return True
        if verdict.kind == outcome.BACKOFF:  # the file waits its turn, its count unchanged
            self._retry(job, action.reason, status)
            self.degrade(verdict, attempts=streak - outcome.STREAK + 1)
            self._close()
            return False
        # the others go first: a file that fails alone must not be next in line again
        self._retry(job, verdict.reason, status, alone=alone)
        return True

    def _retry(self, job: Job, reason: str, status: str | None, alone: bool = False) -> None:
        due = self.spool.retry(job.id, reason, self.policy, aborted=alone, owner=self.owner)
        if due is not None:
            event(LOGGER, "retry", "%s: %s; next attempt in %.1fs", job.probe.sop_instance_uid,
                  reason, due - time.time(), level=logging.WARNING, DICOM_STATUS=status,
                  ATTEMPT=job.attempts + 1, **self._fields(job))

    def _fields(self, job: Job) -> dict[str, Any]:
        return {**probe_fields(job.probe), **self.fields}

    def _fail(self, job: Job, reason: str, status: str | None = None,
              attempted: bool = True) -> None:
        if not self.spool.fail(job.id, reason, attempted=attempted, owner=self.owner):
            return  # claimed again by a newer worker: not ours to record
        event(LOGGER, "failed", "%s failed at %s: %s (kept; 'dicom-forwarder retry' requeues "
              "it)", job.probe.sop_instance_uid, self.name, reason, level=logging.ERROR,
              DICOM_STATUS=status, ATTEMPT=job.attempts + 1, REASON=reason, **self._fields(job))
