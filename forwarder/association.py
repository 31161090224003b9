"""Association setup shared by `send`, `echo` and the daemon: contexts, timeouts, failures.

Each association it opens gets the documented fixes to pynetdicom's requestor (see
:mod:`forwarder.pdnpatch`) and the socket options that keep a C-STORE response from waiting
on a delayed ACK. TLS is in :mod:`forwarder.tls`, user identity in
:mod:`forwarder.identity`; the settings of a YAML destination are built by
:mod:`forwarder.peers`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import MaximumLengthNotification

from forwarder import pdnpatch
from forwarder.identity import IdentitySettings, identity_from_files, identity_item
from forwarder.negotiation import IMPLICIT_LE, Context
from forwarder.tls import TLS_PROFILES, TLSSettings, ssl_context

# the TLS and identity names that callers have imported from here
__all__ = ["TLS_PROFILES", "AssociationFailed", "IdentitySettings", "PeerSettings",
           "TLSSettings", "accepted_pairs", "echo", "identity_from_files", "identity_item",
           "open_association", "ssl_context"]

LOGGER = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"

@dataclass(frozen=True)
class PeerSettings:
    """Everything needed to open an association to one peer."""

    host: str
    port: int
    called_ae: str = "ANY-SCP"
    calling_ae: str = "STORESCU"
    max_pdu: int = 16384
    max_send_pdu: int | None = None
    connect_timeout: float | None = None
    acse_timeout: float | None = 30.0
    dimse_timeout: float | None = None
    network_timeout: float | None = 60.0
    tls: TLSSettings | None = None
    identity: IdentitySettings = field(default_factory=IdentitySettings)


class AssociationFailed(Exception):
    """An association could not be established; ``kind`` says whose fault it is.

    kinds: ``refused`` (TCP), ``timeout``, ``rejected`` (A-ASSOCIATE-RJ, with result,
    source, reason), ``aborted``, ``tls``, ``identity`` (no positive response).
    """

    def __init__(self, kind: str, message: str, result: int | None = None,
                 source: int | None = None, reason: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.result = result
        self.source = source
        self.reason = reason


def make_ae(peer: PeerSettings, contexts: Sequence[Context]) -> AE:
    """An AE proposing exactly ``contexts`` with the peer's timeouts and PDU size."""
    ae = AE(ae_title=peer.calling_ae)
    ae.acse_timeout = peer.acse_timeout
    ae.dimse_timeout = peer.dimse_timeout
    ae.network_timeout = peer.network_timeout
    ae.connection_timeout = peer.connect_timeout
    ae.maximum_pdu_size = peer.max_pdu
    for cx in contexts:
        ae.add_requested_context(cx.abstract_syntax, list(cx.transfer_syntaxes))
    return ae


def open_association(peer: PeerSettings, contexts: Sequence[Context]) -> Association:
    """Associate, or raise :class:`AssociationFailed` saying why (PS3.8 9.3.4 for rejects)."""
    ae = make_ae(peer, contexts)
    try:  # a missing CA file or a wrong key password: nothing is sent, the link is held
        ctx = ssl_context(peer.tls) if peer.tls else None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise AssociationFailed("tls", f"TLS settings unusable: {exc}") from exc
    server_name = None
    if peer.tls and ctx and ctx.check_hostname:
        server_name = peer.tls.server_name or peer.host
    tls_args = (ctx, server_name) if ctx else None
    started = time.monotonic()
    ident = identity_item(peer.identity)
    ext_neg: list[Any] | None = [ident] if ident else None
    connected: list[bool] = []

    def on_open(event: evt.Event) -> None:  # before the reactor starts
        connected.append(True)
        pdnpatch.install(event.assoc)

    pdnpatch.check()
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_ae, ext_neg=ext_neg,
                             tls_args=tls_args,  # type: ignore[arg-type]
                             evt_handlers=[(evt.EVT_CONN_OPEN, on_open)])
    except ssl.SSLError as exc:
        raise AssociationFailed("tls", f"TLS handshake failed: {exc}") from exc
    if assoc.is_established:
        tune_socket(assoc)
        if peer.max_send_pdu:
            cap_send_pdu(assoc, peer.max_send_pdu)
        if peer.identity.kind and peer.identity.positive_response:
            # PS3.7 D.3.3.7: an acceptor that ignores user identity accepts without a
            # response; storescu -rsp then refuses to go on, and so do we.
            if assoc.acceptor.user_identity is None:
                assoc.abort()
                raise AssociationFailed("identity", "the peer did not confirm the user "
                                        "identity (a positive response was required)")
        return assoc
    failure = describe_failure(assoc, peer, getattr(ctx, "handshake_error", None),
                               bool(connected))
    if (failure.kind == "aborted" and peer.acse_timeout
            and time.monotonic() - started >= peer.acse_timeout * 0.95):
        failure = AssociationFailed("timeout", f"no answer from {peer.called_ae}@{peer.host}:"
                                    f"{peer.port} to the association request within the "
                                    f"ACSE timeout ({peer.acse_timeout:g}s)")
    raise failure


