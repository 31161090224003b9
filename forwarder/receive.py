"""``dicom-forwarder receive``: a small storage SCP for trying the daemon out and testing a link.

Accepts every storage SOP class in every transfer syntax (and C-ECHO), and writes each
object as a Part 10 file named by a counter, never by a UID from the wire; the file
appears under its final name only when complete (written aside, then renamed).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from forwarder import runtime
from forwarder.errors import ForwarderError

LOGGER = logging.getLogger(__name__)


class Receiver:
    """The SCP; ``start()`` listens, ``stop()`` shuts it down."""

    def __init__(self, output: str | os.PathLike[str], port: int, aet: str = "ANY-SCP",
                 bind: str = "127.0.0.1"):
        self.output = Path(output)
        self.port = port
        self.aet = aet
        self.bind = bind
        self.count = 0
        self._lock = threading.Lock()
        self.server: Any = None

    def _on_store(self, event: Any) -> int:
        with self._lock:
            self.count += 1
            n = self.count
        ds = event.request.DataSet.getvalue()
        uid = str(event.request.AffectedSOPInstanceUID)
        name = f"{os.getpid()}-{n:08d}.dcm"
        tmp = self.output / f".{name}.part"
        try:
            with open(tmp, "wb") as fp:
                fp.write(b"\0" * 128 + b"DICM")
                write_file_meta_info(DicomFileLike(fp), event.file_meta, enforce_standard=True)
                fp.write(ds)
            os.rename(tmp, self.output / name)
        except OSError as exc:
            LOGGER.error("cannot write %s: %s", name, exc.strerror)
            tmp.unlink(missing_ok=True)
            return 0xA700  # out of resources: the sender keeps the file and retries
        LOGGER.info("received %s from %s as %s", uid, event.assoc.requestor.ae_title, name)
        return 0x0000

    def start(self) -> Receiver:
        try:
            self.output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # said apart from a port that cannot be listened on
            raise ForwarderError(f"cannot create the output folder {self.output}: "
                                 f"{exc.strerror}") from exc
        ae = AE(ae_title=self.aet)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_associations = 16
        self.server = ae.start_server((self.bind, self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def run(output: str, port: int, aet: str, bind: str) -> int:
    """Serve until SIGTERM or SIGINT."""
    runtime.setup()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        rx = Receiver(output, port, aet, bind).start()
    except OSError as exc:
        raise ForwarderError(f"cannot listen on {bind}:{port}: {exc.strerror} (is another "
                             "storage SCP running there?)") from exc
    LOGGER.info("storage SCP %s listening on %s:%d, writing to %s", aet, bind, port, output)
    done.wait()
    rx.stop()
    LOGGER.info("stopped after receiving %d object(s)", rx.count)
    return 0
