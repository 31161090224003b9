"""check-config's environment checks, the spool lock, read-only status, and log capture."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

from forwarder import logs, spoollock, tls, watchstate
from forwarder.cli import main
from forwarder.config import envcheck, load
from forwarder.errors import UsageError
from forwarder.peers import peer_for
from forwarder.spool import Spool
from forwarder.spoollock import SpoolLock, SpoolLocked
from tests.corpus import data_file, unique_copies
from tests.spoolutil import accept_file

as_root = os.geteuid() == 0


def write(tmp_path: Path, spool: Path, watch: list[Path], dest_extra: str = "") -> Path:
    lines = [f"spool: {spool}", "watch:"]
    for i, w in enumerate(watch):
        lines += [f"  - name: w{i}", f"    path: {w}"]
    lines += ["destinations:", "  pacs:", "    host: 127.0.0.1", "    port: 11112"]
    lines += [dest_extra] if dest_extra else []
    lines += ["routes:", "  - to: [pacs]"]
    cfg = tmp_path / "forwarder.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def test_a_clean_environment_has_no_findings(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "in"])
    found = envcheck.check(load(cfg))
    assert found.errors == [] and found.warnings == []


def test_missing_watch_folder_is_a_warning_with_its_line(tmp_path: Path, capsys) -> None:
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "later"])
    assert main(["check-config", "-c", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {cfg}:4: watch[0].path: {tmp_path / 'later'} does not exist yet" in err
    assert "1 warning(s)" in err


def test_routing_that_sends_nothing_is_a_warning_with_its_line(tmp_path: Path, capsys) -> None:
    """A valid file can still send nothing: no route at all (every file unrouted, and
    deleted under unrouted: delete), or a destination no route names."""
    (tmp_path / "in").mkdir()
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "in"],
                "  ai: {host: 127.0.0.1, port: 11113}")
    assert main(["check-config", "-c", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {cfg}:9: destinations.ai: 'ai' is in no route: nothing is sent" in err
    assert "1 warning(s)" in err
    cfg.write_text(cfg.read_text().replace("routes:\n  - to: [pacs]\n", "unrouted: delete\n"))
    assert main(["check-config", "-c", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "routes: no route: every file taken is unrouted and deleted (unrouted: delete)" \
        in err and "'ai' is in no route" not in err


def test_overlapping_watch_folders_and_spool_are_errors(tmp_path: Path, capsys) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    cfg = write(tmp_path, tmp_path / "in" / "spool",
                [tmp_path / "in", tmp_path / "in" / "sub"])
    assert main(["check-config", "-c", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert f"{cfg}:4: watch[0].path: the spool {tmp_path / 'in' / 'spool'} is inside this " \
        "watch folder" in err
    assert f"{cfg}:6: watch[1].path: {tmp_path / 'in' / 'sub'} overlaps watch[0]" in err


def test_missing_secret_and_tls_files_are_errors_naming_them(tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "in"],
                f"    tls: {{enabled: true, ca: [{tmp_path}/ca.pem]}}\n"
                f"    identity: {{user: u, password_file: {tmp_path}/pw}}")
    assert main(["check-config", "-c", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert f"destinations.pacs.tls.ca[0]: {tmp_path}/ca.pem does not exist" in err
    assert f"destinations.pacs.identity.password_file: {tmp_path}/pw does not exist" in err


def test_a_tls_profile_this_openssl_cannot_offer_is_named_before_any_connection(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenSSL 3 builds may lack the basic profile's 3DES: check-config says which profile
    and what to choose instead, and send fails before it connects, with the same words.
    (The profile's suite is replaced by one no OpenSSL has, so that the test does not
    depend on how this machine's OpenSSL was built.)"""
    monkeypatch.setitem(tls.TLS_PROFILES, "basic",
                        (ssl.TLSVersion.TLSv1_2, "NO-SUCH-SUITE:@SECLEVEL=0"))
    (tmp_path / "in").mkdir()
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "in"],
                "    tls: {enabled: true, anonymous: true, profile: basic}")
    assert main(["check-config", "-c", str(cfg)]) == 78
    err = capsys.readouterr().err
    said = f"destinations.pacs.tls.profile: TLS profile 'basic' (storescu +pb) cannot be " \
        f"used with {ssl.OPENSSL_VERSION}: it offers none of the profile's cipher suites " \
        "(NO-SUCH-SUITE: No cipher can be selected); choose another profile, such as " \
        "bcp195 (storescu +px)"
    assert said in err, err
    # a configured list OpenSSL cannot use: here a TLS 1.3 suite, which no build takes
    cfg.write_text(cfg.read_text().replace("profile: basic}", "ciphers: "
                                           "[TLS_AES_128_GCM_SHA256]}"))
    assert main(["check-config", "-c", str(cfg)]) == 78
    assert "destinations.pacs.tls.ciphers: none of the TLS cipher suites asked for can be " \
        f"used with {ssl.OPENSSL_VERSION} (by OpenSSL's names: TLS_AES_128_GCM_SHA256: No " \
        "cipher can be selected); list suites 'dicom-forwarder send +cc' shows. A list " \
        "holds the connection to TLS 1.2: for TLS 1.3 give none" in capsys.readouterr().err
    # storescu's names, as +cc lists them, are taken as OpenSSL's, by the daemon too; an
    # entry that takes 3DES out leaves OpenSSL's security level as it is
    cfg.write_text(cfg.read_text().replace(
        "TLS_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, '!DES-CBC3-SHA'"))
    assert main(["check-config", "-c", str(cfg)]) == 0, capsys.readouterr().err
    assert "security level" not in capsys.readouterr().err
    context = tls.ssl_context(peer_for(load(cfg).destinations["pacs"], "FWD").tls)
    offered = [c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]
    assert offered == ["ECDHE-RSA-AES128-GCM-SHA256"] and context.security_level == 2
    # a NULL suite asked for lowers it for the whole connection: said, as a warning
    cfg.write_text(cfg.read_text().replace("'!DES-CBC3-SHA'", "TLS_RSA_WITH_NULL_SHA"))
    assert main(["check-config", "-c", str(cfg)]) == 0
    assert "warning: " in (err := capsys.readouterr().err) and "destinations.pacs.tls." \
        "ciphers: NULL or 3DES suites are asked for, so OpenSSL's security level is " \
        "lowered for the whole connection" in err, err
    with socket.create_server(("127.0.0.1", 0)) as listener:  # a peer that counts calls
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        assert main(["send", "+tla", "+pb", "127.0.0.1", str(port),
                     str(data_file("CT_small.dcm"))]) == 1
        assert said.split(": ", 1)[1] in capsys.readouterr().err
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing connected


