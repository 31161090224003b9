"""Writers that pause: a file still open for writing is never taken as the prefix it is.

The writer here is another process, as a modality is, which writes the part of a real
file up to an element boundary, so that the part alone reads as a complete, shorter
data set, and then pauses longer than ``min_age``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forwarder import unfinished, writers
from forwarder.dicomfile import probe
from tests.corpus import data_file
from tests.peers import wait_for
from tests.pipeline import Pipeline, make_config

CT = data_file("CT_small.dcm")
DATA = CT.read_bytes()
CUT = DATA.index(b"\x10\x00\x10\x00PN")  # Patient's Name: what comes before is whole
# a document without pixels: its part alone, held open past truncated_after, is taken as it
# is; an image's part is not (it ends before its pixel data)
SR = data_file("test-SR.dcm").read_bytes()
SR_CUT = SR.index(b"\x10\x00\x10\x00PN")
WRITER = """
import sys
with open(sys.argv[1], "ab") as fp:
    for line in sys.stdin.buffer:  # each line: the hex of bytes to append, or "close"
        if line.strip() == b"close":
            break
        fp.write(bytes.fromhex(line.decode())); fp.flush()
        print("written", flush=True)
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Writer:
    """Another process holding ``path`` open for appending, writing when told."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def write(self, data: bytes) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(data.hex().encode() + b"\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == b"written\n"

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(b"close\n")
        self.proc.stdin.close()
        assert self.proc.wait(10) == 0

    def stop(self) -> None:
        """End the writer if a failed test left it running (this test's own process)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def held_then_taken(p: Pipeline, held: list[bool | None], w: Writer, target: Path,
                    rest: bytes) -> None:
    """Intake looks three times at the part ``w`` holds open and leaves it; then ``w``
    writes ``rest`` and closes the file, and it is taken."""
    wait_for(lambda: held.count(True) >= 3 or p.objects(), 15,
             "intake to look at it three times")
    assert p.objects() == [] and target.exists(), "the prefix was taken"
    w.write(rest)
    w.close()
    wait_for(lambda: p.objects(), 15, "the file, once its writer closed it")


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    with Writer(tmp_path / "in" / "paused.dcm") as w:
        yield w


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> list[bool | None]:
    """Every answer intake got to "is another process writing this file?"."""
    answers: list[bool | None] = []

    def counted(fd: int) -> tuple[bool | None, str]:
        answer = writers.ask(fd)
        answers.append(answer[0])
        return answer

    monkeypatch.setattr(unfinished, "ask", counted)
    return answers


def test_the_part_before_the_pause_reads_as_a_whole_data_set(tmp_path: Path) -> None:
    """What makes the pause dangerous: nothing in the bytes says more is coming."""
    (tmp_path / "prefix.dcm").write_bytes(DATA[:CUT])
    found = probe(tmp_path / "prefix.dcm")
    assert found.sop_instance_uid and CUT < len(DATA) // 10


def test_a_lease_tells_whether_another_process_writes_the_file(tmp_path: Path) -> None:
    writers.ignore_lease_breaks()
    (tmp_path / "in").mkdir()
    target = tmp_path / "in" / "paused.dcm"
    w = Writer(target)
    w.write(DATA[:CUT])
    fd = os.open(target, os.O_RDONLY)
    try:
        assert writers.ask(fd) == (True, "")
        w.close()
        assert writers.ask(fd) == (False, "")
        with open(target, "ab"):  # this process's own descriptor counts too
            assert writers.ask(fd) == (True, "")
    finally:
        os.close(fd)
    status = os.open("/proc/self/status", os.O_RDONLY)  # not a local filesystem: unknown
    try:
        assert writers.ask(status) == (None, "not a local filesystem (statfs type 0x9fa0)")
    finally:
        os.close(status)


LEASE_HOLDER = """
import fcntl, os, signal, sys, threading
from forwarder import writers
if sys.argv[2] == "ignore":
    writers.ignore_lease_breaks()
else:  # an ignored signal stays ignored across exec: the test's own process ignores it
    signal.signal(signal.SIGIO, signal.SIG_DFL)
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
print("leased", flush=True)
wait = threading.Event()
for _ in range(1000):  # until the kernel breaks the lease: a writer opened the file
    if fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK:
        break
    wait.wait(0.01)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
print("alive", flush=True)
"""


