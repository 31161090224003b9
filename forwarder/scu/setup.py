"""Opening an association: connect, TLS, the A-ASSOCIATE-RQ, the answer.

The A-ASSOCIATE-RQ (presentation contexts with IDs 1, 3, 5, ..., our maximum PDU length,
the implementation class and version, SCP/SCU role selection, user identity) is encoded
by :mod:`forwarder.scu.acse`, which also decodes the answer and matches it to the
proposal (:func:`forwarder.scu.acse.negotiate`). Every failure is an
:class:`~forwarder.association.AssociationFailed` saying whose fault.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from forwarder.association import AssociationFailed, PeerSettings
from forwarder.identity import identity_item
from forwarder.negotiation import MAX_CONTEXTS, Context
from forwarder.scu import acse
from forwarder.scu import pdu as P
from forwarder.scu.pdu import AssociationLost, MalformedPDU, PDUReader, close_socket, send_quietly
from forwarder.tls import ssl_context

APPLICATION_CONTEXT = acse.APPLICATION_CONTEXT


@dataclass(frozen=True)
class Accepted:
    """An accepted presentation context and our negotiated roles on it."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    as_scu: bool = True
    as_scp: bool = False


@dataclass
class Negotiated:
    """An established association's socket, reader and what was agreed."""

    sock: socket.socket
    reader: PDUReader
    accepted: list[Accepted]
    rejected: list[Context]
    peer_max_pdu: int  # 0: no limit
    identity_response: bytes | None  # None: the peer sent no user identity item


def associate(peer: PeerSettings, contexts: Sequence[Context],
          roles: Mapping[str, tuple[bool | None, bool | None]] | None = None,
          tls_context: ssl.SSLContext | None = None) -> Negotiated:
    """Connect and negotiate ``contexts`` (IDs 1, 3, 5, ... in order) with optional
    SCP/SCU role selection per SOP class; raise :class:`AssociationFailed`."""
    if not contexts or len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"1 to {MAX_CONTEXTS} presentation contexts can be proposed, "
                         f"not {len(contexts)}")
    for sop_class, (scu, scp) in (roles or {}).items():
        if not scu and not scp:
            raise ValueError(f"SCP/SCU role selection for {sop_class}: neither role")
    where = f"{peer.called_ae}@{peer.host}:{peer.port}"
    proposed = proposal(contexts, roles)
    request = request_pdu(peer, proposed, roles)
    if peer.tls and tls_context is None:
        try:  # a missing CA file or a wrong key password: nothing is sent
            tls_context = ssl_context(peer.tls)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise AssociationFailed("tls", f"TLS settings unusable: {exc}") from exc
    try:
        sock = socket.create_connection((peer.host, peer.port), timeout=peer.connect_timeout)
    except OSError as exc:
        raise AssociationFailed("refused", f"cannot connect to {where} "
                                f"({exc.strerror or exc})") from exc
    try:
        tune(sock)
        if peer.tls:
            assert tls_context is not None
            sock = _handshake(sock, tls_context, peer, where)
        reader = PDUReader(sock, peer.network_timeout)
        sock.settimeout(peer.network_timeout)
        sock.sendall(request)
        return _negotiate(sock, reader, peer, proposed, where)
    except AssociationFailed:
        close_socket(sock)
        raise
    except OSError as exc:
        close_socket(sock)
        raise AssociationFailed("aborted", f"connection to {where} lost during association "
                                f"setup ({exc.strerror or exc})") from exc