def test_a_negotiation_profile_is_read_as_the_daemon_reads_it(tmp_path: Path, capsys) -> None:
    """check-config reads the profile file: missing, without the profile named, or with
    keys DCMTK would not read, each is said with the YAML line and the file's."""
    (tmp_path / "in").mkdir()
    profile = tmp_path / "storescu.cfg"
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "in"],
                f"    negotiation_profile: {{file: {profile}, profile: P}}")
    assert main(["check-config", "-c", str(cfg)]) == 78
    assert f"{cfg}:9: destinations.pacs.negotiation_profile.file: {profile} does not " \
        "exist" in capsys.readouterr().err
    profile.write_text("[[TransferSyntaxes]]\n[U]\nTransferSyntax1 = LittleEndianImplicit\n"
                       "TransferSyntax3 = LittleEndianExplicit\n[[PresentationContexts]]\n"
                       "[C]\nPresentationContext1 = CTImageStorage\\U\n[[Profiles]]\n[Q]\n"
                       "PresentationContexts = C\n")
    assert main(["check-config", "-c", str(cfg)]) == 78
    assert f"destinations.pacs.negotiation_profile.profile: {profile}: no profile 'P' " \
        "(profiles: Q)" in capsys.readouterr().err
    cfg.write_text(cfg.read_text().replace("profile: P}", "profile: Q}"))
    assert main(["check-config", "-c", str(cfg)]) == 0
    assert f"warning: {cfg}:9: destinations.pacs.negotiation_profile.file: {profile}:4: " \
        "TransferSyntax3: not read" in capsys.readouterr().err


