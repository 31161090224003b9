"""The service as an operator gets it: Debian 12 booted with a real systemd as PID 1 (under
systemd-nspawn), the project installed with the documented `sudo make install`, the
shipped unit with its whole sandbox, files dropped by other accounts, a peer on
127.0.0.1. The tests run in file order on one box (module fixture) like an operator's
day: start, deliver, reload, faults, stop, a second instance, uninstall.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from forwarder import logs
from tests.nspawnbox import REPO, SOURCES, Box, cached_rootfs, missing_tools, wheelhouse
from tests.peers import StoreSCP, wait_for

pytestmark = pytest.mark.slow

UNIT = "dicom-forwarder.service"
CONFIG = "/etc/dicom-forwarder/forwarder.yaml"
SPOOL = "/var/lib/dicom-forwarder"
INCOMING = "/srv/dicom/incoming"
SAMPLES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "waveform_ecg.dcm", "rtdose.dcm",
           "JPEG2000.dcm", "ExplVR_BigEnd.dcm", "SC_rgb_small_odd.dcm")


def config_text(port: int, spool: str = SPOOL, watch: str = INCOMING, extra: str = "",
                idle_release: str = "60s") -> str:
    return f"""\
ae_title: FORWARDER
spool: {spool}
log: {{level: info, target: auto}}
watch:
  - name: modality
    path: {watch}
    min_age: 1s
    rescan: 2s
destinations:
  pacs:
    host: 127.0.0.1
    port: {port}
    called_ae_title: ANY-SCP
    idle_release: {idle_release}
    retry: {{initial: 1s, max: 5s}}
{extra}routes:
  - to: [pacs]
