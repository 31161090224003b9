"""A process killed in the middle of taking a batch in: at restart nothing is lost, nothing
is quarantined that is still at its source or already queued or delivered, and a batch
whose commit happened is not taken (and sent) a second time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forwarder.spool import Spool
from tests.spoolutil import accept_file

REPO = Path(__file__).resolve().parent.parent
N = 8

# takes every file of SRC in one batch and is SIGKILLed at the moment named by WHEN
CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from forwarder.spool import durable
    from forwarder.spool import Incoming, Spool
    from tests.spoolutil import fake_probe
    src, root, when, keep = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
    spool = Spool(root)
    spool.recover()
    real_flush = durable.flush
    def flush(paths):
        real_flush(paths)
        if when == "before-commit":        # every object placed and flushed, no commit
            os.kill(os.getpid(), signal.SIGKILL)
    durable.flush = flush
    paths = sorted(src.iterdir())
    fds = [os.open(p, os.O_RDONLY | os.O_NOFOLLOW) for p in paths]
    items = [Incoming(fd, str(p), fake_probe(int(p.stem[2:])), ("pacs",), stat=os.fstat(fd),
                      remember=bool(keep)) for fd, p in zip(fds, paths)]
    spool.accept(items)
    if when == "after-commit":             # committed, sources not yet removed
        os.kill(os.getpid(), signal.SIGKILL)
    for p in paths:
        if not keep:
            p.unlink()
""")


def _inputs(folder: Path, n: int = N) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        data = os.urandom(1500)
        (folder / f"in{i}.dcm").write_bytes(data)
        out[f"1.2.3.{i}"] = data
    return out


def _killed(src: Path, root: Path, when: str, *keep: str) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(root), when, *keep],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == -9


def _objects(spool: Spool) -> list[bytes]:
    return sorted(p.read_bytes() for p in spool.objects.iterdir())


