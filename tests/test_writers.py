"""Writers that pause: a file still open for writing is never taken as the prefix it is.

The writer here is another process (the kernel's lease answers for other processes
only), which writes the part of a real file up to an element boundary, so that the part
alone reads as a complete, shorter data set, and then pauses longer than ``min_age``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
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


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    w = Writer(tmp_path / "in" / "paused.dcm")
    yield w
    if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait(10)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> list[bool | None]:
    """Every answer intake got to "is another process writing this file?"."""
    answers: list[bool | None] = []

    def counted(fd: int) -> bool | None:
        answers.append(writers.held_for_writing(fd))
        return answers[-1]

    monkeypatch.setattr(unfinished, "held_for_writing", counted)
    return answers


def test_the_part_before_the_pause_reads_as_a_whole_data_set(tmp_path: Path) -> None:
    """What makes the pause dangerous: nothing in the bytes says more is coming."""
    (tmp_path / "prefix.dcm").write_bytes(DATA[:CUT])
    found = probe(tmp_path / "prefix.dcm")
    assert found.sop_instance_uid and CUT < len(DATA) // 10


def test_a_lease_tells_whether_another_process_writes_the_file(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    target = tmp_path / "in" / "paused.dcm"
    w = Writer(target)
    w.write(DATA[:CUT])
    fd = os.open(target, os.O_RDONLY)
    try:
        assert writers.held_for_writing(fd) is True
        w.close()
        assert writers.held_for_writing(fd) is False
        with open(target, "ab"):  # a lease would still be ours to take: only others count
            assert writers.held_for_writing(fd) is True
    finally:
        os.close(fd)
    status = os.open("/proc/self/status", os.O_RDONLY)  # not a local filesystem: unknown
    try:
        assert writers.held_for_writing(status) is None
    finally:
        os.close(status)


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
            wait_for(lambda: held.count(True) >= 3 or p.objects(), 15,
                     "intake to look at it three times")
            assert p.objects() == [] and target.exists(), "the prefix was taken"
            writer.write(DATA[CUT:])
            writer.close()
            wait_for(lambda: p.objects(), 15, "the file, once its writer closed it")
            wait_for(lambda: not target.exists(), 10, "the source removed")
            [obj] = p.objects()
            assert obj["sha256"] == sha(DATA) and p.spool.quarantined() == []
    said = [r.getMessage() for r in caplog.records if "still open for writing" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(str(target)), said


def test_a_file_held_open_unchanged_for_truncated_after_is_taken_by_copy_and_again_later(
        tmp_path: Path, writer: Writer, held: list[bool | None],
        caplog: pytest.LogCaptureFixture) -> None:
    """A writer that never closes (a leaked descriptor) does not hold a file for ever;
    if it was only pausing after all, its complete file is taken too."""
    cfg = make_config(tmp_path, watch="min_age: 300ms\ntruncated_after: 2s")
    target = tmp_path / "in" / "paused.dcm"
    with caplog.at_level(logging.INFO, logger="forwarder"), Pipeline(cfg) as p:
        writer.write(DATA[:CUT])
        wait_for(lambda: p.objects(), 15, "the file held open, after truncated_after")
        [first] = p.objects()
        assert first["sha256"] == sha(DATA[:CUT]) and target.read_bytes() == DATA[:CUT]
        assert "taken as it is, by copy" in caplog.text
        writer.write(DATA[CUT:])
        writer.close()
        wait_for(lambda: len(p.objects()) == 2, 15, "the completed file")
        wait_for(lambda: not target.exists(), 10, "the source removed, now that it is whole")
        assert p.objects()[1]["sha256"] == sha(DATA) and p.spool.quarantined() == []
    assert True in held
