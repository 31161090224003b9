"""Fuzzing intake: mutated real DICOM files and random bytes through probe and intake, and
a running daemon fed random names, kinds of file and writers.

The only outcomes allowed are accepted (in the spool), quarantined with a reason, or (for
what is not a regular file) left alone and reported; never an uncaught exception, never
a hang (each input and each example has a time limit), never a valid file sent twice.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread

from forwarder import writers
from forwarder.candidate import Candidate
from forwarder.intake import Intake
from forwarder.paths import shown
from forwarder.settle import Signature
from forwarder.spool import Spool
from tests.corpus import data_file
from tests.peers import wait_for
from tests.pipeline import make_config

SEEDS = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm",
         "SC_rgb_rle.dcm", "DICOMDIR", "ExplVR_BigEnd.dcm"]
LIMIT_S = 10


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"intake took more than {seconds}s on one input")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def inputs(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(min_size=0, max_size=4096))
    data = bytearray(data_file(draw(st.sampled_from(SEEDS))).read_bytes())
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "length"]))
        if kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:  # a wild value length: 0xFFFFFFFF, huge, or zero
            data[at:at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f",
                                                    b"\x00\x00\x00\x00", b"\x10\x00\x00\x00"]))
    return bytes(data)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg = make_config(tmp, routes="  - match: {Modality: [CT, MR]}\n    to: [pacs]\n"
                                  "  - to: [pacs]\n")
    # a verdict for every input at once: what looks cut short is not left for its writer
    # (below the 1 s a configuration may say; the rules of intake are the same)
    cfg = dataclasses.replace(cfg, watch=(dataclasses.replace(cfg.watch[0],
                                                              truncated_after=0.0),))
    spool = Spool(cfg.spool)
    # as the daemon does: intake asks for leases, so that a file given to it as settled
    # the moment it was written (here) is not held for the rest of min_age
    writers.ignore_lease_breaks()
    yield cfg, spool, Intake(cfg, spool), tmp / "in"
    spool.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(data=inputs(), n=st.integers(0, 10**9))
def test_intake_only_accepts_or_quarantines(rig, data: bytes, n: int) -> None:
    cfg, spool, intake, folder = rig
    path = folder / f"fuzz-{n}.dcm"
    path.write_bytes(data)
    cand = Candidate(cfg.watch[0], str(path), path.name, Signature.of(path.lstat()), True)
    before_q, before_a = intake.quarantined, intake.accepted
    with time_limit(LIMIT_S):
        intake.process([cand])
    took = (intake.quarantined - before_q) + (intake.accepted - before_a)
    assert took == 1, "each input ends accepted or quarantined, exactly once"
    if intake.quarantined > before_q:
        q = spool.quarantined()[-1]
        assert q["source"] == str(path) and q["reason"] and Path(q["file"]).exists()
        # what a paused writer could still complete is quarantined by copy, left in place
        assert path.exists() == ("source is left in place" in q["reason"])
    else:
        assert not path.exists(), "the source was moved into the spool"


# --- a running daemon, fed whatever a hostile folder can hold ---------------------------

KINDS = ["dicom", "corrupt", "fifo", "socket", "symlink", "hardlink", "dir", "slow"]
IGNORED_SUFFIXES = (b".tmp", b".part", b".partial")


@st.composite
def names(draw: st.DrawFn, index: int) -> bytes:
    """Any bytes a Linux name may hold (not '/' or NUL): not UTF-8, newlines, very long."""
    raw = draw(st.one_of(
        st.binary(min_size=1, max_size=60),
        st.binary(min_size=200, max_size=240),
        st.text(min_size=1, max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    ))
    name = f"{index:02d}-".encode() + raw.replace(b"/", b"_").replace(b"\0", b"_")
    name = name[:250]
    return name + b"_" if name.endswith(IGNORED_SUFFIXES) else name


@st.composite
def scenario(draw: st.DrawFn) -> list[tuple[str, bytes, bytes]]:
    """Up to six items: (kind, name, DICOM bytes or b'')."""
    out = []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(KINDS))
        data = draw(inputs()) if kind == "corrupt" else b""
        out.append((kind, draw(names(i)), data))
    return out


class Live:
    """One daemon and one peer for every example; each example in its own subfolder."""

    def __init__(self, work: Path):
        from tests.daemonutil import DaemonProcess, write_config
        from tests.peers import StoreSCP

        self.work = work
        self.peer = StoreSCP().start()
        self.cfg = write_config(work, self.peer.port)
        self.cfg.write_text(self.cfg.read_text().replace(
            "rescan: 2s}", "rescan: 1s, truncated_after: 1s}"))
        self.inbox = work / "in"
        self.daemon = DaemonProcess(self.cfg, work)
        self.daemon.wait_ready()
        self.round = 0
        self.uid_base = str(dcmread(data_file("CT_small.dcm"), stop_before_pixels=True)
                            .SOPInstanceUID)
        self.template = data_file("CT_small.dcm").read_bytes()
        self.serial = 0

    def valid(self) -> tuple[str, bytes]:
        """A real CT object with a SOP Instance UID of its own (same length)."""
        self.serial += 1
        tail = f"{self.serial:06d}"
        uid = self.uid_base[:-len(tail) - 1] + "9" + tail
        return uid, self.template.replace(self.uid_base.encode(), uid.encode())

    def index(self, sql: str) -> list[tuple]:
        db = sqlite3.connect(f"file:{self.work / 'spool' / 'index.sqlite'}?mode=ro", uri=True,
                             timeout=30)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def stop(self) -> None:
        try:
            assert self.daemon.stop() == 0, self.daemon.output()
        finally:
            self.peer.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    rig = Live(tmp_path_factory.mktemp("live"))
    yield rig
    rig.stop()


def slow_write(path: bytes, data: bytes, pauses: list[float]) -> None:
    """A writer that pauses longer than min_age between pieces."""
    step = len(data) // (len(pauses) + 1) + 1
    with open(path, "wb") as fp:
        for i, pause in enumerate([*pauses, 0.0]):
            fp.write(data[i * step:(i + 1) * step])
            fp.flush()
            threading.Event().wait(pause)


@settings(max_examples=25, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(items=scenario(), pauses=st.lists(st.floats(0.3, 0.6), min_size=1, max_size=2))
def test_a_running_daemon_takes_whatever_lands_in_a_folder(live: Live, items, pauses) -> None:
    live.round += 1
    folder = os.fsencode(live.inbox / f"round{live.round:03d}")
    staging = os.fsencode(live.work / f"staging{live.round:03d}")
    os.mkdir(staging)
    valid: dict[str, bytes] = {}  # uid -> the path it was dropped as
    blobs: dict[bytes, bytes] = {}  # what a slow writer writes
    others: dict[bytes, str] = {}  # path -> kind
    outside: list[tuple[bytes, bytes]] = []
    writers = []
    os.mkdir(os.path.join(staging, b"sub"))
    for kind, name, data in items:
        path = os.path.join(folder, name)
        if kind in ("dicom", "hardlink", "slow", "dir"):
            uid, blob = live.valid()
            blobs[path] = blob
            if kind == "dir":  # a folder written elsewhere and renamed in, a file inside
                sub = os.path.join(staging, name)
                os.mkdir(sub)
                with open(os.path.join(sub, b"image"), "wb") as fp:
                    fp.write(blob)
                path = os.path.join(path, b"image")
            valid[uid] = path
        else:
            others[path] = kind
        if kind in ("dicom", "corrupt"):
            with open(os.path.join(staging, b"sub", name), "wb") as fp:
                fp.write(blob if kind == "dicom" else data)
        elif kind == "hardlink":  # another link outside the folder must stay untouched
            other = os.path.join(staging, name + b".other")
            with open(other, "wb") as fp:
                fp.write(blob)
            outside.append((other, blob))
    os.mkdir(folder)
    for kind, name, _data in items:  # now make them appear, as writers would
        path = os.path.join(folder, name)
        if kind in ("dicom", "corrupt"):
            os.rename(os.path.join(staging, b"sub", name), path)
        elif kind == "dir":
            os.rename(os.path.join(staging, name), path)
        elif kind == "hardlink":
            os.link(os.path.join(staging, name + b".other"), path)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "socket":
            s = socket.socket(socket.AF_UNIX)
            try:
                s.bind(path)
            except OSError:  # a name too long for sun_path: a FIFO stands in
                os.mkfifo(path)
            finally:
                s.close()
        elif kind == "symlink":
            os.symlink(b"/etc/hostname", path)
        elif kind == "slow":
            t = threading.Thread(target=slow_write, args=(path, blobs[path], pauses))
            t.start()
            writers.append(t)
    for t in writers:
        t.join(30)

    def settled() -> bool:
        if live.daemon.proc.poll() is not None:
            raise AssertionError(f"the daemon exited:\n{live.daemon.output()[-3000:]}")
        if any(live.peer.counts()[u] != 1 for u in valid):
            return False
        sources = {r[0] for r in live.index("SELECT source FROM objects")} | \
            {r[0] for r in live.index("SELECT source FROM quarantine")}
        log = live.daemon.output()
        for path, kind in others.items():
            # a corruption that leaves valid DICOM is accepted (its object row goes once
            # it is delivered): the log says so
            if kind == "corrupt" and shown(path) not in sources and \
                    f"{shown(path)}: accepted" not in log:
                return False
            if kind in ("fifo", "socket", "symlink") and f"{shown(path)}: " not in log:
                return False
        return True

    wait_for(settled, 60, "every item delivered, quarantined or reported")
    for path in valid.values():
        assert not os.path.lexists(path), "a delivered file's source is removed"
    for other, blob in outside:
        with open(other, "rb") as fp:
            assert fp.read() == blob, "a hard link's other name is untouched"
    quarantined = {r[0]: r[1] for r in live.index("SELECT source, reason FROM quarantine")}
    for path, kind in others.items():
        if kind in ("fifo", "socket", "symlink"):
            assert os.path.lexists(path), "special files are left alone"
        elif shown(path) in quarantined:
            assert quarantined[shown(path)], "a quarantined file has its reason"