def _negotiate(sock: socket.socket, reader: PDUReader, peer: PeerSettings,
           proposed: list[acse.Proposed], where: str) -> Negotiated:
    try:
        pdu_type, body, offset = reader.read(peer.acse_timeout,
                                             f"association answer from {where}", "ACSE")
        answer = P.decode(pdu_type, body, offset)
    except MalformedPDU as exc:
        send_quietly(sock, P.encode_abort(2, exc.reason))
        raise AssociationFailed("aborted", f"association with {where} aborted: "
                                f"{exc}") from exc
    except AssociationLost as exc:
        if exc.kind == "timeout":
            send_quietly(sock, P.encode_abort(0, 0))
            raise AssociationFailed("timeout", str(exc)) from exc
        raise AssociationFailed("aborted", f"association with {where} failed: "
                                f"{exc}") from exc
    if isinstance(answer, acse.AssociateRJ):
        raise AssociationFailed(
            "rejected", f"association rejected by {where}: "
            f"{'permanent' if answer.result == 1 else 'transient'}, {answer.reason_str}",
            answer.result, answer.source, answer.reason)
    if isinstance(answer, acse.Abort):
        raise AssociationFailed("aborted", f"association aborted by {where}")
    if not isinstance(answer, acse.AssociateAC):
        send_quietly(sock, P.encode_abort(2, P.REASON_UNEXPECTED_PDU))
        raise AssociationFailed("aborted", f"association with {where} aborted: unexpected "
                                f"{P.name(pdu_type)} at offset {offset}")
    outcome = acse.negotiate(proposed, answer.results, answer.roles)
    by_id = {pc.context_id: pc for pc in proposed}
    accepted = [Accepted(cx.context_id, cx.abstract_syntax, str(cx.transfer_syntax),
                         cx.as_scu, cx.as_scp)
                for cx in outcome if cx.result == 0]
    rejected = [Context(cx.abstract_syntax, by_id[cx.context_id].transfer_syntaxes)
                for cx in outcome if cx.result != 0]
    response = answer.identity_response
    peer_max = answer.max_pdu or 0
    failure = None
    if not accepted:
        from pydicom.uid import UID

        names = "; ".join(sorted({f"{UID(cx.abstract_syntax).name} in "
                                  + ", ".join(UID(ts).name for ts in cx.transfer_syntaxes)
                                  for cx in rejected})[:5])
        failure = AssociationFailed("no_contexts", f"{where} accepted no presentation "
                                    f"context (proposed: {names})")
    elif peer.identity.kind and peer.identity.positive_response and response is None:
        failure = AssociationFailed("identity", "the peer did not confirm the user identity "
                                    "(a positive response was required)")
    elif 0 < peer_max < 8 or 0 < (peer.max_send_pdu or 8) < 8:
        failure = AssociationFailed("aborted", f"{where} takes PDUs of at most {peer_max} "
                                    "bytes, too small to carry data")
    if failure is not None:
        send_quietly(sock, P.encode_abort(0, 0))
        raise failure
    return Negotiated(sock, reader, accepted, rejected, peer_max, response)


def proposal(contexts: Sequence[Context],
             roles: Mapping[str, tuple[bool | None, bool | None]] | None) -> list[acse.Proposed]:
    """``contexts`` with IDs 1, 3, 5, ... and the roles proposed for their SOP classes."""
    proposed = []
    for i, cx in enumerate(contexts):
        scu, scp = (roles or {}).get(cx.abstract_syntax, (None, None))
        mine: acse.Roles = (None, None) if scu is None and scp is None else (bool(scu), bool(scp))
        proposed.append(acse.Proposed(2 * i + 1, cx.abstract_syntax,
                                      tuple(cx.transfer_syntaxes), mine))
    return proposed


def request_pdu(peer: PeerSettings, proposed: Sequence[acse.Proposed],
                roles: Mapping[str, tuple[bool | None, bool | None]] | None) -> bytes:
    """The A-ASSOCIATE-RQ for ``peer``: its AE titles, maximum PDU length, identity. A user
    identity too long for its item is an :class:`AssociationFailed` (``identity``)."""
    try:
        return acse.encode_associate_rq(peer.called_ae, peer.calling_ae, proposed,
                                        peer.max_pdu, roles, identity_item(peer.identity))
    except ValueError as exc:
        if not peer.identity.kind:
            raise
        raise AssociationFailed("identity", "the A-ASSOCIATE-RQ cannot carry this user "
                                f"identity: {exc}") from exc


def _handshake(sock: socket.socket, context: ssl.SSLContext, peer: PeerSettings,
               where: str) -> ssl.SSLSocket:
    sock.settimeout(peer.acse_timeout)
    try:
        # the name the certificate must carry (checked when the context checks names)
        name = (peer.tls.server_name if peer.tls else None) or peer.host
        return context.wrap_socket(sock, server_hostname=name)
    except TimeoutError as exc:
        raise AssociationFailed("timeout", f"TLS handshake with {where} timed out") from exc
    except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
        raise AssociationFailed("tls", f"TLS handshake with {where} failed: {exc}") from exc


def tune(sock: socket.socket) -> None:
    """TCP_NODELAY: a request is not held by Nagle; QUICKACK: the response is ACKed at
    once, so a peer with Nagle on does not hold the next one (re-armed per read)."""
    for opt in ("TCP_NODELAY", "TCP_QUICKACK"):
        if hasattr(socket, opt):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), 1)
            except OSError:
                pass
