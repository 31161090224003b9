"""Real storage peers for tests, all on 127.0.0.1: a pynetdicom SCP and DCMTK storescp."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.02) -> Any:
    """Poll ``condition`` until it is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        threading.Event().wait(interval)


def listening(port: int) -> bool:
    """A socket listens on ``port``, read from /proc/net/tcp and tcp6: no probing
    connection, which some peers take as a client (CTN's simple_storage stops at one
    without an association)."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(f[1].endswith(wanted) and f[3] == "0A" for f in (ln.split() for ln in lines)):
            return True
    return False


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM a peer process this test started, SIGKILL it after 5 s, reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Received:
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    dataset_bytes: bytes
    assoc_id: int


@dataclass
class StoreSCP:
    """A pynetdicom storage SCP scripted per test; records what it saw."""

    port: int = field(default_factory=free_port)
    ae_title: str = "ANY-SCP"
    # explicit VR little endian first: the SCP accepts the first of its own list proposed
    transfer_syntaxes: list[str] = field(default_factory=lambda: sorted(
        ALL_TRANSFER_SYNTAXES, key=lambda ts: ts != "1.2.840.10008.1.2.1"))
    sop_classes: list[str] | None = None
    status: Callable[[Any], int] | None = None  # event -> status
    comment: str | None = None  # Error Comment (0000,0902) sent with every failure status
    verification: bool = True  # offer the Verification SOP class (C-ECHO)
    require_called_aet: bool = False
    maximum_associations: int = 10
    ssl_context: Any = None
    user_check: Callable[[Any], tuple[bool, bytes | None]] | None = None
    received: list[Received] = field(default_factory=list)
    requested: list[list[tuple[str, tuple[str, ...]]]] = field(default_factory=list)
    requestor_max_pdu: list[int] = field(default_factory=list)  # per association, as proposed
    associations: int = 0
    aborts_seen: int = 0
    releases_seen: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> StoreSCP:
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = self.require_called_aet
        ae.maximum_associations = self.maximum_associations
        ae.dimse_timeout = 30
        ae.network_timeout = 30
        classes = self.sop_classes or [c.abstract_syntax for c in AllStoragePresentationContexts]
        for sop in classes:
            ae.add_supported_context(sop, self.transfer_syntaxes)
        if self.verification:
            ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REQUESTED, self._on_request),
                    (evt.EVT_ABORTED, self._on_abort), (evt.EVT_RELEASED, self._on_release)]
        if self.user_check:
            handlers.append((evt.EVT_USER_ID, self._on_user))
        self.ae = ae
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=handlers, ssl_context=self.ssl_context)
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def _on_request(self, event: Any) -> None:
        with self.lock:
            self.associations += 1
            self.requestor_max_pdu.append(event.assoc.requestor.maximum_length)
            self.requested.append([(str(c.abstract_syntax), tuple(str(t) for t in c.transfer_syntax))
                                   for c in event.assoc.requestor.requested_contexts])

    def _on_abort(self, event: Any) -> None:
        with self.lock:
            self.aborts_seen += 1

    def _on_release(self, event: Any) -> None:
        with self.lock:
            self.releases_seen += 1

    def _on_user(self, event: Any) -> tuple[bool, bytes | None]:
        assert self.user_check is not None
        return self.user_check(event)

    def _on_store(self, event: Any) -> int:
        status = self.status(event) if self.status else 0
        if status in (0,) or (status >> 12) == 0xB:
            ts = UID(event.context.transfer_syntax)
            raw = event.request.DataSet.getvalue()
            plain = zlib.decompress(raw, -15) if ts.is_deflated else raw
            ds = read_dataset(DicomBytesIO(plain), ts.is_implicit_VR, ts.is_little_endian)
            with self.lock:
                self.received.append(Received(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                              str(ts), raw,
                                              id(event.assoc)))
        elif self.comment:
            from pydicom.dataset import Dataset

            rsp = Dataset()
            rsp.Status = status
            rsp.ErrorComment = self.comment
            return rsp  # type: ignore[return-value]
        return status

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(r.sop_instance for r in self.received)


class StoreSCPProcess:
    """DCMTK storescp as Debian ships it, writing into ``out``."""

    def __init__(self, out: Path, args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.out = out
        self.port = free_port()
        exe = shutil.which("storescp")
        if exe is None:
            raise RuntimeError("DCMTK storescp is not installed: run the README's test command, "
                               "which installs Debian's dcmtk")
        out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, *args, "-od", str(out), str(self.port)],
                                     env={**os.environ, **(env or {})},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self._listening, 10, "storescp to listen")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"storescp exited: {self.proc.stderr.read().decode()[:300]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def stop(self) -> None:
        stop_process(self.proc)


class OrthancProcess:
    """Orthanc from Debian's packages as a real PACS on 127.0.0.1, queried over REST."""

    def __init__(self, work: Path, aet: str = "ORTHANC"):
        import json

        exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        if not os.access(exe, os.X_OK):
            raise RuntimeError("Orthanc is not installed: run the README's test command, "
                               "which installs Debian's orthanc")
        work.mkdir(parents=True, exist_ok=True)
        self.port, self.http = free_port(), free_port()
        self.aet = aet
        cfg = {"Name": "fwd-test", "DicomAet": aet, "DicomPort": self.port,
               "HttpPort": self.http, "StorageDirectory": str(work / "db"),
               "IndexDirectory": str(work / "db"), "RemoteAccessAllowed": False,
               "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
               "Plugins": [], "HttpServerEnabled": True, "DicomServerEnabled": True,
               "StableAge": 1, "LogExportedResources": False}
        (work / "orthanc.json").write_text(json.dumps(cfg))
        self.log = open(work / "orthanc.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([exe, str(work / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for(self._ready, 30, "Orthanc to answer on its REST and DICOM ports")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.proc.returncode}")
        try:
            self.get("/system")
        except OSError:
            return False
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def get(self, path: str) -> Any:
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=10) as r:
            return json.loads(r.read())

    def sop_instance_uids(self) -> Counter[str]:
        """SOP Instance UID of every stored instance (Orthanc keeps one per UID)."""
        out: Counter[str] = Counter()
        for iid in self.get("/instances"):
            tags = self.get(f"/instances/{iid}/simplified-tags")
            out[tags["SOPInstanceUID"]] += 1
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
