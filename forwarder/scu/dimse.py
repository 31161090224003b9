"""DIMSE command sets for C-STORE and C-ECHO (PS3.7 9.3), and where a file's dataset starts.

The requests are packed with ``struct`` in Implicit VR Little Endian (PS3.7 6.3.1); the
tests check them byte for byte against pynetdicom's own encoding of the same command
(``C_STORE_RQ.primitive_to_message`` and :func:`pynetdicom.dsutils.encode`). A response
command set is read element by element into raw values.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from forwarder.elements import LONG_VRS
from forwarder.scu.pdu import MalformedPDU

VERIFICATION = "1.2.840.10008.1.1"
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
NO_DATASET = 0x0101

_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")


def _element(elem: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, elem, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _command(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return _element(0x0000, _UL.pack(len(body))) + body


def c_store_rq(message_id: int, sop_class: str, sop_instance: str, priority: int = 0,
               move_originator: str | None = None, move_message_id: int | None = None) -> bytes:
    """The C-STORE-RQ command set; a dataset follows (CommandDataSetType 0x0001)."""
    elements = [_element(0x0002, _uid(sop_class)), _element(0x0100, _US.pack(C_STORE_RQ)),
                _element(0x0110, _US.pack(message_id)), _element(0x0700, _US.pack(priority)),
                _element(0x0800, _US.pack(0x0001)), _element(0x1000, _uid(sop_instance))]
    if move_originator is not None:
        aet = move_originator.encode("ascii")
        elements.append(_element(0x1030, aet + b" " if len(aet) % 2 else aet))
    if move_message_id is not None:
        elements.append(_element(0x1031, _US.pack(move_message_id)))
    return _command(elements)


def c_echo_rq(message_id: int) -> bytes:
    return _command([_element(0x0002, _uid(VERIFICATION)),
                     _element(0x0100, _US.pack(C_ECHO_RQ)),
                     _element(0x0110, _US.pack(message_id)),
                     _element(0x0800, _US.pack(NO_DATASET))])


@dataclass(frozen=True)
class Response:
    """A DIMSE response: its status, message ID answered and comment, and the raw command
    elements by element number (group 0000)."""

    command_field: int
    message_id: int
    status: int
    comment: str | None
    has_dataset: bool
    elements: dict[int, bytes]


def parse_command(data: bytes, where: str) -> dict[int, bytes]:
    """Element number -> raw value of an Implicit VR Little Endian command set."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        if pos + 8 > len(data):
            raise MalformedPDU(f"malformed command set {where}: {len(data) - pos} stray bytes "
                               f"at command byte {pos}")
        group, elem, length = _ELEMENT.unpack_from(data, pos)
        if group != 0 or pos + 8 + length > len(data):
            raise MalformedPDU(f"malformed command set {where}: element "
                               f"({group:04X},{elem:04X}) at command byte {pos} "
                               f"({length} bytes, {len(data) - pos - 8} left)")
        out[elem] = data[pos + 8:pos + 8 + length]
        pos += 8 + length
    return out


def parse_response(data: bytes, where: str) -> Response:
    elements = parse_command(data, where)

    def us(elem: int, label: str) -> int:
        raw = elements.get(elem)
        if raw is None or len(raw) != 2:
            raise MalformedPDU(f"malformed command set {where}: no valid {label} "
                               f"(0000,{elem:04X})")
        return int(_US.unpack(raw)[0])

    comment = elements.get(0x0902)
    return Response(us(0x0100, "Command Field"), us(0x0120, "Message ID Being Responded To"),
                    us(0x0900, "Status"),
                    comment.decode("latin-1").strip("\0 ") if comment else None,
                    us(0x0800, "Command Data Set Type") != NO_DATASET, elements)


def dataset_offset(fd: int) -> int:
    """Where the dataset starts in a DICOM file (PS3.10 7.1): after the preamble, 'DICM'
    and the group 0002 elements (Explicit VR Little Endian); 0 for a bare dataset."""
    buf = os.pread(fd, 4096, 0)
    if len(buf) < 132 or buf[128:132] != b"DICM":
        return 0
    base, pos = 0, 132  # buf holds the file from ``base``
    while True:
        if pos + 12 > base + len(buf):
            base, buf = pos, os.pread(fd, 4096, pos)
        at = pos - base
        if len(buf) - at < 8 or _US.unpack_from(buf, at)[0] != 0x0002:
            return pos
        if buf[at + 4:at + 6] in LONG_VRS:
            if len(buf) - at < 12:
                return pos
            pos += 12 + _UL.unpack_from(buf, at + 8)[0]
        else:
            pos += 8 + _US.unpack_from(buf, at + 6)[0]
