"""`send`'s inputs: ``@file`` command files, files and scanned directories (``+sd``,
``+r``, ``+sp``), each probed as storescu reads it (``+f``, ``+fo``, ``-f``)."""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import shlex
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from forwarder.errors import NotDicomError, UsageError

if TYPE_CHECKING:
    from forwarder.dicomfile import Probe

LOGGER = logging.getLogger("forwarder.send")


def expand_command_files(argv: Sequence[str]) -> list[str]:
    """Replace each ``@file`` with the whitespace-separated words it holds (one level),
    as DCMTK reads a command file: quotes group words, a backslash is an ordinary
    character (``C:\\dicom``, ``a\\b.dcm``)."""
    out: list[str] = []
    for arg in argv:
        if arg.startswith("@") and len(arg) > 1:
            try:  # names in it are bytes, as on the command line (any encoding)
                text = os.fsdecode(Path(arg[1:]).read_bytes())
            except OSError as exc:
                raise UsageError(f"cannot read command file {arg[1:]}: {exc.strerror}") from exc
            words = shlex.shlex(text, posix=True)
            words.whitespace_split, words.escape, words.commenters = True, "", ""
            try:
                out.extend(words)
            except ValueError as exc:  # shlex's "No closing quotation"
                raise UsageError(f"command file {arg[1:]}: a quotation mark is not closed "
                                 "(quote a name that holds one with the other mark)") from exc
        else:
            out.append(arg)
    return out


@dataclass
class Item:
    path: Path
    probe: Probe
    size: int


def collect_inputs(args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """Files to send, in command-line order, and an error line for each unusable input."""
    files: list[Path] = []
    errors: list[str] = []
    for name in args.files:
        path = Path(name)
        try:
            if path.is_dir():
                if not args.scan_directories:  # as storescu: said, and the others go
                    LOGGER.warning("%s: is a directory, passed over (use +sd to scan "
                                   "directories)", name)
                    continue
                found: list[Path] = []
                st = path.stat()
                _scan(path, args, found, errors, {(st.st_dev, st.st_ino)})
                files.extend(sorted(found))
            elif not path.exists():
                errors.append(f"{name}: no such file")
            else:
                files.append(path)
        except OSError as exc:
            errors.append(f"{name}: cannot read: {exc.strerror}")
    return files, errors


def _scan(folder: Path, args: argparse.Namespace, files: list[Path], errors: list[str],
          seen: set[tuple[int, int]]) -> None:
    """The files in ``folder`` matching ``+sp`` (and in its subfolders with ``+r``), as
    storescu scans: symbolic links followed; a folder reached again through a link is
    not scanned twice (a link to an ancestor would never end); a subfolder that cannot
    be read and a link that leads nowhere are input errors, never silently passed over."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        errors.append(f"{folder}: cannot read: {exc.strerror}")
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            folder_here = entry.is_dir()
        except OSError:  # a link that cannot be followed: judged below, as a file
            folder_here = False
        try:
            if folder_here:
                st = entry.stat()
                if args.recurse and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    _scan(path, args, files, errors, seen)
                continue
            if args.scan_pattern and not fnmatch.fnmatch(entry.name, args.scan_pattern):
                continue
            if entry.is_file():
                files.append(path)
            elif entry.is_symlink():
                os.stat(path)  # neither file nor folder: it leads nowhere; say why
        except OSError as exc:
            errors.append(f"{path}: cannot access: {exc.strerror}")


# the input being read or sent, named in front of what pydicom logs meanwhile (an
# invalid UID, a value it cannot decode), which would otherwise not say which file
current: list[os.PathLike[str] | str] = []

PARALLEL_FROM = 64  # fewer files are probed faster than a second process starts


def probe_inputs(args: argparse.Namespace, paths: list[Path],
                 errors: list[str]) -> list[Item]:
    """The DICOM files among ``paths``; an error line appended for each other one. All are
    probed before anything is sent (a bad input halts the run before the association);
    many files are probed by two processes where there are two cores to run them."""
    read = args.read
    items: list[Item] = []
    for path, found in zip(paths, _probe_all(paths, read), strict=True):
        if isinstance(found, str):
            errors.append(f"{path}: {found}")
        else:
            items.append(Item(path, *found))
    return items


def _probe_all(paths: list[Path], read: str) -> list[tuple[Probe, int] | str]:
    if len(paths) < PARALLEL_FROM or _cores() < 2 or \
            threading.active_count() > 1:  # never fork a process with other threads
        return _probe_many(paths, read)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import forwarder.dicomfile  # noqa: F401 - loaded once, before the fork, for both
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        half = pool.submit(_probe_many, paths[1::2], read)
        mine = _probe_many(paths[0::2], read)
        try:
            theirs = half.result()
        except Exception:  # noqa: BLE001 - no second process after all: probe them here
            theirs = _probe_many(paths[1::2], read)
    out: list[tuple[Probe, int] | str] = []
    for i in range(len(paths)):
        out.append(mine[i // 2] if i % 2 == 0 else theirs[i // 2])
    return out


def _cores() -> int:
    """The cores this process may run on (its affinity, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _probe_many(paths: list[Path], read: str) -> list[tuple[Probe, int] | str]:
    """Each file's probe and size, or why it cannot be sent."""
    from forwarder.dicomfile import probe

    out: list[tuple[Probe, int] | str] = []
    for path in paths:
        current[:] = [path]
        try:
            out.append((probe(path, require_meta=read == "file-only",
                              dataset_only=read == "dataset"), path.stat().st_size))
        except NotDicomError as exc:
            out.append(str(exc))
        except OSError as exc:
            out.append(f"cannot read: {exc.strerror}")
    current.clear()
    return out
