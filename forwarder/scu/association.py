"""A blocking, single-threaded association requestor: C-STORE of files as they lie on disk.

One object, one socket, one thread: a request is written and its response read by the
caller's own thread, so no response can be taken by anyone else or arrive unseen. The
ARTIM/connect, ACSE, DIMSE and network timeouts are socket timeouts; setup is in
:mod:`forwarder.scu.setup`.

A file's dataset goes as it lies on disk: each window of up to about 1 MiB is read with
one ``preadv`` straight into the data slots of a reused buffer laid out as
``header|fragment|header|fragment...``, the P-DATA-TF headers are packed around them,
and the window is written with one ``sendall`` (TLS included). Nothing of the dataset is
decoded or copied in Python. A re-encoded data set (:class:`Spliced`) fills the same
slots from its new headers and from ranges of its file.
"""

from __future__ import annotations

import itertools
import os
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from forwarder.association import PeerSettings
from forwarder.negotiation import Context
from forwarder.scu import acse, dimse
from forwarder.scu import pdu as P
from forwarder.scu.pdu import (
    AssociationLost,
    MalformedPDU,
    PDUReader,
    close_socket,
    send_quietly,
)
from forwarder.scu.setup import Accepted, associate
from forwarder.scu.spliced import Spliced, pread_exactly

WINDOW = 1 << 20
MAX_IOV = 512


class NoContext(ValueError):
    """No accepted presentation context carries this SOP class in this transfer syntax."""


class SourceUnreadable(OSError):
    """The file could not be read to its end while its dataset was being sent; the
    association was aborted so the peer keeps no partial object."""


