"""The Central Test Node's simple_storage (Debian package ctn) as a third-party storage SCP."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.peers import free_port, listening, stop_process, wait_for


class CTNStorage:
    """simple_storage writing each object to ``out/<modality>/<SOP Instance UID>``."""

    def __init__(self, out: Path):
        exe = shutil.which("simple_storage")
        if exe is None:
            raise RuntimeError("CTN simple_storage is not installed: run 'make deps', which "
                               "installs Debian's ctn")
        self.out = out
        self.port = free_port()
        out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, "-s", "-x", str(out), str(self.port)], cwd=out,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self._listening, 10, "simple_storage to listen")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"simple_storage exited: {self.proc.stderr.read().decode()[:300]}")
        return listening(self.port)

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.rglob("*") if p.is_file())

    def stop(self) -> None:
        stop_process(self.proc)