def test_a_der_key_without_the_package_to_convert_it_is_an_error(tmp_path: Path, capsys,
                                                                monkeypatch) -> None:
    """A DER private key is converted with 'cryptography' (the tls extra): where it is not
    installed, check-config and the daemon's start say so at the key's line, with the
    command that installs it, instead of every association to that destination failing
    and being retried."""
    (tmp_path / "in").mkdir()
    for name in ("cert.der", "key.der"):
        (tmp_path / name).write_bytes(b"0")
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "in"],
                f"    tls: {{enabled: true, der: true, cert: {tmp_path}/cert.der, "
                f"key: {tmp_path}/key.der}}")
    assert main(["check-config", "-c", str(cfg)]) == 0  # installed here: nothing to say
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "cryptography", None)  # as if not installed
    assert main(["check-config", "-c", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert f"{cfg}:9: destinations.pacs.tls.der: a DER private key is converted with the " \
        "'cryptography' package, which this installation lacks" in err
    assert "sudo make install EXTRAS=codecs,tls" in err


def _as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           sys.executable, "-c",
                           "import sys; from forwarder.cli import main; sys.exit(main(sys.argv[1:]))",
                           *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})


@pytest.mark.skipif(not as_root, reason="checks as another user: needs root to switch to nobody")
def test_spool_not_writable_and_unreadable_files_as_the_user_who_runs_it() -> None:
    tmp_path = Path(tempfile.mkdtemp(dir="/var/tmp"))  # pytest's tmp_path is root's alone
    try:
        _spool_not_writable(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _spool_not_writable(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    for d in ("in", "spool"):
        (tmp_path / d).mkdir(mode=0o755)
    secret = tmp_path / "pw"
    secret.write_text("x")
    secret.chmod(0o600)
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "in"],
                f"    identity: {{user: u, password_file: {secret}}}")
    cfg.chmod(0o644)
    if _as_nobody(["--version"]).returncode != 0:
        pytest.skip("the interpreter is not reachable for user nobody here")
    r = _as_nobody(["check-config", "-c", str(cfg)])
    assert r.returncode == 78, r.stderr
    assert f"{cfg}:1: spool: {tmp_path / 'spool'} is not writable by user nobody" in r.stderr
    assert f"password_file: {secret} is not readable by user nobody" in r.stderr
    assert f"watch[0].path: {tmp_path / 'in'} is not writable by user nobody" in r.stderr
    (tmp_path / "spool").chmod(0o777)  # writable now, but a file in it is root's
    (tmp_path / "spool" / "daemon.lock").write_text("")
    r = _as_nobody(["check-config", "-c", str(cfg)])
    assert f"spool: {tmp_path / 'spool' / 'daemon.lock'} cannot be written by user nobody: " \
        f"chown -R nobody: {tmp_path / 'spool'}" in r.stderr, r.stderr
    cfg.chmod(0o600)
    r = _as_nobody(["check-config", "-c", str(cfg)])
    assert r.returncode == 78 and "chgrp dicom-forwarder" in r.stderr, r.stderr


