"""The running daemon contains faults at the sending end: a job that kills its worker, a
peer sick for every file then well again, a stop of the whole process group."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path

import pytest
from pydicom import dcmread

from forwarder.cli import main
from forwarder.spool import claims
from tests.corpus import unique_copies
from tests.daemonutil import DaemonProcess, process_tree, worker_pids, write_config
from tests.faults.harness import spool_view
from tests.peers import wait_for
from tests.test_sender_containment import Sick

ERROR_LINE = re.compile(r"^(\S+ \S+ )?(ERROR|CRITICAL) ", re.MULTILINE)


def status_json(cfg: Path, capsys) -> dict:  # noqa: ANN001
    capsys.readouterr()
    assert main(["status", "-c", str(cfg), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["destinations"]["pacs"]


def test_a_job_that_kills_its_worker_fails_and_the_daemon_never_exits(
        make_scp, tmp_path: Path) -> None:
    uids = unique_copies(tmp_path / "c", 6)
    bad = str(dcmread(sorted(uids.values())[2]).SOPInstanceUID)
    holder: dict[str, int] = {}
    kills: list[int] = []

    def status(event) -> int:  # noqa: ANN001 - the worker sending this file dies
        if event.request.AffectedSOPInstanceUID == bad:
            [pid] = worker_pids(holder["daemon"], "pacs")
            kills.append(pid)
            os.kill(pid, signal.SIGKILL)
            return 0xA700
        return 0

    peer = make_scp(status=status)
    cfg = write_config(tmp_path, peer.port, min_age="100ms")
    d = DaemonProcess(cfg, tmp_path)
    holder["daemon"] = d.proc.pid
    try:
        d.wait_ready()
        for p in uids.values():
            os.rename(p, tmp_path / "in" / p.name)
        wait_for(lambda: spool_view(tmp_path / "spool")["failed"] == {bad}
                 and len(peer.counts()) == 5, 90, "the poison job failed, the others stored")
        assert d.proc.poll() is None and len(kills) == claims.MAX_DEATHS
        wait_for(lambda: len(worker_pids(d.proc.pid, "pacs")) == 1, 10, "a worker running")
    finally:
        rc = d.stop()
    assert rc == 0
    assert peer.counts() == {u: 1 for u in uids if u != bad}
    out = d.output()
    assert out.count("FORWARDER_EVENT=sender_restart") == claims.MAX_DEATHS
    assert f"died {claims.MAX_DEATHS} times" in out and "exited with status" not in out


@pytest.mark.parametrize("how", ["abort", "stall", "a700"])
def test_a_peer_sick_for_every_store_backs_off_then_everything_arrives_once(
        make_scp, tmp_path: Path, capsys, how: str) -> None:  # noqa: ANN001
    sick = Sick(how)
    peer = make_scp(status=sick)
    cfg = write_config(tmp_path, peer.port, min_age="100ms")
    cfg.write_text(cfg.read_text().replace("dimse: 10s", "dimse: 500ms"))
    uids = unique_copies(tmp_path / "in", 20)
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        wait_for(lambda: status_json(cfg, capsys)["state"] == "backoff", 30,
                 "status to show the destination backing off")
        assert "in a row failed alike" in status_json(cfg, capsys)["last_error"]
        wait_for(lambda: sick.sick_answers >= 15, 60, "the peer to stay sick a while")
        report = status_json(cfg, capsys)
        assert report["failed"] == 0 and report["done"] == 0
        sick.cured.set()
        wait_for(lambda: len(peer.counts()) == 20, 60, "all 20 files after the cure")
        wait_for(lambda: status_json(cfg, capsys)["state"] == "ok", 10, "the destination ok")
        assert d.proc.poll() is None
    finally:
        sick.cured.set()
        sick.release.set()
        assert d.stop() == 0
    assert peer.counts() == {u: 1 for u in uids}
    view = spool_view(tmp_path / "spool")
    assert not view["pending"] and not view["failed"] and not view["sending"]


def test_a_stop_of_the_whole_process_group_while_busy_logs_no_error(
        make_scp, tmp_path: Path) -> None:
    def slow(event) -> int:  # noqa: ANN001
        threading.Event().wait(0.01)
        return 0

    peer = make_scp(status=slow)
    cfg = write_config(tmp_path, peer.port, "    associations: 2\n")
    unique_copies(tmp_path / "in", 200)
    d = DaemonProcess(cfg, tmp_path)
    d.wait_ready()
    wait_for(lambda: len(peer.received) >= 30, 30, "the transfer under way")
    for pid in process_tree(d.proc.pid):  # as systemd's KillMode=control-group does
        os.kill(pid, signal.SIGTERM)
    assert d.wait(60) == 0
    out = d.output()
    assert not ERROR_LINE.search(out), out[-3000:]
    assert peer.aborts_seen == 0


def test_resume_releases_a_held_destination_at_once_with_the_fixed_secret(
        make_scp, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """The password file is read at every association and probe; `resume` probes now
    instead of after retry.max (10 minutes here), while the daemon runs."""
    peer = make_scp(user_check=lambda e: (e.secondary_field == b"right", None))
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    cfg = write_config(tmp_path, peer.port, min_age="100ms")
    cfg.write_text(cfg.read_text().replace(
        "retry: {initial: 200ms, max: 1s}",
        f"retry: {{initial: 10m, max: 10m}}\n    identity: {{user: alice, password_file: {pw}}}"))
    uids = unique_copies(tmp_path / "in", 5)
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        wait_for(lambda: status_json(cfg, capsys)["state"] == "held", 30, "held")
        assert peer.received == [] and status_json(cfg, capsys)["pending"] == 5
        pw.write_text("right\n")  # the operator fixes the secret ...
        capsys.readouterr()
        assert main(["resume", "-c", str(cfg), "pacs"]) == 0  # ... and resumes
        assert "pacs: was held" in capsys.readouterr().out
        wait_for(lambda: len(peer.counts()) == 5, 20, "all 5 files after resume")
        wait_for(lambda: status_json(cfg, capsys)["state"] == "ok", 10, "ok again")
    finally:
        assert d.stop() == 0
    assert peer.counts() == {u: 1 for u in uids}


def test_resume_of_an_unknown_destination_is_a_usage_error(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    cfg = write_config(tmp_path, 1)
    assert main(["resume", "-c", str(cfg), "nope"]) == 2
    assert "no destination named 'nope'" in capsys.readouterr().err


def test_jobs_expire_during_an_outage_after_an_alert(make_scp, tmp_path: Path,
                                                      capsys) -> None:  # noqa: ANN001
    from forwarder.spool import Spool
    from tests.faults.harness import Gate
    from tests.sendutil import enqueue

    peer = make_scp()
    gate = Gate(peer.port, down=True)  # the peer is down for the whole test
    files = list(unique_copies(tmp_path / "c", 4).values())
    with Spool(tmp_path / "spool") as spool:
        old = enqueue(spool, files[:1])
        ageing = enqueue(spool, files[1:3])
        enqueue(spool, files[3:])
        with spool._tx() as db:  # max_age is 1h: 66 and 54 minutes old
            db.execute("UPDATE jobs SET created_at = created_at - 3960 WHERE id = 1")
            db.execute("UPDATE jobs SET created_at = created_at - 3240 WHERE id IN (2, 3)")
    cfg = write_config(tmp_path, gate.port)
    cfg.write_text(cfg.read_text().replace("retry: {initial: 200ms, max: 1s}",
                                           "retry: {initial: 200ms, max: 1s, max_age: 1h}"))
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        wait_for(lambda: spool_view(tmp_path / "spool")["failed"] == set(old), 20,
                 "the job past max_age expired while the peer is down")
        wait_for(lambda: "FORWARDER_EVENT=expiring" in d.output(), 20, "the expiry alert")
        wait_for(lambda: status_json(cfg, capsys)["state"] == "backoff", 20, "backoff")
        assert status_json(cfg, capsys)["pending"] == 3
        out = d.output()
        line = next(x for x in out.splitlines() if "FORWARDER_EVENT=expiring" in x)
        assert "2 job(s) for pacs waited more than 80% of max_age" in line and "JOBS=2" in line
        assert d.proc.poll() is None
    finally:
        rc = d.stop()
        gate.close()
    assert rc == 0 and peer.received == []
    assert spool_view(tmp_path / "spool")["pending"] >= set(ageing)


def test_a_peer_refusing_our_certificate_holds_and_logs_no_traceback(
        make_scp, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from tests.tlsutil import make_pki, server_context

    ours, theirs = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other", "self-signed")
    peer = make_scp(ssl_context=server_context(theirs))  # trusts neither our CA nor we its
    cfg = write_config(tmp_path, peer.port, min_age="100ms", extra_dest=(
        f"    tls: {{enabled: true, cert: {ours['client.pem']}, key: {ours['client.key']}, "
        f"ca: [{ours['ca.pem']}]}}\n"))
    unique_copies(tmp_path / "in", 2)
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        wait_for(lambda: status_json(cfg, capsys)["state"] == "held", 30, "held")
        reason = status_json(cfg, capsys)["last_error"]
        assert "TLS handshake" in reason and "CERTIFICATE_VERIFY_FAILED" in reason
    finally:
        assert d.stop() == 0
    out = d.output()
    assert "Traceback" not in out and "TCP Initialisation Error" not in out
    assert peer.received == []


def pings_between(d: DaemonProcess, start: float, end: float) -> int:
    return sum(1 for t, m in list(d.messages) if "WATCHDOG=1" in m and start <= t <= end)


def test_the_watchdog_is_pinged_only_while_every_worker_makes_progress(
        make_scp, tmp_path: Path) -> None:
    import time

    from forwarder import config
    from forwarder.worker import stall_limit

    peer = make_scp()
    cfg = write_config(tmp_path, peer.port)
    cfg.write_text(cfg.read_text().replace(
        "timeouts: {connect: 2s, acse: 5s, dimse: 10s, network: 10s}",
        "timeouts: {connect: 250ms, acse: 250ms, dimse: 250ms, network: 250ms}"))
    limit = stall_limit(config.load(str(cfg)).destinations["pacs"])
    assert limit == 12.0
    d = DaemonProcess(cfg, tmp_path, env={"WATCHDOG_USEC": "1000000"})
    try:
        d.wait_ready()
        [worker] = worker_pids(d.proc.pid, "pacs")
        idle_from = time.monotonic()  # idle by choice, longer than the stall limit
        wait_for(lambda: time.monotonic() > idle_from + limit + 2, limit + 10, "a long idle")
        now = time.monotonic()
        assert pings_between(d, now - 2, now) >= 2, "an idle worker must keep the pings going"
        os.kill(worker, signal.SIGSTOP)  # wedged: alive, but makes no progress
        try:
            wait_for(lambda: "no progress: fwd-send-pacs-0" in d.output(), limit + 10,
                     "the wedged worker noticed")
            stopped = time.monotonic()
            wait_for(lambda: time.monotonic() > stopped + 2, 5, "two seconds")
            assert pings_between(d, stopped + 0.1, time.monotonic()) == 0
        finally:
            os.kill(worker, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: pings_between(d, resumed, time.monotonic()) >= 2, 10,
                 "the pings to come back once the worker goes on")
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


def test_reload_stops_changed_senders_in_parallel_and_keeps_pinging(
        make_scp, tmp_path: Path) -> None:
    import time

    def slow(event) -> int:  # noqa: ANN001 - each C-STORE takes 2 s
        threading.Event().wait(2.0)
        return 0

    a, b = make_scp(status=slow), make_scp(status=slow)
    timeouts = "    timeouts: {connect: 2s, acse: 5s, dimse: 10s, network: 10s}\n"
    cfg = write_config(tmp_path, a.port, extra="  - to: [other]\n")
    text = cfg.read_text().replace("routes:", (
        f"  other:\n    host: 127.0.0.1\n    port: {b.port}\n{timeouts}routes:"))
    assert text.count(timeouts) == 2
    cfg.write_text(text)
    unique_copies(tmp_path / "in", 6)
    d = DaemonProcess(cfg, tmp_path, env={"WATCHDOG_USEC": "1000000"})
    try:
        d.wait_ready()
        wait_for(lambda: a.associations and b.associations, 20, "both transfers under way")
        cfg.write_text(text.replace("dimse: 10s", "dimse: 11s"))  # both destinations change
        start = time.monotonic()
        d.signal(signal.SIGHUP)
        d.wait_ready(count=2)
        took = time.monotonic() - start
        pings = [t for t, m in list(d.messages) if "WATCHDOG=1" in m and t >= start - 0.6]
        assert took < 3.5, f"reload took {took:.1f}s: the two senders stopped one by one"
        assert all(y - x < 1.0 for x, y in zip(pings, pings[1:], strict=False)), \
            "the pings paused during the reload"
        wait_for(lambda: len(a.counts()) == 6 and len(b.counts()) == 6, 60, "all delivered")
    finally:
        assert d.stop() == 0
    assert set(a.counts().values()) == {1} and set(b.counts().values()) == {1}
