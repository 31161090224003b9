"""Containment at the sending end, against real pynetdicom peers: a job that raises or kills
its worker fails alone; faults that hit every file back the destination off and fail none."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from forwarder import outcome
from forwarder.sender import DestinationSender
from forwarder.spool import Spool, claims
from tests.corpus import unique_copies
from tests.peers import wait_for
from tests.sendutil import destination, enqueue, settled, states


@pytest.fixture
def spool(tmp_path: Path):  # noqa: ANN201
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def break_object(spool: Spool, sop_instance_uid: str) -> None:
    """Put a directory where the spool keeps the file of ``sop_instance_uid``: reading it
    raises IsADirectoryError, an error about that one job that no layer expects."""
    [(name,)] = spool.db.execute("SELECT name FROM objects WHERE sop_instance = ?",
                                 (sop_instance_uid,)).fetchall()
    (spool.objects / name).unlink()
    (spool.objects / name).mkdir()


def test_an_unexpected_error_fails_that_job_and_keeps_the_association(
        make_scp, spool: Spool, tmp_path: Path) -> None:
    peer = make_scp(transfer_syntaxes=[ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    bad_uid, *uids = enqueue(spool, list(unique_copies(tmp_path / "c", 5).values()))
    break_object(spool, bad_uid)
    with DestinationSender(destination(peer.port, "batch: 10"), "FORWARDER", spool) as sender:
        wait_for(lambda: settled(spool), 30, "the queue to settle")
        assert sender.restarts == 0
    assert peer.counts() == {u: 1 for u in uids}
    [f] = spool.failed_jobs()
    assert f["sop_instance_uid"] == bad_uid and "IsADirectoryError" in f["reason"]
    assert "cannot prepare or send this file" in f["reason"]
    assert "no response" not in f["reason"]
    assert peer.associations == 1 and peer.aborts_seen == 0
    assert spool.health("pacs").state == "ok"


def test_a_job_that_kills_its_worker_fails_after_a_bounded_number_of_deaths(
        make_scp, spool: Spool, tmp_path: Path) -> None:
    files = list(unique_copies(tmp_path / "c", 4).values())
    bad = str(dcmread(files[1]).SOPInstanceUID)
    holder: dict[str, DestinationSender] = {}
    kills: list[int] = []

    def status(event) -> int:  # noqa: ANN001
        if event.request.AffectedSOPInstanceUID == bad:  # the worker dies sending it
            pid = holder["sender"].pids[0]
            kills.append(pid)
            os.kill(pid, signal.SIGKILL)
            return 0xA700
        return 0

    peer = make_scp(status=status)
    uids = enqueue(spool, files)
    faults: list[BaseException] = []
    sender = DestinationSender(destination(peer.port), "FORWARDER", spool,
                               on_fatal=faults.append)
    holder["sender"] = sender
    with sender:
        wait_for(lambda: settled(spool), 60, "the queue to settle")
        assert sender.alive
    assert faults == [] and len(kills) == claims.MAX_DEATHS
    assert sender.restarts == claims.MAX_DEATHS
    assert peer.counts() == {u: 1 for u in uids if u != bad}
    [f] = spool.failed_jobs()
    assert f["sop_instance_uid"] == bad
    assert f"died {claims.MAX_DEATHS} times" in f["reason"]


def test_a_file_refused_a700_while_others_are_stored_fails_with_the_peers_comment(
        make_scp, spool: Spool, tmp_path: Path) -> None:
    files = list(unique_copies(tmp_path / "c", 3).values())
    bad = str(dcmread(files[1]).SOPInstanceUID)

    refusals: list[str] = []

    def status(event) -> int:  # noqa: ANN001 - as Orthanc answers a file it cannot index
        if event.request.AffectedSOPInstanceUID == bad:
            refusals.append(bad)
            return 0xA700
        return 0

    peer = make_scp(status=status, comment="missing PatientID")
    uids = enqueue(spool, files)
    more = iter(unique_copies(tmp_path / "more", 20, prefix="m").values())
    with DestinationSender(destination(peer.port), "FORWARDER", spool):
        while not spool.failed_jobs():  # files keep coming and are stored around it
            seen = len(refusals)
            uids += enqueue(spool, [next(more)])
            wait_for(lambda n=seen, u=set(uids): set(peer.counts()) >= u - {bad}
                     and (len(refusals) > n or spool.failed_jobs()), 20,
                     "a neighbour stored and the file tried again")
    assert peer.counts() == {u: 1 for u in uids if u != bad}
    [f] = spool.failed_jobs()
    assert f["sop_instance_uid"] == bad and f["attempts"] == outcome.REFUSALS_ALONE
    assert "0xA700 (missing PatientID)" in f["reason"] and "while it stored other" in f["reason"]
    assert spool.health("pacs").state == "ok"


class Sick:
    """A peer that misbehaves on every C-STORE until ``cured``: abort, stall past our DIMSE
    timeout, or A700."""

    def __init__(self, how: str):
        self.how = how
        self.cured = threading.Event()
        self.sick_answers = 0
        self.release = threading.Event()

    def __call__(self, event) -> int:  # noqa: ANN001
        if self.cured.is_set():
            return 0
        self.sick_answers += 1
        if self.how == "abort":
            event.assoc.abort()
            return 0xA700  # never sent: the abort went out first
        if self.how == "stall":
            self.release.wait(3)  # past our DIMSE timeout (500 ms)
            return 0xA700  # too late: we have given up on it
        return 0xA700


@pytest.mark.parametrize("how", ["abort", "stall", "a700"])
def test_a_peer_sick_for_every_file_backs_off_fails_nothing_then_delivers_once(
        make_scp, spool: Spool, tmp_path: Path, how: str) -> None:
    sick = Sick(how)
    peer = make_scp(status=sick)
    uids = enqueue(spool, list(unique_copies(tmp_path / "c", 12).values()))
    dest = destination(peer.port, "timeouts: {connect: 2s, acse: 5s, dimse: 500ms, "
                       "network: 5s}\nretry: {initial: 100ms, max: 400ms, jitter: 0.1}")
    try:
        with DestinationSender(dest, "FORWARDER", spool):
            wait_for(lambda: spool.health("pacs").state == "backoff", 30,
                     "the destination to back off")
            reason = spool.health("pacs").reason or ""
            assert "in a row failed alike" in reason
            wait_for(lambda: sick.sick_answers >= 12, 60, "the peer to stay sick for a while")
            assert states(spool)["failed"] == 0
            report = spool.status(["pacs"])["destinations"]["pacs"]
            assert report["done"] == 0 and report["failed"] == 0
            sick.cured.set()
            wait_for(lambda: settled(spool), 60, "the queue to drain after the cure")
    finally:
        sick.release.set()
    assert peer.counts() == {u: 1 for u in uids}
    assert states(spool) == {"pending": 0, "sending": 0, "done": 12, "failed": 0}


def test_a_peer_without_verification_is_healthy_again_after_an_outage(
        make_scp, spool: Spool, tmp_path: Path) -> None:
    from tests.faults.harness import Gate

    peer = make_scp(verification=False)
    gate = Gate(peer.port, down=True)
    try:
        uids = enqueue(spool, list(unique_copies(tmp_path / "c", 5).values()))
        with DestinationSender(destination(gate.port), "FORWARDER", spool):
            wait_for(lambda: spool.health("pacs").state == "backoff", 20, "backoff while down")
            wait_for(lambda: gate.attempts >= 3, 20, "probes while the peer is down")
            assert states(spool)["pending"] == 5
            gate.down = False
            wait_for(lambda: settled(spool), 30, "the queue to drain once the peer is up")
            assert spool.health("pacs").state == "ok"
    finally:
        gate.close()
    assert peer.counts() == {u: 1 for u in uids} and states(spool)["failed"] == 0


def test_outcomes_from_a_stale_owner_are_ignored(spool: Spool, tmp_path: Path) -> None:
    """A worker that outlived its daemon records nothing over a job claimed again since."""
    from forwarder.worker import backoff_policy

    policy = backoff_policy(destination(1))
    enqueue(spool, list(unique_copies(tmp_path / "c", 4).values()))
    old, new = claims.owner_of("old", 111), claims.owner_of("new", 222)
    stale = spool.claim("pacs", 4, owner=old)
    spool.recover()  # the next daemon's start: every claim back to pending
    fresh = spool.claim("pacs", 4, owner=new)
    assert {j.id for j in fresh} == {j.id for j in stale}
    a, b, c, d = (j.id for j in stale)
    spool.done([a], owner=old)
    assert spool.retry(b, "A700", policy, owner=old) is None
    assert not spool.fail(c, "late", owner=old)
    spool.release([d], owner=old)
    assert states(spool) == {"pending": 0, "sending": 4, "done": 0, "failed": 0}
    spool.done([a], owner=new)
    assert spool.retry(b, "A700", policy, owner=new) is not None
    assert spool.fail(c, "0xA900", owner=new)
    spool.release([d], owner=new)
    assert states(spool) == {"pending": 2, "sending": 0, "done": 1, "failed": 1}
    assert spool.failed_jobs()[0]["reason"] == "0xA900"


def test_a_dead_workers_claims_come_back_and_its_file_counts_a_death(
        spool: Spool, tmp_path: Path) -> None:
    enqueue(spool, list(unique_copies(tmp_path / "c", 3).values()))
    for death in range(1, claims.MAX_DEATHS + 1):
        owner = claims.owner_of("t", 1000 + death)
        first, *_ = spool.claim("pacs", 3, owner=owner)
        back = claims.reclaim(spool, owner, "killed by signal 9", in_flight=first.id)
        assert back.released == 2 and back.blamed == first.probe.sop_instance_uid
        assert back.deaths == death and back.failed == (death == claims.MAX_DEATHS)
    [f] = spool.failed_jobs()
    assert f"died {claims.MAX_DEATHS} times" in f["reason"] and "signal 9" in f["reason"]
    assert states(spool)["pending"] == 2


def test_a_dead_workers_stored_file_is_recorded_and_only_its_file_in_flight_blamed(
        spool: Spool, tmp_path: Path) -> None:
    """The flight record: the job the peer stored (its mark not yet recorded) is done,
    the job being sent counts a death, the rest go back unattempted; a worker that died
    between C-STOREs blames no file."""
    enqueue(spool, list(unique_copies(tmp_path / "c", 4).values()))
    owner = claims.owner_of("t", 1001)
    stored, sending, *rest = spool.claim("pacs", 4, owner=owner)
    back = claims.reclaim(spool, owner, "killed by signal 9", in_flight=sending.id,
                          stored=stored.id)
    assert (back.released, back.blamed, back.deaths) == (2, sending.probe.sop_instance_uid, 1)
    assert back.recorded == stored.probe.sop_instance_uid
    assert states(spool) == {"pending": 3, "sending": 0, "done": 1, "failed": 0}
    owner = claims.owner_of("t", 1002)
    assert len(spool.claim("pacs", 4, owner=owner)) == 3
    back = claims.reclaim(spool, owner, "exit status 1")
    assert (back.released, back.blamed, back.deaths) == (3, None, 0)
    assert states(spool) == {"pending": 3, "sending": 0, "done": 1, "failed": 0}
    assert [r[0] for r in spool.db.execute("SELECT deaths FROM jobs WHERE id=?",
                                           (sending.id,))] == [1]


def test_a_dead_workers_claims_come_back_even_when_its_stored_file_cannot_be_recorded(
        spool: Spool, tmp_path: Path, monkeypatch) -> None:
    enqueue(spool, list(unique_copies(tmp_path / "c", 3).values()))
    owner = claims.owner_of("t", 1003)
    stored, sending, _ = spool.claim("pacs", 3, owner=owner)

    def broken(*a, **kw) -> None:  # noqa: ANN002, ANN003
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(spool, "done", broken)
    back = claims.reclaim(spool, owner, "killed by signal 9", in_flight=sending.id,
                          stored=stored.id)
    assert back.unrecorded == "OSError: [Errno 30] Read-only file system"
    assert back.recorded is None  # not recorded: it is sent again, and logged then
    assert (back.released, back.blamed) == (2, sending.probe.sop_instance_uid)
    assert states(spool) == {"pending": 3, "sending": 0, "done": 0, "failed": 0}


@pytest.mark.parametrize("logged", [False, True])
def test_a_dead_workers_stored_file_is_logged_stored_once(
        spool: Spool, tmp_path: Path, caplog: pytest.LogCaptureFixture, logged: bool) -> None:
    """A worker logs a file "stored" just before it records the mark, while the next
    file is at the peer. Should it die before that, the sender that records the mark
    logs the line; should it die after logging, before recording, the line is not
    written twice."""
    from types import SimpleNamespace

    from forwarder import worker

    enqueue(spool, list(unique_copies(tmp_path / "c", 2).values()))
    sender = DestinationSender(destination(1, "batch: 10"), "FORWARDER", spool)
    proc = SimpleNamespace(exitcode=-9, name="fwd-send-pacs-0", pid=4242)
    stored, sending = spool.claim("pacs", 2, owner=claims.owner_of(sender.token, proc.pid))
    flight = [0] * worker.FLIGHT_SLOTS
    flight[worker.IN_FLIGHT], flight[worker.STORED] = sending.id, stored.id
    flight[worker.STATUS] = 0xB000  # stored with a warning
    if logged:
        flight[worker.LOGGED] = stored.id
    with caplog.at_level("INFO", logger="forwarder.sender"):
        sender._died(proc, flight, 0.0)  # type: ignore[arg-type]
    lines = [r for r in caplog.records if getattr(r, "FORWARDER_EVENT", "") == "stored"]
    assert [r.SOP_INSTANCE_UID for r in lines] == \
        ([] if logged else [stored.probe.sop_instance_uid])
    for r in lines:  # found by the fields the worker's own line has
        assert r.SOP_CLASS_UID == stored.probe.sop_class_uid
        assert r.STUDY_INSTANCE_UID == stored.probe.study_instance_uid
        assert (r.DESTINATION, r.CALLED_AE) == ("pacs", sender.dest.called_ae_title)
        assert r.PEER == sender.dest.peer
        assert (r.DICOM_STATUS, r.ATTEMPT) == ("0xB000", stored.attempts + 1)
        assert r.levelname == "WARNING"
        assert r.getMessage().startswith(f"{stored.probe.sop_instance_uid} stored at pacs "
                                         "(0xB000): stored with warning 0xB000; recorded by")
    assert states(spool) == {"pending": 1, "sending": 0, "done": 1, "failed": 0}


def test_a_stored_file_of_a_worker_killed_before_logging_it_is_logged_though_its_job_id_came_back(
        make_scp, spool: Spool, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Job ids come back: a delivered file's rows are deleted, and SQLite gives the next
    job the highest id left plus one. The worker logs file A (job 1); the queue empties;
    B and C come in, B as job 1 again. The peer stores B and the worker dies reading C
    (a FIFO that never opens, as a codec crash would), before it logs B: its sender logs
    B "stored", once, as for any other job id."""
    from forwarder import worker

    a, b, c = unique_copies(tmp_path / "c", 3).values()
    [uid_a] = enqueue(spool, [a])
    [(job_a,)] = spool.db.execute("SELECT id FROM jobs").fetchall()
    held: dict[str, str] = {}  # B's SOP Instance UID, C's name in the spool
    c_bytes: list[bytes] = []
    named, blocked = threading.Event(), threading.Event()

    def status(event) -> int:  # noqa: ANN001
        if event.request.AffectedSOPInstanceUID == held.get("b"):  # C: a FIFO from now on
            assert named.wait(10)
            path = spool.objects / held["c"]
            c_bytes.append(path.read_bytes())
            path.unlink()
            os.mkfifo(path)
            blocked.set()
        return 0

    peer = make_scp(status=status)
    sender = DestinationSender(destination(peer.port, "batch: 10"), "FORWARDER", spool)
    with caplog.at_level("INFO", logger="forwarder.sender"), sender:
        wait_for(lambda: peer.counts() == {uid_a: 1} and not spool.db.execute(
            "SELECT count(*) FROM jobs").fetchone()[0], 30, "A delivered and forgotten")
        held["b"] = str(dcmread(b, stop_before_pixels=True).SOPInstanceUID)
        uid_b, uid_c = enqueue(spool, [b, c])
        job_b, job_c = (spool.db.execute("SELECT j.id FROM jobs j JOIN objects o ON "
                                         "o.id = j.object_id WHERE o.sop_instance=?",
                                         (u,)).fetchone()[0] for u in (uid_b, uid_c))
        assert job_b == job_a  # the id came back
        [(name,)] = spool.db.execute("SELECT name FROM objects WHERE sop_instance=?",
                                     (uid_c,)).fetchall()
        held["c"] = name
        named.set()
        flight = sender._flights[0]
        wait_for(lambda: blocked.is_set() and flight[worker.IN_FLIGHT] == job_c, 30,
                 "the worker to open C")
        assert flight[worker.STORED] == job_b  # stored, its line not yet logged
        os.kill(sender.pids[0], signal.SIGKILL)
        fifo = spool.objects / name
        (tmp_path / "c.tmp").write_bytes(c_bytes[0])
        os.replace(tmp_path / "c.tmp", fifo)  # the next worker reads C
        wait_for(lambda: settled(spool), 60, "the queue to settle")
    assert peer.counts() == {uid_a: 1, uid_b: 1, uid_c: 1}
    lines = [(r.SOP_INSTANCE_UID, r.DICOM_STATUS, r.ATTEMPT) for r in caplog.records
             if getattr(r, "FORWARDER_EVENT", "") == "stored"]
    assert lines == [(uid_b, "0x0000", 1)]  # logged by the sender: the worker died first


