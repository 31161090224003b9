"""Is another process still holding a file open for writing? Asked once a file has settled.

Size and times unchanged for ``min_age`` do not prove a writer is done: a modality that
pauses at an element boundary (waiting on its network, its disk, its next slice) leaves
a file that reads as a complete, shorter data set. Taking it then would send the prefix
and leave the writer writing into an inode nobody reads again. Linux answers the question
directly: a read lease (``fcntl(F_SETLEASE, F_RDLCK)``) is refused with EAGAIN while any
process has the file open for writing. The lease is given back at once (it is held for a
few microseconds); a writer that opens the file in that moment waits for it, and the
kernel tells the lease holder with SIGIO, whose default action ends the process. So a
lease is only taken by a process that ignores SIGIO (:func:`ignore_lease_breaks`, called
by the daemon at start); in any other the answer is None.

The answer is trusted only where the kernel's own lease code decides it: on local
filesystems. A network client (NFS, SMB) can refuse every lease it has no delegation or
oplock for, which would hold every file, and it cannot see writers on other machines
anyway. Elsewhere, without the right to a lease (a file of another account, without
CAP_LEASE), or off Linux, the answer is None and the settle rule alone decides;
:func:`ask` also says why, in words.

Any descriptor open for writing counts, this process's own included (the daemon never
holds one on a watched file).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import signal

# statfs(2) f_type of the local filesystems whose leases the kernel decides (linux/magic.h;
# zfs, jfs and ntfs3 define theirs in their own sources)
LOCAL_FILESYSTEMS = frozenset({
    0xEF53,  # ext2, ext3, ext4
    0x58465342,  # xfs
    0x9123683E,  # btrfs
    0x01021994,  # tmpfs
    0x858458F6,  # ramfs
    0xF2F52010,  # f2fs
    0x794C7630,  # overlay
    0x2FC12FC1,  # zfs
    0xCA451A4E,  # bcachefs
    0x3153464A,  # jfs
    0x52654973,  # reiserfs
    0x3434,  # nilfs2
    0x4D44,  # vfat, msdos
    0x2011BAB0,  # exfat
    0x7366746E,  # ntfs3
})

_LEASES = hasattr(fcntl, "F_SETLEASE") and hasattr(signal, "SIGIO")  # Linux
_F_SETLEASE: int = getattr(fcntl, "F_SETLEASE", 0)
_SIGIO: int = getattr(signal, "SIGIO", 0)


class _StatFs(ctypes.Structure):
    # only the first field is read, f_type: a long (glibc's __fsword_t), an unsigned int
    # on s390x; the rest of struct statfs64 (120 bytes on 64-bit Linux, 84 on 32-bit) is
    # room for the kernel to write into
    _fields_ = [("f_type", ctypes.c_uint if platform.machine() == "s390x" else ctypes.c_long),
                ("rest", ctypes.c_char * 248)]


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc() if _LEASES else None


def ignore_lease_breaks() -> None:
    """Ignore SIGIO, which a writer opening a file sends while this process holds its
    lease (main thread only; forked workers inherit it)."""
    if _LEASES:
        signal.signal(_SIGIO, signal.SIG_IGN)


def filesystem_type(fd: int) -> int | None:
    """The statfs(2) magic number of the filesystem holding ``fd``; None if unknown."""
    if _LIBC is None:
        return None
    buf = _StatFs()
    # fstatfs64: on 32-bit systems plain fstatfs fails with EOVERFLOW on large filesystems
    call = getattr(_LIBC, "fstatfs64", None) or _LIBC.fstatfs
    if call(fd, ctypes.byref(buf)) != 0:
        return None
    return int(buf.f_type) & 0xFFFFFFFF


def ask(fd: int) -> tuple[bool | None, str]:
    """Whether a process holds the file ``fd`` (opened read-only) open for writing: True
    or False, or None with the reason it cannot be told here, in words."""
    if _LIBC is None:
        return None, "this system has no file leases (Linux only)"
    if signal.getsignal(_SIGIO) != signal.SIG_IGN:
        return None, "this process does not ignore SIGIO, which a lease would bring"
    kind = filesystem_type(fd)
    if kind not in LOCAL_FILESYSTEMS:
        return None, (f"not a local filesystem (statfs type {kind:#x})" if kind is not None
                      else "the filesystem's type is unknown")
    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return True, ""
        if exc.errno == errno.EACCES:
            return None, (f"a file of another account (uid {os.fstat(fd).st_uid}) and no "
                          "CAP_LEASE (the shipped unit grants it)")
        return None, f"no lease: {os.strerror(exc.errno or 0)}"  # EINVAL: leases disabled
    fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)
    return False, ""
