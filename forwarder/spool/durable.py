"""Files made durable: fsync that never retries, a batch flushed file by file, a file
placed by hard link or copy (hashed on the way), the filesystem a path lives on.

An fsync that fails raises :class:`SpoolError` at once (a failed fsync may already have
dropped the data, so retrying could only hide that); other write errors are left to the
caller as :class:`OSError`, so a full disk can be told apart.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from forwarder import linking
from forwarder.errors import SpoolError, SpoolUnusable

FILE_MODE = 0o640  # spool files and directories: explicit modes, whatever the umask
DIR_MODE = 0o750
REMOTE_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "afs", "ceph",
             "glusterfs", "fuse.glusterfs", "lustre"}
# kernel file systems where no directory or file of a spool can be made
PSEUDO_FS = {"proc", "sysfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs",
             "securityfs", "pstore", "bpf", "configfs", "fusectl", "mqueue", "efivarfs",
             "binfmt_misc", "nsfs", "hugetlbfs"}
FULL = (errno.ENOSPC, errno.EDQUOT)


def unusable_fs(kind: str) -> str:
    """Why a spool cannot live on a file system of type ``kind`` ('' if it can)."""
    if kind in REMOTE_FS:
        return f"on {kind}: SQLite's WAL needs a local disk; put the spool on local " \
            "storage (watch folders may be remote)"
    if kind in PSEUDO_FS:
        return f"on {kind}, a kernel file system where no spool can be made; put the " \
            "spool on a local disk (under systemd: /var/lib/dicom-forwarder)"
    return ""


@contextmanager
def creating(path: Path | str) -> Iterator[None]:
    """Around making the spool directory ``path``: a refusal other than a full disk (a
    kernel file system, a folder that is a file) is the configuration's to mend,
    :class:`SpoolUnusable`; a full disk stays an OSError (the daemon is restarted, and
    starts once there is room)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL:
            raise
        raise SpoolUnusable(f"cannot create the spool directory {path}: "
                            f"{exc.strerror}") from exc


def nearest_folder(path: Path) -> Path:
    """``path`` if it exists, else the nearest of its parents that does: where it would
    be made."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def digest(fd: int) -> str:
    """SHA-256 of open file ``fd`` from its start (the offset is left at the end)."""
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def make_dir(path: Path) -> None:
    """Create a spool directory (and its parents) with :data:`DIR_MODE` exactly; one that
    exists is left as its owner set it."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def create(path: Path) -> int:
    """A new file opened for writing, mode :data:`FILE_MODE` exactly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_durably(data: bytes, tmp: Path, final: Path) -> None:
    """``data`` at ``final``, fsynced before the rename (the directory is the caller's)."""
    fd = create(tmp)
    try:
        write_all(fd, data)
        fsync(fd, str(tmp))
    finally:
        os.close(fd)
    os.rename(tmp, final)


def sync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fsync(fd, str(path))
    finally:
        os.close(fd)


def fsync(fd: int, what: str, data_only: bool = False) -> None:
    """fsync(2), or fdatasync(2) with ``data_only`` where the system has it (the file's
    data and what reading it back needs, its size included)."""
    try:
        if data_only and hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:
            os.fsync(fd)
    except OSError as exc:  # fsyncgate: a failed fsync may have dropped the data already
        raise SpoolError(f"fsync of {what} failed: {exc.strerror}; the spool cannot keep its "
                         "promise, stopping") from exc


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd, str(path))
    finally:
        os.close(fd)


def flush(files: list[tuple[int, str]]) -> None:
    """Make the data of the open files ``files`` (descriptor, name for errors) durable: the
    group commit of a batch. Their writeback was started when each was placed
    (:func:`place`); each is fdatasynced on the descriptor that wrote or linked it, so an
    error of that writeback is reported here even if another process's fsync of the same
    file saw it first. Only these files are flushed: the rest of the filesystem's dirty
    data (a modality still writing its next series beside the spool) is not waited for,
    as it would be by syncfs(2). Their directory and descriptors are the caller's."""
    for fd, what in files:
        fsync(fd, what, data_only=True)


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Have the kernel start writing ``fd``'s dirty pages now (sync_file_range), so that
    the disk works while the next files are hashed and a later fdatasync finds them on
    their way; a hint (fdatasync reports errors), nothing where the system has none."""
    call = _writeback()
    if call is not None:
        call(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


@functools.cache
def _writeback() -> Callable[[int, int, int, int], int] | None:
    """sync_file_range(2), or None where the C library has none."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", call)


