"""Association setup shared by `send`, `echo` and the daemon: contexts, TLS, identity, timeouts.

Also holds the two documented fixes to pynetdicom's requestor (see :mod:`forwarder.pdnpatch`)
and the socket options that keep a C-STORE response from waiting on a delayed ACK.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import MaximumLengthNotification, UserIdentityNegotiation

from forwarder import pdnpatch
from forwarder.config import Destination
from forwarder.errors import UsageError
from forwarder.negotiation import IMPLICIT_LE, Context

LOGGER = logging.getLogger(__name__)

_config.STORE_SEND_CHUNKED_DATASET = True  # send files from disk without decoding them
pdnpatch.apply()

VERIFICATION = "1.2.840.10008.1.1"

# PS3.15 B.9-B.13 and DCMTK's +px +py +pb +pa +pn
TLS_PROFILES = {
    "bcp195": (ssl.TLSVersion.TLSv1_2, None),
    "bcp195-nd": (ssl.TLSVersion.TLSv1_2, None),
    "bcp195-ex": (ssl.TLSVersion.TLSv1_2,
                  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                  "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"),
    "basic": (ssl.TLSVersion.TLSv1_2, "DES-CBC3-SHA:@SECLEVEL=0"),
    "aes": (ssl.TLSVersion.TLSv1_2, "AES128-SHA:DES-CBC3-SHA:@SECLEVEL=0"),
    "null": (ssl.TLSVersion.TLSv1_2, "NULL-SHA:@SECLEVEL=0"),
}


@dataclass(frozen=True)
class TLSSettings:
    """What storescu's TLS options and the YAML ``tls`` block both describe."""

    cert: str | None = None
    key: str | None = None
    key_password: str | None = None
    prompt_password: bool = False
    der: bool = False
    ca_files: tuple[str, ...] = ()
    ca_dirs: tuple[str, ...] = ()
    verify_peer: bool = True
    profile: str = "bcp195"
    ciphers: tuple[str, ...] = ()
    server_name: str | None = None  # the name the certificate must carry (default: host)


@dataclass(frozen=True)
class IdentitySettings:
    """PS3.7 D.3.3.7 user identity: type 1..5 and whether a positive response is required."""

    kind: int = 0  # 0 none, 1 user, 2 user+passcode, 3 kerberos, 4 saml, 5 jwt
    primary: bytes = b""
    secondary: bytes = b""
    positive_response: bool = False


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


def _read_key_material(path: str, der: bool, is_key: bool, password: bytes | None) -> str:
    """PEM text of a certificate or key, converting DER (``-der``) when asked."""
    data = Path(path).read_bytes()
    if not der:
        return data.decode("ascii", "replace")
    if not is_key:
        return ssl.DER_cert_to_PEM_cert(data)
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_der_private_key(data, password=password)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem.decode("ascii")


class _RecordingContext(ssl.SSLContext):
    """Remembers why a handshake failed: pynetdicom logs and swallows the SSLError in its
    own thread, and a TLS failure must hold a destination, not look like a refusal."""

    handshake_error: ssl.SSLError | None = None


class _RecordingSocket(ssl.SSLSocket):
    def connect(self, addr: object) -> None:  # type: ignore[override]
        try:
            super().connect(addr)  # type: ignore[arg-type]
        except ssl.SSLError as exc:
            self.context.handshake_error = exc  # type: ignore[attr-defined]
            raise

    def do_handshake(self, block: bool = False) -> None:
        """TCP is up by now: a reset or end of file here (a peer that speaks plain DICOM
        drops our ClientHello) is a failed handshake, not a refused connection."""
        try:
            super().do_handshake(block)
        except OSError as exc:
            self.context.handshake_error = exc  # type: ignore[attr-defined]
            raise


def ssl_context(tls: TLSSettings) -> ssl.SSLContext:
    """A client context: PS3.15 profile, trusted CAs, our certificate for mutual TLS.

    A verified peer's certificate must also name the host we connect to (or
    ``server_name``), unlike DCMTK, which checks the chain only.
    """
    ctx = _RecordingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sslsocket_class = _RecordingSocket
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.verify_peer else ssl.CERT_NONE
    ctx.check_hostname = tls.verify_peer
    minimum, ciphers = TLS_PROFILES[tls.profile]
    ctx.minimum_version = minimum
    if tls.profile in ("basic", "aes", "null") or tls.ciphers:
        # set_ciphers() does not reach TLS 1.3: these suites exist up to TLS 1.2 only
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        ctx.set_ciphers(ciphers)
    if tls.ciphers:
        ctx.set_ciphers(":".join(tls.ciphers))
    for ca in tls.ca_files:
        if tls.der:
            ctx.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(Path(ca).read_bytes()))
        else:
            ctx.load_verify_locations(cafile=ca)
    for ca_dir in tls.ca_dirs:
        for entry in sorted(Path(ca_dir).iterdir()):
            if entry.is_file():
                try:
                    ctx.load_verify_locations(cafile=str(entry))
                except ssl.SSLError:
                    LOGGER.warning("not a certificate, ignored: %s", entry)
    if tls.cert:
        password = tls.key_password
        if password is None and tls.prompt_password:
            import getpass

            password = getpass.getpass(f"password for {tls.key}: ")
        pw = password.encode() if password is not None else None
        if tls.der:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                cert = Path(tmp, "cert.pem")
                key = Path(tmp, "key.pem")
                cert.write_text(_read_key_material(tls.cert, True, False, None))
                key.write_text(_read_key_material(tls.key or tls.cert, True, True, pw))
                os.chmod(key, 0o600)
                ctx.load_cert_chain(cert, key)
        else:
            ctx.load_cert_chain(tls.cert, tls.key, password=pw)
    return ctx


