"""Containment at intake, against the real daemon: one bad file or folder never stops the
rest, and every bad item ends where the operator can see it, with its reason."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pwd
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread

from forwarder import linking
from forwarder.candidate import Candidate
from forwarder.config import Watch
from forwarder.errors import SourceChanged
from forwarder.paths import shown, unshown
from forwarder.spool import Spool, durable
from forwarder.watcher import Watcher
from tests.corpus import unique_copies
from tests.daemonutil import REPO, DaemonProcess, drop, write_config
from tests.peers import free_port, wait_for
from tests.sendutil import enqueue


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A work folder other accounts can reach (pytest's own is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="fwd-shared-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody() -> tuple[str, ...]:
    pw = pwd.getpwnam("nobody")
    return ("setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups")


SMOKE = ("import multiprocessing as m; c = m.get_context('forkserver'); "
         "p = c.Process(target=print); p.start(); p.join(); assert p.exitcode == 0")


def python_for_nobody() -> tuple[str, dict[str, str]]:
    """An interpreter (and PYTHONPATH) with which the account ``nobody`` runs the daemon
    and its fork server: this virtualenv's, or the system's with its site-packages when
    the virtualenv's base interpreter lives in a folder private to root."""
    site = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    for python, path in ((sys.executable, str(REPO)), ("/usr/bin/python3", f"{REPO}:{site}")):
        env = {**os.environ, "PYTHONPATH": path}
        if os.access(python, os.X_OK) and subprocess.run(
                [*as_nobody(), python, "-c", SMOKE], env=env, cwd="/", capture_output=True,
                timeout=60).returncode == 0:
            return python, {"PYTHONPATH": path}
    pytest.skip("no Python interpreter the account nobody can run the daemon with here")


