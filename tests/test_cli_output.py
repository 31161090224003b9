"""The commands' output piped into a reader that stops early (``status --json | head -1``):
the command stops quietly, as tools that SIGPIPE ends do, without a traceback."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forwarder.errors import EXIT_FAILURE
from forwarder.spool import Spool
from tests.daemonutil import REPO
from tests.spoolutil import accept_file

RECORDS = 100  # quarantine records: --json output far larger than a pipe's buffer


def _spool(tmp_path: Path) -> tuple[list[str], str]:
    """A configuration whose spool has a failed job and many quarantined files: the
    command line's start and the configuration's path."""
    cfg = tmp_path / "f.yaml"
    cfg.write_text(f"spool: {tmp_path / 'spool'}\ndestinations:\n  pacs: {{host: h, port: 1}}\n"
                   "routes:\n  - to: [pacs]\n")
    src = tmp_path / "in.dcm"
    src.write_bytes(os.urandom(1000))
    with Spool(tmp_path / "spool") as spool:
        accept_file(spool, src, ("pacs",))
        spool.fail(spool.claim("pacs", 1)[0].id, "0122 SOP class not supported")
        for n in range(RECORDS):
            spool.quarantine(None, f"/in/report-{n:03}.pdf", "not DICOM: no DICM prefix")
    return [sys.executable, "-m", "forwarder"], str(cfg)


def _run(argv: list[str], stdout: int) -> subprocess.CompletedProcess:
    return subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("command", [["status", "--json"], ["status"], ["failed", "--json"],
                                     ["quarantine", "--json"], ["quarantine"]])
def test_a_reader_gone_before_the_output_ends_it_quietly(command: list[str],
                                                        tmp_path: Path) -> None:
    """The reader closed its end before a byte was written: small output meets it at the
    last flush, large output in the middle of printing."""
    prog, cfg = _spool(tmp_path)
    read, write = os.pipe()
    os.close(read)
    try:
        done = _run([*prog, command[0], "-c", cfg, *command[1:]], write)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (EXIT_FAILURE, "")


def test_quarantine_json_into_head(tmp_path: Path) -> None:
    prog, cfg = _spool(tmp_path)
    head = subprocess.Popen(["head", "-1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert head.stdin is not None and head.stdout is not None
    try:
        # a one-page pipe: the command is still writing when head has its line and exits
        fcntl.fcntl(head.stdin.fileno(), fcntl.F_SETPIPE_SZ, 4096)
        done = _run([*prog, "quarantine", "-c", cfg, "--json"], head.stdin.fileno())
        head.stdin.close()
        assert head.stdout.read() == b"[\n"
    finally:
        head.stdout.close()
        head.wait(10)
    assert (done.returncode, done.stderr) == (EXIT_FAILURE, "")


def test_a_broken_pipe_that_is_not_stdouts_is_not_hidden(tmp_path: Path,
                                                        monkeypatch) -> None:
    """A peer's socket closed under a command is a fault to see, not a reader gone."""
    from forwarder import commands
    from forwarder.cli import main

    def peer_gone(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    _prog, cfg = _spool(tmp_path)
    monkeypatch.setattr(commands, "cmd_echo", peer_gone)
    read, write = os.pipe()
    with os.fdopen(read, "rb"), os.fdopen(write, "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        with pytest.raises(BrokenPipeError):
            main(["echo", "-c", cfg])


def test_receive_names_an_output_folder_it_cannot_create_not_the_port(tmp_path: Path) -> None:
    """An output folder that cannot be made (here, below a file) was reported as "cannot
    listen on 127.0.0.1:PORT ... (is another storage SCP running there?)"."""
    (tmp_path / "f").write_text("a file")
    out = tmp_path / "f" / "received"
    run = subprocess.run([sys.executable, "-m", "forwarder", "receive", "--port", "1",
                          "--output", str(out)], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stderr.strip()) == (
        EXIT_FAILURE, f"dicom-forwarder: cannot create the output folder {out}: Not a directory")


def test_an_output_that_cannot_be_written_is_said_in_words(tmp_path: Path) -> None:
    """``status > /dev/full`` (stdout on a full disk) ended in a Python traceback; it
    says what failed, with exit 1."""
    cfg = tmp_path / "f.yaml"
    cfg.write_text(f"spool: {tmp_path / 'spool'}\ndestinations:\n  pacs: {{host: h, port: 1}}\n"
                   "routes:\n  - to: [pacs]\n")
    Spool(tmp_path / "spool").close()
    for args in (["status"], ["status", "--json"], ["failed"]):
        with open("/dev/full", "w") as full:
            run = subprocess.run([sys.executable, "-m", "forwarder", *args, "-c", str(cfg)],
                                 stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
        assert (run.returncode, run.stderr) == (
            EXIT_FAILURE, "dicom-forwarder: cannot write the output: No space left on device\n")
    # started with stdout closed: nothing to write to, and nothing fails
    run = subprocess.run([sys.executable, "-m", "forwarder", "status", "-c", str(cfg)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
                         pass_fds=(), preexec_fn=lambda: os.close(1))
    assert (run.returncode, run.stderr) == (0, "")
