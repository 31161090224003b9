"""A daemon that finds its spool full at start says which spool and what to do (exit 1:
systemd restarts it, and it starts once there is room)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.daemonutil import REPO, write_config

CHILD = textwrap.dedent("""
    import sys
    from forwarder.errors import SpoolFull
    from forwarder.spool import Spool
    def full(self, *args, **kwargs):
        raise SpoolFull("spool full: database or disk is full")
    Spool.recover = full
    from forwarder.cli import main
    sys.exit(main(["run", "-c", sys.argv[1], "--log-target", "stderr"]))
""")


def test_a_spool_full_at_start_is_named_with_the_fix(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 9)
    out = subprocess.run([sys.executable, "-c", CHILD, str(cfg)], capture_output=True,
                         text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 1, out.stderr
    said = [line for line in out.stderr.splitlines() if "cannot start" in line]
    assert len(said) == 1, out.stderr
    assert str(tmp_path / "spool") in said[0] and "free space" in said[0], said[0]