def identity_item(identity: IdentitySettings) -> UserIdentityNegotiation | None:
    if not identity.kind:
        return None
    item = UserIdentityNegotiation()
    item.user_identity_type = identity.kind
    item.primary_field = identity.primary
    if identity.kind == 2:
        item.secondary_field = identity.secondary
    item.positive_response_requested = identity.positive_response
    return item


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
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_ae, ext_neg=ext_neg,
                             tls_args=tls_args,  # type: ignore[arg-type]
                             evt_handlers=[(evt.EVT_CONN_OPEN, lambda e: connected.append(True))])
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


def identity_from_files(user: str | None, password: str | None, kerberos: str | None,
                        saml: str | None, jwt: str | None, positive: bool) -> IdentitySettings:
    """Build the identity from storescu's options or the YAML keys (secrets read from files)."""
    def read(path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from exc

    if kerberos:
        return IdentitySettings(3, read(kerberos), b"", positive)
    if saml:
        return IdentitySettings(4, read(saml), b"", positive)
    if jwt:
        return IdentitySettings(5, read(jwt), b"", positive)
    if user:
        if password is not None:
            return IdentitySettings(2, user.encode(), password.encode(), positive)
        return IdentitySettings(1, user.encode(), b"", positive)
    return IdentitySettings()


def peer_for(dest: Destination, calling_ae: str) -> PeerSettings:
    """PeerSettings for one YAML destination (secrets are read from their files now)."""
    def secret(path: str | None) -> str | None:
        if path is None:
            return None
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"destination {dest.name}: cannot read {path}: "
                             f"{exc.strerror}") from exc

    t = dest.tls
    tls = None
    if t.enabled:
        tls = TLSSettings(cert=None if t.anonymous else t.cert,
                          key=None if t.anonymous else t.key,
                          key_password=secret(t.key_password_file), der=t.der,
                          ca_files=t.ca, ca_dirs=(t.ca_dir,) if t.ca_dir else (),
                          verify_peer=t.verify_peer, profile=t.profile, ciphers=t.ciphers,
                          server_name=t.server_name)
    i = dest.identity
    identity = identity_from_files(i.user, secret(i.password_file), i.kerberos_file,
                                   i.saml_file, i.jwt_file, i.positive_response)
    to = dest.timeouts
    return PeerSettings(host=dest.host, port=dest.port, called_ae=dest.called_ae_title,
                        calling_ae=calling_ae, max_pdu=dest.max_pdu,
                        max_send_pdu=dest.max_send_pdu, connect_timeout=to.connect,
                        acse_timeout=to.acse, dimse_timeout=to.dimse,
                        network_timeout=to.network, tls=tls, identity=identity)


def echo(peer: PeerSettings) -> str:
    """C-ECHO with the peer's full settings; the answer in words, or AssociationFailed.

    A peer that accepts the association but not the Verification SOP class is still
    reachable with these settings, and that is what a health probe needs to know: its
    A-ASSOCIATE-AC with the context rejected (pynetdicom then aborts) counts as an answer.
    """
    try:
        assoc = open_association(peer, [Context(VERIFICATION, (IMPLICIT_LE,))])
    except AssociationFailed as exc:
        if exc.kind == "no_contexts":
            return "association accepted (the peer does not offer C-ECHO)"
        raise
    try:
        if not any(str(cx.abstract_syntax) == VERIFICATION for cx in assoc.accepted_contexts):
            return "association accepted (the peer does not offer C-ECHO)"
        rsp = assoc.send_c_echo()
        if "Status" not in rsp:
            raise AssociationFailed("aborted", f"no C-ECHO response from {peer.called_ae}@"
                                    f"{peer.host}:{peer.port}")
        return f"C-ECHO status 0x{int(rsp.Status):04X}"
    finally:
        if assoc.is_established:
            assoc.release()
