"""PixelMed's storage SCP (Debian package pixelmed-apps, a Java implementation) as a
third-party peer: it writes each object to ``out/<SOP Instance UID>`` and logs every
association and every object it received, with the calling AE title and the transfer
syntax."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from tests.peers import free_port, listening, stop_process, wait_for

JAR = Path("/usr/share/java/pixelmed.jar")
RECEIVED = re.compile(r"fileName: (?P<file>\S+) from (?P<aet>\S+) in (?P<ts>[0-9.]+)")
ASSOCIATION = "FINE: Association received "
# java.util.logging: PixelMed's network layer at FINE, which names each association
LOGGING = """handlers=java.util.logging.ConsoleHandler
.level=INFO
java.util.logging.ConsoleHandler.level=ALL
com.pixelmed.network.level=FINE
"""


class PixelMedStorage:
    """``StorageSOPClassSCPDispatcher PORT AET OUT``: every storage SOP class, the
    syntaxes PixelMed reads."""

    def __init__(self, out: Path, aet: str = "PIXELMED"):
        java = shutil.which("java")
        if java is None or not JAR.exists():
            raise RuntimeError("PixelMed is not installed: run 'make deps', which installs "
                               "Debian's pixelmed-apps (and a Java runtime)")
        self.out, self.aet, self.port = out, aet, free_port()
        out.mkdir(parents=True, exist_ok=True)
        self.log = out.parent / f"{out.name}.log"
        logging = out.parent / f"{out.name}.logging.properties"
        logging.write_text(LOGGING)
        self._log = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [java, "-Xmx256m", f"-Djava.util.logging.config.file={logging}", "-cp", str(JAR),
             "com.pixelmed.network.StorageSOPClassSCPDispatcher", str(self.port), aet, str(out),
             "0"],
            cwd=out.parent, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._listening, 60, "PixelMed to listen")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"PixelMed exited: {self.log.read_text(errors='replace')[-500:]}")
        return listening(self.port)

    def received(self) -> list[tuple[str, str, str]]:
        """(SOP Instance UID, calling AE title, transfer syntax) of every object received,
        in order, from PixelMed's own log."""
        return [(Path(m["file"]).name, m["aet"], m["ts"])
                for m in RECEIVED.finditer(self.log.read_text(errors="replace"))]

    @property
    def associations(self) -> int:
        return self.log.read_text(errors="replace").count(ASSOCIATION)

    def counts(self) -> Counter[str]:
        return Counter(uid for uid, _aet, _ts in self.received())

    def file(self, uid: str) -> Path:
        return self.out / uid

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()