def test_killed_before_the_commit_objects_are_removed_sources_taken_again(
        tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "spool"
    data = _inputs(src)
    _killed(src, root, "before-commit")
    with Spool(root) as spool:
        assert len(list(spool.objects.iterdir())) == N  # placed, never committed
        report = spool.recover()
        assert report["orphans_source_remains"] == N and report["orphan_objects"] == 0
        assert spool.quarantined() == [] and list(spool.quarantine_dir.iterdir()) == []
        assert list(spool.objects.iterdir()) == []
    assert sorted(p.read_bytes() for p in src.iterdir()) == sorted(data.values())
    subprocess.run([sys.executable, "-c", CHILD, str(src), str(root), "never"], cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60, check=True)
    with Spool(root) as spool:
        assert spool.counts() == {"pending": N}
        assert _objects(spool) == sorted(data.values())


def test_killed_after_the_commit_the_batch_is_not_taken_twice(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "spool"
    data = _inputs(src)
    _killed(src, root, "after-commit")
    assert len(list(src.iterdir())) == N  # the sources were still there at the kill
    with Spool(root) as spool:
        report = spool.recover()
        assert report["committed_sources_removed"] == N
        assert list(src.iterdir()) == []  # removed now, as intake would have
        assert spool.counts() == {"pending": N}
        assert _objects(spool) == sorted(data.values())
        assert spool.quarantined() == []
        assert spool.recover()["committed_sources_removed"] == 0  # only once


def test_kept_sources_killed_before_the_commit_are_taken_again_not_quarantined(
        tmp_path: Path) -> None:
    """keep_source: the objects of a batch killed before its commit are removed, since
    their sources are still there unchanged and are taken again; none is quarantined as
    a last copy, and the sources stay."""
    src, root = tmp_path / "src", tmp_path / "spool"
    data = _inputs(src)
    _killed(src, root, "before-commit", "keep")
    with Spool(root) as spool:
        report = spool.recover()
        assert report["orphans_source_remains"] == N and report["orphan_objects"] == 0
        assert spool.quarantined() == [] and list(spool.quarantine_dir.iterdir()) == []
        assert list(spool.objects.iterdir()) == []
    assert sorted(p.read_bytes() for p in src.iterdir()) == sorted(data.values())


def test_kept_sources_of_a_committed_batch_stay_in_place(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "spool"
    data = _inputs(src)
    _killed(src, root, "after-commit", "keep")
    with Spool(root) as spool:
        report = spool.recover()
        assert report["committed_sources_removed"] == 0
        assert spool.counts() == {"pending": N} and _objects(spool) == sorted(data.values())
        for p in src.iterdir():
            assert spool.is_seen(str(p), p.stat())  # never taken twice
    assert sorted(p.read_bytes() for p in src.iterdir()) == sorted(data.values())


def test_a_committed_source_with_an_older_seen_row_is_still_removed(tmp_path: Path) -> None:
    """A file remembered once as left in place (taken while its writer held it open),
    written on, then taken to be moved: a kill after that commit leaves it for the next
    start to remove, as any committed source; the old row does not make it a kept one."""
    src, root = tmp_path / "src", tmp_path / "spool"
    _inputs(src, 1)
    held = src / "in0.dcm"
    with Spool(root) as spool:
        st = held.stat()
        with spool._tx() as db:
            db.execute("INSERT INTO seen (path, inode, size, mtime_ns, ctime_ns) VALUES "
                       "(?, ?, ?, ?, ?)", (str(held), st.st_ino, st.st_size - 100,
                                           st.st_mtime_ns - 10**9, st.st_ctime_ns - 10**9))
    _killed(src, root, "after-commit")
    with Spool(root) as spool:
        assert spool.recover()["committed_sources_removed"] == 1
        assert spool.counts() == {"pending": 1}
    assert list(src.iterdir()) == []


def test_a_committed_source_replaced_since_is_left_alone(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "spool"
    _inputs(src, 2)
    _killed(src, root, "after-commit")
    (src / "in0.dcm").unlink()
    (src / "in0.dcm").write_bytes(b"a new file under the old name")
    with Spool(root) as spool:
        assert spool.recover()["committed_sources_removed"] == 1
    assert [p.name for p in src.iterdir()] == ["in0.dcm"]


@pytest.mark.parametrize("case", ["source-gone", "already-queued", "already-delivered"])
def test_an_orphan_is_quarantined_only_when_it_is_the_last_copy(case: str,
                                                                tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "spool"
    data = _inputs(src, 3)
    _killed(src, root, "before-commit")
    orphan_of_in1 = next(p for p in (root / "objects").iterdir()
                         if p.read_bytes() == data["1.2.3.1"])
    (src / "in1.dcm").rename(tmp_path / "moved-away.dcm")  # its source gone
    with Spool(root) as spool:
        if case != "source-gone":
            accept_file(spool, tmp_path / "moved-away.dcm", ("pacs",), 1)
        if case == "already-delivered":
            job = spool.claim("pacs", 10)
            spool.done([j.id for j in job])
            assert spool.counts() == {}
        report = spool.recover()
        q = spool.quarantined()
        assert report["orphans_source_remains"] == 2  # in0 and in2 are taken again
        if case == "source-gone":
            assert report["orphan_objects"] == 1 and len(q) == 1
            assert q[0]["source"] == str(src / "in1.dcm") and "last copy" in q[0]["reason"]
            assert Path(q[0]["file"]).read_bytes() == data["1.2.3.1"]
        else:
            assert report["orphans_already_queued"] == 1 and q == []
        assert not orphan_of_in1.exists()
        assert len(list(spool.objects.iterdir())) == (1 if case == "already-queued" else 0)


def test_a_delivered_file_not_yet_removed_at_a_kill_is_removed_at_the_start(
        tmp_path: Path) -> None:
    """A sender removes delivered files on a thread of its own, after the commit: a kill
    in between leaves a file with no row, whose content recovery knows as delivered."""
    src, root = tmp_path / "src", tmp_path / "spool"
    data = _inputs(src, 2)
    with Spool(root) as spool:
        for i, path in enumerate(sorted(src.iterdir())):
            accept_file(spool, path, ("pacs",), i)
            path.unlink()  # taken in: intake removes the source
        kept = {p.name: p.read_bytes() for p in spool.objects.iterdir()}
        spool._remove = lambda paths: None  # the kill: rows committed, files not removed
        spool.done([j.id for j in spool.claim("pacs", 10)])
        assert spool.counts() == {} and sorted(kept.values()) == sorted(data.values())
        assert {p.name for p in spool.objects.iterdir()} == set(kept)
    with Spool(root) as spool:
        report = spool.recover()
        assert report["orphans_already_queued"] == 2 and report["orphan_objects"] == 0
        assert list(spool.objects.iterdir()) == [] and spool.quarantined() == []


def test_a_sender_removes_delivered_files_beside_it_and_all_of_them_by_its_close(
        tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "spool"
    _inputs(src, 5)
    spool = Spool(root)
    spool.remove_aside()
    for i, path in enumerate(sorted(src.iterdir())):
        accept_file(spool, path, ("pacs",), i)
    spool.done([j.id for j in spool.claim("pacs", 10)])
    spool.close()
    assert list((root / "objects").iterdir()) == []
