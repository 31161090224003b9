"""Upper-layer PDU framing on a blocking socket (PS3.8 9.3).

:class:`PDUReader` reads whole PDUs from a socket with the timeouts of the phase the
association is in, counting every byte, so a PDU that cannot be read names its type and
its offset in the peer's byte stream. The control PDUs are decoded by
:mod:`forwarder.scu.acse` after a structural walk (:func:`check_items`) that reports
where an item runs past its PDU. P-DATA-TF headers are packed here with ``struct``:
they frame the file's own bytes (see :mod:`forwarder.scu.association`).
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
from collections.abc import Iterator

from forwarder.scu import acse

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
RELEASE_RQ, RELEASE_RP, ABORT = 0x05, 0x06, 0x07
NAMES = {ASSOCIATE_RQ: "A-ASSOCIATE-RQ", ASSOCIATE_AC: "A-ASSOCIATE-AC",
         ASSOCIATE_RJ: "A-ASSOCIATE-RJ", P_DATA_TF: "P-DATA-TF", RELEASE_RQ: "A-RELEASE-RQ",
         RELEASE_RP: "A-RELEASE-RP", ABORT: "A-ABORT"}
_FIXED_LENGTH = {ASSOCIATE_RJ: 4, RELEASE_RQ: 4, RELEASE_RP: 4, ABORT: 4}
MAX_PDU_BODY = 16 * 1024 * 1024  # larger than anything a storage SCP answers: a broken stream

# PS3.8 Table 9-26 A-ABORT reasons when we (the service provider) abort
REASON_UNRECOGNIZED_PDU, REASON_UNEXPECTED_PDU, REASON_INVALID_PARAMETER = 1, 2, 6

HEADER = struct.Struct(">BBI")
# P-DATA-TF with one PDV: PDU type, reserved, PDU length, item length, context ID, control
PDATA_HEADER = struct.Struct(">BBIIBB")
_UINT4 = struct.Struct(">I")
_ITEM = struct.Struct(">BBH")


def name(pdu_type: int) -> str:
    """``A-ABORT (type 0x07)``, or ``unknown PDU type 0x42``."""
    known = NAMES.get(pdu_type)
    return f"{known} (type 0x{pdu_type:02X})" if known else f"unknown PDU type 0x{pdu_type:02X}"


class AssociationLost(Exception):
    """The association ended while in use; whatever was in flight must go again on a new
    one. ``kind``: ``aborted`` (A-ABORT from the peer), ``released`` (the peer released),
    ``closed`` (connection closed or reset), ``timeout``, ``malformed`` (see
    :class:`MalformedPDU`)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class MalformedPDU(AssociationLost):
    """The peer sent a PDU that cannot be read, or one that has no place in the protocol
    state; we abort the association. The message names the PDU type and its offset in
    the peer's stream."""

    def __init__(self, message: str, reason: int = REASON_INVALID_PARAMETER):
        super().__init__("malformed", message)
        self.reason = reason


def pdata_pdus(context_id: int, control: int, data: bytes, fragment: int) -> bytes:
    """A message part (``control`` bit 0: command) as P-DATA-TF PDUs of at most
    ``fragment`` data bytes each; the last fragment carries the last-fragment bit."""
    out = []
    pos = 0
    while True:
        piece = data[pos:pos + fragment]
        pos += len(piece)
        last = pos >= len(data)
        out.append(PDATA_HEADER.pack(P_DATA_TF, 0, len(piece) + 6, len(piece) + 2, context_id,
                                     control | (0x02 if last else 0)))
        out.append(piece)
        if last:
            return b"".join(out)


def pdv_items(body: bytes, offset: int) -> Iterator[tuple[int, int, bytes]]:
    """(context ID, message control header, fragment) of every PDV in a P-DATA-TF PDU
    ``body`` (header included) that began at ``offset`` of the peer's stream."""
    pos = 6
    if len(body) < 12:
        raise MalformedPDU(f"malformed {name(P_DATA_TF)} at offset {offset}: {len(body) - 6} "
                           "bytes, too short for a presentation data value item")
    while pos < len(body):
        if pos + 6 > len(body):
            raise MalformedPDU(f"malformed {name(P_DATA_TF)} at offset {offset}: "
                               f"{len(body) - pos} stray bytes at PDU byte {pos}")
        length = _UINT4.unpack_from(body, pos)[0]
        if length < 2 or pos + 4 + length > len(body):
            raise MalformedPDU(f"malformed {name(P_DATA_TF)} at offset {offset}: the PDV item "
                               f"at PDU byte {pos} claims {length} bytes, "
                               f"{len(body) - pos - 4} are left")
        yield body[pos + 4], body[pos + 5], body[pos + 6:pos + 4 + length]
        pos += 4 + length


def check_items(body: bytes, pdu_type: int, offset: int) -> None:
    """Walk the variable items of an A-ASSOCIATE-AC and its sub-items; raise
    :class:`MalformedPDU` at the first one that does not fit (PS3.8 9.3.3)."""
    def walk(start: int, end: int, nested: bool) -> None:
        pos = start
        while pos < end:
            if pos + 4 > end:
                raise MalformedPDU(f"malformed {name(pdu_type)} at offset {offset}: "
                                   f"{end - pos} stray bytes at PDU byte {pos}")
            item, _, length = _ITEM.unpack_from(body, pos)
            if pos + 4 + length > end:
                raise MalformedPDU(f"malformed {name(pdu_type)} at offset {offset}: item "
                                   f"0x{item:02X} at PDU byte {pos} claims {length} bytes, "
                                   f"{end - pos - 4} are left")
            if not nested and item == 0x21:
                walk(pos + 8, pos + 4 + length, True)
            elif not nested and item == 0x50:
                walk(pos + 4, pos + 4 + length, True)
            pos += 4 + length

    if len(body) < 74:
        raise MalformedPDU(f"malformed {name(pdu_type)} at offset {offset}: {len(body)} bytes, "
                           "shorter than its fixed fields (74)")
    walk(74, len(body), False)