def test_a_worker_killed_before_recording_a_stored_file_blames_the_file_in_flight(
        make_scp, spool: Spool, tmp_path: Path) -> None:
    """A stored file's done mark is recorded while the next file is at the peer. Here
    another writer holds the spool locked, so the worker is killed (sending the next
    file, a poison one) with the mark unrecorded: the stored file is not sent again and
    the deaths count against the poison file alone, which fails after MAX_DEATHS."""
    files = list(unique_copies(tmp_path / "c", 3).values())
    uids = enqueue(spool, files)
    first, bad = uids[0], uids[1]
    holder: dict[str, DestinationSender] = {}
    kills: list[int] = []
    lock = sqlite3.connect(spool.root / "index.sqlite", check_same_thread=False,
                           isolation_level=None, timeout=30)

    def status(event) -> int:  # noqa: ANN001
        uid = event.request.AffectedSOPInstanceUID
        if uid == first and not kills:
            lock.execute("BEGIN IMMEDIATE")  # the worker cannot record the first file
        if uid == bad:  # the worker dies sending it
            pid = holder["sender"].pids[0]
            kills.append(pid)
            os.kill(pid, signal.SIGKILL)
            if lock.in_transaction:
                lock.execute("ROLLBACK")
            return 0xA700
        return 0

    peer = make_scp(status=status)
    try:
        sender = DestinationSender(destination(peer.port, "batch: 10"), "FORWARDER", spool)
        holder["sender"] = sender
        with sender:
            wait_for(lambda: settled(spool), 60, "the queue to settle")
    finally:
        lock.close()
    assert len(kills) == claims.MAX_DEATHS
    assert peer.counts() == {u: 1 for u in uids if u != bad}
    [f] = spool.failed_jobs()
    assert f["sop_instance_uid"] == bad and f"died {claims.MAX_DEATHS} times" in f["reason"]
    assert states(spool) == {"pending": 0, "sending": 0, "done": 2, "failed": 1}


