"""The spool's free-space reserve against what is really written: a sparse file stays
sparse (and is taken by a spool far smaller than its size), and a file that does not fit
goes to the back of the line so the files behind it are taken and delivered."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread

from forwarder.spool import Spool
from tests.corpus import data_file, unique_copies
from tests.daemonutil import DaemonProcess, drop, write_config
from tests.peers import free_port, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-limited tmpfs "
                                "needs root (CI runs as root)")


@contextlib.contextmanager
def small_fs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _spool_config(tmp_path: Path, port: int, spool: Path) -> Path:
    cfg = write_config(tmp_path, port, min_age="100ms")
    cfg.write_text(cfg.read_text().replace(f"spool: {tmp_path / 'spool'}", f"spool: {spool}")
                   .replace("dimse: 10s", "dimse: 60s").replace("network: 10s", "network: 60s"))
    return cfg


def _too_big(tmp_path: Path) -> tuple[Path, Dataset]:
    """A CT with 8 MiB of random bytes in a private element: more than a 6 MiB spool
    holds."""
    big = tmp_path / "big.dcm"
    ds = dcmread(data_file("CT_small.dcm"))
    block = ds.private_block(0x0009, "FWD BIG TEST", create=True)
    block.add_new(0x01, "OB", os.urandom(8 << 20))
    ds.save_as(big, enforce_file_format=True)
    return big, ds


def test_a_sparse_file_stays_sparse_and_fits_a_small_spool(make_scp, tmp_path: Path) -> None:
    ds = dcmread(data_file("CT_small.dcm"))
    block = ds.private_block(0x0009, "FWD SPARSE TEST", create=True)
    block.add_new(0x01, "OB", bytes(48 << 20))  # 48 MiB of zeros in a private element
    dense = tmp_path / "dense.dcm"
    ds.save_as(dense, enforce_file_format=True)
    sparse = tmp_path / "sparse.dcm"
    subprocess.run(["cp", "--sparse=always", str(dense), str(sparse)], check=True)
    assert sparse.stat().st_blocks * 512 < 4 << 20
    with small_fs(tmp_path / "spoolfs", "16m") as fs:  # a third of the file's size
        port = free_port()
        cfg = _spool_config(tmp_path, port, fs / "spool")
        d = DaemonProcess(cfg, tmp_path)
        try:
            d.wait_ready()
            os.rename(sparse, tmp_path / "in" / "sparse.dcm")
            wait_for(lambda: not (tmp_path / "in" / "sparse.dcm").exists(), 60,
                     "the sparse file taken")
            with Spool(fs / "spool") as spool:
                [obj] = list(spool.objects.iterdir())
                assert obj.stat().st_size == dense.stat().st_size
                assert obj.stat().st_blocks * 512 < 4 << 20  # not 48 MiB of disk
                assert obj.read_bytes() == dense.read_bytes()
            peer = make_scp(port=port)
            wait_for(lambda: len(peer.received) == 1, 120, "the sparse file delivered")
        finally:
            assert d.stop() == 0
    got = peer.received[0]
    assert got.sop_instance == str(ds.SOPInstanceUID)
    assert got.dataset_bytes.endswith(dense.read_bytes()[-(len(got.dataset_bytes)):])
    assert len(got.dataset_bytes) > 48 << 20


def test_a_file_that_does_not_fit_waits_behind_the_others(make_scp, tmp_path: Path) -> None:
    with small_fs(tmp_path / "spoolfs", "6m") as fs:
        peer = make_scp()
        cfg = _spool_config(tmp_path, peer.port, fs / "spool")
        big, ds = _too_big(tmp_path)
        small = unique_copies(tmp_path / "small", 20)
        d = DaemonProcess(cfg, tmp_path)
        try:
            d.wait_ready()
            drop([big], tmp_path / "in")
            wait_for(lambda: "intake paused" in d.output(), 30, "the big file refused")
            assert "nothing is queued to send, so sending frees no space: free some on the " \
                "spool's file system" in d.output()
            drop(list(small.values()), tmp_path / "in")
            wait_for(lambda: set(peer.counts()) == set(small), 60,
                     "every small file, behind the refused one")
            assert (tmp_path / "in" / "big.dcm").read_bytes() == big.read_bytes()
            with Spool(fs / "spool") as spool:
                assert spool.quarantined() == []
        finally:
            assert d.stop() == 0
    assert all(n == 1 for n in peer.counts().values())
    assert str(ds.SOPInstanceUID) not in peer.counts()
    assert (tmp_path / "in" / "big.dcm").exists()  # still waiting where it was dropped


@pytest.mark.parametrize("size_mib", [3.3, 6])
def test_a_quarantine_copy_that_does_not_fit_leaves_nothing_behind(
        tmp_path: Path, size_mib: float) -> None:
    """A rejected input copied into a full spool: no partial copy is listed as the
    quarantined file, no reason without its data, and the senders' reserve is kept
    (3.3 MiB fits the disk but not the reserve; 6 MiB does not fit at all)."""
    from forwarder.errors import SpoolFull

    src = tmp_path / "bad.bin"
    src.write_bytes(os.urandom(int(size_mib * (1 << 20))))
    with small_fs(tmp_path / "spoolfs", "4m") as fs:
        spool = Spool(fs / "spool")
        fd = os.open(src, os.O_RDONLY)
        try:
            with pytest.raises(SpoolFull):
                spool.quarantine(fd, str(src), "not DICOM: test")  # by copy
        finally:
            os.close(fd)
        assert sorted(p.name for p in spool.quarantine_dir.iterdir()) == []
        assert list(spool.tmp.iterdir()) == []
        vfs = os.statvfs(fs)
        assert vfs.f_bavail * vfs.f_frsize >= spool.reserve
        spool.close()
        with Spool(fs / "spool") as again:
            again.recover()
            assert again.quarantined() == []
    assert src.exists()


def test_a_file_that_does_not_fit_pauses_once_while_smaller_ones_pass_it(
        make_scp, tmp_path: Path) -> None:
    """While one file waits for room, each small file taken past it must not announce
    "intake resumed" and then "spool full" again (an ERROR event per arrival, and a
    status flapping between paused and ok): the pause is said once, and ends when the
    file that waited for room is taken or gone."""
    with small_fs(tmp_path / "spoolfs", "6m") as fs:
        peer = make_scp()
        cfg = _spool_config(tmp_path, peer.port, fs / "spool")
        big, _ds = _too_big(tmp_path)
        d = DaemonProcess(cfg, tmp_path)
        try:
            d.wait_ready()
            drop([big], tmp_path / "in")
            wait_for(lambda: "intake paused" in d.output(), 30, "the big file refused")
            for n in range(3):
                small = unique_copies(tmp_path / f"small{n}", 2, prefix=f"s{n}")
                drop(list(small.values()), tmp_path / "in")
                wait_for(lambda small=small: set(small) <= set(peer.counts()), 60,
                         "the small files, past the refused one")
            said = d.output()
            assert said.count("intake paused") == 1, said
            assert "intake resumed" not in said, said
            (tmp_path / "in" / "big.dcm").unlink()
            wait_for(lambda: "intake resumed" in d.output(), 30, "the pause ended")
        finally:
            assert d.stop() == 0
