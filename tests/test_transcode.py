"""The daemon's sender converting real files for real peers: the files that used to arrive
changed (big endian planar and 1-bit data, compressed files whose meta disagrees) and the
conversions that must fail with a reason."""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from forwarder.cli import main
from forwarder.spool import Spool
from tests.corpus import data_file
from tests.peers import OrthancProcess, StoreSCPProcess
from tests.sendutil import destination, enqueue, run, settled, states

EXPLICIT_LE, DEFLATED_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"


@pytest.fixture
def spool(tmp_path: Path):  # noqa: ANN201
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def test_big_endian_planar_and_one_bit_files_arrive_exact_at_dcmtk(spool: Spool,
                                                                   tmp_path: Path) -> None:
    """DCMTK storescp taking implicit VR little endian only: it decodes what we sent."""
    names = ["ExplVR_BigEnd.dcm", "liver_expb_1frame.dcm", "rtdose_expb.dcm",
             "SC_rgb_small_odd_big_endian.dcm", "MR_small_expb.dcm"]
    files = [data_file(n) for n in names]
    peer = StoreSCPProcess(tmp_path / "out", ("+xi",))
    try:
        uids = enqueue(spool, files)
        run(spool, destination(peer.port), lambda: settled(spool))
        got = {str(dcmread(f).SOPInstanceUID): f for f in peer.files()}
    finally:
        peer.stop()
    assert set(got) == set(uids) and states(spool)["done"] == len(files)
    for uid, src in zip(uids, files, strict=True):
        original, stored = dcmread(src), dcmread(got[uid])
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
        for key in ("BitsAllocated", "PlanarConfiguration", "SamplesPerPixel", "NumberOfFrames"):
            assert stored.get(key) == original.get(key), (src.name, key)
        assert len(stored.PixelData) == len(original.PixelData), src.name
        assert np.array_equal(stored.pixel_array, original.pixel_array), src.name


def test_compressed_file_with_disagreeing_meta_goes_in_its_own_syntax(
        make_scp, spool: Spool, tmp_path: Path) -> None:
    """The peer accepts only JPEG 2000: the data set goes byte for byte under its own
    SOP Instance UID (the file meta, which disagrees, is not what a C-STORE carries)."""
    src = data_file("JPEG2000.dcm")
    ds = dcmread(src)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # meta disagrees
    ds.StudyDescription = "QQQW"
    path = tmp_path / "j2k.dcm"
    ds.save_as(path)  # then padded with a NUL, as some writers do: a re-encoding pads
    path.write_bytes(path.read_bytes().replace(b"QQQW", b"QQQ\0"))  # with a space
    ts = str(ds.file_meta.TransferSyntaxUID)
    peer = make_scp(transfer_syntaxes=[ts])
    [uid] = enqueue(spool, [path])
    run(spool, destination(peer.port), lambda: settled(spool))
    assert uid == ds.SOPInstanceUID and peer.counts() == {uid: 1}
    assert peer.received[0].transfer_syntax == ts and states(spool)["done"] == 1
    arrived = dcmread(data_file("JPEG2000.dcm"))
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    got = read_dataset(DicomBytesIO(peer.received[0].dataset_bytes), False, True)
    assert got.PixelData == arrived.PixelData  # the encapsulated fragments, byte for byte
    assert got.SOPInstanceUID == arrived.SOPInstanceUID
    data = path.read_bytes()
    assert data.endswith(peer.received[0].dataset_bytes)  # streamed, not re-encoded
    assert len(peer.received[0].dataset_bytes) > len(data) - 400


