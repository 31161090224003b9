"""A destination's sender: its association workers as processes; start, wake, stop, reap.

Each of a destination's ``associations`` runs in a worker process
(:mod:`forwarder.worker`), so parallel associations use every core instead of sharing one
interpreter lock with intake and with each other. The processes are forked from a
``multiprocessing`` fork server that has pynetdicom and pydicom loaded (its preload is set
by :func:`forwarder.runtime.setup`), so starting one takes milliseconds. Daemon and workers share the spool (SQLite in WAL mode serialises
their writes) and one pipe per worker, the bell: the daemon writes a byte when jobs may
have become due, and closes it to stop the worker, which then finishes the C-STORE in
flight, returns its other claimed jobs and releases its association. A daemon that dies
closes the bells too, so no worker outlives it by more than one C-STORE.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from forwarder import outcome, runtime, worker, workerproc
from forwarder.config import Destination
from forwarder.errors import ForwarderError
from forwarder.health import destination_fields
from forwarder.logs import event
from forwarder.spool import Spool, claims
from forwarder.worker import WorkerSpec, backoff_policy

__all__ = ["DestinationSender", "backoff_policy"]

LOGGER = logging.getLogger(__name__)


RESTART_FIRST = 1.0    # a worker that died is started again after this ...
RESTART_MAX = 60.0     # ... doubling up to this while it keeps dying soon after its start
STABLE_AFTER = 60.0    # a worker that ran this long starts over at RESTART_FIRST
STOP_GRACE = 2.0       # a worker that ends while the whole service stops is not a fault


class DestinationSender:
    """The worker processes of one destination; a context manager.

    A worker that dies is started again (after a growing delay, never a tight loop); the
    job it was sending counts one death (:mod:`forwarder.spool.claims`). Only a worker that
    cannot use the spool (exit status ``worker.EXIT_SPOOL``) is fatal: ``on_fatal``.
    """

    def __init__(self, dest: Destination, calling_ae: str, spool: Spool,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 log: tuple[str, str, bool] | None = None):
        self.dest = dest
        self.name = dest.name
        self.calling_ae = calling_ae
        self.spool = spool
        self.on_fatal = on_fatal
        self.log = log
        self.token = claims.new_token()
        self.restarts = 0
        self._procs: list[BaseProcess] = []
        self._bells: list[Connection] = []
        self._started: list[float] = []
        self._beats: list[Any] = []  # per worker: monotonic time of its last heartbeat
        self._flights: list[Any] = []  # per worker: its flight record (worker.IN_FLIGHT)
        self.stall_limit = worker.stall_limit(dest)
        self._bells_lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()
        self._reaper: threading.Thread | None = None

    def _spawn(self, i: int) -> tuple[BaseProcess, Connection]:
        spec = WorkerSpec(self.dest, self.calling_ae, str(self.spool.root), i, self.log,
                          self.token)
        context = runtime.worker_context()  # its preload is set by runtime.setup()
        reader, writer = context.Pipe(duplex=False)
        beat = context.RawValue("d", time.monotonic())
        flight = context.RawArray("q", worker.FLIGHT_SLOTS)
        if i < len(self._beats):
            self._beats[i], self._flights[i] = beat, flight
        else:
            self._beats.append(beat)
            self._flights.append(flight)
        proc = context.Process(target=workerproc.main, args=(spec, reader, beat, flight),
                                name=f"fwd-send-{self.name}-{i}", daemon=True)
        proc.start()  # the reader end is passed to the worker here, then closed here
        reader.close()
        os.set_blocking(writer.fileno(), False)
        return proc, writer

    def start(self) -> DestinationSender:
        for i in range(self.dest.associations):
            proc, writer = self._spawn(i)
            self._procs.append(proc)
            self._bells.append(writer)
            self._started.append(time.monotonic())
        self.spool.listen(self.wake)
        LOGGER.info("%s: %d worker process(es), pid %s", self.name, len(self._procs),
                    " ".join(map(str, self.pids)))
        self._reaper = threading.Thread(target=self._reap, name=f"fwd-reap-{self.name}",
                                        daemon=True)
        self._reaper.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Close the bells: every worker finishes its C-STORE in flight, returns its other
        claimed jobs and releases its association (A-RELEASE); wait up to ``timeout``."""
        self.spool.unlisten(self.wake)
        with self._bells_lock:
            self._stopping = True
            bells, self._bells = self._bells, []
            procs = list(self._procs)
        self._stopped.set()
        for bell in bells:
            bell.close()
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.exitcode is None:
                LOGGER.warning("sender %s still busy after %.0fs; it stops after its C-STORE "
                               "in flight", proc.name, timeout)
        if self._reaper is not None:
            self._reaper.join(max(0.1, deadline - time.monotonic()))

    def __enter__(self) -> DestinationSender:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wake(self) -> None:
        """Jobs may have become due: wake idle workers (a full pipe is a wake-up pending)."""
        with self._bells_lock:
            for bell in self._bells:
                try:
                    os.write(bell.fileno(), b"\0")
                except OSError:  # full: a wake-up is pending; gone: the reaper reports it
                    pass

    @property
    def pids(self) -> list[int]:
        """The worker processes' PIDs, in index order."""
        return [p.pid for p in self._procs if p.pid is not None]

    def still_busy(self) -> list[int]:
        """The PIDs of worker processes that have not exited (after :meth:`stop`: those
        still in a C-STORE, which record it and exit after it)."""
        with self._bells_lock:
            return [p.pid for p in self._procs if p.pid is not None and p.exitcode is None]

    @property
    def alive(self) -> bool:
        """Every worker process runs or is being started again."""
        return self._reaper is not None and self._reaper.is_alive() or self._stopping

    def wedged(self, now: float | None = None) -> list[str]:
        """Workers running but without a heartbeat for longer than ``stall_limit``: each
        beats at every turn of its loop and every second while it waits by choice."""
        now = time.monotonic() if now is None else now
        with self._bells_lock:
            return [f"{p.name} (no progress for {now - b.value:.0f}s)"
                    for p, b in zip(self._procs, self._beats, strict=False)
                    if p.exitcode is None and now - b.value > self.stall_limit]

    def _reap(self) -> None:
        """Start again a worker that ends on its own; report one the spool stopped."""
        due: dict[int, float] = {}  # worker index -> when to start it again (monotonic)
        delays: dict[int, float] = {}
        while True:
            with self._bells_lock:
                if self._stopping:
                    return
                running = {p.sentinel: i for i, p in enumerate(self._procs) if i not in due}
            now = time.monotonic()
            timeout = max(0.0, min(due.values()) - now) if due else 1.0
            for sentinel in wait(list(running), min(timeout, 1.0)):
                i = running[sentinel]  # type: ignore[index]
                proc = self._procs[i]
                proc.join()
                if self._stopped.wait(STOP_GRACE):  # the service stops: not a fault
                    return
                if proc.exitcode == worker.EXIT_SPOOL:
                    LOGGER.critical("sender %s exited with status %s: the spool cannot record "
                                    "outcomes", proc.name, proc.exitcode)
                    if self.on_fatal is not None:
                        self.on_fatal(ForwarderError(f"sender {proc.name} exited with status "
                                                     f"{proc.exitcode}"))
                    return
                ran = time.monotonic() - self._started[i]
                delay = RESTART_FIRST if ran >= STABLE_AFTER else \
                    min(RESTART_MAX, delays.get(i, RESTART_FIRST / 2) * 2)
                delays[i] = delay
                due[i] = time.monotonic() + delay
                self._died(proc, self._flights[i], delay)
            for i, at in list(due.items()):
                if time.monotonic() >= at:
                    del due[i]
                    self._restart(i)

    def _died(self, proc: BaseProcess, flight: Any, delay: float) -> None:
        code = proc.exitcode
        why = f"killed by signal {-code}" if code is not None and code < 0 else \
            f"exit status {code}"
        stored = flight[worker.STORED]
        back = claims.reclaim(self.spool, claims.owner_of(self.token, proc.pid), why,
                              in_flight=flight[worker.IN_FLIGHT], stored=stored)
        if back.recorded and flight[worker.LOGGED] != stored:  # see Worker._record_stored
            fields: dict[str, Any] = {**destination_fields(self.dest),
                                      **(back.recorded_fields or {})}
            status = flight[worker.STATUS]
            done = outcome.store_status(status)  # the worker's Done: the status allowed it
            said = outcome.status_text(status)
            event(LOGGER, "stored", "%s stored at %s (%s)%s; recorded by its sender: the "
                  "worker died before it logged it", back.recorded, self.name, said,
                  f": {done.reason}" if done.warning else "",
                  level=logging.WARNING if done.warning else logging.INFO,
                  DICOM_STATUS=said, **fields)
        if back.unrecorded:
            LOGGER.error("sender %s: recording the file it had stored failed (%s); unless "
                         "recorded, it is sent again", proc.name, back.unrecorded)
        event(LOGGER, "sender_restart", "sender %s died (%s); starting it again in %.0fs%s",
              proc.name, why, delay, f"; it was sending {back.blamed} (death {back.deaths} "
              f"of {claims.MAX_DEATHS})" if back.blamed else "", level=logging.ERROR,
              DESTINATION=self.name, REASON=why, SOP_INSTANCE_UID=back.blamed)
        if back.failed:
            reason = f"its sender process died {back.deaths} times while sending this file"
            event(LOGGER, "failed", "%s failed at %s: %s (kept; 'dicom-forwarder retry' "
                  "requeues it)", back.blamed, self.name, reason, level=logging.ERROR,
                  DESTINATION=self.name, REASON=reason, SOP_INSTANCE_UID=back.blamed)

    def _restart(self, i: int) -> None:
        with self._bells_lock:
            if self._stopping:
                return
            proc, writer = self._spawn(i)
            old = self._bells[i]
            self._procs[i], self._bells[i] = proc, writer
            self._started[i] = time.monotonic()
            self.restarts += 1
        old.close()
        LOGGER.info("sender %s started again, pid %s", proc.name, proc.pid)
        self.wake()
