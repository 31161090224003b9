from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import StoreSCP, StoreSCPProcess


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--rounds", type=int, default=int(os.environ.get("FWD_FAULT_ROUNDS", "20")),
                     help="SIGKILL rounds of the daemon in tests/faults (default 20)")


@pytest.fixture(autouse=True, scope="session")
def runtime_setup() -> None:
    """What every entry point does first (in-process runs of the daemon, `send` and the
    association code under test share this process)."""
    from forwarder import runtime

    runtime.setup()


@pytest.fixture
def scp() -> Iterator[StoreSCP]:
    peer = StoreSCP().start()
    yield peer
    peer.stop()


@pytest.fixture
def make_scp() -> Iterator:
    started: list[StoreSCP] = []

    def make(**kw) -> StoreSCP:
        peer = StoreSCP(**kw).start()
        started.append(peer)
        return peer

    yield make
    for peer in started:
        peer.stop()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCPProcess]:
    peer = StoreSCPProcess(tmp_path / "storescp-out")
    yield peer
    peer.stop()


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """`send` and the daemon's log setup replace the root logger's handlers (in-process
    CLI runs): give the next test the logging this one found."""
    import logging

    root, pdn = logging.getLogger(), logging.getLogger("pynetdicom")
    saved = (list(root.handlers), root.level, pdn.level)
    disabled = {name for name, lg in logging.root.manager.loggerDict.items()
                if isinstance(lg, logging.Logger) and lg.disabled}
    yield
    for h in root.handlers:
        if h not in saved[0]:
            h.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    pdn.setLevel(saved[2])
    # `send -lc` reads a logging configuration, which disables every other logger
    for name, lg in logging.root.manager.loggerDict.items():
        if isinstance(lg, logging.Logger) and lg.disabled and name not in disabled:
            lg.disabled = False


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves our own threads or worker processes running (pynetdicom's
    threads may linger briefly)."""
    before = set(threading.enumerate())
    yield
    from tests.peers import wait_for

    def ours_gone() -> bool:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()
                and t.name.startswith("fwd-")]
        workers = [p for p in multiprocessing.active_children() if p.name.startswith("fwd-")]
        return not left and not workers

    wait_for(ours_gone, 10, "forwarder threads and worker processes to stop")


JOURNALD = next((p for p in ("/usr/lib/systemd/systemd-journald", "/lib/systemd/systemd-journald")
                 if os.access(p, os.X_OK)), None)


@pytest.fixture
def private_journald() -> Iterator:
    """systemd-journald in a private mount namespace (root); run code in it, read entries."""
    if JOURNALD is None or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.fail("systemd-journald, unshare and nsenter are needed: run the README's test "
                    "command, which installs Debian's systemd")
    setup = ("mount -t tmpfs tmpfs /run/systemd && mount -t tmpfs tmpfs /run/log "
             "&& mkdir -p /var/log/journal && mount -t tmpfs tmpfs /var/log/journal; exec "
             + JOURNALD)
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", setup],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = Path(f"/proc/{proc.pid}/root")

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"private journald exited: {proc.stderr.read().decode()[:300]}")
        return (root / "run/systemd/journal/socket").exists()

    from tests.peers import wait_for

    wait_for(up, 10, "the private journald's socket")

    class Journal:
        pid = proc.pid

        @staticmethod
        def prefix() -> tuple[str, ...]:
            return ("nsenter", "-t", str(proc.pid), "-m", "--")

        @staticmethod
        def entries(*matches: str) -> list[dict]:
            out = subprocess.run(["journalctl", "-D", str(root / "run/log/journal"), "-o", "json",
                                  "--no-pager", *matches], capture_output=True, text=True,
                                 check=False).stdout
            return [json.loads(line) for line in out.splitlines() if line.strip()]

    yield Journal
    proc.terminate()
    proc.wait(10)
