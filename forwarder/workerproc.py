"""A worker process: its signals, its name in ``ps``, logging and the spool, around
:class:`forwarder.worker.Worker`.

The bell's write end is held by the daemon alone: end of file on it means stop, whether
the daemon asked (:meth:`forwarder.sender.DestinationSender.stop`) or died.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from forwarder import logs, runtime
from forwarder.errors import ForwarderError
from forwarder.spool import Spool
from forwarder.worker import EXIT_SPOOL, Worker, WorkerSpec

LOGGER = logging.getLogger("forwarder.worker")


def main(spec: WorkerSpec, bell_end: Connection, beat: Any = None,
         flight: Any = None) -> None:
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
    runtime.setup()
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
    spool.remove_aside()
    worker = Worker(spec, spool, bell, wakeup_r, beat=beat, flight=flight)
    signal.signal(signal.SIGTERM, lambda *_: worker.halt())
    if term:
        worker.halt()
    try:
        sys.exit(worker.run())
    finally:
        spool.close()