class Association:
    """An established association; open one with :meth:`open`. A context manager that
    releases on a normal exit and aborts when an exception leaves the block."""

    def __init__(self, sock: socket.socket, reader: PDUReader, peer: PeerSettings,
                 accepted: list[Accepted], rejected: list[Context], peer_max_pdu: int,
                 identity_response: bytes | None):
        self.sock = sock
        self.reader = reader
        self.peer = peer
        self.where = f"{peer.called_ae}@{peer.host}:{peer.port}"
        self.accepted = accepted
        self.rejected = rejected
        self.peer_max_pdu = peer_max_pdu  # 0: no limit
        self.identity_response = identity_response  # None: the peer sent no identity item
        send_max = peer_max_pdu
        if peer.max_send_pdu:
            send_max = min(send_max, peer.max_send_pdu) if send_max else peer.max_send_pdu
        self.send_max_pdu = send_max
        self.fragment = send_max - 6 if send_max else WINDOW - 12
        self.state = "established"  # then: released, aborted or closed
        self._ids = itertools.count(1)
        self._wbuf = bytearray()

    # -- setup -------------------------------------------------------------------------

    @classmethod
    def open(cls, peer: PeerSettings, contexts: Sequence[Context],
             roles: Mapping[str, tuple[bool | None, bool | None]] | None = None,
             tls_context: ssl.SSLContext | None = None) -> Association:
        """Connect and negotiate ``contexts`` (IDs 1, 3, 5, ... in order) with optional
        SCP/SCU role selection per SOP class; raise :class:`AssociationFailed`."""
        n = associate(peer, contexts, roles, tls_context)
        return cls(n.sock, n.reader, peer, n.accepted, n.rejected, n.peer_max_pdu,
                   n.identity_response)

    # -- what was agreed ---------------------------------------------------------------

    def accepted_pairs(self) -> list[tuple[str, str]]:
        """(SOP class, transfer syntax) of every accepted presentation context."""
        return [(cx.abstract_syntax, cx.transfer_syntax) for cx in self.accepted]

    def context_for(self, sop_class: str, transfer_syntax: str) -> Accepted:
        for cx in self.accepted:
            if cx.abstract_syntax == sop_class and cx.transfer_syntax == transfer_syntax:
                return cx
        raise NoContext(f"no accepted presentation context for {sop_class} in "
                        f"{transfer_syntax}")

    @property
    def is_established(self) -> bool:
        return self.state == "established"

    def still_up(self) -> bool:
        """Whether the association can carry the next request, after taking in what the
        peer sent while it was idle (a release or an abort ends it here, before any byte
        of a request is written)."""
        if self.state != "established":
            return False
        try:
            self._before_request()
        except (AssociationLost, MalformedPDU):
            return False
        return True

    # -- DIMSE -------------------------------------------------------------------------

    def send_c_store(self, dataset: str | os.PathLike[str] | bytes | bytearray | Spliced,
                     sop_class: str, sop_instance: str, transfer_syntax: str,
                     message_id: int | None = None, priority: int = 0,
                     move_originator: str | None = None,
                     move_message_id: int | None = None,
                     while_waiting: Callable[[], None] | None = None) -> dimse.Response:
        """C-STORE a file's dataset as it lies on disk (or encoded ``bytes``, or a
        :class:`Spliced` data set read from its pieces as it is sent) in the accepted
        context for ``sop_class`` in ``transfer_syntax``; return the response.
        ``while_waiting`` is called once the request is written, before its response is
        read: the caller's own work done while the peer takes the file in (an exception
        from it aborts the association and leaves).

        Raises :class:`NoContext` (nothing sent), :class:`OSError` when the file cannot
        be opened (nothing sent), :class:`SourceUnreadable`, :class:`AssociationLost`.
        """
        self._check_open()
        cx = self.context_for(sop_class, transfer_syntax)
        msg_id = message_id if message_id is not None else next(self._ids) & 0xFFFF
        command = dimse.c_store_rq(msg_id, sop_class, sop_instance, priority, move_originator,
                                   move_message_id)
        if isinstance(dataset, (bytes, bytearray, memoryview, Spliced)):  # held, or holds its file
            self._before_request()
            self._send_message(cx.context_id, command, dataset, 0, len(dataset),
                               dataset.path if isinstance(dataset, Spliced) else "")
        else:
            path = os.fspath(dataset)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                start = dimse.dataset_offset(fd)
                size = os.fstat(fd).st_size
                self._before_request()
                self._send_message(cx.context_id, command, fd, start, size - start, path)
            finally:
                os.close(fd)
        if while_waiting is not None:
            try:
                while_waiting()
            except BaseException:
                self.abort()
                raise
        return self._read_response(cx.context_id, msg_id, dimse.C_STORE_RSP, "C-STORE")

    def send_c_echo(self, message_id: int | None = None) -> dimse.Response:
        self._check_open()
        cx = next((c for c in self.accepted if c.abstract_syntax == dimse.VERIFICATION), None)
        if cx is None:
            raise NoContext("the peer did not accept the Verification SOP class")
        msg_id = message_id if message_id is not None else next(self._ids) & 0xFFFF
        self._before_request()
        self._write(P.pdata_pdus(cx.context_id, 0x01, dimse.c_echo_rq(msg_id), self.fragment))
        return self._read_response(cx.context_id, msg_id, dimse.C_ECHO_RSP, "C-ECHO")

    def _send_message(self, context_id: int, command: bytes,
                      source: int | bytes | bytearray | memoryview | Spliced,
                      start: int, length: int, path: str) -> None:
        """The command, then the dataset in windows: one read and one write per window.
        ``source``: a file's descriptor, the encoded data set, or a spliced one."""
        cmd = P.pdata_pdus(context_id, 0x01, command, self.fragment)
        unit = self.fragment + 12
        per = max(1, min(MAX_IOV, WINDOW // unit))
        if len(self._wbuf) < len(cmd) + per * unit:
            self._wbuf = bytearray(len(cmd) + per * unit)
        buf = self._wbuf
        mv = memoryview(buf)
        pos, first = 0, True
        while first or pos < length:
            used = 0
            if first:
                mv[:len(cmd)] = cmd
                used = len(cmd)
            slots, at = [], start + pos
            for _ in range(per):
                n = min(self.fragment, length - pos)
                last = pos + n >= length
                P.PDATA_HEADER.pack_into(buf, used, P.P_DATA_TF, 0, n + 6, n + 2, context_id,
                                         0x02 if last else 0x00)
                slots.append(mv[used + 12:used + 12 + n])
                used += 12 + n
                pos += n
                if last:
                    break
            if isinstance(source, int):
                self._read_slots(source, slots, at, path)
            elif isinstance(source, Spliced):
                self._read_slots(source.fill, slots, at, path)
            else:
                for slot in slots:
                    slot[:] = source[at:at + len(slot)]
                    at += len(slot)
            self._write(mv[:used])
            first = False

    def _read_slots(self, source: int | Callable[[list[memoryview], int], None],
                    slots: list[memoryview], offset: int, path: str) -> None:
        """Fill ``slots`` from a file's descriptor (or a spliced data set's ``fill``);
        a file that cannot be read aborts the association."""
        try:
            if isinstance(source, int):
                pread_exactly(source, slots, offset)
            else:
                source(slots, offset)
        except OSError as exc:
            self.abort()
            raise SourceUnreadable(f"cannot read {path}: {exc.strerror or exc}; the "
                                   "association was aborted") from exc

    def _read_response(self, context_id: int, msg_id: int, field: int,
                       label: str) -> dimse.Response:
        command = bytearray()
        response: dimse.Response | None = None
        while True:
            pdu_type, body, offset = self._read(self.peer.dimse_timeout,
                                                f"{label} response from {self.where}", "DIMSE")
            if pdu_type != P.P_DATA_TF:
                self._control_pdu(pdu_type, body, offset, f"a {label} response was awaited")
            for pcid, control, data in self._pdvs(body, offset):
                if pcid != context_id:
                    self._malformed(MalformedPDU(
                        f"{P.name(P.P_DATA_TF)} at offset {offset} answers on presentation "
                        f"context {pcid}, the request went on {context_id}"))
                if control & 0x01:
                    if response is not None:
                        self._malformed(MalformedPDU(f"{P.name(P.P_DATA_TF)} at offset "
                                                     f"{offset}: a second command set"))
                    command += data
                    if not control & 0x02:
                        continue
                    try:
                        response = dimse.parse_response(bytes(command), f"of the {label} "
                                                        f"response ending at offset {offset}")
                    except MalformedPDU as exc:
                        self._malformed(exc)
                    if response.command_field != field or response.message_id != msg_id:
                        self._malformed(MalformedPDU(
                            f"{P.name(P.P_DATA_TF)} at offset {offset}: command 0x"
                            f"{response.command_field:04X} for message {response.message_id}, "
                            f"a {label} response to message {msg_id} was awaited"))
                    if not response.has_dataset:
                        return response
                elif response is None:
                    self._malformed(MalformedPDU(f"{P.name(P.P_DATA_TF)} at offset {offset}: "
                                                 "a dataset fragment before the command set"))
                elif control & 0x02:
                    return response  # a dataset the response should not have: read, unused

    # -- release, abort ----------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE; an abort when the peer does not answer within the ACSE timeout."""
        if self.state != "established":
            return
        try:
            self._write(acse.encode_release())
        except AssociationLost:
            return  # gone already: nothing left to release
        try:
            while True:
                pdu_type, body, offset = self._read(
                    self.peer.acse_timeout, f"A-RELEASE-RP from {self.where}", "ACSE")
                if pdu_type == P.RELEASE_RP or pdu_type == P.ABORT:
                    break
                if pdu_type == P.RELEASE_RQ:  # release collision, we requested (PS3.8 9.2.8)
                    self._write(P.HEADER.pack(P.RELEASE_RP, 0, 4) + b"\0\0\0\0")
                elif pdu_type != P.P_DATA_TF:  # a late P-DATA is dropped: we are leaving
                    self._malformed(MalformedPDU(f"unexpected {P.name(pdu_type)} at offset "
                                                 f"{offset} while releasing",
                                                 P.REASON_UNEXPECTED_PDU))
        except AssociationLost:  # _read aborted (timeout) or closed it
            return
        self._drop("released")

    def abort(self, source: int = 0, reason: int = 0) -> None:
        """A-ABORT (ignored when the association has ended already), then close."""
        if self.state == "established":
            send_quietly(self.sock, P.encode_abort(source, reason))
        self._drop("aborted")

    def close(self) -> None:
        """Abort if still established; idempotent."""
        self.abort()

    def __enter__(self) -> Association:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.release()
        else:
            self.abort()

    # -- plumbing ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.state != "established":
            raise AssociationLost("closed", f"the association with {self.where} has ended "
                                  f"({self.state})")

    def _drop(self, state: str) -> None:
        if self.state == "established":
            self.state = state
        close_socket(self.sock)

    def _malformed(self, exc: MalformedPDU) -> NoReturn:
        send_quietly(self.sock, P.encode_abort(2, exc.reason))
        self._drop("aborted")
        raise exc

    def _read(self, timeout: float | None, waiting_for: str,
              timeout_name: str = "network") -> tuple[int, bytes, int]:
        try:
            return self.reader.read(timeout, waiting_for, timeout_name)
        except MalformedPDU as exc:
            self._malformed(exc)
        except AssociationLost as exc:
            if exc.kind == "timeout":
                self.abort()
            else:
                self._drop("closed")
            raise

    def _pdvs(self, body: bytes, offset: int) -> list[tuple[int, int, bytes]]:
        try:
            return list(P.pdv_items(body, offset))
        except MalformedPDU as exc:
            self._malformed(exc)

    def _control_pdu(self, pdu_type: int, body: bytes, offset: int, during: str) -> NoReturn:
        """A PDU other than P-DATA-TF from the peer: it ends the association; raise."""
        if pdu_type == P.RELEASE_RQ:
            send_quietly(self.sock, P.HEADER.pack(P.RELEASE_RP, 0, 4) + b"\0\0\0\0")
            self._drop("released")
            raise AssociationLost("released", f"{self.where} released the association while "
                                  f"{during}")
        if pdu_type == P.ABORT:
            self._drop("aborted")
            abort = P.decode(pdu_type, body, offset)
            assert isinstance(abort, acse.Abort)
            raise AssociationLost("aborted", f"association aborted by {self.where} while "
                                  f"{during} (source {abort.source}, reason "
                                  f"{abort.reason})")
        self._malformed(MalformedPDU(f"unexpected {P.name(pdu_type)} at offset {offset} "
                                     f"while {during}", P.REASON_UNEXPECTED_PDU))

    def _before_request(self) -> None:
        """Whatever the peer sent while we were idle (a release, an abort) ends the
        association before any byte of the next request is written."""
        try:
            if not self.reader.pending():
                return
        except AssociationLost:
            self._drop("closed")
            raise
        pdu_type, body, offset = self._read(self.peer.network_timeout, "rest of a PDU")
        self._control_pdu(pdu_type, body, offset, "the association was idle")

    def _write(self, data: bytes | memoryview) -> None:
        self.sock.settimeout(self.peer.network_timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            self.abort()
            raise AssociationLost("timeout", f"{self.where} took no data for "
                                  f"{self.peer.network_timeout:g}s (network timeout)") from exc
        except OSError as exc:
            self._drop("closed")
            raise AssociationLost("closed", f"connection to {self.where} lost while sending "
                                  f"({exc.strerror or exc})") from exc
