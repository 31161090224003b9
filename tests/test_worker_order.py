"""One worker in this process against a real pynetdicom peer: the order of what it writes
to the peer and what it records in the spool."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from forwarder.errors import SpoolError
from forwarder.scu.association import Association
from forwarder.spool import Spool
from forwarder.worker import EXIT_SPOOL, STORED, Worker, WorkerSpec
from tests.corpus import unique_copies
from tests.peers import wait_for
from tests.sendutil import destination, enqueue, states


def _worker(spool: Spool, port: int) -> tuple[Worker, int]:
    bell_r, bell_w = os.pipe()
    os.set_blocking(bell_r, False)
    spec = WorkerSpec(destination(port, "batch: 10"), "FORWARDER", str(spool.root), 0)
    return Worker(spec, spool, bell_r), bell_w


def _stop_when_settled(spool: Spool, bell_w: int) -> threading.Thread:
    """Close the bell (the stop request) once no job is pending or being sent."""
    def watch() -> None:
        db = sqlite3.connect(f"file:{spool.root / 'index.sqlite'}?mode=ro", uri=True)
        try:
            wait_for(lambda: not db.execute("SELECT count(*) FROM jobs WHERE state IN "
                                            "('pending', 'sending')").fetchone()[0],
                     30, "the queue to settle")
        finally:
            db.close()
            os.close(bell_w)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def _trace(monkeypatch, spool: Spool) -> list[Any]:
    """What the worker does, in order: ("sent", SOP Instance UID) once a request is
    written, ("done", count) when done marks are recorded."""
    log: list[Any] = []
    real_send = Association._send_message
    real_done = spool.done

    def send(self, context_id, command, *rest):  # noqa: ANN001, ANN202
        real_send(self, context_id, command, *rest)
        log.append("sent")

    def done(ids, *a, **kw):  # noqa: ANN001, ANN202
        log.append(("done", len(ids)))
        return real_done(ids, *a, **kw)

    monkeypatch.setattr(Association, "_send_message", send)
    monkeypatch.setattr(spool, "done", done)
    return log


def test_a_done_mark_is_recorded_while_the_next_file_is_at_the_peer(
        make_scp, tmp_path: Path, monkeypatch) -> None:
    spool = Spool(tmp_path / "spool")
    try:
        peer = make_scp()
        uids = enqueue(spool, list(unique_copies(tmp_path / "c", 4).values()))
        log = _trace(monkeypatch, spool)
        worker, bell_w = _worker(spool, peer.port)
        stopper = _stop_when_settled(spool, bell_w)
        assert worker.run() == 0
        stopper.join(30)
        assert peer.counts() == {u: 1 for u in uids}
        assert states(spool) == {"pending": 0, "sending": 0, "done": 4, "failed": 0}
        # each file's done mark goes in after the next file's request is written; the
        # last one's before the worker claims again
        assert log == ["sent", "sent", ("done", 1), "sent", ("done", 1), "sent", ("done", 1),
                       ("done", 1)]
    finally:
        spool.close()


@pytest.mark.parametrize("error, code", [
    (SpoolError("spool index write failed: disk I/O error"), EXIT_SPOOL),
    (sqlite3.IntegrityError("a bug's constraint failure"), 1)], ids=["spool", "bug"])
def test_a_done_mark_that_cannot_be_recorded_stops_the_worker_and_loses_nothing(
        make_scp, tmp_path: Path, monkeypatch, error: Exception, code: int) -> None:
    """Recording fails while the next file is at the peer: the worker aborts that
    association and stops (a spool failure stops the daemon, a bug restarts the worker);
    the file in flight is not charged with it (no attempt, no failure): every claimed
    file stays claimed, so the next start sends them again: at least once, never lost."""
    spool = Spool(tmp_path / "spool")
    try:
        peer = make_scp()
        uids = enqueue(spool, list(unique_copies(tmp_path / "c", 3).values()))

        def broken(ids, *a, **kw):  # noqa: ANN001, ANN202
            raise error

        monkeypatch.setattr(spool, "done", broken)
        worker, _bell_w = _worker(spool, peer.port)
        assert worker.run() == code
        wait_for(lambda: peer.aborts_seen == 1, 10, "the peer to see the abort")
        assert set(peer.counts()) <= set(uids[:2]) and uids[0] in peer.counts()
        assert states(spool) == {"pending": 0, "sending": 3, "done": 0, "failed": 0}
        spool.recover()
        assert states(spool) == {"pending": 3, "sending": 0, "done": 0, "failed": 0}
        assert {a for (a,) in spool.db.execute("SELECT attempts FROM jobs")} == {0}
    finally:
        spool.close()


def test_a_stop_with_a_done_mark_unrecorded_records_it_or_stops_the_daemon(
        make_scp, tmp_path: Path, monkeypatch) -> None:
    """SIGTERM while a file is at the peer: the worker leaves after its answer and
    records it on the way out; when the spool cannot, the exit code says so (the daemon
    stops) rather than a traceback the daemon would take for a bug."""
    spool = Spool(tmp_path / "spool")
    try:
        peer = make_scp()
        uids = enqueue(spool, list(unique_copies(tmp_path / "c", 2).values()))
        worker, _bell_w = _worker(spool, peer.port)
        real_read = Association._read_response

        def read(self, *a, **kw):  # noqa: ANN001, ANN202
            worker.halt()  # the signal arrives while the peer takes the file in
            return real_read(self, *a, **kw)

        monkeypatch.setattr(Association, "_read_response", read)
        assert worker.run() == 0
        assert peer.counts() == {uids[0]: 1}  # the other file was not started: released
        assert states(spool) == {"pending": 1, "sending": 0, "done": 1, "failed": 0}

        def broken(ids, *a, **kw):  # noqa: ANN001, ANN202
            raise SpoolError("spool index write failed: disk I/O error")

        monkeypatch.setattr(spool, "done", broken)
        worker, _bell_w = _worker(spool, peer.port)
        assert worker.run() == EXIT_SPOOL
        assert peer.counts() == {uids[0]: 1, uids[1]: 1}
        assert states(spool) == {"pending": 0, "sending": 1, "done": 1, "failed": 0}
    finally:
        spool.close()


def test_time_spent_recording_a_mark_is_not_counted_as_the_peers_silence(
        make_scp, tmp_path: Path, monkeypatch) -> None:
    """A slow commit of the previous file's mark (a spool busy for longer than the DIMSE
    timeout) while the peer aborts on the next file: the reason says the peer aborted,
    not that it did not answer within the DIMSE timeout."""
    spool = Spool(tmp_path / "spool")
    try:
        uids = enqueue(spool, list(unique_copies(tmp_path / "c", 2).values()))
        aborted: list[str] = []

        def status(event) -> int:  # noqa: ANN001
            if event.request.AffectedSOPInstanceUID == uids[1] and not aborted:
                aborted.append(uids[1])
                event.assoc.abort()
                return 0xA700  # never sent: the abort went out first
            return 0

        peer = make_scp(status=status)
        real_done, real_retry = spool.done, spool.retry
        reasons: list[str] = []

        def slow_done(ids, *a, **kw):  # noqa: ANN001, ANN202
            threading.Event().wait(0.7)  # the spool's time, past the 500 ms DIMSE timeout
            return real_done(ids, *a, **kw)

        def retry(job_id, error, *a, **kw):  # noqa: ANN001, ANN202
            reasons.append(error)
            return real_retry(job_id, error, *a, **kw)

        monkeypatch.setattr(spool, "done", slow_done)
        monkeypatch.setattr(spool, "retry", retry)
        bell_r, bell_w = os.pipe()
        os.set_blocking(bell_r, False)
        dest = destination(peer.port, "batch: 10\ntimeouts: {connect: 2s, acse: 5s, "
                           "dimse: 500ms, network: 5s}")
        worker = Worker(WorkerSpec(dest, "FORWARDER", str(spool.root), 0), spool, bell_r)
        stopper = _stop_when_settled(spool, bell_w)
        assert worker.run() == 0
        stopper.join(30)
        assert aborted == [uids[1]] and peer.counts() == {u: 1 for u in uids}
        assert len(reasons) == 1 and "aborted" in reasons[0], reasons
        assert "DIMSE timeout" not in reasons[0]
    finally:
        spool.close()


def test_a_stored_file_is_in_the_flight_record_before_its_journal_line(
        make_scp, tmp_path: Path, monkeypatch) -> None:
    """Should the worker die just after writing "stored", its sender finds the job in the
    flight record and marks it done: never logged stored and then sent again."""
    import forwarder.worker as worker_mod

    spool = Spool(tmp_path / "spool")
    try:
        peer = make_scp()
        uids = enqueue(spool, list(unique_copies(tmp_path / "c", 2).values()))
        jobs = [i for (i,) in spool.db.execute("SELECT id FROM jobs ORDER BY id")]
        worker, bell_w = _worker(spool, peer.port)
        at_log: list[int] = []
        real_event = worker_mod.event

        def event(logger, name, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            if name == "stored":
                at_log.append(worker.flight[STORED])
            return real_event(logger, name, *a, **kw)

        monkeypatch.setattr(worker_mod, "event", event)
        stopper = _stop_when_settled(spool, bell_w)
        assert worker.run() == 0
        stopper.join(30)
        assert peer.counts() == {u: 1 for u in uids}
        assert at_log == jobs and worker.flight[STORED] == 0
    finally:
        spool.close()
