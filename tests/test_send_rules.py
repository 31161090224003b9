"""`send` and the daemon agree on what a peer's answer means, and `send` takes storescu's
options as storescu does."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from forwarder import outcome
from forwarder.ciphers import openssl_names
from forwarder.cli import main
from forwarder.spool import Spool
from tests.corpus import data_file
from tests.sendutil import destination, enqueue, run, settled, states
from tests.tlsutil import make_pki, server_context

CT = str(data_file("CT_small.dcm"))


@pytest.mark.parametrize("status", [0x0000, 0x0111, 0xB000, 0x0001, 0xA900, 0xC000, 0x0117])
def test_send_and_the_daemon_count_a_status_alike(make_scp, tmp_path: Path,
                                                   status: int) -> None:
    peer = make_scp(status=lambda event: status)
    sent = main(["send", "127.0.0.1", str(peer.port), CT]) == 0
    spool = Spool(tmp_path / "spool")
    try:
        enqueue(spool, [Path(CT)])
        run(spool, destination(peer.port), lambda: settled(spool))
        stored = states(spool)["done"] == 1
    finally:
        spool.close()
    assert sent == stored == (outcome.store_status(status).kind == outcome.DONE)


def test_empty_password_is_sent_without_a_hang(make_scp, capsys) -> None:
    seen = []

    def check(event) -> tuple[bool, None]:  # noqa: ANN001
        seen.append((event.primary_field, event.secondary_field))
        return True, None

    peer = make_scp(user_check=check)
    started = time.monotonic()
    assert main(["send", "-usr", "bob", "-epw", "127.0.0.1", str(peer.port), CT]) == 0
    assert time.monotonic() - started < 10
    assert seen == [(b"bob", b"")] and len(peer.received) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_cipher_suites_by_their_iana_names(make_scp, tmp_path: Path, capsys) -> None:
    pki = make_pki(tmp_path / "pki")
    peer = make_scp(ssl_context=server_context(pki, require_client=False))
    tls = ["+tla", "+cf", str(pki["ca.pem"])]
    assert main(["send", "+cc"]) == 0
    listed = capsys.readouterr().out
    assert "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" in listed  # storescu's spelling
    names = [line.strip() for line in listed.splitlines()[1:]]
    assert names and all(openssl_names([n]) for n in names)  # each one +cs takes
    assert main(["send", *tls, "+cs", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                 "127.0.0.1", str(peer.port), CT]) == 0
    assert len(peer.received) == 1
    assert main(["send", *tls, "+cs", "TLS_NO_SUCH_SUITE", "127.0.0.1", str(peer.port),
                 CT]) != 0
    assert "unknown ciphersuite 'TLS_NO_SUCH_SUITE'" in capsys.readouterr().err


def test_an_unanswered_association_request_is_an_acse_timeout(tmp_path: Path, capsys) -> None:
    """A peer that takes the connection and never answers: both paths say ACSE timeout."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    try:
        assert main(["send", "-ta", "2", "127.0.0.1", str(port), CT]) == 1
        err = capsys.readouterr().err
        assert "within the ACSE timeout (2s)" in err and "aborted by" not in err
        spool = Spool(tmp_path / "spool")
        try:
            enqueue(spool, [Path(CT)])
            dest = destination(port, "timeouts: {connect: 2s, acse: 2s, dimse: 5s, network: 5s}")
            run(spool, dest, lambda: spool.health("pacs").state == "backoff")
            assert "within the ACSE timeout (2s)" in (spool.health("pacs").reason or "")
        finally:
            spool.close()
    finally:
        server.close()


def _shape(peer) -> list[tuple]:  # noqa: ANN001
    """What arrived, with invented values replaced by their order of first appearance."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    seen: dict[str, dict[str, int]] = {}
    out = []
    for rec in peer.received:
        ds = read_dataset(DicomBytesIO(rec.dataset_bytes), "1.2" == rec.transfer_syntax,
                          True)
        row: list = [rec.sop_class]
        for kw in ("PatientID", "PatientName", "StudyInstanceUID", "StudyID",
                   "SeriesInstanceUID"):
            ids = seen.setdefault(kw, {})
            # PatientID, PatientName and StudyID are the time in seconds and a counter:
            # compare the counters (a run may cross a second boundary)
            value = re.sub(r"^(PID_|SID_|.*TEST_PN_)\d{10}", r"\1", str(ds.get(kw)))
            row.append(ids.setdefault(value, len(ids)))
        row += [str(ds.get("SeriesNumber")), str(ds.get("InstanceNumber"))]
        out.append(tuple(row))
    return out


@pytest.mark.parametrize("options", [["--repeat", "2"],
                                     ["+IR", "1", "+IS", "1", "+IP", "2", "--repeat", "2"],
                                     ["+II", "+IR", "2", "--repeat", "3"]])
def test_repeat_and_invented_patients_as_storescu(make_scp, options: list[str]) -> None:
    import subprocess

    files = [CT, str(data_file("MR_small.dcm"))]
    ours, theirs = make_scp(), make_scp()
    assert main(["send", *options, "127.0.0.1", str(ours.port), *files]) == 0
    subprocess.run(["storescu", *options, "127.0.0.1", str(theirs.port), *files],
                   check=True, capture_output=True, timeout=60)
    assert _shape(ours) == _shape(theirs)