def test_a_source_the_daemon_cannot_remove_is_sent_once_and_reported_once(
        make_scp, shared_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("runs the daemon as another account: needs root (CI runs make test as root)")
    nobody = pwd.getpwnam("nobody")
    peer = make_scp()
    cfg = write_config(shared_dir, peer.port)
    inbox, spool = shared_dir / "in", shared_dir / "spool"
    spool.mkdir()
    for d in (inbox, spool):
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
    files = unique_copies(shared_dir / "corpus", 4)
    (shared_dir / "corpus").chmod(0o755)
    (kept_uid, kept), (uid1, first), (uid2, second), (uid3, third) = files.items()
    study = inbox / "study"  # a modality's subfolder, created by root with umask 022
    study.mkdir(mode=0o755)
    shutil.copy(kept, study / kept.name)
    (study / kept.name).chmod(0o644)
    python, env = python_for_nobody()
    d = DaemonProcess(cfg, shared_dir, argv_prefix=as_nobody(), python=python, env=env)
    try:
        d.wait_ready()
        wait_for(lambda: peer.counts()[kept_uid] == 1, 30, "the kept file delivered")
        shutil.copy(first, inbox / "first.dcm")
        os.chown(inbox / "first.dcm", nobody.pw_uid, nobody.pw_gid)
        wait_for(lambda: peer.counts()[uid1] == 1, 30, "a removable file delivered")
        wait_for(lambda: not (inbox / "first.dcm").exists(), 10, "its source removed")
        drop([second], inbox)
        wait_for(lambda: peer.counts()[uid2] == 1, 30, "a file dropped later delivered")
    finally:
        assert d.stop() == 0, d.output()
    first_run = d.output()
    # a restart: the folder is scanned again
    d = DaemonProcess(cfg, shared_dir, argv_prefix=as_nobody(), python=python, env=env)
    try:
        d.wait_ready()
        drop([third], inbox)
        wait_for(lambda: peer.counts()[uid3] == 1, 30, "a file dropped after the restart")
    finally:
        assert d.stop() == 0, d.output()
    log = first_run + d.output()
    assert (study / kept.name).read_bytes() == kept.read_bytes(), "left in place, unchanged"
    assert peer.counts() == {kept_uid: 1, uid1: 1, uid2: 1, uid3: 1}, "each exactly once"
    assert log.count("FORWARDER_EVENT=source_kept") == 1, log
    line = next(x for x in log.splitlines() if "source_kept" in x)
    assert "cannot be removed" in line and "Permission denied" in line and kept.name in line


def test_names_of_any_bytes_are_taken_and_shown_faithfully(make_scp, tmp_path: Path) -> None:
    peer = make_scp()
    cfg = write_config(tmp_path, peer.port)
    inbox = os.fsencode(tmp_path / "in")
    files = unique_copies(tmp_path / "corpus", 4)
    latin1 = b"caf\xe9-\xc9TUDE.dcm"  # a Latin-1 name from an SMB share
    forged = b"x.dcm\n2026-01-01 00:00:00 CRITICAL forged line"
    long_name = ("\u00e9" * 120 + ".dcm").encode()  # 244 bytes of UTF-8
    names = [latin1, forged, long_name, b"back\\slash\t.dcm"]
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        for name, path in zip(names, files.values(), strict=True):
            with open(os.path.join(inbox, name), "wb") as fp:
                fp.write(path.read_bytes())
        bad = b"notes-\xff\xfe\nFATAL forged.txt"  # not DICOM, a name neither UTF-8 nor one line
        with open(os.path.join(inbox, bad), "wb") as fp:
            fp.write(b"just some text, not DICOM\n")
        wait_for(lambda: len(peer.counts()) == 4, 30, "the four valid files delivered")
        wait_for(lambda: not os.listdir(inbox), 15, "every source taken out of the folder")
        listed = subprocess.run([sys.executable, "-m", "forwarder", "quarantine", "-c", str(cfg),
                                 "--json"], capture_output=True, timeout=60, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert listed.returncode == 0, listed.stderr
        assert d.proc.poll() is None, "the daemon is still running"
    finally:
        assert d.stop() == 0, d.output()
    assert peer.counts() == dict.fromkeys(files, 1)
    [q] = json.loads(listed.stdout)
    shown_bad = str(tmp_path / "in") + "/notes-\\xff\\xfe\\nFATAL forged.txt"
    assert q["source"] == shown_bad and "not DICOM" in q["reason"]
    assert Path(q["file"]).read_bytes() == b"just some text, not DICOM\n"
    assert unshown(q["source"]) == os.fsdecode(os.path.join(inbox, bad))
    log = d.output()
    assert not re.search(r"^\S* ?\S* ?(CRITICAL|FATAL) forged", log, re.M), log
    assert "caf\\xe9-\\xc9TUDE.dcm: accepted" in log and "x.dcm\\n2026-01-01" in log
    assert "back\\\\slash\\t.dcm: accepted" in log and "\u00e9" * 120 + ".dcm: accepted" in log


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_shown_names_are_printable_one_line_and_give_the_name_back(name: bytes) -> None:
    text = shown(os.fsdecode(name))
    text.encode("utf-8")  # valid UTF-8: no lone surrogates
    assert text.isprintable() and "\n" not in text
    assert os.fsencode(unshown(text)) == name


INJECTED = '''\
"""Bugs planted in the daemon under test, each set off by one file only."""
import os

import forwarder.dicomfile as dicomfile
import forwarder.router as router
import forwarder.spool as spool

_probe, _route, _accept = dicomfile.probe, router.route, spool.Spool.accept


def probe(*args, **kwargs):
    found = _probe(*args, **kwargs)
    if found.sop_instance_uid == os.environ["PROBE_BUG_UID"]:
        return "a" + None
    return found


def route(routes, watch, relpath, attributes):
    if "routebug" in relpath:
        return "a" + None
    return _route(routes, watch, relpath, attributes)


def accept(self, items, now=None):
    items = list(items)
    if any("acceptbug" in i.source for i in items):
        return "a" + None
    return _accept(self, items, now)


dicomfile.probe, router.route, spool.Spool.accept = probe, route, accept
'''


def test_an_unexpected_error_about_one_file_quarantines_that_file_only(
        make_scp, tmp_path: Path) -> None:
    peer = make_scp()
    cfg = write_config(tmp_path, peer.port)
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(INJECTED)
    files = unique_copies(tmp_path / "corpus", 12)
    uids = list(files)
    names = {uids[0]: "probe.dcm", uids[1]: "routebug.dcm", uids[2]: "acceptbug.dcm"}
    staged = tmp_path / "staged"
    staged.mkdir()
    for uid, path in files.items():
        shutil.copy(path, staged / names.get(uid, path.name))
    d = DaemonProcess(cfg, tmp_path, env={"PYTHONPATH": f"{tmp_path / 'inject'}:{REPO}",
                                          "PROBE_BUG_UID": uids[0]})
    try:
        d.wait_ready()
        drop(sorted(staged.iterdir()), tmp_path / "in")
        good = uids[3:]
        wait_for(lambda: all(peer.counts()[u] == 1 for u in good), 30, "the good files")
        wait_for(lambda: not any((tmp_path / "in").iterdir()), 15, "the folder emptied")
        listed = subprocess.run([sys.executable, "-m", "forwarder", "quarantine", "-c", str(cfg),
                                 "--json"], capture_output=True, timeout=60, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert d.proc.poll() is None, "the daemon is still running"
    finally:
        assert d.stop() == 0, d.output()
    assert peer.counts() == dict.fromkeys(uids[3:], 1)
    rows = {Path(q["source"]).name: q for q in json.loads(listed.stdout)}
    assert sorted(rows) == ["acceptbug.dcm", "probe.dcm", "routebug.dcm"]
    doing = {"probe.dcm": "reading it as DICOM", "routebug.dcm": "routing it",
             "acceptbug.dcm": "taking it into the spool"}
    for name, q in rows.items():
        assert q["reason"].startswith(doing[name] + " failed with an internal error"), q
        assert "concatenate" not in q["reason"] and "NoneType" not in q["reason"]
        assert Path(q["file"]).read_bytes() == (staged / name).read_bytes()
    log = d.output()
    assert log.count("FORWARDER_EVENT=intake_error") == 3
    assert "TRACEBACK=" in log and "concatenate" in log  # the details, for a bug report


def status_json(cfg: Path, cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "forwarder", "status", "-c", str(cfg), "--json"],
                         capture_output=True, timeout=60, cwd=cwd,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_watch_folder_missing_at_start_or_removed_later_stops_nothing(
        make_scp, tmp_path: Path) -> None:
    peer = make_scp()
    cfg = write_config(tmp_path, peer.port)
    late = tmp_path / "late"  # not yet mounted or created
    text = cfg.read_text().replace(
        "destinations:", f"  - {{name: late, path: {late}, min_age: 200ms, rescan: 1s}}\n"
        "destinations:", 1)
    cfg.write_text(text)
    files = list(unique_copies(tmp_path / "corpus", 4).items())
    with Spool(tmp_path / "spool") as spool:  # a backlog waiting in the spool
        enqueue(spool, [files[0][1]])
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        wait_for(lambda: peer.counts()[files[0][0]] == 1, 30, "the spool's backlog sent")
        wait_for(lambda: any("watch unavailable: late" in s for s in d.states("STATUS")), 15,
                 "STATUS naming the missing folder")
        wait_for(lambda: status_json(cfg, tmp_path)["watch"]["late"]["state"] != "ok", 15,
                 "status naming the missing folder")
        state = status_json(cfg, tmp_path)["watch"]
        assert state["modality"]["state"] == "ok" and state["late"]["state"] == "unavailable"
        assert "does not exist" in state["late"]["reason"]
        drop([files[1][1]], tmp_path / "in")  # the other folder goes on
        wait_for(lambda: peer.counts()[files[1][0]] == 1, 30, "a file in the other folder")
        late.mkdir()
        drop([files[2][1]], late)
        wait_for(lambda: peer.counts()[files[2][0]] == 1, 30, "a file in the folder once there")
        wait_for(lambda: status_json(cfg, tmp_path)["watch"]["late"]["state"] == "ok", 15,
                 "the folder reported available")
        shutil.rmtree(late)  # removed while running
        wait_for(lambda: status_json(cfg, tmp_path)["watch"]["late"]["state"] == "unavailable",
                 15, "the removed folder reported again")
        drop([files[3][1]], tmp_path / "in")
        wait_for(lambda: peer.counts()[files[3][0]] == 1, 30, "the other folder still taken")
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0, d.output()
    assert peer.counts() == {uid: 1 for uid, _ in files}
    log = d.output()
    assert log.count("FORWARDER_EVENT=watch_unavailable") == 2, log
    assert log.count("FORWARDER_EVENT=watch_available") == 1, log
    assert "late" not in status_text(cfg, tmp_path), "no daemon: nothing stale is shown"


@pytest.mark.parametrize("how", ["removed", "renamed"])
def test_a_watch_folder_removed_or_renamed_and_made_again_is_watched_again(
        tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    """The folder watched is removed (its inode number may come back at once) or renamed
    away, and a new one is made at its path: its files are offered and its events
    followed within seconds, not a rescan period (here an hour) later, and the log says
    so."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    taken: list[str] = []

    def deliver(cand: Candidate) -> bool:
        taken.append(cand.relpath)
        return True

    watcher = Watcher(Watch(name="w", path=str(inbox), min_age=0.1, rescan=3600), deliver)
    watcher.retry = 0.5
    with caplog.at_level(logging.INFO, logger="forwarder.watcher"), watcher:
        wait_for(lambda: watcher.scans == 1, 10, "the start-up scan")
        (inbox / "a.dcm").write_bytes(b"x")
        wait_for(lambda: taken == ["a.dcm"], 10, "a file dropped into the folder")
        if how == "removed":
            shutil.rmtree(inbox)
        else:
            inbox.rename(tmp_path / "old")
        inbox.mkdir()
        (inbox / "b.dcm").write_bytes(b"x")
        wait_for(lambda: "b.dcm" in taken, 10, "the file already in the new folder")
        scans = watcher.scans
        (inbox / "c.dcm").write_bytes(b"x")
        wait_for(lambda: "c.dcm" in taken, 10, "a file dropped into the new folder")
        assert watcher.scans == scans, "seen through the new folder's events, not a scan"
    assert taken == ["a.dcm", "b.dcm", "c.dcm"]
    assert "is a new folder" in caplog.text or "is available again" in caplog.text


def status_text(cfg: Path, cwd: Path) -> str:
    """``status`` as an operator reads it."""
    return subprocess.run([sys.executable, "-m", "forwarder", "status", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)}).stdout


def seen_row(spool: Path, path: Path) -> tuple | None:
    db = sqlite3.connect(f"file:{spool / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT size, mtime_ns, ctime_ns, sha256 FROM seen WHERE path=?",
                          (str(path),)).fetchone()
    finally:
        db.close()


def test_keep_source_takes_a_file_rewritten_with_its_old_size_and_mtime_again(
        make_scp, tmp_path: Path) -> None:
    peer = make_scp()
    cfg = write_config(tmp_path, peer.port)
    cfg.write_text(cfg.read_text().replace("rescan: 2s}", "rescan: 500ms, keep_source: true}"))
    (uid1, first), (uid2, second) = unique_copies(tmp_path / "corpus", 2).items()
    target = tmp_path / "in" / "slice.dcm"
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        shutil.copy(first, target)
        wait_for(lambda: peer.counts()[uid1] == 1, 30, "the file sent")
        wait_for(lambda: seen_row(tmp_path / "spool", target) is not None, 10, "it remembered")
        before = target.stat()
        with open(target, "r+b") as fp:  # rsync -t --inplace: new bytes, same size, old mtime
            fp.write(second.read_bytes())
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = target.stat()
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        wait_for(lambda: peer.counts()[uid2] == 1, 30, "the rewritten file sent again")
        wait_for(lambda: (seen_row(tmp_path / "spool", target) or (0, 0, 0))[2] ==
                 target.stat().st_ctime_ns, 10, "the rewrite remembered")
        target.chmod(0o600)  # touched, not rewritten: a new ctime, the same content
        wait_for(lambda: (seen_row(tmp_path / "spool", target) or (0, 0, 0))[2] ==
                 target.stat().st_ctime_ns, 15, "the new ctime looked at and remembered")
        os.utime(target)  # touch: a new mtime submits the file again, as the docs say
        wait_for(lambda: peer.counts()[uid2] == 2, 30, "the touched file sent again")
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0, d.output()
    assert peer.counts() == {uid1: 1, uid2: 2}
    assert target.read_bytes() == second.read_bytes(), "the source is left as it is"


def test_a_paused_writer_completes_its_file_and_a_cut_one_is_quarantined_by_copy(
        make_scp, tmp_path: Path) -> None:
    peer = make_scp()
    cfg = write_config(tmp_path, peer.port)
    cfg.write_text(cfg.read_text().replace("rescan: 2s}", "rescan: 500ms, truncated_after: 3s}"))
    (uid1, first), (uid2, second) = unique_copies(tmp_path / "corpus", 2).items()
    paused, cut = tmp_path / "in" / "paused.dcm", tmp_path / "in" / "cut.dcm"
    data = first.read_bytes()
    before = signal.signal(signal.SIGIO, signal.SIG_DFL)  # not inherited from the tests
    try:
        d = DaemonProcess(cfg, tmp_path)
    finally:
        signal.signal(signal.SIGIO, before)
    try:
        d.wait_ready()
        status = Path(f"/proc/{d.proc.pid}/status").read_text()
        ignored = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
        assert ignored >> (signal.SIGIO - 1) & 1, "SIGIO, which intake's leases bring"
        # the writer closes the file half-way and resumes later, as a copy that is retried
        # does (one that holds it open while it pauses is waited for: test_writers.py)
        paused.write_bytes(data[:len(data) // 2])
        wait_for(lambda: "paused.dcm: truncated" in d.output(), 15, "the pause noticed")
        with open(paused, "ab") as fp:
            fp.write(data[len(data) // 2:])
        cut.write_bytes(second.read_bytes()[:-1000])  # never completed
        wait_for(lambda: peer.counts()[uid1] == 1, 30, "the paused writer's file, once complete")
        wait_for(lambda: not paused.exists(), 10, "its source removed")
        wait_for(lambda: "cut.dcm: quarantined" in d.output(), 30, "the cut file quarantined")
        listed = subprocess.run([sys.executable, "-m", "forwarder", "quarantine", "-c", str(cfg),
                                 "--json"], capture_output=True, timeout=60, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0, d.output()
    assert peer.counts() == {uid1: 1}
    [q] = json.loads(listed.stdout)
    assert q["source"] == str(cut) and q["reason"].startswith("truncated")
    assert "unchanged for at least 3s" in q["reason"] and "left in place" in q["reason"]
    assert Path(q["file"]).read_bytes() == cut.read_bytes() == second.read_bytes()[:-1000]
    log = d.output()
    assert log.count("cut.dcm: quarantined") == 1 and "paused.dcm: quarantined" not in log


def quarantine_json(cfg: Path, cwd: Path) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "forwarder", "quarantine", "-c", str(cfg),
                          "--json"], capture_output=True, timeout=60, cwd=cwd,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_malformed_sop_instance_uids_are_quarantined_and_the_rest_delivered(
        make_scp, tmp_path: Path) -> None:
    peer = make_scp()
    cfg = write_config(tmp_path, peer.port)
    good = unique_copies(tmp_path / "corpus", 3)
    staged = tmp_path / "staged"
    staged.mkdir()
    for name, uid in {"long.dcm": "1." + "2" * 198, "path.dcm": "../../../etc/x"}.items():
        ds = dcmread(next(iter(good.values())))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(staged / name)
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        drop([*good.values(), *staged.iterdir()], tmp_path / "in")
        wait_for(lambda: len(peer.counts()) == 3, 30, "the valid files delivered")
        wait_for(lambda: len(quarantine_json(cfg, tmp_path)) == 2, 15, "the bad UIDs listed")
        rows = {Path(q["source"]).name: q["reason"] for q in quarantine_json(cfg, tmp_path)}
    finally:
        assert d.stop() == 0, d.output()
    assert peer.counts() == dict.fromkeys(good, 1)
    assert "200 characters long, more than the 64 allowed" in rows["long.dcm"]
    assert "'../../../etc/x' is not a UID" in rows["path.dcm"]


def test_the_watchers_memory_stays_bounded_while_intake_is_paused(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    paused = threading.Event()
    paused.set()
    taken: list[str] = []
    lock = threading.Lock()

    def deliver(cand: Candidate) -> bool:
        if paused.is_set():
            return False  # intake paused (spool full): offer it again later
        with lock:
            taken.append(cand.relpath)
        cand.finished(cand.relpath.startswith("keep"))  # kept files stay in place
        return True

    w = Watch(name="w", path=str(inbox), min_age=0.1, rescan=0.3)
    watcher = Watcher(w, deliver)
    watcher.limit = 10
    with watcher:
        for i in range(40):
            (inbox / f"f{i:02d}.dcm").write_bytes(b"x" * (i + 1))
        for i in range(25):
            (inbox / f"link{i:02d}").symlink_to("/etc/hostname")
        wait_for(lambda: watcher.dropped > 0 and watcher.scans >= 3, 15, "a paused intake")
        assert len(watcher._waiting) <= 10 and len(watcher._reported) <= 10
        for i in range(30):
            (inbox / f"keep{i:02d}.dcm").write_bytes(b"k")
        paused.clear()
        wait_for(lambda: len(set(taken) - {f"keep{i:02d}.dcm" for i in range(30)}) == 40, 20,
                 "every file offered once intake resumes")
        wait_for(lambda: {f"keep{i:02d}.dcm" for i in range(30)} <= set(taken), 20,
                 "the kept files offered")
        assert len(watcher._left) <= 10 and len(watcher._reported) <= 10
    assert all(taken.count(f"f{i:02d}.dcm") >= 1 for i in range(40))


class BusyIntake:
    """Intake for the watcher alone: refuses every file while ``busy`` is set, then
    takes each offered file as the spool would (its source removed) and records it."""

    def __init__(self) -> None:
        self.busy = threading.Event()
        self.busy.set()
        self.taken: list[str] = []
        self._lock = threading.Lock()

    def deliver(self, cand: Candidate) -> bool:
        if self.busy.is_set():
            return False  # intake's queue is full
        with self._lock:
            self.taken.append(cand.relpath)
        os.unlink(cand.path)  # spooled: its source removed
        cand.finished(False)
        return True


@contextlib.contextmanager
def line_of_ten(inbox: Path, rescan: float) -> Iterator[tuple[Watcher, BusyIntake]]:
    """A watcher of ``inbox`` whose line holds 10 files, offering them to a busy intake."""
    intake = BusyIntake()
    watcher = Watcher(Watch(name="w", path=str(inbox), min_age=0.1, rescan=rescan),
                      intake.deliver)
    watcher.limit = 10
    with watcher:
        yield watcher, intake


def burst_beyond_the_line(watcher: Watcher, inbox: Path) -> None:
    """After the start-up scan, 40 files dropped: 30 of them forgotten beyond the line."""
    wait_for(lambda: watcher.scans == 1, 10, "the start-up scan")
    for i in range(40):
        (inbox / f"f{i:02d}.dcm").write_bytes(b"x")
    wait_for(lambda: watcher.dropped >= 30, 15, "30 files forgotten beyond the line of 10")


def test_files_forgotten_in_a_burst_are_found_once_intake_has_room(tmp_path: Path) -> None:
    """A burst larger than intake's queue and the watcher's line: the files forgotten
    are scanned for as soon as the line is empty, not a rescan period (here an hour)
    later."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    with line_of_ten(inbox, rescan=3600) as (watcher, intake):
        burst_beyond_the_line(watcher, inbox)
        assert len(watcher._waiting) == 10
        intake.busy.clear()
        wait_for(lambda: len(set(intake.taken)) == 40, 20, "every file of the burst offered")
        assert watcher.scans == 2  # one scan found the 30 forgotten files
    assert sorted(intake.taken) == [f"f{i:02d}.dcm" for i in range(40)]  # each offered once


def test_a_rescan_while_the_line_is_full_does_not_cancel_the_early_scan(
        tmp_path: Path) -> None:
    """A periodic scan that runs while the watcher's line is still full finds the
    forgotten files of a burst and has to forget them again: the scan for them still
    comes as soon as the line is empty."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    with line_of_ten(inbox, rescan=0.5) as (watcher, intake):
        burst_beyond_the_line(watcher, inbox)
        # after the next scan, none
        watcher.watch = dataclasses.replace(watcher.watch, rescan=3600)
        scans = watcher.scans
        wait_for(lambda: watcher.scans > scans, 15, "a periodic scan while the line is full")
        intake.busy.clear()
        wait_for(lambda: len(intake.taken) == 40, 20, "every file of the burst offered")
    assert sorted(intake.taken) == [f"f{i:02d}.dcm" for i in range(40)]


def test_files_a_scan_found_and_forgot_wait_for_the_next_rescan(tmp_path: Path) -> None:
    """Only files seen through events make the watcher scan early: what a scan itself
    found and could not hold (a folder of many files intake leaves in place) waits for
    the rescan period, so such a folder cannot keep the watcher scanning."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    for i in range(40):
        (inbox / f"old{i:02d}.dcm").write_bytes(b"x")
    with line_of_ten(inbox, rescan=3600) as (watcher, intake):
        taken = intake.taken
        wait_for(lambda: watcher.dropped >= 30, 15, "30 scan-found files forgotten")
        intake.busy.clear()
        wait_for(lambda: len(taken) >= 10, 20, "the 10 the watcher held offered")
        (inbox / "new.dcm").write_bytes(b"n")  # taken only after the loop went round again
        wait_for(lambda: "new.dcm" in taken, 20, "a file dropped afterwards")
        assert watcher.scans == 1 and len(taken) == 11
        assert len(list(inbox.iterdir())) == 30  # found again at the next rescan


def test_files_are_hard_linked_into_the_spool_by_path(make_scp, tmp_path: Path) -> None:
    port = free_port()  # the peer is down at first: the objects wait in the spool
    cfg = write_config(tmp_path, port)
    files = unique_copies(tmp_path / "corpus", 3)
    inodes = {uid: p.stat().st_ino for uid, p in files.items()}
    spool = tmp_path / "spool"
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        for p in files.values():
            os.rename(p, tmp_path / "in" / p.name)
        wait_for(lambda: not any((tmp_path / "in").iterdir()), 15, "the sources taken")
        db = sqlite3.connect(f"file:{spool / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
        rows = dict(db.execute("SELECT sop_instance, name FROM objects").fetchall())
        db.close()
        # linked, not copied: the spool's object is the dropped file's inode
        assert {u: (spool / "objects" / rows[u]).stat().st_ino for u in files} == inodes
        peer = make_scp(port=port)
        wait_for(lambda: len(peer.counts()) == 3, 30, "the files delivered")
    finally:
        assert d.stop() == 0, d.output()
    assert peer.counts() == dict.fromkeys(files, 1)


def test_a_link_is_made_only_to_the_inode_probed_and_a_changed_source_refused(
        tmp_path: Path) -> None:
    src = tmp_path / "a.dcm"
    src.write_bytes(b"first")
    fd = os.open(src, os.O_RDONLY)
    try:
        other = tmp_path / "b.dcm"
        other.write_bytes(b"second")
        os.rename(other, src)  # the name now names another file
        assert not linking.link(fd, str(src), tmp_path / "t1")
        assert not (tmp_path / "t1").exists()
        sha, size, unsynced = durable.place(fd, "a.dcm", tmp_path / "t2", tmp_path / "o2",
                                            True, False, str(src))
        assert unsynced is None, "fsynced already: nothing left to the caller"
        assert (tmp_path / "o2").read_bytes() == b"first" and size == 5, "copied instead"
        assert (tmp_path / "o2").stat().st_ino != src.stat().st_ino
    finally:
        os.close(fd)
    fd = os.open(src, os.O_RDONLY)
    try:
        assert linking.link(fd, str(src), tmp_path / "t3")
        assert (tmp_path / "t3").stat().st_ino == src.stat().st_ino
        before = os.fstat(fd)
        with open(src, "ab") as fp:  # a writer still at work
            fp.write(b" and more")
        with pytest.raises(SourceChanged, match="changed while it was being taken"):
            linking.unchanged(fd, before, "a.dcm")
    finally:
        os.close(fd)


def test_a_reader_that_trips_on_the_bytes_gives_a_reason_about_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from forwarder import dicomfile, headwalk
    from forwarder.errors import NotDicomError

    path = next(iter(unique_copies(tmp_path, 1).values()))

    def trips(fp, **kw):  # noqa: ANN001, ANN003, ANN202 - as pydicom fails on odd bytes
        fp.read(300)
        return "a" + None

    monkeypatch.setattr("pydicom.dcmread", trips)  # the probe imports it when it reads
    monkeypatch.setattr(headwalk, "walk", lambda *a: None)  # the full read, not the fast walk
    with pytest.raises(NotDicomError) as err:
        dicomfile.probe(path)
    reason = str(err.value)
    assert reason.startswith("not readable as DICOM: malformed data near byte 300 of ")
    assert "concatenate" not in reason and "NoneType" not in reason


def test_a_subfolder_that_cannot_be_listed_is_reported_once_and_taken_once_it_can(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A subfolder the daemon may not list (made by another account with mode 0700) holds
    files that wait there: the log says which folder and why, once, not silence while
    status says all is well; once it can be listed its files are taken, and the log says
    the error is over."""
    inbox = tmp_path / "in"
    locked = inbox / "sub"
    locked.mkdir(parents=True)
    (locked / "a.dcm").write_bytes(b"x")
    taken: list[str] = []

    def deliver(cand: Candidate) -> bool:
        taken.append(cand.relpath)
        return True

    real_scandir = os.scandir
    denied = {str(locked)}

    def scandir(path):  # noqa: ANN001, ANN202 - root may list anything: deny it here
        if str(path) in denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr("forwarder.watcher.os.scandir", scandir)
    watcher = Watcher(Watch(name="w", path=str(inbox), min_age=0.1, rescan=0.2), deliver)
    with caplog.at_level(logging.INFO, logger="forwarder.watcher"), watcher:
        wait_for(lambda: watcher.scans >= 3, 10, "three scans")
        said = [r.getMessage() for r in caplog.records if "sub" in r.getMessage()]
        assert len(said) == 1, said
        assert str(locked) in said[0] and "Permission denied" in said[0], said
        assert taken == []
        denied.clear()
        wait_for(lambda: taken == ["sub/a.dcm"], 10, "the file once the folder can be listed")
        said = [r for r in caplog.records if "sub" in r.getMessage()]
        assert len(said) == 2 and said[1].levelno == logging.INFO, said
        assert f"subfolder {locked} can be listed again" in said[1].getMessage()
