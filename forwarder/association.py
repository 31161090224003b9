"""What `send`, `echo` and the daemon need to reach a peer: its settings, why an association
failed, and the C-ECHO a health probe makes.

Associations are opened by our own requestor, :mod:`forwarder.scu` (one thread, blocking
I/O). TLS is in :mod:`forwarder.tls`, user identity in :mod:`forwarder.identity`; the
settings of a YAML destination are built by :mod:`forwarder.peers`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from forwarder.identity import IdentitySettings, identity_from_files, identity_item
from forwarder.negotiation import IMPLICIT_LE, Context
from forwarder.tls import TLS_PROFILES, TLSSettings, ssl_context

# the TLS and identity names that callers have imported from here
__all__ = ["TLS_PROFILES", "AssociationFailed", "IdentitySettings", "PeerSettings",
           "TLSSettings", "echo", "identity_from_files", "identity_item", "ssl_context"]

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
