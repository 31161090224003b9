"""One daemon per spool: an exclusive ``flock`` on ``SPOOL/daemon.lock``, which also says
who holds it (pid, start time, version, configuration) for ``dicom-forwarder status``.

The kernel drops the lock when the process ends, however it ends (SIGKILL included), so
a stale file never blocks a start: only a live daemon does. The lock is taken before the
spool index is opened, so a refused second daemon has touched nothing in the spool.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from forwarder import __version__
from forwarder.errors import EXIT_CONFIG, ForwarderError, SpoolError

NAME = "daemon.lock"


class SpoolLocked(ForwarderError):
    """Another daemon runs on this spool; a restart cannot change that (exit 78)."""

    exit_code = EXIT_CONFIG


class SpoolLock:
    def __init__(self, spool: str | os.PathLike[str]):
        self.path = Path(spool) / NAME
        self.fd: int | None = None

    def acquire(self, config_path: str, wait: float = 3.0, command: str = "run") -> SpoolLock:
        """Take the lock (waiting ``wait`` seconds for a daemon that is just stopping, or a
        `status` that holds it for a moment) and record who holds it: ``command``, the
        daemon's ``run`` or an operator's ``spool rebuild``."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = read(self.path.parent) or {}
                    os.close(fd)
                    what = "" if holder.get("command", "run") == "run" else \
                        f"{holder['command']}, "
                    raise SpoolLocked(
                        f"another dicom-forwarder ({what}pid {holder.get('pid', '?')}, "
                        f"configuration {holder.get('config', '?')}) is running on the spool "
                        f"{self.path.parent}; stop it first, or give this configuration its "
                        "own spool (one spool per daemon)") from exc
                time.sleep(0.1)
        state = {"pid": os.getpid(), "started_at": time.time(), "version": __version__,
                 "config": os.path.abspath(config_path), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(state) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def read(spool: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the lock file says, or None when there is none or it cannot be read."""
    try:
        return json.loads((Path(spool) / NAME).read_text())
    except (OSError, ValueError):
        return None


def holder(spool: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The running daemon's record when one holds the lock, else None. Never creates the
    file; holds a shared lock for an instant at most (the daemon waits for that).
    :class:`~forwarder.errors.SpoolError` when the lock cannot be opened: that says
    nothing of whether a daemon runs."""
    path = Path(spool) / NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None  # no daemon ever started on this spool, or the spool is not there
    except OSError as exc:
        hint = " (run this as root or as the service user)" \
            if exc.errno in (errno.EACCES, errno.EPERM) else ""
        raise SpoolError(f"cannot tell whether a daemon runs on the spool {spool}: cannot "
                         f"open {path}: {exc.strerror}{hint}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return read(spool) or {}
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
