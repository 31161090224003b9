"""Helpers for spool tests: probes and inputs made from real files."""

from __future__ import annotations

import os
from pathlib import Path

from forwarder.dicomfile import Probe
from forwarder.spool import Incoming, Spool


def fake_probe(n: int) -> Probe:
    return Probe("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{n}", "1.2.840.10008.1.2.1", "1.2.3")


def accept_file(spool: Spool, path: Path, dests: tuple[str, ...], n: int = 0,
                now: float | None = None) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return spool.accept([Incoming(fd, str(path), fake_probe(n), dests)],
                            now=now)[0].object_id
    finally:
        os.close(fd)
