"""Log records -> journal fields (native protocol, checked on the wire) and stderr lines."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

import pytest

from forwarder import logs
from forwarder.dicomfile import Probe


def parse_native(data: bytes) -> dict[str, str]:
    """Decode journald's native protocol (KEY=value, or KEY\\n<le64><bytes>\\n)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, _, v = line.partition(b"=")
            out[k.decode()] = v.decode()
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            out[line.decode()] = data[nl + 9:nl + 9 + n].decode()
            i = nl + 9 + n + 1
    return out


@pytest.fixture
def journal_socket(tmp_path: Path):  # noqa: ANN201
    path = tmp_path / "journal.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))
    rx.settimeout(5)
    yield path, rx
    rx.close()


def test_native_protocol_carries_upper_case_fields_and_drops_phi(journal_socket) -> None:
    path, rx = journal_socket
    handler = logs.JournalHandler(str(path))
    handler.addFilter(logs.PHIFilter(allow=False))
    logger = logging.getLogger("test.native")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        probe = Probe("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1", "9.8",
                      phi={"PatientName": "DOE^JOHN", "PatientID": "12345"})
        logs.event(logger, "stored", "two\nlines %s", "ok", DESTINATION="pacs",
                   DICOM_STATUS="0x0000", **logs.probe_fields(probe))
        fields = parse_native(rx.recv(65536))
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert fields["MESSAGE"] == "two\nlines ok" and fields["PRIORITY"] == "6"
    assert fields["MESSAGE_ID"] == logs.EVENTS["stored"] and fields["FORWARDER_EVENT"] == "stored"
    assert fields["SOP_INSTANCE_UID"] == "1.2.3" and fields["DESTINATION"] == "pacs"
    assert "PATIENT_NAME" not in fields and "PATIENT_ID" not in fields
    assert not any(k != k.upper() for k in fields)


def test_stderr_line_has_key_values_and_phi_only_when_allowed(capsys) -> None:
    logger = logging.getLogger("test.stderr")
    for allow in (False, True):
        handler = logging.StreamHandler()
        handler.setFormatter(logs.KeyValueFormatter(timestamps=False))
        handler.addFilter(logs.PHIFilter(allow))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logs.event(logger, "accepted", "took %s", "x.dcm", FORWARDER_FILE="/in/x y.dcm",
                   PATIENT_NAME="DOE^JOHN")
        logger.removeHandler(handler)
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith("INFO took x.dcm FORWARDER_EVENT=accepted")
    assert 'FORWARDER_FILE="/in/x y.dcm"' in first and "DOE^JOHN" not in first
    assert "PATIENT_NAME=DOE^JOHN" in second


def test_a_journal_without_its_socket_is_never_chosen(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.sock")
    assert logs.choose_target("journal", missing) == (False, True)
    assert logs.choose_target("auto", missing) == (False, True)
    assert logs.choose_target("stderr", missing) == (False, True)


def test_every_message_id_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    for kind, mid in logs.EVENTS.items():
        assert f"| `{kind}` | `{mid}` |" in doc, kind
    assert len(set(logs.EVENTS.values())) == len(logs.EVENTS)