@pytest.mark.parametrize("sigio", ["ignore", "default"])
def test_a_writer_opening_the_file_during_the_lease_does_not_end_the_process(
        tmp_path: Path, sigio: str) -> None:
    """The lease makes its holder the file's signal owner: a writer that opens the file in
    the microseconds the lease is held sends it SIGIO, which ends a process that does not
    ignore it (the daemon does, and intake asks for no lease otherwise)."""
    target = tmp_path / "f.dcm"
    target.write_bytes(DATA)
    holder = subprocess.Popen([sys.executable, "-c", LEASE_HOLDER, str(target), sigio],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert holder.stdout and holder.stdout.readline() == "leased\n"
        with open(target, "ab"):  # blocks until the holder gives the lease back (or dies)
            pass
        out, _ = holder.communicate(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
    if sigio == "ignore":
        assert holder.returncode == 0 and out == "alive\n"
    else:
        assert holder.returncode == -signal.SIGIO, holder.returncode


def test_without_sigio_ignored_no_lease_is_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "f.dcm"
    target.write_bytes(DATA)
    before = signal.signal(signal.SIGIO, signal.SIG_DFL)
    fd = os.open(target, os.O_RDONLY)
    try:
        with open(target, "ab"):
            assert writers.ask(fd)[0] is None
        assert "does not ignore SIGIO" in writers.ask(fd)[1]
    finally:
        os.close(fd)
        signal.signal(signal.SIGIO, before)


@pytest.mark.parametrize("events", [True, False], ids=["events", "no-events"])
def test_a_writer_paused_at_an_element_boundary_is_waited_for(
        tmp_path: Path, writer: Writer, held: list[bool | None], events: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    """Without events (and a rescan an hour away) only the look again after ``min_age``
    that intake asks for can find the file once its writer is done."""
    cfg = make_config(tmp_path, watch="min_age: 300ms\nrescan: 1h")
    target = tmp_path / "in" / "paused.dcm"
    with caplog.at_level(logging.INFO, logger="forwarder"):
        if not events:
            writer.write(DATA[:CUT])
        with Pipeline(cfg, events=events) as p:
            if events:
                writer.write(DATA[:CUT])
            held_then_taken(p, held, writer, target, DATA[CUT:])
            wait_for(lambda: not target.exists(), 10, "the source removed")
            [obj] = p.objects()
            assert obj["sha256"] == sha(DATA) and p.spool.quarantined() == []
    said = [r.getMessage() for r in caplog.records if "still open for writing" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(str(target)), said


def test_a_file_written_elsewhere_and_renamed_in_is_taken_without_a_second_wait(
        tmp_path: Path, held: list[bool | None]) -> None:
    """The careful writer's way (write elsewhere, rename in when done): a rename changes
    the ctime, not the content, so a file whose mtime is already ``min_age`` old is taken
    at once, no writer holding it; one written in the folder still waits ``min_age``."""
    cfg = make_config(tmp_path, watch="min_age: 30s\nrescan: 1h")
    staged, moved = tmp_path / "moved.dcm", tmp_path / "in" / "moved.dcm"
    staged.write_bytes(DATA)
    written = time.time_ns() - 60 * 10**9  # finished a minute ago
    os.utime(staged, ns=(written, written))
    fresh = tmp_path / "in" / "fresh.dcm"
    with Pipeline(cfg) as p:
        fresh.write_bytes(SR)
        os.rename(staged, moved)
        wait_for(lambda: p.objects(), 15, "the renamed file, well before min_age (30 s)")
        [obj] = p.objects()
        assert obj["sha256"] == sha(DATA) and not moved.exists()
        assert held == [False], "intake took it without asking whether a writer holds it"
        assert fresh.exists(), "the file written in the folder was taken before min_age"


def test_a_part_stamped_with_an_old_mtime_and_closed_is_not_taken_before_min_age(
        tmp_path: Path) -> None:
    """A writer that writes part of a file in place, stamps an old mtime on it and closes
    it, then comes back within min_age for the rest (robocopy resuming a copy): the old
    mtime does not make the part look settled; the whole file is taken, once."""
    cfg = make_config(tmp_path, watch="min_age: 3s\nrescan: 1h")
    target = tmp_path / "in" / "resumed.dcm"
    with Pipeline(cfg) as p:
        with Writer(target) as first:
            first.write(SR[:SR_CUT])
            os.utime(target, (315532800, 315532800))  # 1980-01-01, as robocopy stamps it
            first.close()
        threading.Event().wait(1.0)  # the writer's own pause, shorter than min_age
        assert p.objects() == [], "the part was taken"
        with Writer(target) as rest:
            rest.write(SR[SR_CUT:])
            rest.close()
        wait_for(lambda: p.objects(), 15, "the whole file")
        assert [o["sha256"] for o in p.objects()] == [sha(SR)]


def test_where_no_lease_can_vouch_a_renamed_file_waits_min_age_from_its_last_change(
        tmp_path: Path, held: list[bool | None]) -> None:
    """Without a lease to ask (here: a process that does not ignore SIGIO, as a file of
    another account without CAP_LEASE), an old mtime is not enough: the file renamed in
    waits min_age from its rename (its ctime), then is taken."""
    cfg = make_config(tmp_path, watch="min_age: 3s\nrescan: 1h")
    staged, moved = tmp_path / "moved.dcm", tmp_path / "in" / "moved.dcm"
    staged.write_bytes(DATA)
    old = time.time_ns() - 60 * 10**9
    os.utime(staged, ns=(old, old))
    with Pipeline(cfg) as p:
        signal.signal(signal.SIGIO, signal.SIG_DFL)  # no lease may be taken now
        try:
            os.rename(staged, moved)
            renamed = moved.stat().st_ctime
            wait_for(lambda: held, 10, "intake to look at it")
            assert held[0] is None and p.objects() == [], "taken without a wait"
            wait_for(lambda: p.objects(), 15, "the file, min_age after its rename")
            assert time.time() - renamed >= 3
            assert p.objects()[0]["sha256"] == sha(DATA)
        finally:
            writers.ignore_lease_breaks()


def test_a_file_renamed_in_while_still_open_for_writing_waits_for_its_writer(
        tmp_path: Path, held: list[bool | None]) -> None:
    """An old mtime does not take a file whose writer still holds it open: renamed in
    with the part that reads as a whole data set, it waits until the writer closes it."""
    cfg = make_config(tmp_path, watch="min_age: 300ms\nrescan: 1h")
    staged, target = tmp_path / "paused.dcm", tmp_path / "in" / "paused.dcm"
    with Writer(staged) as w:
        w.write(SR[:SR_CUT])
        old = time.time_ns() - 60 * 10**9
        os.utime(staged, ns=(old, old))
        with Pipeline(cfg) as p:
            os.rename(staged, target)
            held_then_taken(p, held, w, target, SR[SR_CUT:])
            assert [o["sha256"] for o in p.objects()] == [sha(SR)]


def test_a_file_held_open_unchanged_for_truncated_after_is_taken_by_copy_and_again_later(
        tmp_path: Path, writer: Writer, held: list[bool | None],
        caplog: pytest.LogCaptureFixture) -> None:
    """A writer that never closes (a leaked descriptor) does not hold a file for ever;
    if it was only pausing after all, its complete file is taken too."""
    cfg = make_config(tmp_path, watch="min_age: 300ms\ntruncated_after: 2s")
    target = tmp_path / "in" / "paused.dcm"
    with caplog.at_level(logging.INFO, logger="forwarder"), Pipeline(cfg) as p:
        writer.write(SR[:SR_CUT])
        wait_for(lambda: p.objects(), 15, "the file held open, after truncated_after")
        [first] = p.objects()
        assert first["sha256"] == sha(SR[:SR_CUT]) and target.read_bytes() == SR[:SR_CUT]
        assert "taken as it is, by copy" in caplog.text
        writer.write(SR[SR_CUT:])
        writer.close()
        wait_for(lambda: len(p.objects()) == 2, 15, "the completed file")
        wait_for(lambda: not target.exists(), 10, "the source removed, now that it is whole")
        assert p.objects()[1]["sha256"] == sha(SR) and p.spool.quarantined() == []
    assert True in held, "intake never saw the writer: the prefix was taken by the settle rule"


def test_held_past_truncated_after_nothing_is_deleted_or_waited_for_twice(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two files held open: one no route takes under ``unrouted: delete`` is left in
    place, not deleted, and taken once its writer completes it; one cut inside its pixel
    data is quarantined by copy once, at ``truncated_after``, saying it is still open."""
    cfg = make_config(tmp_path, watch="""
        min_age: 300ms
        truncated_after: 2s
        keep_source: false
        """, routes="""
          - match: {Modality: [SR]}
            to: [pacs]
        """, extra="unrouted: delete\n")
    inbox = tmp_path / "in"
    cut_pixels = len(DATA) - 1000
    modality_at = SR.index(b"\x08\x00\x60\x00CS")  # before Modality: no route matches
    held = {"unrouted.dcm": SR[:modality_at], "cut.dcm": DATA[:cut_pixels]}
    procs = [Writer(inbox / name) for name in held]
    try:
        with caplog.at_level(logging.INFO, logger="forwarder"), Pipeline(cfg) as p:
            for w, data in zip(procs, held.values(), strict=True):
                w.write(data)
            wait_for(lambda: p.spool.quarantined() and "not deleted" in caplog.text, 20,
                     "both dealt with after truncated_after")
            [q] = p.spool.quarantined()
            assert q["source"].endswith("/cut.dcm") and q["reason"].startswith("truncated")
            assert q["reason"].endswith("(still open for writing, unchanged for at least "
                                        "2s; the source is left in place)")
            assert sorted(f.name for f in inbox.iterdir()) == ["cut.dcm", "unrouted.dcm"]
            procs[0].write(SR[modality_at:])  # the writer goes on: the whole file is an SR
            procs[0].close()
            wait_for(lambda: p.objects(), 15, "the completed file, routed")
            assert p.objects()[0]["sha256"] == sha(SR) and len(p.spool.quarantined()) == 1
    finally:
        for w in procs:
            w.stop()
    said = [r.getMessage() for r in caplog.records if "cut.dcm" in r.getMessage()]
    assert sum("still open for writing by another process" in m for m in said) == 1, said
    assert not any("incomplete" in getattr(r, "FORWARDER_EVENT", "") for r in caplog.records
                   if "cut.dcm" in r.getMessage())


def test_keep_source_held_past_truncated_after_is_said(
        tmp_path: Path, writer: Writer, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config(tmp_path, watch="min_age: 300ms\ntruncated_after: 1s\nkeep_source: true")
    with caplog.at_level(logging.INFO, logger="forwarder"), Pipeline(cfg) as p:
        writer.write(SR[:SR_CUT])
        wait_for(lambda: p.objects(), 15, "the prefix, taken by copy")
        assert "still open for writing, unchanged for at least 1s: taken as it is, by copy" in \
            caplog.text
        assert (tmp_path / "in" / "paused.dcm").read_bytes() == SR[:SR_CUT]


def test_an_image_held_open_without_its_pixels_is_quarantined_by_copy_never_sent(
        tmp_path: Path, writer: Writer) -> None:
    """An image's part held open past truncated_after ends before its pixel data: it is
    quarantined by copy with that reason, not taken as it is, and the whole file is taken
    once the writer completes it."""
    cfg = make_config(tmp_path, watch="min_age: 300ms\ntruncated_after: 1s")
    target = tmp_path / "in" / "paused.dcm"
    with Pipeline(cfg) as p:
        writer.write(DATA[:CUT])
        wait_for(lambda: p.spool.quarantined(), 15, "the part quarantined")
        [q] = p.spool.quarantined()
        assert q["reason"].startswith("truncated: CT Image Storage without Pixel Data")
        assert q["reason"].endswith("(still open for writing, unchanged for at least 1s; the "
                                    "source is left in place)")
        assert Path(q["file"]).read_bytes() == DATA[:CUT] == target.read_bytes()
        assert p.objects() == []
        writer.write(DATA[CUT:])
        writer.close()
        wait_for(lambda: p.objects(), 15, "the completed file")
        assert p.objects()[0]["sha256"] == sha(DATA) and len(p.spool.quarantined()) == 1


WRITE_LEASE = """
import fcntl, os, signal, sys, threading
fd = os.open(sys.argv[1], os.O_RDWR)
broken = threading.Event()
signal.signal(signal.SIGIO, lambda *_: broken.set())  # someone else opened it
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("leased", flush=True)
sys.stdin.readline()
os.close(fd)
"""


def test_a_file_under_another_process_s_write_lease_is_taken_once_released(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A write lease (Samba's kernel oplocks) makes intake's non-blocking open fail with
    EAGAIN: the file is looked at again, not left until it changes."""
    cfg = make_config(tmp_path, watch="min_age: 300ms\nrescan: 1h")
    target = tmp_path / "in" / "leased.dcm"
    staged = tmp_path / "leased.dcm"
    staged.write_bytes(DATA)
    holder = subprocess.Popen([sys.executable, "-c", WRITE_LEASE, str(staged)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout and holder.stdout.readline() == "leased\n"
        os.rename(staged, target)
        with caplog.at_level(logging.INFO, logger="forwarder"), Pipeline(cfg) as p:
            wait_for(lambda: "holds it with a write lease" in caplog.text, 15,
                     "the refused open noticed")
            assert p.objects() == []
            assert holder.stdin
            holder.stdin.write("release\n")
            holder.stdin.close()
            assert holder.wait(10) == 0
            wait_for(lambda: p.objects(), 15, "the file, once the lease is gone")
            assert p.objects()[0]["sha256"] == sha(DATA)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


def test_where_writers_cannot_be_seen_it_is_said_once_per_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(unfinished, "ask", lambda fd: (None, "a reason in words"))
    cfg = make_config(tmp_path)
    with caplog.at_level(logging.INFO, logger="forwarder"), Pipeline(cfg) as p:
        for i in range(3):
            (tmp_path / "in" / f"{i}.dcm").write_bytes(DATA)
        wait_for(lambda: len(p.objects()) == 1 and not any((tmp_path / "in").iterdir()), 15,
                 "the three taken (one object: the same content)")
    said = [r.getMessage() for r in caplog.records if "cannot tell" in r.getMessage()]
    assert len(said) == 1 and "(a reason in words, for " in said[0], said


def test_a_held_file_the_spool_fails_to_take_is_quarantined_by_copy_and_left(
        tmp_path: Path, writer: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taken as it is after ``truncated_after``, a file whose taking fails for a reason of
    its own is quarantined like any other, but by copy: its writer is still at work."""
    cfg = make_config(tmp_path, watch="min_age: 300ms\ntruncated_after: 1s")
    target = tmp_path / "in" / "paused.dcm"
    with Pipeline(cfg) as p:
        accept = p.spool.accept

        def failing(batch: list) -> list[int]:  # noqa: ANN001
            if any(item.source.endswith("paused.dcm") for item in batch):
                raise RuntimeError("a fault of this file alone")
            return accept(batch)

        monkeypatch.setattr(p.spool, "accept", failing)
        writer.write(SR[:SR_CUT])
        wait_for(lambda: p.spool.quarantined(), 15, "the file quarantined")
        [q] = p.spool.quarantined()
        assert Path(q["file"]).read_bytes() == SR[:SR_CUT] == target.read_bytes()
        monkeypatch.setattr(p.spool, "accept", accept)
        writer.write(SR[SR_CUT:])
        writer.close()
        wait_for(lambda: p.objects(), 15, "the completed file")
        assert p.objects()[0]["sha256"] == sha(SR)


def test_without_a_lease_a_ctime_ahead_of_the_clock_waits_no_more_than_min_age(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After the wall clock stepped back an hour, a file changed just before the step has
    a ctime an hour ahead: where no lease can be asked it waits min_age, not the hour."""
    from forwarder.candidate import Candidate
    from forwarder.config.schema import Watch
    from forwarder.settle import Signature

    monkeypatch.setattr(unfinished, "ask", lambda fd: (None, "no lease: test"))
    ahead = time.time_ns() + 3600 * 10**9
    cand = Candidate(Watch(name="w", path="/x", min_age=2.0), "/x/a", "a",
                     Signature(10, ahead - 60 * 10**9, ahead, 1), fresh=True)
    wait = unfinished.Unfinished().wait_for_writer(cand, -1)
    assert wait is not None and 0 < wait <= 2.0, wait
