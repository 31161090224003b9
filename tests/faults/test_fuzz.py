"""Fuzzing intake: mutated real DICOM files and random bytes through probe and intake.

The only outcomes allowed are accepted (in the spool) or quarantined with a reason;
never an uncaught exception, never a hang (each input has a time limit).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarder.intake import Intake
from forwarder.settle import Signature
from forwarder.spool import Spool
from forwarder.watcher import Candidate
from tests.corpus import data_file
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
    cfg = make_config(tmp, watch="truncated_after: 0s", routes="  - match: {Modality: [CT, MR]}\n    to: [pacs]\n"
                                  "  - to: [pacs]\n")
    spool = Spool(cfg.spool)
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
