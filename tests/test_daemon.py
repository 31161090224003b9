"""The daemon as systemd runs it: sd_notify, reload, graceful stop, journald, the unit file."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forwarder.logs import EVENTS
from forwarder.spool import Spool
from tests.corpus import data_file, unique_copies
from tests.daemonutil import (
    REPO,
    DaemonProcess,
    drop,
    process_tree,
    running,
    worker_pids,
    write_config,
)
from tests.peers import free_port, wait_for
from tests.sendutil import enqueue


def test_ready_after_recovery_then_status_watchdog_and_stopping(make_scp, tmp_path: Path) -> None:
    port = free_port()  # the peer is down at first: jobs stay pending
    cfg = write_config(tmp_path, port)
    with Spool(tmp_path / "spool") as spool:  # a crash left a job claimed ("sending")
        enqueue(spool, [data_file("CT_small.dcm")])
        spool.claim("pacs", 10)
    d = DaemonProcess(cfg, tmp_path, env={"WATCHDOG_USEC": "200000"})
    try:
        d.wait_ready()
        ready_at = next(t for t, m in d.messages if "READY=1" in m)
        assert "recovered: requeued 1" in d.output()  # logged before READY was sent
        assert all(t >= ready_at for t, m in d.messages if "WATCHDOG=1" in m)
        wait_for(lambda: len(d.states("WATCHDOG")) >= 5, 10, "watchdog pings every 100 ms")
        wait_for(lambda: any("backoff: pacs" in s for s in d.states("STATUS")), 15,
                 "STATUS naming the destination in backoff")
        assert re.match(r"queued \d+, failed 0, quarantined 0", d.states("STATUS")[0])
        peer = make_scp(port=port)
        wait_for(lambda: len(peer.received) == 1, 20, "the recovered job delivered")
    finally:
        rc = d.stop()
    assert rc == 0 and d.states("STOPPING") == ["1"]


def test_sighup_with_a_broken_file_keeps_forwarding(make_scp, tmp_path: Path) -> None:
    peer = make_scp()
    cfg = write_config(tmp_path, peer.port)
    good = cfg.read_text()
    files = list(unique_copies(tmp_path / "corpus", 6).values())
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        drop(files[:2], tmp_path / "in")
        wait_for(lambda: len(peer.counts()) == 2, 20, "the first two files")
        cfg.write_text(good + "destinations_typo: {}\n  bad: [indent\n")
        d.signal(signal.SIGHUP)
        d.wait_ready(count=2)
        assert d.states("RELOADING") == ["1"] and "reload refused" in d.output()
        drop(files[2:4], tmp_path / "in")
        wait_for(lambda: len(peer.counts()) == 4, 20, "files after the failed reload")
        cfg.write_text(good.replace("min_age: 200ms", "min_age: 100ms"))
        d.signal(signal.SIGHUP)
        d.wait_ready(count=3)
        wait_for(lambda: "configuration reloaded" in d.output(), 10, "the reload")
        drop(files[4:], tmp_path / "in")
        wait_for(lambda: len(peer.counts()) == 6, 20, "files after the good reload")
    finally:
        assert d.stop() == 0
    assert all(n == 1 for n in peer.counts().values())


@pytest.mark.parametrize("to_every_process", [False, True], ids=["daemon", "control-group"])
def test_sigterm_mid_transfer_then_restart_delivers_everything_once(
        make_scp, tmp_path: Path, to_every_process: bool) -> None:
    """SIGTERM to the daemon, or (as systemd's default KillMode does) to every process of
    the service at once: in-flight C-STOREs finish, associations are released."""
    def slow(event) -> int:  # noqa: ANN001 - a peer that takes its time per file
        time.sleep(0.01)
        return 0

    peer = make_scp(status=slow)
    cfg = write_config(tmp_path, peer.port)
    uids = unique_copies(tmp_path / "in", 300)
    d = DaemonProcess(cfg, tmp_path)
    d.wait_ready()
    wait_for(lambda: len(peer.received) >= 50, 30, "the transfer under way")
    if to_every_process:
        for pid in process_tree(d.proc.pid):
            os.kill(pid, signal.SIGTERM)
    rc = d.stop()
    assert rc == 0 and peer.aborts_seen == 0 and peer.releases_seen >= 1
    assert len(peer.received) < 300, "the transfer should still have been running"
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        wait_for(lambda: len(peer.counts()) == 300, 60, "all 300 files after the restart")
    finally:
        assert d.stop() == 0
    assert peer.counts() == {u: 1 for u in uids} and peer.aborts_seen == 0


def test_associations_are_processes_that_end_with_a_killed_daemon(make_scp,
                                                                  tmp_path: Path) -> None:
    """Each association has its own worker process, so parallel associations use every
    core; a daemon killed outright takes its workers with it (they see the bell close),
    and they release their associations on the way out."""
    peer = make_scp()
    cfg = write_config(tmp_path, peer.port, "    associations: 3\n    idle_release: 60s\n")
    uids = unique_copies(tmp_path / "in", 30)
    d = DaemonProcess(cfg, tmp_path)
    d.wait_ready()
    wait_for(lambda: len(peer.counts()) == 30, 30, "30 files delivered")
    workers = worker_pids(d.proc.pid, "pacs")
    assert len(workers) == 3 and d.proc.pid not in workers
    opened = peer.associations
    d.kill()
    wait_for(lambda: not any(running(p) for p in workers), 10, "the workers to end")
    wait_for(lambda: peer.releases_seen == opened, 10, "every association released")
    assert peer.counts() == {u: 1 for u in uids} and peer.aborts_seen == 0


def test_bad_config_exits_78_without_ready(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("spool: x\ndestinations:\n  pacs: {host: h, port: nope}\nroutes: []\n")
    d = DaemonProcess(cfg, tmp_path)
    assert d.wait(30) == 78 and d.states("READY") == []
    assert "destinations.pacs.port: expected an integer" in d.output()


@pytest.mark.journald
def test_structured_events_in_a_real_journal(make_scp, private_journald, tmp_path: Path) -> None:
    peer = make_scp()
    cfg = write_config(tmp_path, peer.port)
    d = DaemonProcess(cfg, tmp_path, argv_prefix=private_journald.prefix(), log_target="journal")
    try:
        d.wait_ready()
        drop([data_file("CT_small.dcm")], tmp_path / "in")
        wait_for(lambda: len(peer.received) == 1, 20, "the file at the peer")
        wait_for(lambda: private_journald.entries("FORWARDER_EVENT=stored"), 10,
                 "the stored event in the journal")
    finally:
        assert d.stop() == 0
    [accepted] = private_journald.entries("FORWARDER_EVENT=accepted")
    [stored] = private_journald.entries("FORWARDER_EVENT=stored")
    uid = peer.received[0].sop_instance
    assert accepted["MESSAGE_ID"] == EVENTS["accepted"] and stored["MESSAGE_ID"] == EVENTS["stored"]
    assert stored["SOP_INSTANCE_UID"] == uid and stored["DESTINATION"] == "pacs"
    assert stored["PEER"] == f"127.0.0.1:{peer.port}" and stored["DICOM_STATUS"] == "0x0000"
    assert stored["PRIORITY"] == "6" and stored["SYSLOG_IDENTIFIER"] == "dicom-forwarder"
    assert accepted["FORWARDER_FILE"].endswith("CT_small.dcm")
    everything = private_journald.entries("SYSLOG_IDENTIFIER=dicom-forwarder")
    assert not any("PATIENT_NAME" in e or "CompressedSamples" in e.get("MESSAGE", "")
                   for e in everything)  # no PHI unless log.phi is true
    by_destination = private_journald.entries("DESTINATION=pacs")  # journalctl DESTINATION=pacs
    assert {e["FORWARDER_EVENT"] for e in by_destination} >= {"accepted", "stored"}


def _unit(tmp_path: Path, name: str = "dicom-forwarder.service") -> Path:
    exe = Path(sys.executable).parent / "dicom-forwarder"
    assert exe.exists(), "the package's console script is installed in the virtualenv"
    text = (REPO / "systemd" / name).read_text()
    unit = tmp_path / name.replace("@.", "@test.")
    unit.write_text(text.replace("/opt/dicom-forwarder/bin/dicom-forwarder", str(exe)))
    return unit


@pytest.mark.parametrize("name", ["dicom-forwarder.service", "dicom-forwarder@.service"])
def test_unit_file_verifies_clean(tmp_path: Path, name: str) -> None:
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", "--recursive-errors=no",
                        str(_unit(tmp_path, name))], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.parametrize("name", ["dicom-forwarder.service", "dicom-forwarder@.service"])
def test_unit_file_security_score(tmp_path: Path, name: str) -> None:
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20",
                        str(_unit(tmp_path, name))], capture_output=True, text=True)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert r.returncode == 0 and score and float(score.group(1)) <= 2.0, r.stdout[-500:]


def test_unit_file_contract() -> None:
    text = (REPO / "systemd/dicom-forwarder.service").read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "RestartPreventExitStatus=78", "StateDirectory=dicom-forwarder",
                 "User=dicom-forwarder", "StartLimitBurst=5", "PrivateTmp=yes",
                 "SystemCallFilter=mbind set_mempolicy get_mempolicy"):
        assert line in text.splitlines(), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    # RestartPreventExitStatus= covers the main process only: no ExecStartPre= to loop on
    assert not re.search(r"^ExecStartPre=", text, re.M)
    # reload validates before it signals: a broken file fails the reload
    reloads = re.findall(r"^ExecReload=(.*)$", text, re.M)
    assert "check-config" in reloads[0] and reloads[-1] == "/bin/kill -HUP $MAINPID"
    template = (REPO / "systemd/dicom-forwarder@.service").read_text()
    assert "StateDirectory=dicom-forwarder-%i" in template.splitlines()
    assert "run -c /etc/dicom-forwarder/%i.yaml" in template
    sysusers = (REPO / "systemd/dicom-forwarder.sysusers").read_text()
    assert re.search(r"^u dicom-forwarder ", sysusers, re.M)


def test_readme_first_command_config_end_to_end(tmp_path: Path) -> None:
    """etc/forwarder.yaml as shipped (on a free port): a dropped file arrives."""
    port = free_port()
    text = (REPO / "etc/forwarder.yaml").read_text()
    assert "port: 11112" in text
    cfg = tmp_path / "forwarder.yaml"
    cfg.write_text(text.replace("port: 11112", f"port: {port}"))
    (tmp_path / "var/incoming").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rx = subprocess.Popen([sys.executable, "-m", "forwarder", "receive", "--port", str(port),
                           "--output", "var/received"], cwd=tmp_path, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        shutil.copy(data_file("MR_small.dcm"), tmp_path / "var/incoming/")
        wait_for(lambda: list((tmp_path / "var/received").glob("*.dcm")), 30,
                 "the file in var/received")
        [got] = (tmp_path / "var/received").glob("*.dcm")
        assert got.read_bytes().endswith(data_file("MR_small.dcm").read_bytes()[-4096:])
        status = subprocess.run([sys.executable, "-m", "forwarder", "status", "-c", str(cfg),
                                 "--json"], cwd=tmp_path, env=env, capture_output=True,
                                text=True, check=True)
        report = json.loads(status.stdout)
        wait_for(lambda: json.loads(subprocess.run(
            [sys.executable, "-m", "forwarder", "status", "-c", str(cfg), "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True).stdout)
            ["destinations"]["local"]["done"] == 1, 10, "status to count it done")
        assert report["quarantined"] == 0
    finally:
        assert d.stop() == 0
        rx.terminate()
        rx.wait(10)


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A command on ``cfg``'s spool, as an operator runs it beside the daemon."""
    return subprocess.run([sys.executable, "-m", "forwarder", *args, "-c", str(cfg)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True)


def _destinations(cfg: Path) -> dict:
    """``status --json``'s destinations, as a monitoring script reads them."""
    out = _cli(cfg, "status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["destinations"]


def _with_archive(tmp_path: Path, pacs: int, archive: int) -> tuple[Path, str, str]:
    """A configuration routing to pacs and to an archive on port ``archive``, written:
    the file, its text without the archive and with it."""
    cfg = write_config(tmp_path, pacs)
    base = cfg.read_text()
    both = base.replace("routes:\n  - to: [pacs]",
                        f"  archive: {{host: 127.0.0.1, port: {archive}}}\n"
                        "routes:\n  - to: [pacs, archive]")
    cfg.write_text(both)
    return cfg, base, both


def test_a_removed_destination_with_failed_jobs_only_is_held_and_purged_while_running(
        make_scp, tmp_path: Path) -> None:
    """A destination whose every job failed, taken out of the file and reloaded, is held
    as removed like one with pending jobs: ``status`` says so, and ``purge
    --removed-destination`` deletes its jobs while the daemon runs (no sender is at work
    for it). Before, only pending jobs held it, and purge refused it for ever."""
    pacs = make_scp()
    refused: collections.Counter[str] = collections.Counter()
    refusing = make_scp(status=lambda event: refused.update(  # cannot understand: failed
        [str(event.request.AffectedSOPInstanceUID)]) or 0xC000)
    cfg, base, _both = _with_archive(tmp_path, pacs.port, refusing.port)
    uids = unique_copies(tmp_path / "corpus", 2)

    def archive() -> dict:
        return _destinations(cfg)["archive"]

    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        drop(list(uids.values()), tmp_path / "in")
        wait_for(lambda: len(pacs.counts()) == 2 and archive()["failed"] == 2, 20,
                 "the files at pacs, failed at the archive")
        cfg.write_text(base)  # archive removed with its two failed jobs
        d.signal(signal.SIGHUP)
        d.wait_ready(count=2)
        row = archive()
        assert (row["state"], row["pending"], row["failed"]) == ("held", 0, 2)
        assert "removed from the configuration" in row["last_error"]
        purged = _cli(cfg, "purge", "--removed-destination", "archive")
        assert purged.returncode == 0, purged.stderr
        assert "deleted the jobs of removed destination archive: 2 not delivered" in \
            purged.stdout
        assert "archive" not in _destinations(cfg)
    finally:
        assert d.stop() == 0
    assert pacs.counts() == {u: 1 for u in uids} and refused == {u: 1 for u in uids}


def test_a_reload_that_mends_a_held_destination_probes_it_at_once(make_scp,
                                                                  tmp_path: Path) -> None:
    """A peer refuses a wrong called AE title: the destination is held and probed every
    retry.max (10 minutes here). The operator mends the title and reloads: the peer is
    tried at once with the new settings, without waiting out the hold or a ``resume``."""
    pacs = make_scp(require_called_aet=True)
    cfg = write_config(tmp_path, pacs.port, extra_dest="    called_ae_title: WRONG\n")
    cfg.write_text(cfg.read_text().replace("max: 1s", "max: 10m"))
    uids = unique_copies(tmp_path / "corpus", 2)

    def pacs_status() -> dict:
        return _destinations(cfg)["pacs"]

    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        drop(list(uids.values()), tmp_path / "in")
        wait_for(lambda: pacs_status()["state"] == "held", 20, "pacs held for its AE title")
        cfg.write_text(cfg.read_text().replace("called_ae_title: WRONG",
                                               "called_ae_title: ANY-SCP"))
        d.signal(signal.SIGHUP)
        d.wait_ready(count=2)
        wait_for(lambda: len(pacs.counts()) == 2, 20, "the files stored after the reload")
        assert pacs_status()["state"] == "ok"
    finally:
        assert d.stop() == 0
    assert pacs.counts() == {u: 1 for u in uids}


def test_a_reload_of_the_log_level_alone_leaves_a_files_backoff_as_it_is(
        make_scp, tmp_path: Path) -> None:
    """A reload restarts every sender when the logging changes, but no destination's
    settings changed: a file waiting out its backoff (the peer was out of resources)
    keeps its time, and is not sent again at the reload."""
    import sqlite3

    refused: collections.Counter[str] = collections.Counter()
    pacs = make_scp(status=lambda event: refused.update(
        [str(event.request.AffectedSOPInstanceUID)]) or 0xA700)
    cfg = write_config(tmp_path, pacs.port)
    cfg.write_text(cfg.read_text().replace("initial: 200ms, max: 1s", "initial: 10m, max: 1h"))
    uids = unique_copies(tmp_path / "corpus", 1)

    def due() -> float:
        index = sqlite3.connect(f"file:{tmp_path / 'spool' / 'index.sqlite'}?mode=ro", uri=True)
        try:
            rows = index.execute("SELECT next_attempt_at FROM jobs WHERE state='pending'")
            return max((r[0] for r in rows), default=0.0)
        finally:
            index.close()

    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        drop(list(uids.values()), tmp_path / "in")
        wait_for(lambda: sum(refused.values()) == 1 and due() > time.time() + 300, 20,
                 "the file refused and waiting out its backoff")
        before = due()
        cfg.write_text(cfg.read_text().replace("level: info", "level: debug"))
        d.signal(signal.SIGHUP)
        d.wait_ready(count=2)
        assert due() == before
    finally:
        assert d.stop() == 0
    assert refused == {u: 1 for u in uids}


def test_jobs_queued_after_a_reload_for_a_destination_it_removed_are_held(
        make_scp, tmp_path: Path) -> None:
    """A batch intake took under the old file may commit jobs for a destination the
    reload removed after the reload held the removed ones: the daemon looks again for a
    while, and holds it too, so status says why they wait and purge can take them."""
    from tests.spoolutil import accept_file

    pacs = make_scp()
    cfg = write_config(tmp_path, pacs.port)

    def old() -> dict:
        return _destinations(cfg).get("old", {})

    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        d.signal(signal.SIGHUP)
        d.wait_ready(count=2)
        [ct] = unique_copies(tmp_path / "corpus", 1).values()
        with Spool(tmp_path / "spool") as spool:  # the old file's batch, committed late
            accept_file(spool, ct, ("old",))
        wait_for(lambda: old().get("state") == "held", 20, "the removed destination held")
        assert "removed from the configuration" in old()["last_error"]
    finally:
        assert d.stop() == 0


def test_a_destination_removed_with_jobs_is_held_then_resumes(make_scp, tmp_path: Path) -> None:
    pacs = make_scp()
    down = free_port()  # nothing listens: the archive's jobs stay pending
    cfg, base, both = _with_archive(tmp_path, pacs.port, down)
    uids = unique_copies(tmp_path / "corpus", 5)

    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        drop(list(uids.values()), tmp_path / "in")
        wait_for(lambda: len(pacs.counts()) == 5, 20, "the files at pacs")
        cfg.write_text(base)  # archive removed while it still has 5 jobs
        d.signal(signal.SIGHUP)
        d.wait_ready(count=2)
        archive = _destinations(cfg)["archive"]
        assert archive["state"] == "held" and archive["pending"] == 5
        assert "removed from the configuration" in archive["last_error"]
        archive_peer = make_scp()
        cfg.write_text(both.replace(f"port: {down}", f"port: {archive_peer.port}"))
        d.signal(signal.SIGHUP)
        d.wait_ready(count=3)
        wait_for(lambda: len(archive_peer.counts()) == 5, 30, "the kept jobs delivered")
    finally:
        assert d.stop() == 0
    assert archive_peer.counts() == {u: 1 for u in uids} and pacs.counts() == {u: 1 for u in uids}
