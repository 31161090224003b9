"""One association of a destination, in its own process: claim, associate, C-STORE, record.

A worker claims up to ``batch`` due jobs, sends them on its association, and keeps that
association open for ``idle_release`` so the next files go without a new handshake; a
ring on its bell (a new job) wakes it at once. What to do next (open, store, record,
degrade, wait) is decided by :mod:`forwarder.sendcore`, without I/O, by the rules of
:mod:`forwarder.outcome`; this module is its I/O shell and carries it out: the spool records job
outcomes, destination-level faults put the destination in ``backoff`` or ``held``, and a
C-ECHO probe with the full settings (by worker 0 only, so never a storm) decides when it
is healthy again. Workers share nothing but the spool, so a slow or dead peer never delays
another destination, and parallel associations run on as many cores as there are.

The process around it (signals, name, logging, the spool) is :mod:`forwarder.workerproc`.
"""

from __future__ import annotations

import logging
import os
import random
import select
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from forwarder import health, outcome, redact, retry, sendcore
from forwarder.association import AssociationFailed, PeerSettings
from forwarder.config import Destination
from forwarder.cstore import StoreResult, store_file
from forwarder.datachanges import changes
from forwarder.errors import SpoolError, SpoolFull
from forwarder.faults import spool_wide
from forwarder.logs import event, probe_fields
from forwarder.scu import Association
from forwarder.spool import Job, Spool, claims

LOGGER = logging.getLogger(__name__)
EXIT_SPOOL = 3  # the spool cannot record outcomes: the daemon stops (any other exit: restart)
# a worker's flight record, shared with its sender (0: none): the job it is sending, the
# job the peer stored whose done mark is not recorded yet (see claims.reclaim), and that
# job again once the worker has logged its "stored" line (a sender that records the mark
# logs it only if the worker did not). LOGGED is cleared with STORED: job ids come back
# (a delivered file's rows are deleted), so a stale one could match a new stored job.
# STATUS: the C-STORE status of the stored job, for the line its sender may log.
IN_FLIGHT, STORED, LOGGED, STATUS = 0, 1, 2, 3
FLIGHT_SLOTS = 4


