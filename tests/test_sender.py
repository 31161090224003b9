"""The sender against real peers on 127.0.0.1: what arrived, how often, what the spool says."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from pydicom import dcmread

from forwarder import outcome
from forwarder.cli import main
from forwarder.sender import DestinationSender
from forwarder.spool import Spool
from tests.corpus import data_file, unique_copies
from tests.peers import OrthancProcess, StoreSCPProcess, wait_for
from tests.sendutil import destination, enqueue, run, settled, states
from tests.tlsutil import make_pki, server_context

CT = data_file("CT_small.dcm")
MR = data_file("MR_small.dcm")


@pytest.fixture
def spool(tmp_path: Path):  # noqa: ANN201
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def test_a700_for_a_while_then_success(make_scp, spool: Spool, tmp_path: Path) -> None:
    calls = {"n": 0}

    def status(event) -> int:  # noqa: ANN001
        calls["n"] += 1
        return 0xA700 if calls["n"] <= 4 else 0x0000

    peer = make_scp(status=status)
    uids = enqueue(spool, list(unique_copies(tmp_path / "c", 3).values()))
    run(spool, destination(peer.port), lambda: settled(spool))
    assert peer.counts() == {u: 1 for u in uids}
    assert states(spool) == {"pending": 0, "sending": 0, "done": 3, "failed": 0}


def test_poison_instance_fails_alone(make_scp, spool: Spool, tmp_path: Path) -> None:
    files = list(unique_copies(tmp_path / "c", 5).values())
    bad = str(dcmread(files[2]).SOPInstanceUID)
    peer = make_scp(status=lambda e: 0xA900 if e.request.AffectedSOPInstanceUID == bad else 0)
    uids = enqueue(spool, files)
    run(spool, destination(peer.port), lambda: settled(spool))
    assert peer.counts() == {u: 1 for u in uids if u != bad}
    [f] = spool.failed_jobs()
    assert f["sop_instance_uid"] == bad and "0xA900" in f["reason"] and f["attempts"] == 1


def test_sop_class_not_supported_fails_that_class(make_scp, spool: Spool) -> None:
    mr_class = str(dcmread(MR).SOPClassUID)
    peer = make_scp(status=lambda e: 0x0122 if e.request.AffectedSOPClassUID == mr_class else 0)
    ct_uid, mr_uid = enqueue(spool, [CT, MR])
    run(spool, destination(peer.port), lambda: settled(spool))
    assert peer.counts() == {ct_uid: 1}
    [f] = spool.failed_jobs()
    assert f["sop_instance_uid"] == mr_uid and "does not support this SOP class" in f["reason"]


def test_rejected_abstract_syntax_fails_with_a_clear_reason(make_scp, spool: Spool) -> None:
    ct_class = str(dcmread(CT).SOPClassUID)
    peer = make_scp(sop_classes=[ct_class])  # MR is not among its contexts
    ct_uid, mr_uid = enqueue(spool, [CT, MR])
    run(spool, destination(peer.port), lambda: settled(spool))
    assert peer.counts() == {ct_uid: 1}
    [f] = spool.failed_jobs()
    assert f["sop_instance_uid"] == mr_uid and "MR Image Storage" in f["reason"]


@pytest.mark.parametrize("warning_is_success", [True, False])
def test_warning_b000(make_scp, spool: Spool, warning_is_success: bool) -> None:
    peer = make_scp(status=lambda e: 0xB000)
    enqueue(spool, [CT])
    yaml = "" if warning_is_success else "warning_is_success: false"
    run(spool, destination(peer.port, yaml), lambda: settled(spool))
    s = states(spool)
    assert (s["done"], s["failed"]) == ((1, 0) if warning_is_success else (0, 1))


def test_abort_after_k_stores_resends_on_a_new_association(make_scp, spool: Spool,
                                                           tmp_path: Path) -> None:
    seen: list[str] = []

    def status(event) -> int:  # noqa: ANN001
        seen.append(event.request.AffectedSOPInstanceUID)
        if len(seen) == 4:  # the peer aborts instead of answering the 4th C-STORE
            event.assoc.abort()
        return 0

    peer = make_scp(status=status)
    uids = enqueue(spool, list(unique_copies(tmp_path / "c", 10).values()))
    run(spool, destination(peer.port), lambda: settled(spool))
    counts = peer.counts()
    interrupted = seen[3]
    assert set(counts) == set(uids) and counts[interrupted] == 2  # at least once: resent
    assert all(n == 1 for u, n in counts.items() if u != interrupted)
    assert states(spool)["done"] == 10 and peer.associations == 2


def test_a_file_that_always_makes_the_peer_abort_fails(make_scp, spool: Spool,
                                                       tmp_path: Path) -> None:
    files = list(unique_copies(tmp_path / "c", 3).values())
    bad = str(dcmread(files[1]).SOPInstanceUID)

    aborts: list[str] = []

    def status(event) -> int:  # noqa: ANN001
        if event.request.AffectedSOPInstanceUID == bad:
            aborts.append(bad)
            event.assoc.abort()
            return 0xA700  # not kept: the abort went out first
        return 0

    peer = make_scp(status=status)
    uids = enqueue(spool, files)
    more = iter(unique_copies(tmp_path / "more", 12, prefix="m").values())
    with DestinationSender(destination(peer.port), "FORWARDER", spool):
        while not spool.failed_jobs():  # files keep coming and are stored around it
            seen = len(aborts)
            uids += enqueue(spool, [next(more)])
            wait_for(lambda n=seen, u=set(uids): set(peer.counts()) >= u - {bad}
                     and (len(aborts) > n or spool.failed_jobs()), 20,
                     "a neighbour stored and the file tried again")
    assert peer.counts() == {u: 1 for u in uids if u != bad}
    [f] = spool.failed_jobs()
    assert f["sop_instance_uid"] == bad and f"{outcome.ABORTS_IN_A_ROW} times" in f["reason"]
    assert "while other files were stored" in f["reason"]
    assert "the peer aborted the association" in f["reason"], f["reason"]


def test_stalled_peer_past_the_dimse_timeout(make_scp, spool: Spool, tmp_path: Path) -> None:
    release = threading.Event()
    first = {"done": False}

    def status(event) -> int:  # noqa: ANN001
        if not first["done"]:
            first["done"] = True
            release.wait(5)  # stalls longer than our DIMSE timeout
        return 0

    peer = make_scp(status=status)
    uids = enqueue(spool, list(unique_copies(tmp_path / "c", 3).values()))
    try:
        run(spool, destination(peer.port, "timeouts: {dimse: 500ms, acse: 5s}"),
            lambda: settled(spool))
    finally:
        release.set()
    assert set(peer.counts()) == set(uids) and states(spool)["done"] == 3


def test_a_worker_still_in_a_c_store_at_stop_is_named_and_finishes_it(
        make_scp, spool: Spool, tmp_path: Path) -> None:
    """stop waits its timeout for the C-STOREs in flight; a worker still in one is
    named as still busy (the daemon says so instead of 'stopped') and records it."""
    release, entered = threading.Event(), threading.Event()

    def status(event) -> int:  # noqa: ANN001
        entered.set()
        release.wait(10)
        return 0

    peer = make_scp(status=status)
    [uid] = enqueue(spool, list(unique_copies(tmp_path / "c", 1).values()))
    sender = DestinationSender(destination(peer.port), "FORWARDER", spool).start()
    try:
        assert entered.wait(20), "no C-STORE reached the peer"
        sender.stop(timeout=0.5)
        busy = sender.still_busy()
        assert busy == sender.pids and len(busy) == 1
        release.set()
        wait_for(lambda: not sender.still_busy(), 20, "the worker to finish and exit")
    finally:
        release.set()
        sender.stop()
    assert peer.counts() == {uid: 1} and states(spool)["done"] == 1


def test_called_ae_rejected_holds_the_destination(make_scp, spool: Spool) -> None:
    peer = make_scp(require_called_aet=True)
    enqueue(spool, [CT])
    run(spool, destination(peer.port, "called_ae_title: WRONG"),
        lambda: spool.health("pacs").state == "held")
    h = spool.health("pacs")
    assert "rejected" in (h.reason or "") and "Called AE title not recognised" in (h.reason or "")
    assert states(spool)["pending"] == 1 and peer.received == []
    report = spool.status(["pacs"])["destinations"]["pacs"]
    assert report["state"] == "held" and "rejected" in report["last_error"]


def test_local_limit_exceeded_backs_off_and_everything_arrives(make_scp, spool: Spool,
                                                               tmp_path: Path) -> None:
    peer = make_scp(maximum_associations=1)
    uids = enqueue(spool, list(unique_copies(tmp_path / "c", 40).values()))
    run(spool, destination(peer.port, "associations: 3\nbatch: 5"), lambda: settled(spool))
    assert peer.counts() == {u: 1 for u in uids}


def test_user_identity_refused_holds(make_scp, spool: Spool, tmp_path: Path) -> None:
    peer = make_scp(user_check=lambda e: (e.primary_field == b"alice", None))
    (tmp_path / "pw").write_text("secret\n")
    enqueue(spool, [CT])
    yaml = f"identity: {{user: mallory, password_file: {tmp_path / 'pw'}}}"
    run(spool, destination(peer.port, yaml), lambda: spool.health("pacs").state == "held")
    assert peer.received == [] and states(spool)["pending"] == 1
    yaml = f"identity: {{user: alice, password_file: {tmp_path / 'pw'}}}"
    spool.set_health("pacs", "ok")
    run(spool, destination(peer.port, yaml), lambda: settled(spool))
    assert len(peer.received) == 1


def test_an_unreadable_password_file_holds_without_stopping_any_worker(
        make_scp, spool: Spool, tmp_path: Path) -> None:
    from forwarder.sender import DestinationSender

    peer = make_scp()
    uids = enqueue(spool, list(unique_copies(tmp_path / "c", 12).values()))
    pw = tmp_path / "pw"
    yaml = f"associations: 3\nidentity: {{user: alice, password_file: {pw}}}"
    with DestinationSender(destination(peer.port, yaml), "FORWARDER", spool) as sender:
        wait_for(lambda: spool.health("pacs").state == "held" and states(spool)["pending"] == 12,
                 10, "the destination held with every job pending")
        assert f"cannot read {pw}" in (spool.health("pacs").reason or "")
        assert sender.alive and peer.associations == 0
    pw.write_text("secret\n")  # the operator fixes it; a restart (or reload) takes it
    spool.set_health("pacs", "ok")
    run(spool, destination(peer.port, yaml), lambda: settled(spool))
    assert peer.counts() == {u: 1 for u in uids}


def test_tls_peer_with_an_untrusted_ca_is_held(make_scp, spool: Spool, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", "other-ca")
    peer = make_scp(ssl_context=server_context(pki))
    enqueue(spool, [CT])

    def tls(ca: Path) -> str:
        return (f"tls: {{enabled: true, cert: {pki['client.pem']}, key: {pki['client.key']}, "
                f"ca: [{ca}]}}")

    run(spool, destination(peer.port, tls(other["ca.pem"])),
        lambda: spool.health("pacs").state == "held")
    assert "TLS" in (spool.health("pacs").reason or "") and peer.received == []
    spool.set_health("pacs", "ok")
    run(spool, destination(peer.port, tls(pki["ca.pem"])), lambda: settled(spool))
    assert len(peer.received) == 1


def test_peer_down_then_up_backs_off_then_delivers(make_scp, spool: Spool,
                                                   tmp_path: Path) -> None:
    from tests.peers import free_port

    port = free_port()
    uids = enqueue(spool, list(unique_copies(tmp_path / "c", 5).values()))
    from forwarder.sender import DestinationSender

    with DestinationSender(destination(port), "FORWARDER", spool):
        wait_for(lambda: spool.health("pacs").state == "backoff", 10, "backoff")
        assert "cannot connect" in (spool.health("pacs").reason or "")
        peer = make_scp(port=port)
        wait_for(lambda: settled(spool), 20, "delivery after the peer came up")
    assert peer.counts() == {u: 1 for u in uids}


def test_explicit_files_converted_for_an_implicit_only_storescp(spool: Spool,
                                                                tmp_path: Path) -> None:
    peer = StoreSCPProcess(tmp_path / "out", ("+xi",))
    try:
        uids = enqueue(spool, [CT, MR])
        run(spool, destination(peer.port), lambda: settled(spool))
        got = {str(dcmread(f).SOPInstanceUID): f for f in peer.files()}
        assert set(got) == set(uids) and states(spool)["done"] == 2
        stored = dcmread(got[uids[0]])
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
        assert stored.PixelData == dcmread(CT).PixelData
    finally:
        peer.stop()


@pytest.mark.parametrize("decompress", ["lossless", "never"])
def test_compressed_file_to_an_uncompressed_only_peer(make_scp, spool: Spool,
                                                      decompress: str) -> None:
    rle = data_file("MR_small_RLE.dcm")
    peer = make_scp(transfer_syntaxes=["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    [uid] = enqueue(spool, [rle])
    run(spool, destination(peer.port, f"decompress: {decompress}"), lambda: settled(spool))
    if decompress == "lossless":
        assert peer.counts() == {uid: 1}
        assert peer.received[0].transfer_syntax == "1.2.840.10008.1.2.1"
    else:
        assert peer.received == []
        [f] = spool.failed_jobs()
        assert "RLE Lossless" in f["reason"] and "MR Image Storage" in f["reason"]


def test_orthanc_receives_everything_once(spool: Spool, tmp_path: Path) -> None:
    orthanc = OrthancProcess(tmp_path / "orthanc")
    try:
        files = [*unique_copies(tmp_path / "c", 20).values(), MR, data_file("MR_small_RLE.dcm"),
                 data_file("rtplan.dcm")]
        uids = enqueue(spool, files)
        run(spool, destination(orthanc.port, "called_ae_title: ORTHANC\nassociations: 2"),
            lambda: settled(spool), timeout=60)
        assert orthanc.sop_instance_uids() == {u: 1 for u in uids}
        assert states(spool)["done"] == len(uids) and states(spool)["failed"] == 0
    finally:
        orthanc.stop()


def test_trickle_reuses_one_association(make_scp, spool: Spool, tmp_path: Path) -> None:
    from forwarder.sender import DestinationSender

    peer = make_scp()
    files = list(unique_copies(tmp_path / "c", 200).values())
    with DestinationSender(destination(peer.port, "idle_release: 5s"), "FORWARDER", spool):
        for i in range(0, 200, 10):  # ten at a time, each batch after the last has gone
            enqueue(spool, files[i:i + 10])
            wait_for(lambda n=i + 10: len(peer.received) >= n, 10, f"{i + 10} files")
    assert len(peer.counts()) == 200 and peer.associations == 1


def test_a_worker_process_that_dies_is_started_again(make_scp, spool: Spool,
                                                     tmp_path: Path) -> None:
    peer = make_scp()
    faults: list[BaseException] = []
    sender = DestinationSender(destination(peer.port, "associations: 2"), "FORWARDER", spool,
                               on_fatal=faults.append).start()
    try:
        assert len(set(sender.pids)) == 2 and os.getpid() not in sender.pids
        dead = sender.pids[1]
        os.kill(dead, signal.SIGKILL)
        wait_for(lambda: sender.restarts == 1 and dead not in sender.pids, 15,
                 "the dead worker started again")
        assert sender.alive and len(set(sender.pids)) == 2
        uids = enqueue(spool, list(unique_copies(tmp_path / "c", 3).values()))
        wait_for(lambda: settled(spool), 30, "the queue to drain")
    finally:
        sender.stop()
    assert peer.counts() == {u: 1 for u in uids} and faults == []


def test_max_age_expires_jobs_as_failed(make_scp, spool: Spool, tmp_path: Path) -> None:
    enqueue(spool, [CT])
    with spool._tx() as db:
        db.execute("UPDATE jobs SET created_at = created_at - 3600")
    peer = make_scp()
    run(spool, destination(peer.port, "retry: {max_age: 30m}"),
        lambda: states(spool)["failed"] == 1)
    assert peer.received == [] and spool.failed_jobs()[0]["reason"] == "expired"
    assert any(spool.objects.iterdir())  # kept for the operator


def test_echo_command(make_scp, tmp_path: Path, capsys) -> None:
    peer = make_scp(require_called_aet=True)
    cfg = tmp_path / "f.yaml"
    cfg.write_text(f"spool: {tmp_path / 'spool'}\ndestinations:\n"
                   f"  good: {{host: 127.0.0.1, port: {peer.port}}}\n"
                   f"  wrong-ae: {{host: 127.0.0.1, port: {peer.port}, called_ae_title: NOPE}}\n"
                   "routes:\n  - to: [good]\n")
    assert main(["echo", "-c", str(cfg), "good"]) == 0
    assert "good: ok" in capsys.readouterr().out
    assert main(["echo", "-c", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "good: ok" in out and "wrong-ae: failed" in out and "Called AE title not recognised" in out


def odd_valued(path: Path, uid: str) -> Path:
    """A Part 10 file as some devices write it: one LO value of 5 bytes, left unpadded,
    so the data set has odd length (PS3.5 7.1.1 asks for even lengths)."""
    import struct

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    def el(tag: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value

    def ui(text: str) -> bytes:
        return text.encode() + b"\0" * (len(text) % 2)

    sc = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    body = (el(0x00080016, b"UI", ui(sc)) + el(0x00080018, b"UI", ui(uid))
            + el(0x00080060, b"CS", b"OT") + el(0x00081090, b"LO", b"ABCDE")
            + el(0x00100010, b"PN", b"Odd^Test") + el(0x0020000D, b"UI", ui(uid + ".1")))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sc, uid
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    with open(path, "wb") as fp:
        fp.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fp, meta)
        fp.write(body)
    assert (len(body)) % 2 == 1
    return path


def test_a_data_set_of_odd_length_is_padded_not_left_to_abort_the_association(
        spool: Spool, tmp_path: Path) -> None:
    """DCMTK storescp aborts on an odd PDV. Streamed as it is, such a file made every
    association abort, the destination was blamed and held, and the files behind it
    waited. Its values are padded instead: it arrives with its value, and so do the
    others."""
    odd = odd_valued(tmp_path / "odd.dcm", "1.2.826.0.1.3680043.9.7777.5.1")
    peer = StoreSCPProcess(tmp_path / "out")
    try:
        uids = enqueue(spool, [odd, CT, MR])
        run(spool, destination(peer.port), lambda: settled(spool))
        assert states(spool)["done"] == 3 and spool.failed_jobs() == []
        assert spool.health("pacs").state == "ok"
        got = {str(dcmread(f).SOPInstanceUID): dcmread(f) for f in peer.files()}
        assert sorted(got) == sorted(uids)
        assert got[uids[0]].ManufacturerModelName == "ABCDE"  # padded with a space
    finally:
        peer.stop()


@pytest.mark.parametrize("name, peer_takes, reason", [
    # an RLE file of the same class has RLE proposed, the peer takes only that
    ("MR_small_jpeg_ls_lossless.dcm", ["1.2.840.10008.1.2.5"],
     "the peer accepted RLE Lossless (only compressed syntaxes, and the forwarder never "
     "compresses)"),
    ("JPEG2000.dcm", ["1.2.840.10008.1.2.1"],  # lossy JPEG 2000, uncompressed only
     "the peer accepted Explicit VR Little Endian (decompress: lossless forbids "
     "decompressing it; decompress: always allows it, the copy marked Lossy Image "
     "Compression 01)"),
])
def test_a_refused_compressed_file_is_told_the_true_reason(
        make_scp, spool: Spool, tmp_path: Path, name: str, peer_takes: list[str],
        reason: str) -> None:
    peer = make_scp(transfer_syntaxes=peer_takes)
    rle = data_file("MR_small_RLE.dcm")
    # its own SOP Instance UID (pydicom's MR_small files share one): sent in the RLE
    # file's association, not after it as a later version of the same instance
    [refused] = unique_copies(tmp_path / "c", 1, name).values()
    uids = enqueue(spool, [rle, refused])
    run(spool, destination(peer.port), lambda: settled(spool))
    [failed] = spool.failed_jobs()
    assert failed["sop_instance_uid"] == uids[1]
    assert failed["reason"].endswith(reason), failed["reason"]
    assert [r.sop_instance for r in peer.received] == [uids[0]]  # the RLE file went


def test_text_invalid_in_its_character_set_is_sent_as_it_is_or_fails_never_rewritten(
        make_scp, spool: Spool, tmp_path: Path) -> None:
    """A Latin-1 name in a data set that declares UTF-8: decoded and written again, it
    would put U+FFFD in the patient's name. Where the peer takes the file's own syntax it
    goes byte for byte; converted to implicit VR its values are copied, so the name's
    bytes arrive as they are; where only pydicom can convert it (big endian), it fails
    with the reason, and nothing arrives."""
    ds = dcmread(CT)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Hans"
    written = tmp_path / "written.dcm"
    ds.save_as(written, enforce_file_format=True)  # Latin-1 bytes, then relabelled UTF-8
    src = tmp_path / "latin1-as-utf8.dcm"
    src.write_bytes(written.read_bytes().replace(b"ISO_IR 100", b"ISO_IR 192", 1))
    name = b"\x10\x00\x10\x00\x0c\x00\x00\x00M\xfcller^Hans "  # implicit VR
    assert b"M\xfcller^Hans" in src.read_bytes()
    as_is = make_scp(transfer_syntaxes=["1.2.840.10008.1.2.1"])
    implicit_only = make_scp(transfer_syntaxes=["1.2.840.10008.1.2"])
    big_endian_only = make_scp(transfer_syntaxes=["1.2.840.10008.1.2.2"])
    [uid] = enqueue(spool, [src], dests=("pacs", "old", "be"))
    with DestinationSender(destination(as_is.port), "FORWARDER", spool), \
            DestinationSender(destination(implicit_only.port, name="old"), "FORWARDER", spool), \
            DestinationSender(destination(big_endian_only.port, name="be"), "FORWARDER", spool):
        wait_for(lambda: all(settled(spool, d) for d in ("pacs", "old", "be")), 30,
                 "the three destinations")
    assert [r.dataset_bytes for r in as_is.received] == [src.read_bytes()[
        src.read_bytes().index(b"\x08\x00\x05\x00"):]]  # the data set, byte for byte
    [converted] = implicit_only.received
    assert name in converted.dataset_bytes and b"\xef\xbf\xbd" not in converted.dataset_bytes
    assert big_endian_only.received == []
    [failed] = spool.failed_jobs()
    assert failed["destination"] == "be" and failed["sop_instance_uid"] == uid
    assert "text in the data set is not valid in its Specific Character Set" in \
        failed["reason"], failed["reason"]
