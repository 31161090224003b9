"""Log setup: journald with UPPER_CASE fields, or stderr with ``KEY=value``; storescu's levels.

Every event the daemon reports goes through :func:`event`, which adds
``FORWARDER_EVENT`` and a fixed ``MESSAGE_ID`` per kind (listed in docs/operations.md),
so ``journalctl MESSAGE_ID=...`` or ``journalctl DESTINATION=pacs`` find them.

journald silently drops lowercase field names, and libsystemd reports success when
journald is not running at all, so the target is chosen here, from facts: stderr is
the journal (``JOURNAL_STREAM`` names it), or the journal socket exists. Patient name
and ID are removed from every record unless ``log.phi`` is true.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Mapping
from typing import Any

from forwarder import nosecrets, runtime
from forwarder.model import Probe
from forwarder.redact import PathFilter

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "dicom-forwarder"
TRACE = runtime.TRACE  # named by runtime.setup()

# storescu's --log-level names -> logging levels
LEVELS = {"fatal": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING,
          "info": logging.INFO, "debug": logging.DEBUG, "trace": TRACE}

# One fixed MESSAGE_ID per event kind (sd-id128 style, 32 hex digits).
EVENTS: dict[str, str] = {
    "accepted": "1d5fb3ab29274624b748bb9476e3dafa",
    "quarantined": "0a8cc6201b404af2926815f46ec5ecd5",
    "stored": "719ba2ae58334b73ab6967c2a129f290",
    "retry": "3e66ee556cf147ecbc743e68b5cf6546",
    "failed": "2a8703c01bfc4b78b4690513098e8ef1",
    "destination_backoff": "2f96b91fe52440f9b864dc92568ed0c2",
    "destination_held": "50a1577f23f14c31919408d7717ea742",
    "destination_ok": "a184073d2b1744cab8e22ff55a1e60a6",
    "reload": "a1336d89b0aa4b7f9b94621854566e33",
    "reload_failed": "5c6fe0e088c541af9bd57945d27650e0",
    "started": "b2c17ef478c54f43b400280deba79f9e",
    "stopping": "c4f74cdf801b43598c90175f93b40ef9",
    "spool_full": "37c87aa249eb4f66816304c3e2b99c2f",
    "intake_error": "b57841955c894a31b8059a89d6b33478",
    "duplicate": "d36047431f244f4fbc5adc0b0512ce4e",
    "unrouted_deleted": "1d356a40d0fc41369e4ac04aa638f4a7",
    "ignored": "76944aef4c7240068086412147d7704f",
    "watch_fallback": "84b44d848e6f49fe9b2a779562b93ec4",
    "expired": "22df1056bc3f426a8459ce532b85f8be",
    "expiring": "9d4a1c7e5f2b4e8a8c3d6b0f1e2a7c59",
    "association": "af2fb285b7ab47a6af342ee41c45f7b9",
    "purged": "83163ece6cdd4e2ab5ebdd209faf0296",
    "sender_restart": "6b0e2f4c9d7a4e21a3c58f1d0b7e9c42",
    "source_kept": "9a3c4bc647c6495aa4b379643cd1e6cf",
    "watch_unavailable": "6c9cb14aea1e46cfa98601be3d586ce9",
    "watch_available": "c70ee9120ea545f9805618284b13389b",
    "watch_replaced": "7dd104d32cb74f8395222eaf0b6ef35f",
    "incomplete": "ca2302976b614c44aa387928f25656c0",
    "writing": "ef05e451ae84478aa2b99e2f3c31ab0e",
    "environment": "e3b4a0d25c6f47a19e7d8b2c5f1a0d34",
    "start_refused": "9a2e6c41d7b84f03a5c1e8d2b6f7a490",
    # records that are not one of the events above: still found by MESSAGE_ID
    "log": "4c8d1e2f7a3b45c69d0e1f2a3b4c5d6e",
    "python_warning": "b7e1d9c2a4f3480e9c6d5b1a2e3f4c70",
    "pynetdicom": "0d6a3f8e2b1c47d59e4a7c1b3d2f6e85",
}

GENERIC = frozenset({"log", "python_warning", "pynetdicom"})
PHI_FIELDS = ("PATIENT_NAME", "PATIENT_ID")
_FIELD = re.compile(r"^[A-Z0-9][A-Z0-9_]*$")
_RECORD_KEYS = frozenset(vars(logging.makeLogRecord({})))


def event(logger: logging.Logger, kind: str, message: str, *args: Any,
          level: int = logging.INFO, **fields: Any) -> None:
    """Log one event of ``kind`` with journal fields (UPPER_CASE keyword arguments)."""
    if not logger.isEnabledFor(level):
        return
    extra = {"FORWARDER_EVENT": kind, "MESSAGE_ID": EVENTS[kind]}
    extra.update({k: v for k, v in fields.items() if v is not None})
    logger.log(level, message, *args, extra=extra, stacklevel=2)


def probe_fields(probe: Probe | None) -> dict[str, Any]:
    """The journal fields describing one object (PHI is stripped later unless allowed)."""
    if probe is None:
        return {}
    return {"SOP_INSTANCE_UID": probe.sop_instance_uid, "SOP_CLASS_UID": probe.sop_class_uid,
            "STUDY_INSTANCE_UID": probe.study_instance_uid,
            "PATIENT_NAME": probe.phi.get("PatientName"), "PATIENT_ID": probe.phi.get("PatientID")}


def fields_of(record: logging.LogRecord) -> dict[str, str]:
    """The structured fields a record carries: UPPER_CASE extras only."""
    return {k: str(v) for k, v in vars(record).items()
            if k not in _RECORD_KEYS and _FIELD.match(k)}


class PHIFilter(logging.Filter):
    """Removes patient name and ID from records unless ``log.phi`` allows them."""

    def __init__(self, allow: bool):
        super().__init__()
        self.allow = allow

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.allow:
            for key in PHI_FIELDS:
                record.__dict__.pop(key, None)
        return True


class EventFilter(logging.Filter):
    """Gives every record a ``MESSAGE_ID``: Python warnings (``py.warnings``, captured by
    :func:`setup`) and pynetdicom's own lines get their own, anything else not logged
    through :func:`event` the generic ``log`` one. pynetdicom reports every refused or
    timed-out association at ERROR; the daemon already reports those as
    ``destination_backoff``/``destination_held`` events at their own priority, so its
    lines go no higher than WARNING and ``journalctl -p err`` stays for real faults."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "MESSAGE_ID" in record.__dict__:
            return True
        if record.name == "py.warnings":
            kind = "python_warning"
        elif record.name.split(".", 1)[0] == "pynetdicom":
            kind = "pynetdicom"
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        else:
            kind = "log"
        record.__dict__["FORWARDER_EVENT"] = kind
        record.__dict__["MESSAGE_ID"] = EVENTS[kind]
        return True


