"""The daemon as a subprocess with a NOTIFY_SOCKET of the test's own."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.peers import wait_for

REPO = Path(__file__).resolve().parent.parent


class DaemonProcess:
    """``dicom-forwarder run -c CONFIG``; records every sd_notify message with its time."""

    def __init__(self, config: Path, work: Path, env: dict[str, str] | None = None,
                 argv_prefix: tuple[str, ...] = (), log_target: str = "stderr",
                 python: str = sys.executable):
        self.work = work
        self.notify_path = work / f"notify-{time.monotonic_ns()}.sock"
        self.rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.rx.bind(str(self.notify_path))
        os.chmod(self.notify_path, 0o777)  # a daemon run as another account may notify too
        self.rx.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="test-notify", daemon=True)
        self._reader.start()
        self.log = work / f"daemon-{time.monotonic_ns()}.log"
        self._log_fp = open(self.log, "wb")  # noqa: SIM115 - closed in wait()
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": str(self.notify_path),
                    **(env or {})}
        self.proc = subprocess.Popen(
            [*argv_prefix, python, "-m", "forwarder", "run", "-c", str(config),
             "--log-target", log_target],
            cwd=work, env=full_env, stdout=self._log_fp, stderr=subprocess.STDOUT)

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.rx.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def states(self, key: str) -> list[str]:
        """Every value sent for ``key`` (READY, STATUS, WATCHDOG...), in order."""
        out = []
        for _t, msg in list(self.messages):
            for line in msg.splitlines():
                k, _, v = line.partition("=")
                if k == key:
                    out.append(v)
        return out

    def wait_ready(self, timeout: float = 30.0, count: int = 1) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            return len(self.states("READY")) >= count
        wait_for(ready, timeout, "READY=1 from the daemon")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise
        finally:
            self._closed.set()
            self._reader.join(5)
            self.rx.close()
            self._log_fp.close()
        return rc

    def kill(self) -> None:
        """SIGKILL the daemon's own process: no cleanup at all, as after a power cut of
        it. Its worker processes learn of it from their bell and stop after the C-STORE in
        hand; they are waited for, so what a test then reads of the spool and of the peer
        has settled (a worker still storing a file between the two reads would make it
        look lost). One that outlives its daemon by 30 s is a defect."""
        pidfds: dict[int, int] = {}
        if self.proc.poll() is None:
            for pid in process_tree(self.proc.pid)[1:]:
                try:
                    pidfds[pid] = os.pidfd_open(pid)  # this process, whatever takes its PID later
                except OSError:
                    continue  # gone already
            self.proc.kill()
        self.wait(10)
        deadline = time.monotonic() + 30
        try:
            for pid, fd in pidfds.items():
                ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                assert ready, f"worker {pid} still runs 30 s after its daemon was killed"
        finally:
            for fd in pidfds.values():
                os.close(fd)


def process_tree(root: int) -> list[int]:
    """``root`` and every live process descending from it (the fork server's workers too)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            if state not in ("Z", "X"):
                parents.setdefault(int(ppid), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    return tree


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def worker_pids(daemon_pid: int, destination: str) -> list[int]:
    """The daemon's worker processes for ``destination`` (named fwd-NAME-INDEX)."""
    out = []
    for pid in process_tree(daemon_pid):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(f"fwd-{destination}-"[:15]):
            out.append(pid)
    return out


def write_config(work: Path, port: int, extra_dest: str = "", extra: str = "",
                 min_age: str = "200ms", dest_name: str = "pacs") -> Path:
    (work / "in").mkdir(parents=True, exist_ok=True)
    cfg = work / "forwarder.yaml"
    cfg.write_text(
        f"spool: {work / 'spool'}\n"
        f"log: {{level: info}}\n"
        f"watch:\n  - {{name: modality, path: {work / 'in'}, min_age: {min_age}, rescan: 2s}}\n"
        f"destinations:\n  {dest_name}:\n    host: 127.0.0.1\n    port: {port}\n"
        f"    retry: {{initial: 200ms, max: 1s}}\n"
        f"    timeouts: {{connect: 2s, acse: 5s, dimse: 10s, network: 10s}}\n"
        f"{extra_dest}"
        f"routes:\n  - to: [{dest_name}]\n{extra}")
    return cfg


def drop(files: list[Path], folder: Path) -> None:
    """Write files into the watch folder as a modality would: aside, then renamed."""
    for f in files:
        tmp = folder / f".{f.name}.part"
        tmp.write_bytes(f.read_bytes())
        os.rename(tmp, folder / f.name)
