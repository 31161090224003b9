"""A source hard-linked into the spool by its path, only while that path still names the
very inode that was probed, and trusted only if it did not change while it was read.

Linking ``/proc/self/fd/N`` (``linkat`` with ``AT_SYMLINK_FOLLOW``) fails with EXDEV on
many systems (procfs is a filesystem of its own there), so every file was copied. The
path is linked instead: after ``link`` the new name must be the inode intake opened
(``fstat`` of its descriptor), otherwise the name was replaced in between and the new
link is undone. A writer that still has the file open can change a linked object after
its checksum was taken: the size and mtime are read again after hashing and a change
refuses the object (:class:`SourceChanged`): the file settles again in its folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from forwarder.errors import SourceChanged


def link(fd: int, path: str | None, tmp: Path) -> bool:
    """Hard-link the file open as ``fd`` at ``tmp`` through ``path``; False (nothing at
    ``tmp``) when the filesystem refuses or ``path`` no longer names that inode."""
    if path is None:
        return False
    try:
        st = os.fstat(fd)
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
        os.link(path, tmp, follow_symlinks=False)
    except OSError:
        return False
    try:
        made = os.lstat(tmp)
    except OSError:
        return False
    if (made.st_dev, made.st_ino) != (st.st_dev, st.st_ino):  # replaced in between
        tmp.unlink(missing_ok=True)
        return False
    return True


def unchanged(fd: int, before: os.stat_result, what: str) -> None:
    """Raise :class:`SourceChanged` when the file was written to since ``before``."""
    now = os.fstat(fd)
    if (now.st_size, now.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise SourceChanged(f"{what} changed while it was being taken; it settles again")