class KeyValueFormatter(logging.Formatter):
    """``2026-11-25 09:30:00 INFO message KEY=value ...`` for stderr."""

    def __init__(self, timestamps: bool = True):
        super().__init__("%(asctime)s %(levelname)s %(message)s" if timestamps
                         else "%(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = fields_of(record)
        fields.pop("MESSAGE_ID", None)
        if fields.get("FORWARDER_EVENT") in GENERIC:
            fields.pop("FORWARDER_EVENT")
        if fields:
            text += " " + " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        return text


def _quote(v: str) -> str:
    return v if v and not any(c in v for c in " \"=\n") else '"' + v.replace('"', '\\"') \
        .replace("\n", "\\n") + '"'


_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
             (logging.INFO, 6))


def priority(levelno: int) -> int:
    for threshold, prio in _PRIORITY:
        if levelno >= threshold:
            return prio
    return 7


def _native_payload(fields: Mapping[str, str]) -> bytes:
    """journald's native protocol: ``KEY=value`` lines, or a length-prefixed value when
    it holds a newline (systemd's JOURNAL_NATIVE_PROTOCOL)."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends each record to journald with its UPPER_CASE fields.

    Uses systemd-python's ``journal.send`` when installed, otherwise speaks the native
    protocol to ``socket_path`` itself (the core needs no compiled dependency).
    """

    def __init__(self, socket_path: str = JOURNAL_SOCKET, use_binding: bool = True):
        super().__init__()
        self.socket_path = socket_path
        self._send: Any = None
        if use_binding and socket_path == JOURNAL_SOCKET:
            try:
                from systemd import journal  # type: ignore[attr-defined]

                self._send = journal.send
            except ImportError:
                self._send = None
        self._sock: socket.socket | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {"PRIORITY": str(priority(record.levelno)),
                      "SYSLOG_IDENTIFIER": IDENTIFIER, "LOGGER": record.name,
                      "THREAD_NAME": record.threadName or "", "CODE_FILE": record.pathname,
                      "CODE_LINE": str(record.lineno), "CODE_FUNC": record.funcName}
            fields.update(fields_of(record))
            message = record.getMessage()
            if record.exc_info:
                formatter = self.formatter or logging.Formatter()
                message += "\n" + formatter.formatException(record.exc_info)
            if self._send is not None:  # systemd-python wants CODE_LINE as an int
                line = int(fields.pop("CODE_LINE"))
                self._send(message, CODE_LINE=line, **fields)
                return
            fields = {"MESSAGE": message, **fields}
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(_native_payload(fields), self.socket_path)
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            self.handleError(record)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        super().close()