"""


class Day:
    """The booted, installed box and the peer it sends to."""

    def __init__(self, box: Box, scp: StoreSCP):
        self.box = box
        self.scp = scp
        self.dropped = 0

    def sh(self, script: str, **kw: Any) -> Any:
        return self.box.sh(script, **kw)

    def write(self, inside: str, text: str, group: str = "dicom-forwarder",
              mode: str = "640") -> None:
        self.box.path(inside).write_text(text)
        self.sh(f"chown root:{group} {inside} && chmod {mode} {inside}")

    def drop(self, folder: str = INCOMING, user: str = "modality", umask: str = "007",
             subdir: str | None = None) -> str:
        """Copy the next pydicom test file into ``folder`` as ``user`` (written under a
        dot name, then renamed, as modalities do); return its SOP Instance UID."""
        self.dropped += 1
        name = SAMPLES[self.dropped % len(SAMPLES)]
        ds = pydicom.dcmread(get_testdata_file(name))
        uid = ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        stage = self.box.path("/var/tmp/stage")
        stage.mkdir(exist_ok=True)
        name = f"{self.dropped:03d}-{name}"
        ds.save_as(stage / name, enforce_file_format=True)
        os.chmod(stage / name, 0o644)
        target = f"{folder}/{subdir}" if subdir else folder
        mk = f"mkdir -p {target} && " if subdir else ""
        self.sh(f"umask {umask} && {mk}cp /var/tmp/stage/{name} {target}/.{name} && "
                f"mv {target}/.{name} {target}/{name}", user=user)
        return str(uid)

    def delivered(self, uid: str, timeout: float = 60) -> None:
        wait_for(lambda: self.scp.counts()[uid] >= 1, timeout, f"{uid} at the peer", 0.2)

    def show(self, *props: str, unit: str = UNIT) -> dict[str, str]:
        return self.box.show(unit, *props)

    def journal(self, *matches: str, unit: str | None = UNIT, since: float | None = None
                ) -> list[dict[str, Any]]:
        after = f"--since=@{since:.6f}" if since else ""
        only = f"-u {unit}" if unit else ""
        out = self.sh(f"journalctl {only} -o json --no-pager {after} "
                      + " ".join(matches)).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    @staticmethod
    def now() -> float:
        """A point in the journal (the box shares the host's clock)."""
        return time.time()

    def start(self, unit: str = UNIT, check: bool = True) -> Any:
        """A manual (re)start, as an operator does after a fix (start limit reset first)."""
        return self.sh(f"systemctl reset-failed {unit} 2>/dev/null; systemctl restart {unit}",
                       check=check)

    def status(self, user: str | None = None, config: str = CONFIG, check: bool = True) -> Any:
        return self.sh(f"dicom-forwarder status -c {config} --json", user=user, check=check)


def stays(condition: Callable[[], Any], seconds: float) -> bool:
    """True when ``condition`` stayed false for ``seconds`` (polled, bounded)."""
    try:
        wait_for(condition, seconds, "", 0.25)
    except AssertionError:
        return True
    return False


@pytest.fixture(scope="module")
def day() -> Iterator[Day]:
    if os.geteuid() != 0:
        pytest.skip("boots a container with systemd-nspawn: needs root (CI runs make test "
                    "as root)")
    if missing_tools():
        pytest.fail(f"missing {missing_tools()}: `make deps` installs systemd-container "
                    "and debootstrap")
    Box.sweep()
    lower = cached_rootfs()
    scp = StoreSCP().start()
    box = Box()
    try:
        box.boot(lower)
        src = box.path("/usr/src/dicom-forwarder")
        src.mkdir(parents=True)
        for name in SOURCES:
            p = REPO / name
            if p.is_dir():
                shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(p, src / name)
        wheelhouse(box.path("/var/cache/wheelhouse"))
        # the documented command; the wheels come from the host, not a package index
        box.sh("cd /usr/src/dicom-forwarder && make install", timeout=900,
               env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/var/cache/wheelhouse"})
        box.sh("useradd -m -G dicom-forwarder modality")
        d = Day(box, scp)
        d.write(CONFIG, config_text(scp.port))
        yield d
    finally:
        box.close()
        scp.stop()


def test_installed_unit_starts_ready_with_status(day: Day) -> None:
    r = day.sh("runuser -u dicom-forwarder -- dicom-forwarder check-config -c " + CONFIG)
    assert "ok" in r.stderr
    # the install carries what a TLS key in DER needs (where it does not, check-config says)
    for name in ("cert.der", "key.der"):
        day.write(f"/etc/dicom-forwarder/{name}", "0")
    der = "/etc/dicom-forwarder/der.yaml"
    day.write(der, config_text(day.scp.port, extra=(
        "    tls: {enabled: true, der: true, cert: /etc/dicom-forwarder/cert.der, "
        "key: /etc/dicom-forwarder/key.der}\n")))
    r = day.sh("runuser -u dicom-forwarder -- dicom-forwarder check-config -c " + der,
               check=False)
    assert r.returncode == 0 and "ok" in r.stderr, r.stderr
    day.sh(f"systemctl enable --now {UNIT}")  # Type=notify: returns after READY=1
    s = day.show("ActiveState", "SubState", "StatusText", "NRestarts", "MainPID")
    assert (s["ActiveState"], s["SubState"]) == ("active", "running"), s
    assert s["StatusText"].startswith("queued 0, failed 0, quarantined 0"), s
    [started] = day.journal(f"MESSAGE_ID={logs.EVENTS['started']}")
    assert started["_PID"] == s["MainPID"] and started["PRIORITY"] == "6"
    score = day.sh(f"systemd-analyze security {UNIT} --no-pager").stdout
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", score)
    assert m and float(m.group(1)) <= 2.0, score[-400:]


def test_files_are_delivered_and_the_journal_has_their_fields(day: Day) -> None:
    uids = [day.drop(), day.drop()]
    for uid in uids:
        day.delivered(uid)
    wait_for(lambda: day.show("StatusText")["StatusText"].startswith("queued 0"), 20,
             "STATUS= to show an empty queue", 0.5)
    for uid in uids:
        [stored] = day.journal(f"MESSAGE_ID={logs.EVENTS['stored']}", f"SOP_INSTANCE_UID={uid}")
        assert stored["DESTINATION"] == "pacs" and stored["PRIORITY"] == "6"
        assert stored["PEER"] == f"127.0.0.1:{day.scp.port}" and stored["DICOM_STATUS"] == "0x0000"
        [accepted] = day.journal("FORWARDER_EVENT=accepted", f"SOP_INSTANCE_UID={uid}")
        assert accepted["FORWARDER_FILE"].startswith(INCOMING + "/")
    assert {e["FORWARDER_EVENT"] for e in day.journal("DESTINATION=pacs")} >= {"stored"}
    ours = day.journal("SYSLOG_IDENTIFIER=dicom-forwarder", "_TRANSPORT=journal")
    assert ours and all(e.get("MESSAGE_ID") in logs.EVENTS.values() for e in ours), \
        [e["MESSAGE"] for e in ours if e.get("MESSAGE_ID") not in logs.EVENTS.values()]
    assert day.scp.counts()[uids[0]] == 1 and day.scp.counts()[uids[1]] == 1
    assert os.listdir(day.box.path(INCOMING)) == []  # taken, so removed


def test_a_study_folder_of_another_account_is_sent_once(day: Day) -> None:
    """umask 022: the study folder is not group-writable, so its file cannot be removed."""
    uid = day.drop(umask="022", subdir="study-1")
    day.delivered(uid)
    assert stays(lambda: day.scp.counts()[uid] > 1, 10), day.scp.counts()[uid]
    left = day.box.path(INCOMING) / "study-1"
    assert [p.name for p in left.iterdir()], "the source is left in place"
    assert len(day.journal(f"SOP_INSTANCE_UID={uid}", "FORWARDER_EVENT=stored")) == 1
    day.sh(f"rm -rf {INCOMING}/study-1")


def test_a_writer_of_another_account_that_pauses_is_waited_for(day: Day) -> None:
    """The unit's CAP_LEASE: the daemon can tell that a file of another account is still
    open for writing, so the part written before a pause is not sent as the whole."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid = ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    stage = day.box.path("/var/tmp/stage")
    stage.mkdir(exist_ok=True)
    ds.save_as(stage / "whole.dcm", enforce_file_format=True)
    data = (stage / "whole.dcm").read_bytes()
    cut = data.index(b"\x10\x00\x10\x00PN")  # before Patient's Name: a whole data set
    (stage / "prefix").write_bytes(data[:cut])
    (stage / "rest").write_bytes(data[cut:])
    day.sh("chmod 644 /var/tmp/stage/* && rm -f /var/tmp/go && mkfifo -m 666 /var/tmp/go")
    since = day.now()
    # the writer holds the file open, writes up to the element, and waits for a line
    day.sh(f"umask 007; timeout 120 bash -c 'exec 3>>{INCOMING}/paused.dcm && "
           "cat /var/tmp/stage/prefix >&3 && read -r _ < /var/tmp/go && "
           "cat /var/tmp/stage/rest >&3' </dev/null >/dev/null 2>&1 &", user="modality")
    wait_for(lambda: day.journal("FORWARDER_EVENT=writing", since=since), 30,
             "the daemon to see the writer", 0.25)
    assert day.scp.counts()[uid] == 0, "the part before the pause was sent"
    day.sh("timeout 10 sh -c 'echo go > /var/tmp/go'")
    day.delivered(uid)
    assert stays(lambda: day.scp.counts()[uid] > 1, 5), day.scp.counts()[uid]
    [got] = [r for r in day.scp.received if r.sop_instance == uid]
    assert len(got.dataset_bytes) > len(data) - cut and data.endswith(got.dataset_bytes)
    wait_for(lambda: not day.box.path(f"{INCOMING}/paused.dcm").exists(), 10,
             "the source removed")


def test_status_as_root_and_as_the_service_user(day: Day) -> None:
    main = day.show("MainPID")["MainPID"]
    index = day.box.path(SPOOL) / "index.sqlite"
    for user in (None, "dicom-forwarder"):
        report = json.loads(day.status(user).stdout)
        assert report["daemon"]["pid"] == int(main), report
        assert report["daemon"]["uptime_s"] > 0 and report["daemon"]["version"]
        pacs = report["destinations"]["pacs"]
        assert pacs["done"] >= 2 and pacs["pending"] == 0 and pacs["state"] == "ok", pacs
        assert pacs["last_success_at"] and pacs["last_success_at"] <= time.time() + 5
        assert index.stat().st_uid != 0  # nothing root-owned appeared beside the index
    text = day.sh(f"dicom-forwarder status -c {CONFIG}").stdout
    assert f"daemon: running, pid {main}" in text, text
    typo = config_text(day.scp.port, spool="/var/lib/dicom-forwardr")
    day.write("/etc/dicom-forwarder/typo.yaml", typo)
    r = day.status(config="/etc/dicom-forwarder/typo.yaml", check=False)
    assert r.returncode != 0 and "no spool at /var/lib/dicom-forwardr" in r.stderr, r.stderr
    assert not day.box.path("/var/lib/dicom-forwardr").exists()
    day.sh("rm /etc/dicom-forwarder/typo.yaml")


def test_a_second_daemon_on_the_spool_is_refused(day: Day) -> None:
    main = day.show("MainPID")["MainPID"]
    r = day.sh(f"dicom-forwarder run -c {CONFIG} --log-target stderr", user="dicom-forwarder",
               check=False, timeout=60)
    assert r.returncode == 78, r.stderr[-2000:]
    assert f"another dicom-forwarder (pid {main}" in r.stderr, r.stderr[-2000:]
    assert day.show("MainPID", "ActiveState") == {"MainPID": main, "ActiveState": "active"}


def test_reload_good_and_broken(day: Day) -> None:
    main = day.show("MainPID")["MainPID"]
    reloads = len(day.journal(f"MESSAGE_ID={logs.EVENTS['reload']}"))
    day.write(CONFIG, config_text(day.scp.port).replace("rescan: 2s", "rescan: 3s"))
    day.sh(f"systemctl reload {UNIT}")
    wait_for(lambda: len(day.journal(f"MESSAGE_ID={logs.EVENTS['reload']}")) == reloads + 1,
             30, "the reload event", 0.5)
    day.write(CONFIG, config_text(day.scp.port).replace("port: ", "port: not-a-port #"))
    r = day.sh(f"systemctl reload {UNIT}", check=False)
    assert r.returncode != 0, "a broken file is reported as a failed reload"
    s = day.show("MainPID", "ActiveState")
    assert s == {"MainPID": main, "ActiveState": "active"}, s
    assert len(day.journal(f"MESSAGE_ID={logs.EVENTS['reload']}")) == reloads + 1
    uid = day.drop()  # the previous configuration keeps working
    day.delivered(uid)
    day.write(CONFIG, config_text(day.scp.port))
    day.sh(f"systemctl reload {UNIT}")


def test_a_peer_down_is_a_warning_not_an_error(day: Day) -> None:
    """Routine backoff (pynetdicom's own refusal lines included) stays out of -p err."""
    since = day.now()
    day.scp.stop()
    for assoc in day.scp.server.active_associations:  # one left idle by the last transfer
        assoc.abort()
    try:
        uid = day.drop()
        wait_for(lambda: day.journal(f"MESSAGE_ID={logs.EVENTS['destination_backoff']}",
                                     since=since), 60, "the destination to back off", 0.5)
    finally:
        day.scp.start()
    day.delivered(uid)
    assert day.journal("-p", "3", since=since) == []
    lines = day.journal(f"MESSAGE_ID={logs.EVENTS['pynetdicom']}", since=since)
    assert all(e["PRIORITY"] == "4" for e in lines), lines


def test_sigkill_then_restart(day: Day) -> None:
    before = day.show("MainPID", "NRestarts")
    day.sh(f"systemctl kill -s KILL --kill-who=main {UNIT}")

    def restarted() -> bool:
        s = day.show("MainPID", "ActiveState", "SubState")
        return s["MainPID"] not in ("0", before["MainPID"]) and \
            (s["ActiveState"], s["SubState"]) == ("active", "running")

    wait_for(restarted, 60, "a restart after SIGKILL", 0.5)
    assert int(day.show("NRestarts")["NRestarts"]) == int(before["NRestarts"]) + 1
    uid = day.drop()
    day.delivered(uid)


def test_watchdog_restarts_a_stopped_daemon(day: Day) -> None:
    dropin = day.box.path(f"/etc/systemd/system/{UNIT}.d/watchdog.conf")
    dropin.parent.mkdir(exist_ok=True)
    dropin.write_text("[Service]\nWatchdogSec=4s\n")
    day.sh("systemctl daemon-reload")
    day.start()
    main = day.show("MainPID")["MainPID"]
    since = day.now()
    day.sh(f"kill -STOP {main}")
    wait_for(lambda: day.show("MainPID")["MainPID"] not in ("0", main)
             and day.show("ActiveState")["ActiveState"] == "active", 90,
             "the watchdog to kill and restart the stopped daemon", 0.5)
    said = " ".join(e["MESSAGE"] for e in day.journal(since=since))
    assert "Watchdog timeout" in said, said[-2000:]
    dropin.unlink()
    day.sh("systemctl daemon-reload")
    day.start()
    uid = day.drop()
    day.delivered(uid)


def test_stop_releases_associations_without_error_lines(day: Day) -> None:
    uid = day.drop()  # leaves an association open (idle_release 60s)
    day.delivered(uid)
    releases, aborts = day.scp.releases_seen, day.scp.aborts_seen
    since = day.now()
    day.sh(f"systemctl stop {UNIT}")
    assert day.show("ActiveState", "Result") == {"ActiveState": "inactive", "Result": "success"}
    wait_for(lambda: day.scp.releases_seen > releases, 10, "A-RELEASE at the peer", 0.2)
    assert day.scp.aborts_seen == aborts
    errors = day.journal("-p", "3", since=since)
    assert errors == [], [e["MESSAGE"] for e in errors]
    assert day.journal(f"MESSAGE_ID={logs.EVENTS['stopping']}", since=since)


@pytest.mark.parametrize("fault", ["syntax", "unreadable", "spool", "tls"])
def test_a_start_time_problem_fails_once_and_is_not_restarted(day: Day, fault: str) -> None:
    good = config_text(day.scp.port)
    expect = {"syntax": "destinations.pacs.port", "unreadable": "chgrp dicom-forwarder",
              "spool": "/usr/share/forwarder-spool", "tls": "/etc/dicom-forwarder/missing.pem"}
    if fault == "syntax":
        day.write(CONFIG, good.replace("port: ", "port: not-a-port #"))
    elif fault == "unreadable":
        day.write(CONFIG, good, mode="600")
    elif fault == "spool":
        day.write(CONFIG, good.replace(f"spool: {SPOOL}", "spool: /usr/share/forwarder-spool"))
    else:
        day.write(CONFIG, good.replace("    idle_release", "    tls: {enabled: true, ca: "
                                       "[/etc/dicom-forwarder/missing.pem]}\n    idle_release"))
    day.sh(f"systemctl stop {UNIT}")
    spool_before = sorted(os.listdir(day.box.path(SPOOL)))
    since = day.now()
    r = day.start(check=False)
    assert r.returncode != 0
    s = day.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert (s["ActiveState"], s["ExecMainStatus"]) == ("failed", "78"), s
    assert stays(lambda: day.show("NRestarts", "ActiveState") !=
                 {"NRestarts": s["NRestarts"], "ActiveState": "failed"}, 12), "restarted"
    said = "\n".join(e["MESSAGE"] for e in day.journal(since=since))
    assert expect[fault] in said, said[-3000:]
    # one refusal, not a loop (matched by identifier: the unit of a process that exits
    # right after logging is not always known to journald by the time it reads the entry)
    refused = day.journal(f"MESSAGE_ID={logs.EVENTS['start_refused']}",
                          "SYSLOG_IDENTIFIER=dicom-forwarder", unit=None, since=since)
    assert len(refused) == 1 and refused[0]["PRIORITY"] == "2", refused
    assert expect[fault] in refused[0]["MESSAGE"] and CONFIG in refused[0]["MESSAGE"]
    assert sorted(os.listdir(day.box.path(SPOOL))) == spool_before
    assert not day.box.path("/usr/share/forwarder-spool").exists()
    day.write(CONFIG, good)
    day.start()
    assert day.show("ActiveState")["ActiveState"] == "active"


def test_a_second_instance_watching_a_folder_under_home(day: Day) -> None:
    """dicom-forwarder@NAME: its own configuration and spool; /home opened by a drop-in."""
    day.sh("useradd -m -G dicom-forwarder scanner && install -d -o scanner -g dicom-forwarder "
           "-m 2770 /home/scanner/outbox")
    day.write("/etc/dicom-forwarder/second.yaml",
              config_text(day.scp.port, spool="/var/lib/dicom-forwarder-second",
                          watch="/home/scanner/outbox"))
    dropin = day.box.path("/etc/systemd/system/dicom-forwarder@second.service.d/home.conf")
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Service]\nProtectHome=read-only\nReadWritePaths=/home/scanner/outbox\n")
    day.sh("systemctl daemon-reload && systemctl start dicom-forwarder@second")
    assert day.show("ActiveState", unit="dicom-forwarder@second")["ActiveState"] == "active"
    uid = day.drop(folder="/home/scanner/outbox", user="scanner")
    day.delivered(uid)
    wait_for(lambda: not os.listdir(day.box.path("/home/scanner/outbox")), 20,
             "the source removed", 0.2)
    assert day.box.path("/var/lib/dicom-forwarder-second/index.sqlite").exists()
    report = json.loads(day.status(config="/etc/dicom-forwarder/second.yaml").stdout)
    assert report["daemon"]["pid"] == int(day.show("MainPID",
                                                   unit="dicom-forwarder@second")["MainPID"])
    assert day.show("ActiveState")["ActiveState"] == "active"  # both run at once


def test_make_install_again_upgrades_in_place(day: Day) -> None:
    """An upgrade is the same command: running instances restart, the configuration stays."""
    text = day.box.path(CONFIG).read_text() + "# edited by the operator\n"
    day.write(CONFIG, text)
    main = day.show("MainPID")["MainPID"]
    commands = day.box.path("/usr/src/dicom-forwarder/forwarder/commands.py")
    commands.write_text(commands.read_text() + "\nUPGRADED = True\n")  # the new version
    day.sh("cd /usr/src/dicom-forwarder && make install", timeout=900,
           env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/var/cache/wheelhouse"})
    assert day.box.path(CONFIG).read_text() == text
    day.sh("/opt/dicom-forwarder/bin/python -c 'import forwarder.commands as c; c.UPGRADED'")
    s = day.show("MainPID", "ActiveState")
    assert s["ActiveState"] == "active" and s["MainPID"] not in ("0", main), s
    uid = day.drop()
    day.delivered(uid)


def test_uninstall_removes_the_service_and_keeps_config_and_spool(day: Day) -> None:
    day.sh("cd /usr/src/dicom-forwarder && make uninstall")
    units = day.sh("systemctl list-unit-files --no-legend 'dicom-forwarder*'", check=False)
    assert units.stdout.strip() == "", units.stdout
    assert not day.box.path("/opt/dicom-forwarder").exists()
    assert not day.box.path("/usr/local/bin/dicom-forwarder").is_symlink()
    assert day.box.path(CONFIG).exists() and day.box.path(SPOOL + "/index.sqlite").exists()
    assert day.sh("pgrep -u dicom-forwarder", check=False).returncode == 1  # none left
    day.sh("cd /usr/src/dicom-forwarder && make uninstall PURGE=1")
    for gone in (CONFIG, SPOOL, "/var/lib/dicom-forwarder-second",
                 "/etc/systemd/system/dicom-forwarder@second.service.d"):
        assert not day.box.path(gone).exists(), gone
    assert day.sh("getent passwd dicom-forwarder", check=False).returncode != 0
