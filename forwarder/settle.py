"""Pure: is a candidate file complete? Name filters, and size+mtime stable for ``min_age``.

A writer may pause, append, rewrite or rename; a file is taken only when nothing about it
(size, mtime, ctime, inode) has changed for ``min_age``. Events from the kernel only
make a file known sooner, they never shorten that wait. On a local filesystem the
kernel stamps the inode's times with its own clock, so the wait may count from them
instead of from our first look: from the ctime (every write, rename, chmod or utime
moves it), so a backlog found at start that has been untouched ``min_age`` needs no
second wait; and for a file that arrived by a rename (a careful writer's way: written
elsewhere or under another name, then renamed in when done) from its mtime, since a
rename moves the ctime but not the content. The mtime is trusted only for such a file:
a writer that stamps an old mtime on a part it means to resume (robocopy) writes in
place, and any write after the rename takes the trust away. Intake's read lease still
refuses a file another process holds open, and where no lease can be asked intake
counts from the ctime anyway (:mod:`forwarder.unfinished`). On network shares
(``polling``) the server's clock is not ours and only our own observations count.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Signature:
    """What must stay the same while a file settles."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Signature:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def ignored(name: str, ignore: tuple[str, ...]) -> bool:
    """Does one of the ``ignore`` patterns match ``name`` (a path or one part of it)?"""
    return any(fnmatch.fnmatchcase(name, pat) for pat in ignore)


def wanted(relpath: str, patterns: tuple[str, ...], ignore: tuple[str, ...]) -> bool:
    """Does the name filter take ``relpath`` (relative to the watch folder, '/'-separated)?

    ``patterns`` are matched with fnmatch against the relative path and the base name;
    ``ignore`` against the relative path and every component of it, so ``.*`` also skips
    the contents of hidden folders (a copy in progress under ``.sync/``).
    """
    parts = relpath.split("/")
    if ignored(relpath, ignore) or any(ignored(p, ignore) for p in parts):
        return False
    return any(fnmatch.fnmatchcase(relpath, pat) or fnmatch.fnmatchcase(parts[-1], pat)
               for pat in patterns)


@dataclass
class _Entry:
    sig: Signature
    since: float  # monotonic time from which the file is known to be unchanged


class Settler:
    """Tracks candidates by key (their path); all times are passed in.

    ``observe`` records what a stat saw and returns the monotonic time at which the file
    will be complete if it does not change again; ``ready`` answers for a fresh stat.
    """

    def __init__(self, min_age: float, trust_times: bool = True):
        self.min_age = min_age
        self.trust_times = trust_times
        self._seen: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: str) -> bool:
        return key in self._seen

    def observe(self, key: str, sig: Signature, now: float, wall: float | None = None,
                moved: bool = False) -> float:
        """Note ``sig`` for ``key`` at monotonic ``now`` (``wall``: the same instant on the
        clock that stamps the file's times); a changed signature restarts the wait, from
        the file's ctime where that clock is ours, or from its mtime for a file that
        ``moved`` in by a rename (a time in the future counts from now)."""
        since = now
        if self.trust_times and wall is not None:
            stamp = sig.mtime_ns if moved else sig.ctime_ns
            untouched = wall - stamp / 1e9
            if untouched > 0:
                since = now - min(untouched, self.min_age)
        entry = self._seen.get(key)
        if entry is None or entry.sig != sig:
            entry = _Entry(sig, since)
            self._seen[key] = entry
        elif since < entry.since:  # seen by a scan first, its rename's event since
            entry.since = since
        return entry.since + self.min_age

    def ready(self, key: str, sig: Signature, now: float, wall: float | None = None,
              moved: bool = False) -> bool:
        """True when ``sig`` (a fresh stat) is what was seen and has held for ``min_age``."""
        due = self.observe(key, sig, now, wall, moved)
        return now >= due

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def keys(self) -> list[str]:
        return list(self._seen)
