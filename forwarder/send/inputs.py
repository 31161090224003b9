"""`send`'s inputs: ``@file`` command files, files and scanned directories (``+sd``,
``+r``, ``+sp``), each probed as storescu reads it (``+f``, ``+fo``, ``-f``)."""

from __future__ import annotations

import argparse
import fnmatch
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from forwarder.errors import NotDicomError, UsageError

if TYPE_CHECKING:
    from forwarder.dicomfile import Probe


def expand_command_files(argv: Sequence[str]) -> list[str]:
    """Replace each ``@file`` with the whitespace-separated words it holds (one level)."""
    out: list[str] = []
    for arg in argv:
        if arg.startswith("@") and len(arg) > 1:
            try:
                text = Path(arg[1:]).read_text()
            except OSError as exc:
                raise UsageError(f"cannot read command file {arg[1:]}: {exc.strerror}") from exc
            out.extend(shlex.split(text, comments=False))
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
                if not args.scan_directories:
                    errors.append(f"{name}: is a directory (use +sd to scan directories)")
                    continue
                walker = sorted(path.rglob("*")) if args.recurse else sorted(path.iterdir())
                files.extend(f for f in walker if f.is_file() and (
                    not args.scan_pattern or fnmatch.fnmatch(f.name, args.scan_pattern)))
            elif not path.exists():
                errors.append(f"{name}: no such file")
            else:
                files.append(path)
        except OSError as exc:
            errors.append(f"{name}: cannot read: {exc.strerror}")
    return files, errors


def probe_inputs(args: argparse.Namespace, paths: list[Path],
                 errors: list[str]) -> list[Item]:
    """The DICOM files among ``paths``; an error line appended for each other one."""
    from forwarder.dicomfile import probe

    items: list[Item] = []
    for path in paths:
        try:
            pr = probe(path, require_meta=args.read == "file-only",
                       dataset_only=args.read == "dataset")
            items.append(Item(path, pr, path.stat().st_size))
        except NotDicomError as exc:
            errors.append(f"{path}: {exc}")
        except OSError as exc:
            errors.append(f"{path}: cannot read: {exc.strerror}")
    return items
