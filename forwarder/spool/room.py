"""The spool's free-space reserve: the senders need room to record outcomes (and so free
space) even when intake has filled the disk.

What a batch costs is what it really writes: a copy allocates the source's blocks (holes
stay holes), a hard link nothing. The spool checks before placing a batch and again once
it is placed, undoing it when the real writes went below the reserve.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from forwarder.errors import SpoolFull


def check(root: Path, reserve: int, batch: Sequence[tuple[int, bool]]) -> None:
    """Raise :class:`SpoolFull` when taking ``batch`` ((open fd, may be linked) pairs)
    would leave less than ``reserve`` bytes free on the spool's filesystem."""
    try:
        spool_dev = os.stat(root).st_dev
    except OSError:
        spool_dev = -1
    need = 0
    for fd, link_ok in batch:
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if not (link_ok and st.st_dev == spool_dev):
            need += min(st.st_size, st.st_blocks * 512)
    try:
        vfs = os.statvfs(root)
    except OSError:
        return
    free = vfs.f_bavail * vfs.f_frsize
    if free - need < reserve:
        raise SpoolFull(f"spool full: {free // 1024} KiB free on {root}, {need // 1024} KiB "
                        f"to take, {reserve // 1024} KiB kept in reserve for the senders")


def what_frees_space(jobs: Mapping[str, int]) -> str:
    """For intake's pause on a full spool, from the jobs by state: whether sending will
    make room by itself, or what the operator must do."""
    queued = jobs.get("pending", 0) + jobs.get("sending", 0)
    if queued:
        return f"sending the {queued} queued jobs frees space as they are delivered"
    failed = jobs.get("failed", 0)
    return ("nothing is queued to send, so sending frees no space: free some on the "
            "spool's file system" + (f", or retry or purge its {failed} failed jobs"
                                     if failed else ""))
