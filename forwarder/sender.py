"""A destination's sender: its association workers as processes; start, wake, stop, reap.

Each of a destination's ``associations`` runs in a worker process
(:mod:`forwarder.worker`), so parallel associations use every core instead of sharing one
interpreter lock with intake and with each other. The processes are forked from a
``multiprocessing`` fork server that has pynetdicom and pydicom loaded, so starting one
takes milliseconds. Daemon and workers share the spool (SQLite in WAL mode serialises
their writes) and one pipe per worker, the bell: the daemon writes a byte when jobs may
have become due, and closes it to stop the worker, which then finishes the C-STORE in
flight, returns its other claimed jobs and releases its association. A daemon that dies
closes the bells too, so no worker outlives it by more than one C-STORE.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from forwarder import worker
from forwarder.config import Destination
from forwarder.errors import ForwarderError
from forwarder.spool import Spool
from forwarder.worker import WorkerSpec, backoff_policy

__all__ = ["DestinationSender", "backoff_policy"]

LOGGER = logging.getLogger(__name__)
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["forwarder.worker"])


class DestinationSender:
    """The worker processes of one destination; a context manager."""

    def __init__(self, dest: Destination, calling_ae: str, spool: Spool,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 log: tuple[str, str, bool] | None = None):
        self.dest = dest
        self.name = dest.name
        self.calling_ae = calling_ae
        self.spool = spool
        self.on_fatal = on_fatal
        self.log = log
        self._procs: list[BaseProcess] = []
        self._bells: list[Connection] = []
        self._bells_lock = threading.Lock()
        self._stopping = False
        self._reaper: threading.Thread | None = None

    def start(self) -> DestinationSender:
        for i in range(self.dest.associations):
            spec = WorkerSpec(self.dest, self.calling_ae, str(self.spool.root), i, self.log)
            reader, writer = _CONTEXT.Pipe(duplex=False)
            proc = _CONTEXT.Process(target=worker.main, args=(spec, reader),
                                    name=f"fwd-send-{self.name}-{i}", daemon=True)
            proc.start()  # the reader end is passed to the worker here, then closed here
            reader.close()
            os.set_blocking(writer.fileno(), False)
            self._procs.append(proc)
            self._bells.append(writer)
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
        self._stopping = True
        self.spool.unlisten(self.wake)
        with self._bells_lock:
            bells, self._bells = self._bells, []
        for bell in bells:
            bell.close()
        deadline = time.monotonic() + timeout
        for proc in self._procs:
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

    @property
    def alive(self) -> bool:
        """Every worker process runs."""
        return all(p.is_alive() for p in self._procs)

    def _reap(self) -> None:
        """Report a worker that ends on its own: the daemon must not go on without it."""
        running = {p.sentinel: p for p in self._procs}
        while running:
            for sentinel in wait(list(running)):
                proc = running.pop(sentinel)  # type: ignore[arg-type]
                proc.join()
                if proc.exitcode != 0 and not self._stopping:
                    LOGGER.critical("sender %s exited with status %s", proc.name,
                                    proc.exitcode)
                    if self.on_fatal is not None:
                        self.on_fatal(ForwarderError(f"sender {proc.name} exited with status "
                                                 f"{proc.exitcode}"))
