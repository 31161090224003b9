"""The link: the peer's certificate must name the host (or `server_name`), TLS profiles
hold, and no user identity secret reaches a log at any level."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from forwarder import logs
from forwarder.cli import main
from forwarder.negotiation import Context
from forwarder.peers import peer_for
from forwarder.scu import Association
from forwarder.spool import Spool
from tests.corpus import data_file
from tests.sendutil import destination, enqueue, run, settled
from tests.tlsutil import make_pki, server_context

CT = data_file("CT_small.dcm")
SECRET = "s3cr3t-Passw0rd-42"


@pytest.fixture
def spool(tmp_path: Path):  # noqa: ANN201
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def tls_yaml(pki: dict[str, Path], extra: str = "") -> str:
    return (f"tls: {{enabled: true, cert: {pki['client.pem']}, key: {pki['client.key']}, "
            f"ca: [{pki['ca.pem']}]{extra}}}")


def test_a_certificate_for_another_name_is_refused(make_scp, spool: Spool,
                                                   tmp_path: Path) -> None:
    """Signed by the trusted CA, but for pacs.example.org: held, nothing sent."""
    pki = make_pki(tmp_path / "pki", names=("pacs.example.org",))
    peer = make_scp(ssl_context=server_context(pki))
    enqueue(spool, [CT])
    run(spool, destination(peer.port, tls_yaml(pki)),
        lambda: spool.health("pacs").state == "held")
    reason = spool.health("pacs").reason or ""
    assert "TLS" in reason and "127.0.0.1" in reason and peer.received == []
    # the same peer, told which name its certificate carries: delivered
    spool.set_health("pacs", "ok")
    run(spool, destination(peer.port, tls_yaml(pki, ", server_name: pacs.example.org")),
        lambda: settled(spool))
    assert len(peer.received) == 1


def test_a_certificate_naming_the_address_is_accepted(make_scp, spool: Spool,
                                                      tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", names=("127.0.0.1",))
    peer = make_scp(ssl_context=server_context(pki))
    enqueue(spool, [CT])
    run(spool, destination(peer.port, tls_yaml(pki)), lambda: settled(spool))
    assert len(peer.received) == 1


def test_send_checks_the_host_name_too(make_scp, tmp_path: Path, capsys) -> None:
    pki = make_pki(tmp_path / "pki", names=("pacs.example.org",))
    peer = make_scp(ssl_context=server_context(pki, require_client=False))
    args = ["send", "+tla", "+cf", str(pki["ca.pem"]), "127.0.0.1", str(peer.port), str(CT)]
    assert main(args) == 1
    assert "certificate" in capsys.readouterr().err.lower() and peer.received == []
    assert main(["send", "+tla", "-ic", *args[2 + 2:]]) == 0  # -ic: nothing checked


def test_null_profile_is_enforced(make_scp, tmp_path: Path) -> None:
    """A peer offering no NULL cipher: +pn refuses rather than encrypting with TLS 1.3."""
    pki = make_pki(tmp_path / "pki")
    peer = make_scp(ssl_context=server_context(pki, require_client=False))
    base = ["+tla", "+cf", str(pki["ca.pem"]), "127.0.0.1", str(peer.port), str(CT)]
    assert main(["send", "+pn", *base]) == 1
    assert peer.received == []
    assert main(["send", *base]) == 0 and len(peer.received) == 1


def test_send_debug_log_has_no_password(make_scp, capsys) -> None:
    peer = make_scp(user_check=lambda event: (True, None))
    assert main(["send", "-d", "-usr", "alice", "-pwd", SECRET, "127.0.0.1", str(peer.port),
                 str(CT)]) == 0
    err = capsys.readouterr().err
    assert "Requested User Identity Negotiation" in err  # the narration is there
    assert "Password: [(not logged)]" in err and SECRET not in err


def test_daemon_trace_log_has_no_password(make_scp, tmp_path: Path, capfd) -> None:
    peer = make_scp(user_check=lambda event: (True, None))
    secret = tmp_path / "password"
    secret.write_text(SECRET + "\n")
    dest = destination(peer.port, f"identity: {{user: alice, password_file: {secret}}}")
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("pynetdicom").level)
    try:
        logs.setup(level="trace", target="stderr")
        assoc = Association.open(peer_for(dest, "FORWARDER"),
                                 [Context("1.2.840.10008.1.1", ("1.2.840.10008.1.2",))])
        assoc.release()
    finally:
        for h in list(root.handlers):
            if getattr(h, "_forwarder", False):
                root.removeHandler(h)
        root.setLevel(saved[0])
        logging.getLogger("pynetdicom").setLevel(saved[2])
    err = capfd.readouterr().err
    assert "Requested User Identity Negotiation" in err and "alice" in err
    assert SECRET not in err


def test_a_dcmtk_logger_file_gets_a_clear_message(make_scp, capsys) -> None:
    peer = make_scp()
    cfg = "/etc/dcmtk/logger.cfg"
    if not Path(cfg).exists():
        pytest.fail("DCMTK's logger.cfg is missing: install Debian's dcmtk")
    assert main(["send", "-lc", cfg, "127.0.0.1", str(peer.port), str(CT)]) != 0
    err = capsys.readouterr().err
    assert "DCMTK (log4cplus) logger configuration" in err and "Traceback" not in err
    assert peer.received == []


def _encrypted_copy(key: Path, password: bytes) -> Path:
    from cryptography.hazmat.primitives import serialization

    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    out = key.with_name("encrypted.key")
    out.write_bytes(loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password)))
    return out


def test_key_loading_failures_name_the_files_and_the_cause(tmp_path: Path) -> None:
    """An encrypted key without a password is not prompted for where no one can answer
    (OpenSSL's own prompt, then "Invalid argument"), and a wrong password or a key of
    another certificate says so with the files' names, not OpenSSL's bare "PEM lib"."""
    from forwarder.tls import TLSSettings, ssl_context

    pki = make_pki(tmp_path / "pki")
    enc = _encrypted_copy(pki["client.key"], b"right")
    cert = str(pki["client.pem"])
    ssl_context(TLSSettings(cert=cert, key=str(enc), key_password="right"))
    ssl_context(TLSSettings(cert=cert, key=str(pki["client.key"]), prompt_password=True))
    for settings, said in (
            (TLSSettings(cert=cert, key=str(enc)),
             f"the private key {enc} is encrypted and no password was given"),
            (TLSSettings(cert=cert, key=str(enc), key_password="wrong"),
             f"cannot load the certificate {cert} with the private key {enc}: a wrong "
             "password"),
            (TLSSettings(cert=cert, key=str(pki["server.key"])),
             f"the private key {pki['server.key']} does not belong to the certificate")):
        with pytest.raises(ValueError) as exc:
            ssl_context(settings)
        assert said in str(exc.value)


def test_an_encrypted_der_key_without_its_password_is_a_reason_not_a_crash(
        tmp_path: Path) -> None:
    """A TypeError from the DER reader would escape the association's set-up (which
    holds a destination on ValueError) and end its worker at every try."""
    from cryptography.hazmat.primitives import serialization

    from forwarder.tls import TLSSettings, ssl_context

    pki = make_pki(tmp_path / "pki")
    key = serialization.load_pem_private_key(pki["client.key"].read_bytes(), password=None)
    der = tmp_path / "client.der"
    der.write_bytes(key.private_bytes(serialization.Encoding.DER,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"right")))
    cert = tmp_path / "client.cer"
    cert.write_bytes(ssl.PEM_cert_to_DER_cert(pki["client.pem"].read_text()))
    for password, said in ((None, f"the private key {der}: "),
                           ("wrong", f"cannot load the DER private key {der}: a wrong password")):
        with pytest.raises(ValueError) as exc:
            ssl_context(TLSSettings(cert=str(cert), key=str(der), der=True,
                                    key_password=password))
        assert said in str(exc.value)
    ssl_context(TLSSettings(cert=str(cert), key=str(der), der=True, key_password="right"))
