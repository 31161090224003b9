"""The process-wide settings of pynetdicom, multiprocessing and logging, made in one place.

Importing a module of this package changes nothing outside it. Each entry point that
talks DICOM calls :func:`setup` first: the daemon (``run``), ``send``, ``receive``,
``echo`` and the worker process (:func:`forwarder.workerproc.main`). It:

- keeps passcodes out of every log record (:mod:`forwarder.nosecrets`);
- names the TRACE log level;
- shows each of pydicom's warnings once: pydicom logs every warning it raises (a record
  of the ``pydicom`` logger, which the log handlers show) and warns too, so the Python
  warning, which would print a second time with a source line, is ignored;
- has the ``forkserver`` that starts worker processes preload the worker, so a worker
  starts in milliseconds (the daemon forks that server from itself,
  :mod:`forwarder.prefork`, where the preload finds it imported);
- hands the interpreter's lock between threads every :data:`SWITCH_INTERVAL` instead of
  every 5 ms. The daemon's threads (intake, the watchers' event handlers, a worker's
  remover) each hold it briefly between system calls; with 5 ms, a thread back from
  a system call could wait that long behind another in Python code. A burst of 500
  renamed-in CT files had its first file stored 38 ms after the drop, 26 ms with
  0.5 ms, and the whole burst went 4-7% faster (small files 5%; medians of 6-8
  interleaved runs, tuned storescp, one association).

It may be called again: each step is done once.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import warnings
from multiprocessing.context import ForkServerContext

TRACE = 5
SWITCH_INTERVAL = 0.0005  # seconds: sys.setswitchinterval (Python's default is 0.005)
WORKER_PRELOAD = ["forwarder.forkserve", "forwarder.workerproc"]
_done = False


def setup() -> None:
    """Make the process-wide settings (see the module text)."""
    global _done
    if _done:
        return
    from forwarder import nosecrets

    logging.addLevelName(TRACE, "TRACE")
    nosecrets.install()
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    worker_context().set_forkserver_preload(WORKER_PRELOAD)
    sys.setswitchinterval(SWITCH_INTERVAL)
    _done = True


def worker_context() -> ForkServerContext:
    """The multiprocessing context worker processes are started from (a fork server:
    the daemon runs threads, and forking a threaded process is unsafe)."""
    return multiprocessing.get_context("forkserver")  # type: ignore[return-value]