def describe_failure(assoc: Association, peer: PeerSettings,
                     tls_error: BaseException | None = None,
                     connected: bool = True) -> AssociationFailed:
    where = f"{peer.called_ae}@{peer.host}:{peer.port}"
    if tls_error is not None:
        return AssociationFailed("tls", f"TLS handshake with {where} failed: {tls_error}")
    if not connected:
        return AssociationFailed("refused", f"cannot connect to {where} (refused, unreachable "
                                 "or timed out)")
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        result, source, reason = (rj.result, rj.result_source, rj.diagnostic) if rj else (0, 0, 0)
        text = getattr(rj, "reason_str", None) or f"reason {reason}"
        return AssociationFailed("rejected", f"association rejected by {where}: "
                                 f"{'permanent' if result == 1 else 'transient'}, {text}",
                                 result, source, reason)
    if assoc.is_aborted and assoc.rejected_contexts and not assoc.accepted_contexts:
        from pydicom.uid import UID

        proposed = "; ".join(sorted({
            f"{UID(str(cx.abstract_syntax)).name} in "
            + ", ".join(UID(ts).name for ts in cx.transfer_syntax)
            for cx in assoc.rejected_contexts})[:5])
        return AssociationFailed("no_contexts", f"{where} accepted no presentation context "
                                 f"(proposed: {proposed})")
    if assoc.is_aborted:
        return AssociationFailed("aborted", f"association aborted by {where}")
    return AssociationFailed("refused", f"cannot connect to {where} (refused, unreachable "
                             "or timed out)")


def tune_socket(assoc: Association) -> None:
    """TCP_NODELAY so a request is not held by Nagle; QUICKACK is re-armed per read."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_QUICKACK"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    except OSError:
        pass


def cap_send_pdu(assoc: Association, limit: int) -> None:
    """``--max-send-pdu``: fragment P-DATA to at most ``limit`` bytes whatever the peer allows."""
    for item in assoc.acceptor.user_information:
        if isinstance(item, MaximumLengthNotification):
            peer_max = item.maximum_length_received or 0
            item.maximum_length_received = min(peer_max, limit) if peer_max else limit


def accepted_pairs(assoc: Association) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) of every accepted presentation context."""
    return [(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts]


def echo(peer: PeerSettings) -> str:
    """C-ECHO with the peer's full settings; the answer in words, or AssociationFailed.

    A peer that accepts the association but not the Verification SOP class is still
    reachable with these settings, and that is what a health probe needs to know: its
    A-ASSOCIATE-AC with the context rejected counts as an answer. The C-ECHO goes on
    :mod:`forwarder.scu`, the transport the daemon's workers store on.
    """
    from forwarder.scu import Association as ScuAssociation
    from forwarder.scu import AssociationLost, MalformedPDU

    try:
        assoc = ScuAssociation.open(peer, [Context(VERIFICATION, (IMPLICIT_LE,))])
    except AssociationFailed as exc:
        if exc.kind == "no_contexts":
            return "association accepted (the peer does not offer C-ECHO)"
        raise
    try:
        rsp = assoc.send_c_echo()
    except (AssociationLost, MalformedPDU) as exc:
        raise AssociationFailed("aborted", f"no C-ECHO response from {peer.called_ae}@"
                                f"{peer.host}:{peer.port}: {exc}") from exc
    finally:
        if not assoc.is_established:
            assoc.close()
    assoc.release()
    return f"C-ECHO status 0x{rsp.status:04X}"