def stderr_is_journal() -> bool:
    """systemd.exec(5): JOURNAL_STREAM is ``dev:inode`` of the stream stderr is connected to."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def choose_target(target: str, socket_path: str = JOURNAL_SOCKET) -> tuple[bool, bool]:
    """(to journal, to stderr) for ``log.target``; a journal without a socket is never
    chosen, since messages sent there would vanish without an error."""
    have_socket = os.path.exists(socket_path)
    if target == "stderr":
        return False, True
    if target == "journal":
        return (True, False) if have_socket else (False, True)
    if stderr_is_journal():
        return True, False
    if have_socket:
        return True, sys.stderr.isatty()  # at a terminal the operator also sees it
    return False, True


def setup(level: str = "info", target: str = "auto", phi: bool = False,
          socket_path: str = JOURNAL_SOCKET, paths: str = "keep") -> list[logging.Handler]:
    """Install handlers on the root logger (only ``cli``/``daemon`` call this)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_forwarder", False):
            root.removeHandler(h)
            h.close()
    to_journal, to_stderr = choose_target(target, socket_path)
    handlers: list[logging.Handler] = []
    if to_journal:
        handlers.append(JournalHandler(socket_path))
    if to_stderr:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(KeyValueFormatter(timestamps=not stderr_is_journal()))
        handlers.append(h)
    for h in handlers:
        h.addFilter(PHIFilter(phi))
        if paths == "redact":
            h.addFilter(PathFilter())
        h.addFilter(EventFilter())
        h._forwarder = True  # type: ignore[attr-defined]
        root.addHandler(h)
    lvl = LEVELS[level]
    root.setLevel(lvl)
    nosecrets.install()
    logging.captureWarnings(True)  # warnings.warn() -> the "py.warnings" logger, structured
    # pynetdicom narrates every PDU at INFO; keep it for debug and trace
    logging.getLogger("pynetdicom").setLevel(lvl if lvl <= logging.DEBUG else logging.WARNING)
    if target == "journal" and not to_journal:
        logging.getLogger(__name__).warning(
            "log.target is journal but %s does not exist: logging to stderr", socket_path)
    return handlers
