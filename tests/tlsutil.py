"""Certificates made in the test: a CA, a server and a client certificate signed by it."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write(path: Path, key, cert) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(folder: Path, ca_name: str = "test-ca",
             names: tuple[str, ...] = ("localhost", "127.0.0.1"),
             rsa_keys: bool = False) -> dict[str, Path]:
    """Write ``ca.pem``, ``server.{pem,key}``, ``client.{pem,key}``; return their paths.
    ``names``: the DNS names and addresses the certificates carry; ``rsa_keys``: RSA
    instead of EC P-256 keys (the older PS3.15 profiles use RSA key exchange)."""

    def new_key():  # noqa: ANN202
        return rsa.generate_private_key(65537, 2048) if rsa_keys else \
            ec.generate_private_key(ec.SECP256R1())

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = new_key()
    ca = (x509.CertificateBuilder().subject_name(_name(ca_name)).issuer_name(_name(ca_name))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    _write(folder / "ca", ca_key, ca)
    for who in ("server", "client"):
        key = new_key()
        cert = (x509.CertificateBuilder().subject_name(_name(f"{ca_name}-{who}"))
                .issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName([_alt_name(n) for n in names]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write(folder / who, key, cert)
    return {n: folder / n for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                     "client.key")}


def server_context(pki: dict[str, Path], require_client: bool = True) -> ssl.SSLContext:
    """A storage SCP's TLS context: our test CA, client certificates required."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca.pem"]))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_NONE
    ctx.load_cert_chain(pki["server.pem"], pki["server.key"])
    return ctx