def tls_yaml(pki: dict[str, Path], ca: Path | None = None, key: Path | None = None,
             password_file: Path | None = None) -> str:
    text = (f"tls: {{enabled: true, cert: {pki['client.pem']}, key: {key or pki['client.key']}, "
            f"ca: [{ca or pki['ca.pem']}]")
    if password_file:
        text += f", key_password_file: {password_file}"
    return text + "}"


def test_tls_material_errors_hold_with_a_reason_and_connect_nowhere(
        make_scp, spool: Spool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives import serialization

    from forwarder.cli import main
    from tests.faults.harness import Gate
    from tests.tlsutil import make_pki, server_context

    pki = make_pki(tmp_path / "pki")
    peer = make_scp(ssl_context=server_context(pki))
    gate = Gate(peer.port, down=False)
    uids = enqueue(spool, list(unique_copies(tmp_path / "c", 3).values()))
    missing = tmp_path / "no-such-ca.pem"
    try:
        with DestinationSender(destination(gate.port, tls_yaml(pki, ca=missing)), "FORWARDER",
                               spool):
            wait_for(lambda: spool.health("pacs").state == "held", 20, "held: CA file missing")
        reason = spool.health("pacs").reason or ""
        assert "TLS settings unusable" in reason and "No such file" in reason
        assert gate.attempts == 0 and peer.received == []

        key = serialization.load_pem_private_key(pki["client.key"].read_bytes(), None)
        locked = tmp_path / "client-locked.key"
        locked.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right")))
        pw = tmp_path / "key-pw"
        pw.write_text("wrong\n")
        spool.set_health("pacs", "ok")
        dest = destination(gate.port, tls_yaml(pki, key=locked, password_file=pw)
                           + "\nretry: {initial: 10m, max: 10m}")
        with DestinationSender(dest, "FORWARDER", spool):
            wait_for(lambda: spool.health("pacs").state == "held"
                     and "TLS settings unusable" in (spool.health("pacs").reason or ""), 20,
                     "held: wrong key password")
            assert gate.attempts == 0
            pw.write_text("right\n")
            cfg = tmp_path / "f.yaml"
            cfg.write_text(f"spool: {spool.root}\ndestinations:\n  pacs: {{host: 127.0.0.1, "
                           f"port: {gate.port}}}\nroutes:\n  - to: [pacs]\n")
            assert main(["resume", "-c", str(cfg), "pacs"]) == 0
            said = capsys.readouterr().out
            assert "pacs: was held (TLS settings unusable" in said, said
            assert "; probing now; its 3 pending job(s) are due now" in said, said
            wait_for(lambda: settled(spool), 20, "delivery with the fixed key password")
    finally:
        gate.close()
    assert peer.counts() == {u: 1 for u in uids}


def test_tls_to_a_plain_peer_is_a_handshake_failure_and_sends_nothing_in_the_clear(
        make_scp, spool: Spool, tmp_path: Path) -> None:
    from tests.tlsutil import make_pki

    pki = make_pki(tmp_path / "pki")
    peer = make_scp()  # plain DICOM
    enqueue(spool, list(unique_copies(tmp_path / "c", 2).values()))
    with DestinationSender(destination(peer.port, tls_yaml(pki)), "FORWARDER", spool):
        wait_for(lambda: spool.health("pacs").state == "held", 20, "held")
    reason = spool.health("pacs").reason or ""
    assert "TLS handshake" in reason and "failed" in reason and "cannot connect" not in reason
    assert peer.associations == 0 and peer.received == []

