"""A daemon that finds its spool's file system full at start says which spool and what to
do (exit 1: systemd restarts it, and it starts once there is room)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forwarder.spool import Spool
from tests.daemonutil import DaemonProcess, write_config
from tests.test_spool_space import small_fs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-limited tmpfs "
                                "needs root (CI runs as root)")


def test_a_spool_full_at_start_is_named_with_the_fix(tmp_path: Path) -> None:
    with small_fs(tmp_path / "spoolfs", "4m") as fs:
        spool = fs / "spool"
        Spool(spool).close()  # a spool made by an earlier run
        filler = fs / "filler"
        with open(filler, "wb", buffering=0) as fp:  # something else filled the disk
            try:
                while fp.write(b"\1" * 65536):
                    pass
            except OSError:
                pass
        cfg = write_config(tmp_path, 9)
        cfg.write_text(cfg.read_text().replace(f"spool: {tmp_path / 'spool'}",
                                               f"spool: {spool}"))
        d = DaemonProcess(cfg, tmp_path)
        code = d.wait(60)
        said = [line for line in d.output().splitlines() if "cannot start" in line]
        filler.unlink()
    assert code == 1, d.output()
    assert len(said) == 1, d.output()
    assert str(spool) in said[0] and "free space" in said[0], said[0]
