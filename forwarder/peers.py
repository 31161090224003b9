"""The peer settings of one YAML destination: the config schema turned into what the
transport (:mod:`forwarder.association`) needs, secrets read from their files now."""

from __future__ import annotations

from pathlib import Path

from forwarder.association import PeerSettings
from forwarder.ciphers import for_openssl
from forwarder.config import Destination
from forwarder.errors import UsageError
from forwarder.identity import identity_from_files
from forwarder.tls import TLSSettings


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
                          verify_peer=t.verify_peer, profile=t.profile,
                          ciphers=for_openssl(t.ciphers),
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
