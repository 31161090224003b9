"""The wall clock stepped back while the daemon runs (an NTP step, a wrong RTC fixed by
hand): times written before the step (a destination's next probe, a job's next attempt)
lie further ahead than any backoff. The worker must not wait for the clock to catch up."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from forwarder.sender import DestinationSender
from forwarder.spool import Spool
from tests.corpus import unique_copies
from tests.peers import wait_for
from tests.sendutil import destination, enqueue, states

DAY = 86400.0


@pytest.fixture
def spool(tmp_path: Path):  # noqa: ANN201
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def test_a_backoff_and_jobs_set_before_the_clock_stepped_back_a_day_do_not_wait_a_day(
        make_scp, spool: Spool, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    peer = make_scp()
    uids = enqueue(spool, list(unique_copies(tmp_path / "c", 3).values()))
    later = time.time() + DAY  # what the clock said before it was stepped back a day
    with spool._tx(durable=False) as db:
        db.execute("UPDATE jobs SET next_attempt_at=?", (later,))
    spool.set_health("pacs", "backoff", later, "cannot connect (before the step)", now=later)
    with DestinationSender(destination(peer.port), "FORWARDER", spool):
        wait_for(lambda: states(spool)["done"] == 3, 20, "the jobs stored")
    assert peer.counts() == {u: 1 for u in uids}
    assert spool.health("pacs").state == "ok"
    assert "pacs: a retry time lay further ahead than any backoff" in capfd.readouterr().err


def _worker(spool: Spool):  # noqa: ANN202
    from forwarder.worker import Worker, WorkerSpec
    from tests.peers import free_port

    return Worker(WorkerSpec(destination(free_port()), "FORWARDER", str(spool.root), 0),
                  spool, os.pipe()[0])


def test_a_clock_stepped_ahead_or_back_expires_nothing_and_shows_no_negative_age(
        spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """An edge box boots 8 days behind: the daemon starts (its first look at the clocks),
    takes files while the peer is down, then NTP steps the clock. The jobs waited
    seconds, not 8 days, and max_age (7 days) fails none of them; a job made after the
    step keeps its own age. Stepped back 10 days, nothing expires and ``status`` shows
    no age below zero."""
    worker = _worker(spool)
    real = time.time
    worker._expire()  # the first look, at start
    enqueue(spool, list(unique_copies(tmp_path / "c", 3).values()))  # before the step
    monkeypatch.setattr(time, "time", lambda: real() + 8 * DAY)
    enqueue(spool, list(unique_copies(tmp_path / "d", 1, "MR_small.dcm").values()))  # after
    worker._expire()
    assert states(spool) == {"pending": 4, "sending": 0, "done": 0, "failed": 0}
    assert "pacs: the clock stepped ahead by 691200s; 3 waiting job(s)" in caplog.text
    ages = [time.time() - r[0] for r in spool.db.execute("SELECT created_at FROM jobs")]
    assert all(0 <= a < 60 for a in ages), ages
    monkeypatch.setattr(time, "time", lambda: real() - 2 * DAY)
    worker._expire()
    assert states(spool)["failed"] == 0
    assert spool.status(["pacs"])["destinations"]["pacs"]["oldest_pending_s"] == 0
    assert "pacs: the clock stepped back by 864000s" in caplog.text