class _Unrecorded(Exception):
    """Recording stored files failed while the next file was at the peer: the worker's
    failure (``error``), never the fault of the file in flight."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


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


class Worker(health.DestinationHealth):
    """One association's worth of work for a destination."""

    def __init__(self, spec: WorkerSpec, spool: Spool, bell: int, wakeup: int | None = None,
                 rand: random.Random | None = None, beat: Any = None, flight: Any = None):
        self.dest = spec.dest
        self.name = spec.dest.name
        self.index = spec.index
        self.spool = spool
        self.bell = bell
        self.policy = backoff_policy(spec.dest)
        self.rand = rand or random.Random()
        self.tag = f"{self.name}-{self.index}"
        self.beat = beat  # shared double: time.monotonic() of the last sign of progress
        self.flight = [0] * FLIGHT_SLOTS if flight is None else flight  # shared, see above
        self.owner = claims.owner_of(spec.token)
        self.phi = spec.log[2] if spec.log else True  # peers' error comments in reasons
        self._halted = False
        self._waits = [bell] if wakeup is None else [bell, wakeup]
        self.assoc: Association | None = None
        d = spec.dest
        # a negotiation profile, as read when the configuration was checked
        self.roles = {sop: (scu, scp) for sop, scu, scp in d.roles}
        self.modify = changes(d.strip_uid_padding, d.new_vrs)  # None: files go unchanged
        self.deflate_level = 6 if d.compression_level is None else d.compression_level
        self.core = sendcore.SendCore(sendcore.Policy(
            d.propose, d.combine, d.max_association_age, d.idle_release, d.warning_is_success,
            d.proposal))
        self.claimed: dict[int, Job] = {}  # the jobs of the batch the core is sending
        # the job the peer stored and its Done, not yet logged and recorded
        self._stored: tuple[Job, sendcore.Done] | None = None
        self._recording = 0.0  # seconds spent recording marks during the C-STORE in flight
        self.msg_id = 0
        self.next_expire = 0.0
        self._clock: tuple[float, float] | None = None
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
        code = 1
        try:
            code = self._loop()
        finally:
            try:
                code = self._record_last(code)
            finally:
                self._close()
        return code

    def _loop(self) -> int:
        if self._peer_error and self.index == 0:
            self.degrade(outcome.Action(outcome.HOLD, self._peer_error))
        try:
            while not self.stopping:
                self._record_stored()
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
        return 0

    def _record_last(self, code: int) -> int:
        """Record what the peer stored before the worker leaves; a spool that cannot is
        EXIT_SPOOL whatever ended the loop, any other error a bug (exit 1)."""
        try:
            self._record_stored()
        except Exception as exc:  # noqa: BLE001 - the exit code says it
            if spool_wide(exc):
                LOGGER.critical("sender %s stopped: %s", self.tag, exc)
                return EXIT_SPOOL
            LOGGER.error("sender %s could not record stored files: %s: %s", self.tag,
                         type(exc).__name__, exc, exc_info=True)
            return code or 1
        return code

    def _idle(self) -> None:
        due_in = None
        if not self.core.open:
            due = self.spool.next_due(self.name)
            now = time.time()
            if self.stepped_back(due, now):
                due = now
            due_in = None if due is None else due - now
        self._carry_out(self.core.handle(sendcore.Tick(time.monotonic(), due_in)))

    # --- the I/O shell of sendcore ------------------------------------------------

    def _send(self, jobs: list[Job]) -> None:
        self.claimed = {j.id: j for j in jobs}
        items = tuple(sendcore.Item(j.id, j.probe.sop_class_uid, j.probe.transfer_syntax,
                                    j.attempts, j.aborts) for j in jobs)
        # a release or an abort the peer sent while the association was idle is taken
        # in now: the batch goes on a new association and no file is charged for it
        link_up = self.assoc is not None and self.assoc.still_up()
        self._carry_out(self.core.handle(sendcore.Claimed(items, time.monotonic(), link_up)))

    def _carry_out(self, commands: list[sendcore.Command]) -> None:
        """Do what the core decided; feed back the answers of the commands that have one."""
        queue = deque(commands)
        while queue:
            answer = self._do(queue.popleft())
            if answer is not None:
                queue.extend(self.core.handle(answer))

    def _do(self, cmd: sendcore.Command) -> sendcore.Event | None:
        if isinstance(cmd, sendcore.Store):
            return self._store(self.claimed[cmd.job])
        if isinstance(cmd, sendcore.Done):
            self._record_stored()  # none in practice: one mark is kept, as in the flight record
            self.flight[STATUS] = int(cmd.status, 16)
            self.flight[STORED] = cmd.job  # if this process dies, its sender records it
            self._stored = (self.claimed[cmd.job], cmd)
            return None
        self._record_stored()  # every other outcome is recorded after it, in order
        if isinstance(cmd, sendcore.Retry):
            if cmd.delay is not None:  # at once, on a new association: no news for a user
                self.spool.retry(cmd.job, cmd.reason, self.policy, delay=cmd.delay,
                                 owner=self.owner)
            else:
                self._retry(self.claimed[cmd.job], cmd.reason, cmd.status, alone=cmd.alone)
        elif isinstance(cmd, sendcore.Fail):
            self._fail(self.claimed[cmd.job], cmd.reason, cmd.status, attempted=cmd.attempted)
        elif isinstance(cmd, sendcore.Release):
            self.spool.release(list(cmd.jobs), owner=self.owner)
        elif isinstance(cmd, sendcore.NoteFailure):
            return sendcore.FailureNoted(*self.spool.note_failure(self.name, cmd.job))
        elif isinstance(cmd, sendcore.Degrade):
            self.degrade(cmd.action, attempts=cmd.attempts)
        elif isinstance(cmd, sendcore.Open):
            return self._open(cmd)
        elif isinstance(cmd, sendcore.Close):
            if cmd.abort and self.assoc is not None and self.assoc.is_established:
                self.assoc.abort()
            self._close()
        elif isinstance(cmd, sendcore.Pace):
            pass  # one blocking thread per association: nothing polls, idle or busy
        elif isinstance(cmd, sendcore.Wait):
            self._wait(cmd.seconds)
        return None

    def _record_stored(self) -> None:
        """Log and mark done the job the peer has stored. A Done is kept until the next
        file's request is written (or until anything else is recorded, claimed or
        closed), so the log line and the spool's commit cost the peer no time: they are
        made while it takes that file in. Should the worker die meanwhile, its sender
        records the mark from the flight record and logs it; only a kill of the whole
        daemon resends the stored file too (no fsync: a lost "done" resends, never
        loses)."""
        if self._stored is None:
            return
        (job, done), self._stored = self._stored, None
        event(LOGGER, "stored", "%s stored at %s (%s)%s", job.probe.sop_instance_uid,
              self.name, done.status, f": {done.reason}" if done.warning else "",
              level=logging.WARNING if done.warning else logging.INFO,
              DICOM_STATUS=done.status, ATTEMPT=job.attempts + 1, **self._fields(job))
        self.flight[LOGGED] = job.id
        self.spool.done([job.id], owner=self.owner)
        self.flight[STORED] = 0
        self.flight[LOGGED] = 0  # after STORED: until then, it tells the sender "logged"

    def _record_while_waiting(self) -> None:
        """:meth:`_record_stored` while a request is at the peer: an error is the
        worker's, so the file in flight is not charged with it (it goes back to be sent
        again; the stored file's mark is left to the sender, see :mod:`forwarder.spool.
        claims`, or after a spool failure to the next start, which sends it again)."""
        began = time.monotonic()
        try:
            self._record_stored()
        except Exception as exc:
            raise _Unrecorded(exc) from exc
        finally:  # the spool's time, not the peer's: kept out of the DIMSE timeout's count
            self._recording += time.monotonic() - began

    # --- associations ------------------------------------------------------------

    def _close(self) -> None:
        assoc, self.assoc = self.assoc, None
        self.core.handle(sendcore.Closed())
        if assoc is not None and assoc.is_established:
            try:
                assoc.release()
            except Exception:  # noqa: BLE001 - a release that fails leaves nothing to keep
                assoc.abort()

    def _open(self, cmd: sendcore.Open) -> sendcore.Event:
        """Associate; what came of it."""
        failed = sendcore.OpenFailed
        peer = self._read_peer()
        if peer is None:
            return failed(outcome.Action(outcome.HOLD, self._peer_error or "no peer settings"),
                          time.monotonic())
        if self.dest.negotiation_profile is not None and not self.dest.proposal:
            return failed(outcome.Action(outcome.HOLD, "negotiation_profile: not read with "
                                         "the configuration (check-config names why)"),
                          time.monotonic())
        try:
            assoc = Association.open(peer, list(cmd.contexts), self.roles or None)
        except AssociationFailed as exc:
            return failed(outcome.association_failure(exc.kind, str(exc), exc.result,
                                                      exc.source, exc.reason),
                          time.monotonic())
        except (OSError, ssl.SSLError, ValueError) as exc:
            return failed(outcome.Action(outcome.BACKOFF, "cannot set up the association: "
                                         f"{exc}"), time.monotonic())
        except Exception as exc:  # noqa: BLE001 - a bug or a missing module: not the files'
            LOGGER.error("%s: cannot set up the association: %s: %s", self.name,
                         type(exc).__name__, exc, exc_info=True)
            return failed(outcome.Action(outcome.BACKOFF, "cannot set up the association: "
                                         f"{type(exc).__name__}: {exc}"), time.monotonic())
        self.assoc = assoc
        event(LOGGER, "association", "%s: association open on worker %d (%d contexts, %d "
              "accepted)", self.name, self.index, len(cmd.contexts),
              len(assoc.accepted), level=logging.DEBUG, **self.fields)
        return sendcore.Opened(time.monotonic())

    # --- sending -----------------------------------------------------------------

    def _store(self, job: Job) -> sendcore.Event:
        """Send one job; what the peer answered, or why there is no answer."""
        if self.stopping or self.assoc is None or not self.assoc.still_up():
            self._record_stored()
            return sendcore.Interrupted(time.monotonic())  # nothing of this file was sent
        self.msg_id = self.msg_id % 65535 + 1
        lost = ""
        started = time.monotonic()
        self._recording = 0.0
        self.flight[IN_FLIGHT] = job.id  # if this process dies now, this job is to blame
        try:
            result = store_file(self.assoc, job.path, job.probe, self.dest.decompress,
                                self.modify, self.msg_id,
                                while_waiting=self._record_while_waiting,
                                deflate_level=self.deflate_level)
        except FileNotFoundError:
            return sendcore.Refused("the spool's copy of the file is missing", time.monotonic())
        except _Unrecorded as exc:  # the association is aborted; the worker stops
            LOGGER.error("%s: association to %s aborted while this file was at the peer: "
                         "the previous file's done mark cannot be recorded; this file will "
                         "be sent again", job.probe.sop_instance_uid, self.name)
            raise exc.error from None
        except Exception as exc:  # noqa: BLE001 - the fault boundary around one job
            if spool_wide(exc):
                raise
            what = f"{type(exc).__name__}: {exc}"
            if self.assoc.is_established:  # the file's fault: it fails, the association stays
                LOGGER.error("%s: cannot prepare or send it to %s: %s",
                             job.probe.sop_instance_uid, self.name, what, exc_info=True)
                return sendcore.Refused(f"cannot prepare or send this file: {what}",
                                        time.monotonic())
            lost = f" ({what})"
            result = StoreResult(None)
        finally:
            self.flight[IN_FLIGHT] = 0
            self._record_stored()  # when nothing was sent, or the send failed before it
        if result.refused:
            return sendcore.Refused(result.refused, time.monotonic())
        if result.status is None:
            elapsed = time.monotonic() - started - self._recording
            if result.comment:  # the transport's reason, in its words (no PHI in it)
                lost = f" ({result.comment}){lost}"
            cause = outcome.no_response_cause(elapsed, self.dest.timeouts.dimse,
                                              aborted=True) + lost
            return sendcore.NoResponse(cause, time.monotonic())
        return sendcore.Stored(result.status, redact.comment(result.comment, self.phi),
                               time.monotonic())

    def _retry(self, job: Job, reason: str, status: str | None, alone: bool = False) -> None:
        due = self.spool.retry(job.id, reason, self.policy, aborted=alone, owner=self.owner)
        if due is not None:
            event(LOGGER, "retry", "%s: %s; next attempt in %.1fs", job.probe.sop_instance_uid,
                  reason, due - time.time(), level=logging.WARNING, DICOM_STATUS=status,
                  ATTEMPT=job.attempts + 1, REASON=reason, **self._fields(job))

    def _fields(self, job: Job) -> dict[str, Any]:
        return {**probe_fields(job.probe), **self.fields}

    def _fail(self, job: Job, reason: str, status: str | None = None,
              attempted: bool = True) -> None:
        if not self.spool.fail(job.id, reason, attempted=attempted, owner=self.owner):
            return  # claimed again by a newer worker: not ours to record
        event(LOGGER, "failed", "%s failed at %s: %s (kept; 'dicom-forwarder retry' requeues "
              "it)", job.probe.sop_instance_uid, self.name, reason, level=logging.ERROR,
              DICOM_STATUS=status, ATTEMPT=job.attempts + 1, REASON=reason, **self._fields(job))
