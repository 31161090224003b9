"""A throw-away Debian 12 booted with a real systemd as PID 1 under ``systemd-nspawn``.

The root file system comes from ``tests/nspawn/rootfs.sh`` (debootstrap, cached outside
the checkout under /var/cache/dicom-forwarder-tests, keyed by its package list); each box
runs on an overlay over that cache, so the cache is never changed and a run leaves
nothing behind. The container shares the host's network: peers the test starts on
127.0.0.1 are reachable from inside. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTFS_SH = REPO / "tests" / "nspawn" / "rootfs.sh"
CACHE = Path(os.environ.get("DICOM_FORWARDER_TEST_CACHE", "/var/cache/dicom-forwarder-tests"))
# what `make install` needs from the checkout (a copy: the box never writes into it)
SOURCES = ("Makefile", "pyproject.toml", "README.md", "forwarder", "systemd", "etc")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing_tools() -> list[str]:
    return [t for t in ("systemd-nspawn", "debootstrap", "nsenter", "mount")
            if shutil.which(t) is None]


def cached_rootfs() -> Path:
    """The cached root file system, built on first use (about 2.5 minutes)."""
    r = subprocess.run(["sh", str(ROOTFS_SH), str(CACHE)], capture_output=True, text=True,
                       timeout=1200)
    if r.returncode != 0:
        raise RuntimeError(f"cannot build the test root file system: {r.stderr[-2000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def wheelhouse(into: Path) -> None:
    """The project's dependencies as wheels (through the host's pip configuration), so the
    box installs with ``PIP_NO_INDEX`` and needs no route to a package index."""
    into.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d",
                        str(into), f"{REPO}[codecs,tls]", "setuptools>=64", "wheel"],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"pip download failed: {r.stderr[-2000:]}")


class Box:
    def __init__(self, name: str | None = None):
        self.name = name or f"dfwd-test-{os.getpid()}"
        self.work = Path(tempfile.mkdtemp(prefix="dicom-forwarder-nspawn-", dir="/var/tmp"))
        self.root = self.work / "merged"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self._mounted = False

    # --- life ----------------------------------------------------------------------

    @staticmethod
    def sweep() -> None:
        """Remove what an earlier run that was killed outright left behind: its container
        (by the PID it recorded, if that is still its systemd-nspawn), its overlay mount
        and its directory. Boxes of runs still alive are left alone."""
        for work in Path("/var/tmp").glob("dicom-forwarder-nspawn-*"):
            try:
                owner = int((work / "owner.pid").read_text())
            except (OSError, ValueError):
                continue
            if Path(f"/proc/{owner}").exists():
                continue
            with contextlib.suppress(OSError, ValueError):
                pid = int((work / "nspawn.pid").read_text())
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if cmd and cmd[0].endswith(b"systemd-nspawn") and str(work).encode() in b" ".join(cmd):
                    pidfd = os.pidfd_open(pid)  # this process, whatever takes its PID later
                    try:
                        os.killpg(pid, signal.SIGKILL)
                        # readable once it has exited: its mounts go with it, then unmount
                        select.select([pidfd], [], [], 10)
                    finally:
                        os.close(pidfd)
            subprocess.run(["umount", "-l", str(work / "merged")], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)

    def boot(self, lower: Path, timeout: float = 120) -> Box:
        (self.work / "owner.pid").write_text(str(os.getpid()))
        for d in ("upper", "ovlwork", "merged"):
            (self.work / d).mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower},upperdir={self.work / 'upper'},"
                        f"workdir={self.work / 'ovlwork'}", str(self.root)], check=True)
        self._mounted = True
        # this machine's extra trust anchors, so pip and apt inside work as outside
        anchors = Path("/usr/local/share/ca-certificates")
        if anchors.is_dir():
            for crt in anchors.glob("*.crt"):
                shutil.copy(crt, self.root / "usr/local/share/ca-certificates" / crt.name)
        (self.root / "etc/hostname").write_text(self.name + "\n")
        log = open(self.work / "boot.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "-M", self.name, "--register=no",
             "--keep-unit", "--resolv-conf=copy-host", "--timezone=off",
             "--console=read-only", "-b"], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        (self.work / "nspawn.pid").write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout
        while self.leader is None:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            try:
                pids = kids.read_text().split()
            except OSError:
                pids = []
            comm = ""
            if pids:
                with contextlib.suppress(OSError):
                    comm = Path(f"/proc/{pids[0]}/comm").read_text().strip()
            if comm == "systemd":  # the container's PID 1 (not nspawn's short-lived helper)
                self.leader = int(pids[0])
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"systemd-nspawn did not start: {self.boot_log()}")
            else:
                time.sleep(0.1)
        bus = Path(f"/proc/{self.leader}/root/run/systemd/private")
        while not bus.exists():  # systemctl needs the manager's socket
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"systemd in the box never listened: {self.boot_log()}")
            time.sleep(0.1)
        left = max(deadline - time.monotonic(), 5)
        r = self.sh(f"timeout {left:.0f} systemctl is-system-running --wait", check=False)
        if r.stdout.strip() not in ("running", "degraded"):
            raise RuntimeError(f"the box did not boot ({r.stdout.strip()} {r.stderr}): "
                               f"{self.sh('systemctl --failed --no-pager', check=False).stdout}"
                               f"{self.boot_log()}")
        return self

    def boot_log(self) -> str:
        try:
            return (self.work / "boot.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def close(self) -> None:
        """Power off (or kill) the container, unmount and remove everything it made."""
        if self.proc is not None and self.proc.poll() is None:
            if self.leader is not None:
                with contextlib.suppress(Exception):
                    self.sh("systemctl poweroff --no-block", check=False, timeout=20)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._mounted:
            for _ in range(10):
                if subprocess.run(["umount", str(self.root)]).returncode == 0:
                    break
                time.sleep(0.5)
            else:
                subprocess.run(["umount", "-l", str(self.root)])
            self._mounted = False
        shutil.rmtree(self.work, ignore_errors=True)

    # --- inside ----------------------------------------------------------------------

    def sh(self, script: str, user: str | None = None, check: bool = True,
           timeout: float = 300, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with bash inside the box (as ``user`` when given)."""
        assert self.leader is not None
        argv = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C", "-r",
                "-w", "env", "-i", f"PATH={PATH}", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0",
                "LANG=C.UTF-8", *(f"{k}={v}" for k, v in (env or {}).items())]
        if user:
            argv += ["runuser", "-u", user, "--"]
        r = subprocess.run([*argv, "bash", "-c", script], capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"in the box: {script!r} exited {r.returncode}\n"
                                 f"stdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}")
        return r

    def path(self, inside: str) -> Path:
        """The host's view of a path inside the box."""
        return self.root / inside.lstrip("/")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} -p {','.join(props)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
