"""Quarantine is durable before the source goes, and a kill at any step leaves a file that
`quarantine` lists with its reason, or the input still at its source; spool files and
directories get explicit modes whatever the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forwarder.spool import Spool

REPO = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from forwarder.spool import durable
    from forwarder.spool import Incoming, Spool
    from tests.spoolutil import fake_probe
    root, src, when, umask = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.umask(int(umask, 8))
    spool = Spool(root)
    spool.recover()
    real_fsync, real_fsync_dir = durable.fsync, durable.fsync_dir
    def fsync(fd, what):
        if when == "before-data" and what == str(src / "bad.bin"):
            os.kill(os.getpid(), signal.SIGKILL)   # the reason is written, the data not
        real_fsync(fd, what)
    def fsync_dir(path):
        real_fsync_dir(path)
        if when == "before-row" and path == spool.quarantine_dir:
            os.kill(os.getpid(), signal.SIGKILL)   # data and reason moved, no row yet
    durable.fsync, durable.fsync_dir = fsync, fsync_dir
    fd = os.open(src / "good.dcm", os.O_RDONLY)
    spool.accept([Incoming(fd, str(src / "good.dcm"), fake_probe(1), ("pacs",), link_ok=False,
                           stat=os.fstat(fd))])
    os.close(fd)
    fd = os.open(src / "bad.bin", os.O_RDONLY)
    spool.quarantine(fd, str(src / "bad.bin"), "not DICOM: test", move=src / "bad.bin")
    os.close(fd)
    fd = os.open(src / "kept.bin", os.O_RDONLY)
    spool.quarantine(fd, str(src / "kept.bin"), "not DICOM: kept source")  # a copy
    os.close(fd)
""")


def _run(root: Path, src: Path, when: str, umask: str = "022") -> int:
    return subprocess.run([sys.executable, "-c", CHILD, str(root), str(src), when, umask],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=60).returncode


def _inputs(src: Path) -> None:
    src.mkdir()
    for name in ("good.dcm", "bad.bin", "kept.bin"):
        (src / name).write_bytes(name.encode() * 100)
        os.chmod(src / name, 0o666)


@pytest.mark.parametrize("umask", ["000", "077"])
def test_spool_modes_are_explicit_whatever_the_umask(umask: str, tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "spool"
    _inputs(src)
    assert _run(root, src, "never", umask) == 0
    dirs = [root, root / "objects", root / "quarantine", root / "tmp"]
    files = [p for d in dirs[1:] for p in d.iterdir()] + list(root.glob("index.sqlite*"))
    assert len(files) >= 1 + 4 + 1
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in dirs} == \
        {p.name: "0o750" for p in dirs}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
        {p.name: "0o640" for p in files}


def test_killed_after_the_reason_before_the_data_the_source_stays(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "spool"
    _inputs(src)
    assert _run(root, src, "before-data") == -9
    assert (src / "bad.bin").read_bytes() == b"bad.bin" * 100  # not moved: taken again
    assert len(list((root / "quarantine").iterdir())) == 1  # the reason alone
    with Spool(root) as spool:
        spool.recover()
        assert spool.quarantined() == [] and list(spool.quarantine_dir.iterdir()) == []


def test_killed_after_the_data_moved_before_its_row_it_is_listed(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "spool"
    _inputs(src)
    assert _run(root, src, "before-row") == -9
    assert not (src / "bad.bin").exists()  # moved into quarantine
    with Spool(root) as spool:
        assert spool.quarantined() == []  # what `quarantine` showed before the fix
        assert spool.recover()["quarantine_relisted"] == 1
        q = spool.quarantined()
        assert len(q) == 1 and q[0]["source"] == str(src / "bad.bin")
        assert q[0]["reason"] == "not DICOM: test"
        assert Path(q[0]["file"]).read_bytes() == b"bad.bin" * 100
        assert spool.recover()["quarantine_relisted"] == 0