def test_a_second_lock_on_the_spool_is_refused_and_status_sees_the_holder(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    assert spoollock.holder(spool) is None
    first = SpoolLock(spool).acquire("/etc/x.yaml")
    try:
        assert spoollock.holder(spool)["pid"] == os.getpid()
        with pytest.raises(SpoolLocked, match=r"another dicom-forwarder \(pid \d+, "
                                               r"configuration /etc/x.yaml\)") as exc:
            SpoolLock(spool).acquire("/etc/y.yaml", wait=0.3)
        assert exc.value.exit_code == 78
    finally:
        first.release()
    assert spoollock.holder(spool) is None  # the file stays; nobody holds it


def test_status_says_a_full_spools_pause_as_it_is_now_though_the_daemon_cannot_write(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a disk filled to the last block the daemon cannot rewrite its view of the pause
    (watch-state.json keeps "876 KiB free"); status says the free space it finds now,
    and what frees more, from the queue it reads."""
    (tmp_path / "in").mkdir()
    spool = tmp_path / "spool"
    queued = tmp_path / "queued.dcm"
    queued.write_bytes(b"\0" * 1000)
    with Spool(spool) as s:
        accept_file(s, queued, ("pacs",))
    cfg = write(tmp_path, spool, [tmp_path / "in"])
    lock = SpoolLock(spool).acquire(str(cfg))  # a daemon runs on it
    try:
        watchstate.write(spool, {}, {}, ("spool full: 876 KiB free on it (then)", 1.0),
                         ["w0"])
        real = os.statvfs

        def statvfs(path):  # noqa: ANN001, ANN202 - the disk as full as it gets
            st = real(path)
            return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0,
                                      *tuple(st)[5:]))
        monkeypatch.setattr("forwarder.watchstate.os.statvfs", statvfs)
        assert main(["status", "-c", str(cfg), "--json"]) == 0
    finally:
        lock.release()
    w0 = json.loads(capsys.readouterr().out)["watch"]["w0"]
    assert w0["state"] == "paused" and w0["since"] == 1.0
    assert w0["reason"].startswith(f"spool full: 0 KiB free on {spool}, ") and \
        w0["reason"].endswith("sending the 1 queued jobs frees space as they are delivered")


def test_status_never_creates_a_spool_and_reads_it_read_only(tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    missing = tmp_path / "typo"
    cfg = write(tmp_path, missing, [tmp_path / "in"])
    assert main(["status", "-c", str(cfg)]) == 1
    assert f"no spool at {missing}" in capsys.readouterr().err
    assert main(["retry", "-c", str(cfg), "--all-failed"]) == 1
    assert not missing.exists()
    spool = tmp_path / "spool"
    Spool(spool).close()
    before = {p.name: p.stat().st_mtime_ns for p in spool.iterdir()}
    cfg = write(tmp_path, spool, [tmp_path / "in"])
    assert main(["status", "-c", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["daemon"] is None
    assert report["destinations"]["pacs"]["last_success_at"] is None
    assert {p.name: p.stat().st_mtime_ns for p in spool.iterdir()} == before


def test_status_counts_a_killed_daemons_claims_as_pending(tmp_path: Path, capsys) -> None:
    """Jobs a daemon had claimed when it was killed are marked sending in the index; with
    no daemon running nothing sends them, and its next start makes them pending: status
    says pending, not sending."""
    (tmp_path / "in").mkdir()
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "in"])
    with Spool(tmp_path / "spool") as spool:
        for i, f in enumerate(unique_copies(tmp_path / "corpus", 3).values()):
            accept_file(spool, f, ("pacs",), i)
        assert len(spool.claim("pacs", 2, owner="1@dead")) == 2
    assert main(["status", "-c", str(cfg), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["destinations"]["pacs"]
    assert (row["pending"], row["sending"]) == (3, 0)
    lock = SpoolLock(tmp_path / "spool").acquire(str(cfg))  # a daemon that runs: as is
    try:
        assert main(["status", "-c", str(cfg), "--json"]) == 0
    finally:
        lock.release()
    row = json.loads(capsys.readouterr().out)["destinations"]["pacs"]
    assert (row["pending"], row["sending"]) == (1, 2)


def test_every_record_gets_a_message_id_and_pynetdicom_stays_below_error(tmp_path: Path) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    h = Keep()
    h.addFilter(logs.EventFilter())
    root = logging.getLogger()
    root.addHandler(h)
    logging.captureWarnings(True)
    try:
        logging.getLogger("pynetdicom.assoc").error("Association request failed: unable to "
                                                    "connect to remote")
        logging.getLogger("forwarder.daemon").warning("stopped")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("something old", DeprecationWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        root.removeHandler(h)
    by = {r.__dict__["FORWARDER_EVENT"]: r for r in seen}
    assert by["pynetdicom"].levelno == logging.WARNING
    assert by["log"].__dict__["MESSAGE_ID"] == logs.EVENTS["log"]
    assert by["python_warning"].__dict__["MESSAGE_ID"] == logs.EVENTS["python_warning"]
    assert logs.priority(by["pynetdicom"].levelno) == 4


@pytest.mark.skipif(not as_root, reason="reads as another user: needs root to switch to nobody")
def test_commands_on_a_spool_they_cannot_read_say_so_without_a_traceback() -> None:
    """An operator without the service user's rights gets the reason and what to do,
    never a traceback, and never "not running" for a lock file it cannot open."""
    tmp_path = Path(tempfile.mkdtemp(dir="/var/tmp"))  # pytest's tmp_path is root's alone
    try:
        os.chmod(tmp_path, 0o755)
        (tmp_path / "in").mkdir(mode=0o755)
        spool = tmp_path / "spool"
        Spool(spool).close()
        cfg = write(tmp_path, spool, [tmp_path / "in"])
        cfg.chmod(0o644)
        if _as_nobody(["--version"]).returncode != 0:
            pytest.skip("the interpreter is not reachable for user nobody here")
        spool.chmod(0o700)
        for argv in (["status"], ["status", "--json"], ["retry", "--all-failed"]):
            r = _as_nobody([*argv, "-c", str(cfg)])
            assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
            assert f"cannot read the spool {spool}: Permission denied (run this as root or " \
                "as the service user)" in r.stderr
        spool.chmod(0o755)
        (spool / "daemon.lock").write_text("")
        (spool / "daemon.lock").chmod(0o600)
        r = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
             "-c", "import sys; from forwarder import spoollock; spoollock.holder(sys.argv[1])",
             str(spool)], capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
        assert "SpoolError: cannot tell whether a daemon runs on the spool" in r.stderr, r.stderr
    finally:
        shutil.rmtree(tmp_path)


@pytest.mark.skipif(not as_root, reason="mounting a read-only tmpfs needs root (CI runs as root)")
def test_a_spool_on_a_read_only_mount_is_said_so_without_chown_advice(tmp_path: Path,
                                                                      capsys) -> None:
    """A file system the kernel remounted read-only after an error: chown would not help,
    and the message says what would."""
    (tmp_path / "in").mkdir()
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ro)], check=True)
    try:
        (ro / "spool").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        cfg = write(tmp_path, ro / "spool", [tmp_path / "in"])
        assert main(["check-config", "-c", str(cfg)]) == 78
        err = capsys.readouterr().err
        cfg = write(tmp_path, ro / "spool" / "new", [tmp_path / "in"])  # not made yet
        assert main(["check-config", "-c", str(cfg)]) == 78
        new = capsys.readouterr().err
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert f"spool: {ro / 'spool'} is on a read-only file system here" in err
    assert "check and repair it, then remount it read-write" in err and "chown" not in err
    assert f"spool: {ro / 'spool' / 'new'} does not exist and cannot be created: " \
        f"{ro / 'spool'} is on a read-only file system here" in new, new


def test_a_spool_on_a_kernel_or_network_file_system_is_refused_at_check_and_start(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc and /sys let root pass access() but make nothing: check-config said ok and
    the daemon exited 1 (restarted, five times). A spool on a network file system, or one
    that would be made in a folder on one, was refused only at start, with exit 1 too.
    Each is now an error of the file's spool line (exit 78), at check-config and start."""
    (tmp_path / "in").mkdir()
    for spool, kind in (("/proc/dicom-forwarder-spool", "proc"),
                        ("/sys/dicom-forwarder/spool", "sysfs")):
        cfg = write(tmp_path, Path(spool), [tmp_path / "in"])
        assert main(["check-config", "-c", str(cfg)]) == 78
        assert f"{cfg}:1: spool: {spool} is on {kind}, a kernel file system where no spool " \
            "can be made" in capsys.readouterr().err
        run = subprocess.run([sys.executable, "-m", "forwarder", "run", "-c", str(cfg),
                              "--log-target", "stderr"], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 78 and f"spool: {spool} is on {kind}" in run.stderr, run
        assert not os.path.exists(spool)
    real = envcheck.filesystem_type
    monkeypatch.setattr(envcheck, "filesystem_type", lambda p: "nfs4" if str(p).startswith(
        str(tmp_path / "share")) else real(p))
    (tmp_path / "share").mkdir()
    cfg = write(tmp_path, tmp_path / "share" / "spool", [tmp_path / "in"])  # not made yet
    assert main(["check-config", "-c", str(cfg)]) == 78
    assert f"{cfg}:1: spool: {tmp_path / 'share' / 'spool'} is on nfs4: SQLite's WAL needs " \
        "a local disk" in capsys.readouterr().err


def test_a_spool_directory_that_cannot_be_made_stops_the_start_with_exit_78(
        tmp_path: Path) -> None:
    """Past the checks (a path they cannot see through), a spool directory the kernel
    refuses to make is the configuration's to mend: exit 78, not a restart."""
    from forwarder.errors import EXIT_CONFIG, SpoolUnusable

    with pytest.raises(SpoolUnusable, match="cannot create the spool directory "
                       "/proc/dicom-forwarder-spool: No such file or directory") as caught:
        Spool("/proc/dicom-forwarder-spool")
    assert caught.value.exit_code == EXIT_CONFIG


def test_a_spool_directory_the_kernel_refuses_stops_the_daemon_with_exit_78(
        tmp_path: Path) -> None:
    """Past the machine checks (here they are skipped, as for a path they cannot see
    through), the daemon makes the spool directory itself: a refusal is exit 78 with
    the path, not exit 1 and a restart."""
    (tmp_path / "in").mkdir()
    cfg = write(tmp_path, Path("/proc/dicom-forwarder-spool"), [tmp_path / "in"])
    code = ("import sys\nfrom forwarder.config import envcheck\n"
            "envcheck.check = lambda cfg: envcheck.Findings()\n"
            "from forwarder.daemon import run\nsys.exit(run(sys.argv[1], 'stderr'))\n")
    run = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert run.returncode == 78, run.stderr
    assert "cannot start: cannot create the spool directory /proc/dicom-forwarder-spool: " \
        "No such file or directory" in run.stderr


def test_resume_on_a_destination_that_is_ok_does_not_claim_a_probe(tmp_path: Path,
                                                                    capsys) -> None:
    (tmp_path / "in").mkdir()
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "in"])
    Spool(tmp_path / "spool").close()
    assert main(["resume", "-c", str(cfg), "pacs"]) == 0
    out = capsys.readouterr().out
    assert out == "pacs: ok, nothing to probe; its 0 pending job(s) are due now\n"


def test_an_empty_token_file_is_an_error_and_holds_the_destination(tmp_path: Path,
                                                                     capsys) -> None:
    """A Kerberos ticket, SAML assertion or JWT file that is there but empty (truncated,
    not written yet) is named at check and start, as storescu refuses it; emptied while
    the daemon runs, the destination is held with that reason instead of proposing an
    identity of length 0."""
    (tmp_path / "in").mkdir()
    token = tmp_path / "token.jwt"
    token.touch()
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "in"],
                f"    identity: {{jwt_file: {token}}}")
    assert main(["check-config", "-c", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert f"destinations.pacs.identity.jwt_file: {token} is empty: it should hold the JSON " \
        "web token sent as the user identity; write it, or remove the key" in err
    with pytest.raises(UsageError, match=f"{token} is empty"):
        peer_for(load(str(cfg)).destinations["pacs"], "FORWARDER")
    token.write_bytes(b"header.payload.signature")
    assert main(["check-config", "-c", str(cfg)]) == 0
    assert peer_for(load(str(cfg)).destinations["pacs"], "FORWARDER").identity.primary == \
        b"header.payload.signature"


def test_a_folder_given_for_a_file_is_said_to_be_one(tmp_path: Path, capsys) -> None:
    """A folder where a file is wanted (a profile's folder, not the profile): chmod would
    not help, and the message says what would."""
    (tmp_path / "in").mkdir()
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "in"],
                f"    negotiation_profile: {{file: {tmp_path}, profile: P}}")
    assert main(["check-config", "-c", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert f"destinations.pacs.negotiation_profile.file: {tmp_path} is a folder, not a " \
        "file: give the file's path" in err and "chmod" not in err


def test_a_profile_that_is_no_file_is_refused_not_read_for_ever(tmp_path: Path,
                                                                capsys) -> None:
    """/dev/zero (or a FIFO) as the profile: said, not read until memory runs out."""
    (tmp_path / "in").mkdir()
    cfg = write(tmp_path, tmp_path / "spool", [tmp_path / "in"],
                "    negotiation_profile: {file: /dev/zero, profile: P}")
    assert main(["check-config", "-c", str(cfg)]) == 78
    assert "destinations.pacs.negotiation_profile.file: /dev/zero is not a regular file" \
        in capsys.readouterr().err