def filesystem_type(path: Path) -> str:
    """The type of the file system ``path`` (or, not made yet, its nearest folder) is
    on: the mount whose device is the folder's, from /proc/self/mountinfo, whatever is
    mounted over a parent or how the mount point is spelt; else (a btrfs subvolume's own
    device) the longest mount point holding it ('' if unknown)."""
    there = nearest_folder(Path(os.path.realpath(path)))
    try:
        dev = os.stat(there).st_dev
        with open("/proc/self/mountinfo") as fp:
            mounts = [line.split(" - ", 1) for line in fp if " - " in line]
    except OSError:
        return ""
    kind, best, longest = "", "", ""
    for left, right in mounts:
        parts, fs = left.split(), right.split()
        if len(parts) < 5 or not fs:
            continue
        if parts[2] == f"{os.major(dev)}:{os.minor(dev)}":
            kind = fs[0]  # the last of mounts of one device: any is of the same type
        mnt = parts[4].replace("\\040", " ")
        # the last of mounts on one path is the one seen (an automount's file system is
        # listed after its autofs trigger)
        if (str(there) == mnt or str(there).startswith(mnt.rstrip("/") + "/")) and \
                len(mnt) >= len(best):
            best, longest = mnt, fs[0]
    return kind or longest


def place(fd: int, source: str, tmp: Path, final: Path, link_ok: bool,
          defer_sync: bool, path: str | None = None) -> tuple[str, int, int | None]:
    """Put the bytes of open file ``fd`` at ``final`` by way of ``tmp``: hard-linked
    through ``path`` when ``link_ok`` and the filesystem allows it (see
    :mod:`forwarder.linking`), else copied. Returns (sha256, size, descriptor). With
    ``defer_sync`` the caller makes the data durable, :func:`flush` for a whole batch, on
    the returned descriptor of the object, which it then closes; without, the data is
    durable already and the descriptor is None. Nothing is left at ``tmp`` after an
    error."""
    digest = hashlib.sha256()
    size = 0
    before = os.fstat(fd)
    linked = link_ok and linking.link(fd, path, tmp)
    keep: int | None = None
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        if linked:  # the writer may never have fsynced its data: do it for it
            if not defer_sync:
                fsync(fd, source)
            else:
                start_writeback(fd)
            while chunk := os.read(fd, 1 << 20):
                digest.update(chunk)
                size += len(chunk)
            linking.unchanged(fd, before, source)  # a writer at work would change the object
            if defer_sync:
                keep = os.dup(fd)  # the same open file: its writeback errors are ours too
        else:
            out = create(tmp)
            try:
                size = copy_sparse(fd, out, digest)
                if not defer_sync:
                    fsync(out, str(tmp))
                else:
                    start_writeback(out)
                    keep, out = out, -1
            finally:
                if out >= 0:
                    os.close(out)
        os.rename(tmp, final)
    except BaseException:
        if keep is not None:
            os.close(keep)
        tmp.unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size, keep


_ZEROS = bytes(1 << 20)


def _data_extents(fd: int, end: int) -> list[tuple[int, int]]:
    """The (start, stop) ranges of ``fd`` that hold data; holes read as zeros. The whole
    file where the filesystem cannot tell (no SEEK_DATA)."""
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole up to the end
                    break
                raise
            stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
            extents.append((start, stop))
            pos = stop
    except (OSError, AttributeError):
        return [(0, end)]
    return extents


def copy_sparse(fd: int, out: int, digest: hashlib._Hash) -> int:
    """Copy ``fd`` to the empty file ``out`` leaving its holes as holes (a private element
    of zeros stays a few blocks, not gigabytes); hash every byte, holes as zeros. Returns
    the size."""
    end = os.fstat(fd).st_size
    pos = 0
    for start, stop in _data_extents(fd, end):
        _hash_zeros(digest, start - pos)
        os.lseek(fd, start, os.SEEK_SET)
        os.lseek(out, start, os.SEEK_SET)
        pos = start
        while pos < stop:
            chunk = os.read(fd, min(1 << 20, stop - pos))
            if not chunk:  # shrank while being read: what was read is what is kept
                break
            digest.update(chunk)
            write_all(out, chunk)
            pos += len(chunk)
        if pos < stop:
            end = pos
            break
    _hash_zeros(digest, end - pos)
    os.ftruncate(out, end)  # a hole at the end too
    return end


def _hash_zeros(digest: hashlib._Hash, n: int) -> None:
    while n > 0:
        step = min(n, len(_ZEROS))
        digest.update(_ZEROS[:step] if step < len(_ZEROS) else _ZEROS)
        n -= step


def copy(fd: int, dest: Path) -> None:
    """Copy open file ``fd`` from its start to a new file ``dest``, fsynced."""
    os.lseek(fd, 0, os.SEEK_SET)
    out = create(dest)
    try:
        while chunk := os.read(fd, 1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
        fsync(out, str(dest))
    finally:
        os.close(out)