def test_one_bit_ow_big_endian_fails_with_a_reason(make_scp, spool: Spool,
                                                   tmp_path: Path) -> None:
    ds = dcmread(data_file("liver_expb_1frame.dcm"))
    ds["PixelData"].VR = "OW"
    path = tmp_path / "ow.dcm"
    ds.save_as(path)
    peer = make_scp(transfer_syntaxes=[EXPLICIT_LE])
    enqueue(spool, [path])
    run(spool, destination(peer.port), lambda: settled(spool))
    assert peer.received == []
    [job] = spool.failed_jobs()
    assert "1-bit pixel data encoded as OW in big endian" in job["reason"]
    assert "Explicit VR Big Endian" in job["reason"]


def odd_deflated(folder: Path) -> Path:
    """CT_small deflated by hand with an odd-length stream (no pad byte), as some writers
    leave it; its Study Description varies until the stream comes out odd."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = dcmread(data_file("CT_small.dcm"))
    for n in range(64):
        ds.StudyDescription = "ODD" + "X" * n
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, ds)
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        stream = z.compress(fp.getvalue()) + z.flush()
        if len(stream) % 2:
            break
    assert len(stream) % 2
    ds.file_meta.TransferSyntaxUID = DEFLATED_LE
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    path = folder / "odd-deflated.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + stream)
    assert dcmread(path).StudyDescription == ds.StudyDescription
    return path


@pytest.mark.parametrize("peer_kind", ["storescp", "orthanc"])
def test_odd_length_deflated_stream_is_delivered(spool: Spool, tmp_path: Path,
                                                 peer_kind: str) -> None:
    path = odd_deflated(tmp_path)
    original = dcmread(path)
    if peer_kind == "storescp":
        peer = StoreSCPProcess(tmp_path / "out", ("+xa",))  # accepts deflated
    else:
        peer = OrthancProcess(tmp_path / "orthanc")
    try:
        [uid] = enqueue(spool, [path])
        run(spool, destination(peer.port, "propose: deflated"), lambda: settled(spool))
        assert states(spool)["done"] == 1, spool.failed_jobs()
        if isinstance(peer, StoreSCPProcess):
            [f] = peer.files()
            stored = dcmread(f)
            assert stored.file_meta.TransferSyntaxUID == DEFLATED_LE
            assert stored.StudyDescription == original.StudyDescription
            assert stored.PixelData == original.PixelData
        else:
            assert peer.sop_instance_uids() == {uid: 1}
    finally:
        peer.stop()


def un_encoded(folder: Path) -> Path:
    """CT_small with its UIDs, Patient ID and Rows encoded with VR UN (explicit VR LE)."""
    ds = dcmread(data_file("CT_small.dcm"))
    for kw in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"):
        value = ds[kw].value.encode()
        ds[kw].VR, ds[kw].value = "UN", value + b"\0" * (len(value) % 2)
    ds["Rows"].VR, ds["Rows"].value = "UN", struct.pack("<H", ds.Rows)
    path = folder / "un.dcm"
    ds.save_as(path)
    return path


@pytest.mark.parametrize("via", ["daemon", "send"])
@pytest.mark.parametrize("peer_kind", ["storescp", "orthanc"])
def test_un_encoded_elements_go_with_their_own_vr(spool: Spool, tmp_path: Path,
                                                  peer_kind: str, via: str) -> None:
    path = un_encoded(tmp_path)
    original = dcmread(data_file("CT_small.dcm"))
    uid = str(original.SOPInstanceUID)
    peer = (StoreSCPProcess(tmp_path / "out") if peer_kind == "storescp"
            else OrthancProcess(tmp_path / "orthanc"))
    try:
        if via == "daemon":
            enqueue(spool, [path])
            run(spool, destination(peer.port), lambda: settled(spool))
            assert states(spool)["done"] == 1, spool.failed_jobs()
        else:
            assert main(["send", "-R", "127.0.0.1", str(peer.port), str(path)]) == 0
        if isinstance(peer, StoreSCPProcess):
            [f] = peer.files()
            stored = dcmread(f)
            for kw in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
                assert stored[kw].VR == "UI" and stored[kw].value == original[kw].value
            assert stored["Rows"].VR == "US" and stored.Rows == original.Rows
            assert stored["PatientID"].VR == "LO" and stored.PatientID == original.PatientID
            assert stored.PixelData == original.PixelData
        else:
            assert peer.sop_instance_uids() == {uid: 1}
    finally:
        peer.stop()


def retired_and_private(folder: Path) -> list[Path]:
    """Ultrasound Image Storage (Retired) uncompressed and JPEG, Ultrasound Multi-frame
    (Retired), and a private SOP class."""
    out = []
    for name, sop in (("SC_rgb_small_odd.dcm", "1.2.840.10008.5.1.4.1.1.6"),
                      ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.5.1.4.1.1.6"),
                      ("CT_small.dcm", "1.2.840.10008.5.1.4.1.1.3"),
                      ("MR_small.dcm", "1.2.826.0.1.3680043.9.9999.1")):
        ds = dcmread(data_file(name))
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(folder / f"{len(out)}.dcm")
        ds.save_as(out[-1])
    return out


@pytest.mark.parametrize("peer_kind", ["storescp", "orthanc"])
def test_retired_and_private_sop_classes_are_proposed_as_dcmsend_does(
        spool: Spool, tmp_path: Path, peer_kind: str) -> None:
    """The files' own SOP classes are proposed, retired or private, as dcmsend does: a
    storescp accepting every syntax and unknown classes (+xa -pm) takes all four; Orthanc
    (unknown SOP classes refused by default) the three retired ones, and the private one
    fails with a reason naming it."""
    files = retired_and_private(tmp_path)
    peer = (StoreSCPProcess(tmp_path / "out", ("+xa", "-pm")) if peer_kind == "storescp"
            else OrthancProcess(tmp_path / "orthanc"))
    try:
        uids = enqueue(spool, files)
        run(spool, destination(peer.port, "decompress: never"), lambda: settled(spool))
        if isinstance(peer, StoreSCPProcess):
            assert states(spool)["done"] == len(files), spool.failed_jobs()
            got = {str(dcmread(f).SOPInstanceUID): dcmread(f).SOPClassUID for f in peer.files()}
            assert got == {u: dcmread(f).SOPClassUID for u, f in zip(uids, files, strict=True)}
        else:
            assert peer.sop_instance_uids() == {u: 1 for u in uids[:3]}
            [failed] = spool.failed_jobs()
            assert failed["sop_instance_uid"] == uids[3]
            assert failed["reason"].startswith("1.2.826.0.1.3680043.9.9999.1 in Explicit VR "
                                               "Little Endian: the peer accepted nothing")
    finally:
        peer.stop()


def test_send_without_r_does_not_propose_a_retired_class_like_storescu(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """storescu's default list has no retired classes: storescu and `send` both refuse the
    file, and `send` says it was not proposed; with -R it goes."""
    [usr] = retired_and_private(tmp_path)[:1]
    peer = StoreSCPProcess(tmp_path / "out")
    try:
        assert main(["send", "127.0.0.1", str(peer.port), str(usr)]) == 1
        err = capsys.readouterr().err
        assert "Ultrasound Image Storage was not proposed on this association" in err
        assert peer.files() == []
        assert main(["send", "-R", "127.0.0.1", str(peer.port), str(usr)]) == 0
        assert len(peer.files()) == 1
    finally:
        peer.stop()


def test_a_un_value_that_does_not_fit_its_vr_fails_the_file_alone(make_scp, spool: Spool,
                                                                   tmp_path: Path) -> None:
    """Rows encoded as UN with 3 bytes cannot become US: that file fails with the element
    named, the next one is stored, and the worker carries on."""
    ds = dcmread(data_file("CT_small.dcm"))
    ds["Rows"].VR, ds["Rows"].value = "UN", b"\x01\x02\x03"
    bad = tmp_path / "bad-un.dcm"
    ds.save_as(bad)
    peer = make_scp()
    uids = enqueue(spool, [bad, data_file("MR_small.dcm")])
    run(spool, destination(peer.port), lambda: settled(spool))
    [failed] = spool.failed_jobs()
    assert failed["sop_instance_uid"] == uids[0]
    assert failed["reason"].startswith("cannot re-encode the dataset (element (0028,0010))")
    assert peer.counts() == {uids[1]: 1}


def private_un(path: Path, implicit: bool) -> tuple[Path, list[bytes]]:
    """CT_small with a Siemens-style private block encoded UN, at the top and inside an
    item (a DS with its spaces, a CS padded with a NUL) and 6 bytes under pydicom's SS
    entry for another vendor; and those elements as implicit VR, or explicit VR UN,
    carries them. For explicit VR, Rows is encoded UN as well: a known element to re-type
    makes the file go through pydicom, re-encoded in its own syntax."""
    from pydicom.dataset import Dataset

    ds = dcmread(data_file("CT_small.dcm"))
    item = Dataset()
    ds.ReferencedSeriesSequence = [item]
    values = [(0x0019100B, b" 12.5 "), (0x00191008, b"IMAGE NUM 4\0")]
    for where in (ds, item):
        where.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
        for tag, value in values:
            where.add_new(tag, "UN", value)
    ds.add_new(0x00110010, "LO", "CANON_MEC_MR3^10")
    ds.add_new(0x0011100C, "UN", b"\x01\x02\x03\x04\x05\x06")  # SS VM 1: 6 bytes
    if not implicit:
        ds["Rows"].VR, ds["Rows"].value = "UN", struct.pack("<H", ds.Rows)
    ds.save_as(path, enforce_file_format=True)
    head = "<HHI" if implicit else "<HH2sHI"
    expected = [struct.pack(head, t >> 16, t & 0xFFFF, *(() if implicit else (b"UN", 0)),
                            len(v)) + v
                for t, v in [*values, (0x0011100C, b"\x01\x02\x03\x04\x05\x06")]]
    return path, expected


@pytest.mark.parametrize("via", ["daemon", "send", "storescu"])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"],
                         ids=["to implicit VR", "re-encoded in explicit VR"])
def test_private_elements_encoded_un_keep_their_bytes(
        make_scp, spool: Spool, tmp_path: Path, via: str, syntax: str) -> None:
    """Converted to implicit VR, or re-encoded by pydicom in explicit VR (a known element
    encoded UN gets its VR back), a file's private UN elements keep their bytes, as with
    storescu (pydicom's private dictionary would have re-typed them: the DS lost its
    spaces and the CS its NUL)."""
    path, expected = private_un(tmp_path / "private.dcm", syntax == "1.2.840.10008.1.2")
    peer = make_scp(transfer_syntaxes=[syntax])
    if via == "daemon":
        enqueue(spool, [path])
        run(spool, destination(peer.port), lambda: settled(spool))
        assert states(spool)["done"] == 1, spool.failed_jobs()
    elif via == "send":
        assert main(["send", "127.0.0.1", str(peer.port), str(path)]) == 0
    else:  # the oracle
        subprocess.run(["storescu", "127.0.0.1", str(peer.port), str(path)], check=True,
                       timeout=60)
    [got] = peer.received
    assert got.transfer_syntax == syntax
    for element in expected:
        assert element in got.dataset_bytes, element
    assert got.dataset_bytes.count(expected[0]) == 2  # the item's own too
    if syntax.endswith(".1") and via != "storescu":  # Rows re-typed: storescu sends UN
        assert struct.pack("<HH2sH", 0x0028, 0x0010, b"US", 2) in got.dataset_bytes


@pytest.mark.parametrize("via", ["daemon", "send"])
@pytest.mark.parametrize("implicit", [False, True], ids=["encoded UN", "implicit VR"])
def test_a_private_element_without_its_own_vr_fails_a_byte_order_change(
        make_scp, spool: Spool, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        via: str, implicit: bool) -> None:
    """A private element the file gives no VR (UN, or implicit VR) cannot be swapped for
    a big endian peer, even where pydicom's private dictionary names a VR for it: that
    entry (AGFA's (0019,1060) as US, VM 1) would have split these 4 bytes into two words
    and swapped each. The file fails with the element named; nothing arrives."""
    ds = dcmread(data_file("MR_small_implicit.dcm" if implicit else "MR_small.dcm"))
    for elem in [e for e in ds if e.tag.is_private]:
        del ds[elem.tag]
    ds.add_new(0x00190010, "LO", "AGFA")
    ds.add_new(0x00191060, "UN", b"\x01\x02\x03\x04")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "agfa.dcm"
    ds.save_as(path, enforce_file_format=True)
    peer = make_scp(transfer_syntaxes=["1.2.840.10008.1.2.2"])
    if via == "daemon":
        enqueue(spool, [path])
        run(spool, destination(peer.port), lambda: settled(spool))
        [job] = spool.failed_jobs()
        reason = job["reason"]
    else:
        assert main(["send", "127.0.0.1", str(peer.port), str(path)]) == 1
        reason = capsys.readouterr().err
    assert peer.received == []
    assert "to Explicit VR Big Endian: element (0019,1060) has VR UN" in reason, reason


def padded_values(path: Path) -> Path:
    """CT_small with values whose padding and spacing pydicom's writer would change (no
    text with trailing spaces: DCMTK takes those off as it reads)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = dcmread(data_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for tag, vr, raw in ((0x00181050, "DS", b" 3.0 \\ 4.5"), (0x00200013, "IS", b" 12 "),
                         (0x00081090, "LO", b"ABC\0"), (0x00080060, "CS", b"CT\0\0"),
                         (0x00100010, "PN", b"Doe^John\0\0")):
        ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("via", ["daemon", "send"])
def test_converted_to_implicit_vr_every_value_is_what_storescu_sends(
        make_scp, spool: Spool, tmp_path: Path, via: str) -> None:
    """To a peer that takes implicit VR only, DCMTK copies every value; so do send and
    the daemon (DCMTK leaves out the Data Set Trailing Padding, and may give a sequence
    the other kind of length: neither is a value)."""
    from tests.test_reencode import values

    files = [padded_values(tmp_path / "padded.dcm"),
             *(data_file(n) for n in ("CT_small.dcm", "reportsi.dcm", "waveform_ecg.dcm"))]
    theirs = make_scp(transfer_syntaxes=["1.2.840.10008.1.2"])
    ours = make_scp(transfer_syntaxes=["1.2.840.10008.1.2"])
    for f in files:
        subprocess.run(["storescu", "-R", "127.0.0.1", str(theirs.port), str(f)], check=True,
                       timeout=60, capture_output=True)
    if via == "daemon":
        enqueue(spool, files)
        run(spool, destination(ours.port), lambda: settled(spool))
        assert states(spool)["done"] == len(files), spool.failed_jobs()
    else:
        assert main(["send", "-R", "127.0.0.1", str(ours.port), *map(str, files)]) == 0
    assert len(theirs.received) == len(ours.received) == len(files)
    by_uid = {r.sop_instance: r.dataset_bytes for r in theirs.received}
    for got in ours.received:
        mine = [v for v in values(got.dataset_bytes, True) if v[-2] != 0xFFFCFFFC]
        assert mine == values(by_uid[got.sop_instance], True), got.sop_instance


def test_a_deflated_data_set_in_implicit_vr_reaches_a_deflated_peer_in_explicit_vr(
        make_scp, spool: Spool, tmp_path: Path) -> None:
    """The deflated syntax is explicit VR: a writer that deflated an implicit data set made
    a file that, streamed as it is, the peer reads as garbage. It is re-encoded, so what
    arrives inflates to explicit VR with the same values."""
    import zlib

    from tests.test_reencode import deflated_file, implicit, values

    body = implicit(0x00080016, b"1.2.840.10008.5.1.4.1.1.7\0") + \
        implicit(0x00080018, b"1.2.3.4\0") + implicit(0x00100010, b"Doe^John")
    path = deflated_file(tmp_path / "implicit.dcm", body)
    peer = make_scp(transfer_syntaxes=[DEFLATED_LE])
    enqueue(spool, [path])
    run(spool, destination(peer.port), lambda: settled(spool))
    assert states(spool)["done"] == 1, spool.failed_jobs()
    assert main(["send", "-xd", "127.0.0.1", str(peer.port), str(path)]) == 0
    assert len(peer.received) == 2
    for got in peer.received:
        assert got.transfer_syntax == DEFLATED_LE
        inflated = zlib.decompress(got.dataset_bytes, -zlib.MAX_WBITS)
        assert inflated[4:6] == b"UI"  # explicit VR
        assert values(inflated, False) == values(body, True)


@pytest.mark.parametrize(("syntax", "peer", "stored", "nested"), [
    ("1.2.840.10008.1.2.1", ("--implicit",), "1.2.840.10008.1.2", False),
    ("1.2.840.10008.1.2.1.99", (), "1.2.840.10008.1.2.1", False),  # storescp: no deflated
    ("1.2.840.10008.1.2.1.99", (), "1.2.840.10008.1.2.1", True),
], ids=["explicit-to-implicit", "deflated-to-explicit", "deflated-value-in-a-sequence"])
def test_a_large_file_converted_is_sent_from_its_file(
        tmp_path: Path, syntax: str, peer: tuple[str, ...], stored: str, nested: bool) -> None:
    """For a peer that takes implicit VR only, only the headers are rewritten: the pixel
    data goes from the file as it is sent, so `send` holds no copy of it, and DCMTK stores
    from send the same bytes as from storescu. A deflated file is inflated as it is read
    and as it is sent, never whole: the probe's reading and the conversion alike, also
    when the large value is inside a sequence of defined length (as in a waveform)."""
    import filecmp
    import sys

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    size = 96 << 20
    ds = dcmread(data_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    frames = size // (ds.Rows * ds.Columns * 2)
    large = bytes(range(251)) * (frames * ds.Rows * ds.Columns * 2 // 251) + \
        bytes(frames * ds.Rows * ds.Columns * 2 % 251)  # a period no offset error keeps
    if nested:
        item = Dataset()
        item.EncapsulatedDocument = large
        ds.ReferencedImageSequence = Sequence([item])
        ds["ReferencedImageSequence"].is_undefined_length = False
    else:
        ds.NumberOfFrames = frames
        ds.PixelData = large
    del large
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    del ds
    ours = StoreSCPProcess(tmp_path / "ours", peer)
    theirs = StoreSCPProcess(tmp_path / "theirs", peer)
    try:
        measured = subprocess.run(
            [sys.executable, "-c", "import resource, subprocess, sys; "
             "rc = subprocess.run(sys.argv[1:]).returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)",
             sys.executable, "-m", "forwarder", "send", "127.0.0.1", str(ours.port), str(path)],
            capture_output=True, text=True, timeout=120, check=True)
        subprocess.run(["storescu", "127.0.0.1", str(theirs.port), str(path)], check=True,
                       timeout=120, capture_output=True)
        [mine], [dcmtk] = ours.files(), theirs.files()
        assert dcmread(mine, stop_before_pixels=True).file_meta.TransferSyntaxUID == stored
        assert filecmp.cmp(mine, dcmtk, shallow=False)
    finally:
        ours.stop()
        theirs.stop()
    peak_kib = int(measured.stdout.split()[-1])
    assert peak_kib < 64 << 10, f"send peaked at {peak_kib >> 10} MiB for a {size >> 20} MiB file"