def decode(pdu_type: int, body: bytes,
           offset: int) -> acse.AssociateAC | acse.AssociateRJ | acse.Abort | acse.Release:
    """One received control PDU (not P-DATA-TF), ``body`` with its header."""
    if pdu_type not in (ASSOCIATE_AC, ASSOCIATE_RJ, RELEASE_RQ, RELEASE_RP, ABORT):
        raise MalformedPDU(f"unexpected {name(pdu_type)} at offset {offset}",
                           REASON_UNEXPECTED_PDU)
    if pdu_type == ASSOCIATE_AC:
        check_items(body, pdu_type, offset)
    try:
        if pdu_type == ASSOCIATE_AC:
            return acse.decode_associate_ac(body)
        if pdu_type == ASSOCIATE_RJ:
            return acse.decode_associate_rj(body)
        if pdu_type == ABORT:
            return acse.decode_abort(body)
        if len(body) != 10:
            raise acse.ACSEError(f"{len(body)} bytes, 10 expected")
        return acse.Release(pdu_type)
    except (ValueError, IndexError, struct.error) as exc:  # ACSEError is a ValueError
        raise MalformedPDU(f"malformed {name(pdu_type)} at offset {offset}: {exc}") from exc


def encode_abort(source: int, reason: int) -> bytes:
    return acse.encode_abort(source, reason)


class PDUReader:
    """Whole PDUs from one socket; ``offset`` counts the bytes taken so far."""

    def __init__(self, sock: socket.socket, network_timeout: float | None):
        self.sock = sock
        self.network_timeout = network_timeout
        self.offset = 0
        self._buf = bytearray()
        self._quickack = hasattr(socket, "TCP_QUICKACK")

    def _fill(self, timeout: float | None, what: str) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(262144)
        except TimeoutError as exc:
            raise AssociationLost("timeout", f"{what} ({timeout:g}s)") from exc
        except ssl.SSLError as exc:
            raise AssociationLost("closed", f"TLS error from the peer: {exc}") from exc
        except OSError as exc:
            raise AssociationLost("closed", f"connection lost: {exc.strerror or exc}") from exc
        if not data:
            raise AssociationLost("closed", "the peer closed the connection"
                                  + (f" in the middle of a PDU at offset {self.offset}"
                                     if self._buf else ""))
        self._buf += data
        if self._quickack:  # Linux clears QUICKACK by itself: keep ACKs immediate
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                self._quickack = False

    def pending(self) -> bool:
        """Whether the peer has sent something not yet read (no waiting)."""
        if self._buf:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            pass
        elif not select.select([self.sock], [], [], 0)[0]:
            return False
        self.sock.settimeout(0.0)
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False  # TLS housekeeping (a session ticket), no PDU bytes
        except OSError as exc:
            raise AssociationLost("closed", f"connection lost: {exc.strerror or exc}") from exc
        if not data:
            raise AssociationLost("closed", "the peer closed the connection")
        self._buf += data
        return True

    def read(self, timeout: float | None, waiting_for: str,
             timeout_name: str = "network") -> tuple[int, bytes, int]:
        """(PDU type, the whole PDU, its offset in the stream); wait ``timeout`` (the
        ``timeout_name`` timeout) for the first byte, or the network timeout when it is
        shorter (any read is bounded by it), and the network timeout for the rest."""
        net = self.network_timeout
        if net is not None and (timeout is None or net < timeout):
            timeout, timeout_name = net, "network"
        while not self._buf:
            self._fill(timeout, f"no {waiting_for} within the {timeout_name} timeout")
        pdu_type = self._buf[0]
        if pdu_type not in NAMES:
            raise MalformedPDU(f"{name(pdu_type)} at offset {self.offset}",
                               REASON_UNRECOGNIZED_PDU)
        while len(self._buf) < 6:
            self._fill(self.network_timeout, f"the peer stalled in the header of "
                       f"{name(pdu_type)} at offset {self.offset}: nothing more within the "
                       "network timeout")
        length = _UINT4.unpack_from(self._buf, 2)[0]
        fixed = _FIXED_LENGTH.get(pdu_type)
        if (fixed is not None and length != fixed) or length > MAX_PDU_BODY:
            raise MalformedPDU(f"malformed {name(pdu_type)} at offset {self.offset}: "
                               f"PDU length {length}")
        while len(self._buf) < 6 + length:
            self._fill(self.network_timeout, f"the peer stalled in the middle of "
                       f"{name(pdu_type)} at offset {self.offset} ({len(self._buf)} of "
                       f"{6 + length} bytes): nothing more within the network timeout")
        body = bytes(self._buf[:6 + length])
        del self._buf[:6 + length]
        start = self.offset
        self.offset += 6 + length
        return pdu_type, body, start


def send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.settimeout(2.0)
        sock.sendall(data)
    except OSError:
        pass


def close_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
