"""Which watch folders the running daemon cannot watch or take from now, for ``status``.

The daemon writes ``SPOOL/watch-state.json`` when a folder becomes unavailable or
available again, or intake pauses on a full spool or resumes, and removes it when it
stops; ``status`` reads it (a missing file: no daemon, or every folder fine). Replaced
atomically, never fsynced: it is a view of the running daemon, not data. On a spool so
full that even this file cannot be written, ``status`` sees the free space itself.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

NAME = "watch-state.json"


def write(spool: str | os.PathLike[str], unavailable: dict[str, str],
          since: dict[str, float], paused: tuple[str, float] | None = None,
          watches: Sequence[str] = ()) -> None:
    """Record ``{watch name: reason}`` for the folders that are unavailable now; while
    intake is ``paused`` (why, since when), every other one of ``watches`` is paused."""
    root = Path(spool)
    data = {name: {"state": "unavailable", "reason": why, "since": since.get(name, time.time())}
            for name, why in sorted(unavailable.items())}
    if paused is not None:
        for name in watches:
            data.setdefault(name, {"state": "paused", "reason": paused[0], "since": paused[1]})
    tmp = root / f".{NAME}.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.chmod(0o640)
        os.replace(tmp, root / NAME)
    except OSError:
        tmp.unlink(missing_ok=True)


class Publisher:
    """The state the daemon last wrote for ``spool``: written again only when it changes."""

    def __init__(self, spool: str | os.PathLike[str]):
        self.spool = spool
        self.unavailable: dict[str, str] = {}
        self.since: dict[str, float] = {}  # when each unavailable folder became so
        self.paused: tuple[str, float] | None = None  # intake paused: why, since when
        self.watches: list[str] = []

    def update(self, unavailable: dict[str, str], paused_why: str | None,
               watches: list[str]) -> bool:
        """Write the state if it changed (see :func:`write`); whether it did. A pause
        keeps the reason it began with: its figures (free space, jobs) change by the
        second, and ``status`` says them as they are when it is run."""
        paused = None if paused_why is None else self.paused or (paused_why, time.time())
        if (unavailable, paused, watches) == (self.unavailable, self.paused, self.watches):
            return False
        for name in unavailable:
            self.since.setdefault(name, time.time())
        for name in set(self.since) - set(unavailable):
            del self.since[name]
        self.unavailable, self.paused, self.watches = unavailable, paused, watches
        write(self.spool, unavailable, self.since, paused, watches)
        return True


def read(spool: str | os.PathLike[str]) -> dict[str, dict]:
    try:
        data = json.loads((Path(spool) / NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def clear(spool: str | os.PathLike[str]) -> None:
    try:
        (Path(spool) / NAME).unlink(missing_ok=True)
    except OSError:
        pass


def full(spool: str | os.PathLike[str], reserve: int) -> str | None:
    """Why intake cannot take a file now, judged from the spool's free space alone (it
    keeps ``reserve`` bytes for the senders); None when there is room."""
    try:
        vfs = os.statvfs(spool)
    except OSError:
        return None
    free = vfs.f_bavail * vfs.f_frsize
    if free >= reserve:
        return None
    return (f"spool full: {free // 1024} KiB free on {spool}, {reserve // 1024} KiB kept in "
            "reserve for the senders: intake paused, files stay in the watch folders")
