"""Start the worker fork server and the resource tracker as forks of the daemon.

``multiprocessing`` starts its fork server and its resource tracker as fresh interpreters
(exec): each imports its modules again, so the fork server's copy of the worker's modules
and the daemon's own copy are two sets of private pages, and the resource tracker is one
more interpreter besides. The daemon has imported them anyway (the sender knows the
worker; pydicom, numpy and pynetdicom are loaded by whichever process first meets a file
that is not plain or must be converted). Forked from the daemon
while it still has one thread, the two processes share those pages with it
copy-on-write, and the workers, forked from the fork server, share them too. The
objects that exist then are frozen (``gc.freeze``): the cyclic collector leaves them
alone in every process, so it never copies their pages.

:func:`start` does what ``ForkServer.ensure_running`` and ``ResourceTracker.ensure_running``
do, with ``os.fork`` where they exec, and leaves the rest to ``multiprocessing``: starting
worker processes, and starting either process again by exec if it has died. Where the
``multiprocessing`` of the running Python is not the one this was written against, it
does nothing, and ``multiprocessing`` starts both processes the usual way.
"""

from __future__ import annotations

import contextlib
import encodings.idna  # noqa: F401 - for the workers, see below
import gc
import inspect
import multiprocessing.popen_forkserver  # noqa: F401 - for the workers, see below
import multiprocessing.sharedctypes  # noqa: F401 - for the workers, see below
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from multiprocessing import connection, forkserver, resource_tracker, util
from pathlib import Path
from typing import Any

# Each worker would import these at its start (its Process object, its heartbeat's shared
# double, the codec socket uses for a host name): imported here, before the fork, their
# pages are shared too (1 MiB less private memory per worker).

_SERVER_ARGS = ["listener_fd", "alive_r", "preload", "main_path", "sys_path"]


def _state() -> tuple[Any, Any]:
    """The fork server's and the resource tracker's objects (private to multiprocessing)."""
    return (getattr(forkserver, "_forkserver", None),
            getattr(resource_tracker, "_resource_tracker", None))


def supported() -> bool:
    """This Python's ``multiprocessing`` keeps its state where :func:`start` sets it."""
    server, tracker = _state()
    return (list(inspect.signature(forkserver.main).parameters) == _SERVER_ARGS
            and list(inspect.signature(resource_tracker.main).parameters) == ["fd"]
            and all(hasattr(server, a) for a in ("_forkserver_address", "_forkserver_alive_fd",
                                                 "_forkserver_pid", "_preload_modules",
                                                 "_lock"))
            and all(hasattr(tracker, a) for a in ("_fd", "_pid", "_lock")))


def start() -> bool:
    """Fork the resource tracker and the fork server from this process, which must have a
    single thread. False where unsupported, already running, or where a fork failed
    (then ``multiprocessing`` starts what is missing when the first worker starts)."""
    server, tracker = _state()
    if (not supported() or threading.active_count() != 1
            or server._forkserver_pid is not None or tracker._fd is not None):
        return False
    # what exists now is never traversed by a collection again, in any of the processes:
    # a full collection would write to every tracked object's header, copying each page
    # that holds one (at 2,000 files, 8 MiB more in the daemon alone)
    gc.freeze()
    for stream in (sys.stdout, sys.stderr):  # or each fork would write it out again
        if stream is not None:
            stream.flush()
    with tracker._lock:
        r, w = os.pipe()
        try:
            tracker._pid = _fork(lambda: resource_tracker.main(r), "fwd-tracker",
                                 keep=(0, 1, 2, r))
        except OSError:  # no process to spare now (EAGAIN, ENOMEM)
            os.close(w)
            return False
        finally:
            os.close(r)
        tracker._fd = w
    with server._lock, socket.socket(socket.AF_UNIX) as listener:
        address = connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]
        listener.bind(address)
        if not util.is_abstract_socket_namespace(address):
            os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()  # end of file: every user of the server has gone
        try:
            fd = listener.fileno()
            preload = list(server._preload_modules)
            pid = _fork(lambda: forkserver.main(fd, alive_r, preload), "fwd-forkserver",
                        keep=(0, 1, 2, fd, alive_r))
        except OSError:
            os.close(alive_w)
            return False
        finally:
            os.close(alive_r)
        server._forkserver_address = address
        server._forkserver_alive_fd = alive_w
        server._forkserver_pid = pid
    return True


def _fork(body: Callable[[], object], name: str, keep: tuple[int, ...]) -> int:
    """Run ``body`` in a child process called ``name`` (``ps -o comm``, ``top``) with
    only the file descriptors ``keep`` open (as an exec'd one would have); it ends with
    ``body``, never returning into the daemon's code."""
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # both ignore it (the server: see
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # forwarder.forkserve)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        _close_all_but(keep)
        with contextlib.suppress(OSError):
            Path("/proc/self/comm").write_text(name)
        body()
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 0
    except BaseException:  # noqa: BLE001 - reported on stderr like an exec'd process would
        import traceback

        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(status)


def _close_all_but(keep: tuple[int, ...]) -> None:
    low = 0
    for fd in sorted(set(keep)):
        if fd > low:  # closerange(n, n) would close everything from n on
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
