"""The process-wide settings of pynetdicom, multiprocessing and logging, made in one place.

Importing a module of this package changes nothing outside it. Each entry point that
talks DICOM calls :func:`setup` first: the daemon (``run``), ``send``, ``receive``,
``echo`` and the worker process (:func:`forwarder.worker.main`). It:

- sends C-STORE data sets from disk in chunks, without decoding them
  (``pynetdicom._config.STORE_SEND_CHUNKED_DATASET``): what is sent is the file's bytes;
- checks that pynetdicom's association reactor is the one the fix in
  :mod:`forwarder.pdnpatch` was written for (the fix itself is installed per
  association by :func:`forwarder.association.open_association`), and drops
  pynetdicom's own reports of a failed connection (the caller reports it once);
- lets a user identity carry an empty passcode (:mod:`forwarder.emptypasscode`) and keeps
  passcodes out of every log record (:mod:`forwarder.nosecrets`);
- names the TRACE log level;
- has the ``forkserver`` that starts worker processes preload pynetdicom, pydicom and
  the worker, so a worker starts in milliseconds.

It may be called again: each step is done once.
"""

from __future__ import annotations

import logging
import multiprocessing
from multiprocessing.context import ForkServerContext

TRACE = 5
WORKER_PRELOAD = ["forwarder.forkserve", "forwarder.worker"]
_done = False


def setup() -> None:
    """Make the process-wide settings (see the module text); raises
    :class:`forwarder.pdnpatch.ReactorChanged` when pynetdicom is not the one we fixed."""
    global _done
    if _done:
        return
    from pynetdicom import _config

    from forwarder import emptypasscode, nosecrets, pdnpatch

    pdnpatch.check()
    logging.addLevelName(TRACE, "TRACE")
    _config.STORE_SEND_CHUNKED_DATASET = True
    pdnpatch.install_log_filter()
    emptypasscode.apply()
    nosecrets.install()
    worker_context().set_forkserver_preload(WORKER_PRELOAD)
    _done = True


def worker_context() -> ForkServerContext:
    """The multiprocessing context worker processes are started from (a fork server:
    the daemon runs threads, and forking a threaded process is unsafe)."""
    return multiprocessing.get_context("forkserver")  # type: ignore[return-value]
