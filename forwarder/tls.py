"""TLS for an association (PS3.15 B.9-B.13 secure transport connection profiles): the
client context, the certificate's host name check, the cipher profiles of storescu's
``+px +py +pz +pb +pa +pn`` and the YAML ``tls`` block.

Converting a DER key (storescu ``-der``) needs ``cryptography`` (the ``tls`` extra).
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger("forwarder.association")

# how to get what a DER private key is converted with (check-config says it too)
DER_INSTALL = "sudo make install EXTRAS=codecs,tls; elsewhere pip install 'dicom-forwarder[tls]'"

# PS3.15 B.9-B.13 and DCMTK's +px +py +pz +pb +pa +pn
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


def _read_key_material(path: str, der: bool, is_key: bool, password: bytes | None) -> str:
    """PEM text of a certificate or key, converting DER (``-der``) when asked."""
    data = Path(path).read_bytes()
    if not der:
        return data.decode("ascii", "replace")
    if not is_key:
        return ssl.DER_cert_to_PEM_cert(data)
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError as exc:
        raise ValueError(f"a DER private key needs the 'cryptography' package ({DER_INSTALL})"
                         ) from exc

    try:
        key = serialization.load_der_private_key(data, password=password)
    except TypeError as exc:  # encrypted without a password, or a password for a plain key
        raise ValueError(f"the private key {path}: {exc} (send: +pw PASSWORD; YAML: "
                         "tls.key_password_file)") from exc
    except ValueError as exc:
        raise ValueError(f"cannot load the DER private key {path}: a wrong password, or "
                         f"not DER? ({exc})") from exc
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
        _set_ciphers(ctx, ciphers, tls.profile)
    if tls.ciphers:
        _set_ciphers(ctx, ":".join(tls.ciphers))
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
        if not tls.der:
            _load_pem_pair(ctx, tls)
            return ctx
        password = tls.key_password
        if password is None and tls.prompt_password:
            import getpass

            password = getpass.getpass(f"password for {tls.key}: ")
        pw = password.encode() if password is not None else None
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            cert = Path(tmp, "cert.pem")
            key = Path(tmp, "key.pem")
            cert.write_text(_read_key_material(tls.cert, True, False, None))
            key.write_text(_read_key_material(tls.key or tls.cert, True, True, pw))
            os.chmod(key, 0o600)
            ctx.load_cert_chain(cert, key)
    return ctx


STORESCU_FLAG = {"basic": "+pb", "aes": "+pa", "null": "+pn"}


def _set_ciphers(ctx: ssl.SSLContext, ciphers: str, profile: str | None = None) -> None:
    """Set a profile's cipher suites (``profile``) or the configured ones, or say which
    this OpenSSL cannot offer (OpenSSL 3 builds may lack 3DES, which the basic profile
    needs; TLS 1.3 suites are not chosen this way)."""
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError as exc:
        said = str(exc.args[0] if exc.args else exc).rstrip(".")
        listed = ":".join(c for c in ciphers.split(":") if not c.startswith("@"))
        if profile is None:
            raise ValueError(f"none of the TLS cipher suites asked for can be used with "
                             f"{ssl.OPENSSL_VERSION} (by OpenSSL's names: {listed}: {said}); "
                             "list suites 'dicom-forwarder send +cc' shows. A list holds the "
                             "connection to TLS 1.2: for TLS 1.3 give none") from exc
        flag = f" (storescu {STORESCU_FLAG[profile]})" if profile in STORESCU_FLAG else ""
        raise ValueError(f"TLS profile '{profile}'{flag} cannot be used with "
                         f"{ssl.OPENSSL_VERSION}: it offers none of the profile's cipher "
                         f"suites ({listed}: {said}); choose another profile, such as "
                         "bcp195 (storescu +px)") from exc


def cipher_problem(profile: str, ciphers: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """Which setting (``profile`` or ``ciphers``) this machine's OpenSSL cannot offer the
    suites of, and why; None when it can offer both. ``ciphers``: OpenSSL names."""
    for key, wanted, named in (("profile", TLS_PROFILES[profile][1], profile),
                               ("ciphers", ":".join(ciphers), None)):
        if wanted:
            try:
                _set_ciphers(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), wanted, named)
            except ValueError as exc:
                return key, str(exc)
    return None


class _NoPassword(Exception):
    pass


def _load_pem_pair(ctx: ssl.SSLContext, tls: TLSSettings) -> None:
    """Our certificate and key; the password is asked for (``+ps`` at a terminal) only
    when the key is encrypted, as storescu asks. A failure names the files and the likely
    cause, never OpenSSL's bare "PEM lib", nor a prompt where no one can answer it."""
    assert tls.cert is not None
    key = tls.key or tls.cert

    def password() -> bytes:  # OpenSSL calls it for an encrypted key only
        if tls.key_password is not None:
            return tls.key_password.encode()
        if tls.prompt_password:
            import getpass

            return getpass.getpass(f"password for {key}: ").encode()
        raise _NoPassword

    try:
        ctx.load_cert_chain(tls.cert, tls.key, password=password)
    except _NoPassword:
        raise ValueError(f"the private key {key} is encrypted and no password was given "
                         "(send: +pw PASSWORD, or +ps at a terminal; YAML: "
                         "tls.key_password_file)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"the private key {key} does not belong to the certificate "
                             f"{tls.cert}") from exc
        raise ValueError(f"cannot load the certificate {tls.cert} with the private key "
                         f"{key}: a wrong password, or not PEM (-der or tls.der for DER "
                         f"files)? ({exc})") from exc
