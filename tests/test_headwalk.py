"""The probe's fast path (forwarder.headwalk) answers exactly as the full pydicom read:
for every file pydicom ships, for cuts and for flipped bytes; where it cannot, it leaves
the file to the full read."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from pydicom.data import get_testdata_file

from forwarder import dicomfile, elements, headwalk
from forwarder.errors import NotDicomError
from forwarder.incomplete import image_unfinished
from tests.corpus import data_file

TEST_FILES = Path(get_testdata_file("CT_small.dcm", download=False)).parent
ALL = sorted(p for p in TEST_FILES.rglob("*") if p.is_file() and p.stat().st_size < 4_000_000)
# what routes match on: text, numbers, multi-valued, person names, absent ones
KEYWORDS = frozenset({"Modality", "StationName", "Rows", "ImageType", "InstitutionName",
                      "ReferringPhysicianName", "BodyPartExamined", "NoSuchKeyword"})
# binary numbers (FL, FD, SS, 'US or SS', AT) and numbers that may be empty
NUMBERS = KEYWORDS | {"RecommendedDisplayFrameRateInFloat", "DiffusionBValue", "RevolutionTime",
                      "TagAngleSecondAxis", "PixelPaddingValue", "SmallestImagePixelValue",
                      "FrameIncrementPointer", "AcquisitionNumber", "EchoNumbers",
                      "ImagePositionPatient"}
# explicit and implicit VR, nested and private sequences, encapsulated pixel data
VARIED = ["CT_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm", "JPEG2000.dcm", "test-SR.dcm",
          "nested_priv_SQ.dcm", "liver_1frame.dcm", "MR_small_RLE.dcm"]


def full_read(path: Path, keywords: frozenset[str] = KEYWORDS) -> object:
    """What the probe answers with the fast path switched off."""
    real, headwalk.walk = headwalk.walk, lambda *a: None
    try:
        return dicomfile.probe(path, keywords)
    except NotDicomError as exc:
        return ("refused", str(exc))
    finally:
        headwalk.walk = real


def answer(path: Path, keywords: frozenset[str] = KEYWORDS) -> object:
    try:
        return dicomfile.probe(path, keywords)
    except NotDicomError as exc:
        return ("refused", str(exc))


def walked(path: Path, keywords: frozenset[str] = KEYWORDS) -> bool:
    with open(path, "rb") as fp:
        return headwalk.walk(fp.fileno(), os.fstat(fp.fileno()).st_size,
                             dicomfile._tags(keywords)) is not None


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("keywords", [KEYWORDS, NUMBERS], ids=["text", "numbers"])
def test_every_shipped_file_probes_alike_either_way(keywords: frozenset[str]) -> None:
    fast = 0
    for path in ALL:
        if walked(path, keywords):
            fast += 1
            assert answer(path, keywords) == full_read(path, keywords), path
    assert fast >= 100, f"only {fast} of {len(ALL)} files took the fast path"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("keywords", [frozenset(), KEYWORDS], ids=["plain", "routed"])
def test_whether_a_data_set_reaches_its_pixel_data_is_told_either_way(tmp_path, keywords):
    data = data_file("CT_small.dcm").read_bytes()
    head = tmp_path / "head.dcm"
    head.write_bytes(data[:data.index(b"\xe0\x7f\x10\x00")])
    for name, pixels in (("CT_small.dcm", True), ("JPEG2000.dcm", True),
                         ("MR_small_implicit.dcm", True), ("test-SR.dcm", False),
                         ("rtplan.dcm", False)):
        path = data_file(name)
        assert walked(path)
        assert dicomfile.probe(path, keywords).pixels is pixels, name
        assert full_read(path, keywords).pixels is pixels, name
    assert dicomfile.probe(head, keywords).pixels is False
    assert full_read(head, keywords).pixels is False
    assert image_unfinished(dicomfile.probe(head)) == (
        "truncated: CT Image Storage without Pixel Data (an image's data set ends with it; "
        "its writer may not be done)")
    assert image_unfinished(dicomfile.probe(data_file("test-SR.dcm"))) is None


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm"])
def test_zeros_after_the_data_set_are_walked_past_not_read_as_elements(tmp_path, name):
    """The reader takes every 8 zero bytes after a data set as an empty element (0000,0000)
    and so accepts the file, slowly: 100 MB of zeros after an explicit VR data set held
    intake for 24 s (in implicit VR the reader takes some 40 s for 1 MB). The walk gives
    the same answer without them; one other byte among them leaves the file to the reader
    (8 KiB here: the reader is the slow one)."""
    data = data_file(name).read_bytes()
    padded, spoilt, odd = tmp_path / "padded.dcm", tmp_path / "spoilt.dcm", tmp_path / "odd.dcm"
    padded.write_bytes(data + bytes(8192))
    spoilt.write_bytes(data + bytes(8192) + b"\x01")
    odd.write_bytes(data + bytes(8196))  # 4 stray bytes after the last 8: the reader says so
    assert walked(padded) and not walked(spoilt)
    for path in (padded, spoilt, odd):
        for keywords in (frozenset(), KEYWORDS):
            assert answer(path, keywords) == full_read(path, keywords), path
    assert dicomfile.probe(padded).sop_instance_uid == dicomfile.probe(data_file(name)) \
        .sop_instance_uid


def test_zeros_that_do_not_run_to_the_end_are_looked_through_once(tmp_path, monkeypatch):
    """In implicit VR each 8 zero bytes walk as an empty element; the look for zeros to
    the end must not start again at each of them (4 MB of zeros then other bytes: 56 s
    for 1 MB, growing with the square of the run)."""
    data = data_file("MR_small_implicit.dcm").read_bytes()
    path = tmp_path / "hole.dcm"  # zeros, then an empty (FFFC,FFFC) Data Set Trailing Padding
    path.write_bytes(data + bytes(4 << 20) + b"\xfc\xff\xfc\xff\x00\x00\x00\x00")
    read = []
    real = os.pread
    monkeypatch.setattr(headwalk.os, "pread", lambda fd, n, at: (read.append(n),
                                                                   real(fd, n, at))[1])
    assert walked(path)
    assert sum(read) < 3 * path.stat().st_size, f"{sum(read)} bytes read"
    assert dicomfile.probe(path).sop_instance_uid == \
        dicomfile.probe(data_file("MR_small_implicit.dcm")).sop_instance_uid


@pytest.mark.filterwarnings("ignore")
def test_pixel_data_counts_wherever_the_file_puts_it_and_jpip_needs_none(tmp_path):
    """An element after the pixel data out of order (a private block appended) does not
    hide them; a JPIP-referenced image names its pixels by URL and holds none."""
    from forwarder.model import Probe

    data = data_file("CT_small.dcm").read_bytes()
    appended = tmp_path / "appended.dcm"
    appended.write_bytes(data + struct.pack("<HH2sH", 0x0029, 0x0010, b"LO", 4) + b"ACME")
    assert walked(appended)
    assert dicomfile.probe(appended).pixels is True and full_read(appended).pixels is True
    ct = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    for syntax, held in (("1.2.840.10008.1.2.1", True), ("1.2.840.10008.1.2.4.94", False),
                         ("1.2.840.10008.1.2.4.205", False)):
        found = Probe(ct, "1.2.3", syntax, pixels=False)
        assert (image_unfinished(found) is not None) is held, syntax


@pytest.mark.filterwarnings("ignore")
def test_without_routing_keywords_plain_values_are_read_from_the_bytes(monkeypatch):
    """As `send` probes: no routing keywords. Most files are answered from the walked
    bytes alone (pydicom never decodes a value), and every answer is the full read's."""
    decoded = []
    real = dicomfile._datasets
    monkeypatch.setattr(dicomfile, "_datasets", lambda w: decoded.append(1) or real(w))
    plain = 0
    for path in ALL:
        if walked(path):
            before = len(decoded)
            assert answer(path, frozenset()) == full_read(path, frozenset()), path
            plain += len(decoded) == before
    assert plain >= 80, f"only {plain} of {len(ALL)} files were answered from their bytes"


def _with_value(tag: bytes, value: bytes) -> bytes:
    """CT_small with the explicit VR element ``tag`` (group, element, VR) set to ``value``."""
    data = data_file("CT_small.dcm").read_bytes()
    at = data.index(tag)
    old = int.from_bytes(data[at + 6:at + 8], "little")
    return data[:at + 6] + len(value).to_bytes(2, "little") + value + data[at + 8 + old:]


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(tag=st.sampled_from([b"\x10\x00\x10\x00PN", b"\x10\x00\x20\x00LO",
                            b"\x08\x00\x05\x00CS", b"\x08\x00\x18\x00UI"]),
       value=st.lists(st.sampled_from([b"A", b"z", b"^", b" ", b"\0", b"=", b"\\", b"1",
                                       b".", b"\xe9", b"\x1b$B", b"ISO_IR 100", b"ISO_IR 13",
                                       b"ISO 2022 IR 87", b"\x7f", b"\t"]),
                      max_size=40).map(b"".join))
def test_names_ids_charsets_and_uids_read_alike_either_way(tmp_path, tag, value):
    """Patient's Name and ID, the character set and a UID with any mix of padding,
    separators, non-ASCII and escapes, short and too long: the answer from the bytes (or
    pydicom's, where they are not plain) is the full read's."""
    path = tmp_path / "v.dcm"
    path.write_bytes(_with_value(tag, value + (b" " if len(value) % 2 else b"")))
    assert answer(path, frozenset()) == full_read(path, frozenset())


def test_send_probes_a_plain_file_without_loading_pydicom(tmp_path):
    path = tmp_path / "ct.dcm"
    path.write_bytes(data_file("CT_small.dcm").read_bytes())
    code = ("import sys; from forwarder import dicomfile; p = dicomfile.probe(sys.argv[1]); "
            "print(p.sop_instance_uid, p.phi['PatientName'], p.meta_consistent, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == full_read(path, frozenset()).sop_instance_uid  # type: ignore[attr-defined]
    assert out[1:] == ["CompressedSamples^CT1", "True", "[]"]


def test_the_vr_tables_are_pydicoms():
    from pydicom.filereader import ENCODED_VR
    from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

    assert elements.KNOWN_VRS == {vr for vr in ENCODED_VR if len(vr) == 2 and vr != b"UN"}
    assert elements.LONG_VRS == {vr.encode() for vr in EXPLICIT_VR_LENGTH_32}
    from pydicom.charset import python_encoding

    assert headwalk.PLAIN_CHARSETS <= set(python_encoding)


@pytest.mark.parametrize("name", VARIED)
def test_plain_files_of_every_shape_take_the_fast_path(name):
    path = data_file(name)
    assert walked(path)
    assert answer(path) == full_read(path)


def test_routing_values_come_from_the_walk(tmp_path):
    probe = dicomfile.probe(data_file("CT_small.dcm"), KEYWORDS)
    assert probe.attributes["Modality"] == "CT"
    assert probe.attributes["Rows"] == "128"
    assert probe.attributes["ImageType"] == "ORIGINAL\\PRIMARY\\AXIAL"
    assert "NoSuchKeyword" not in probe.attributes
    assert probe.meta_consistent and probe.transfer_syntax == "1.2.840.10008.1.2.1"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm"])
def test_a_file_that_ends_early_is_left_to_the_full_read(tmp_path, name):
    data = data_file(name).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-1000])
    assert not walked(cut)
    assert answer(cut)[0] == "refused" and "truncated" in answer(cut)[1]


def test_a_file_shorter_than_its_size_says_is_not_walked(tmp_path):
    """Cut between fstat and the read: the walk sees a short read, never a crash."""
    data = data_file("CT_small.dcm").read_bytes()
    path = tmp_path / "f.dcm"
    path.write_bytes(data[:5000])
    with open(path, "rb") as fp:
        assert headwalk.walk(fp.fileno(), len(data), frozenset()) is None


def test_a_known_element_encoded_as_un_is_left_to_the_full_read(tmp_path):
    """It must be re-encoded with its own VR: only the full read sees that."""
    data = bytearray(data_file("CT_small.dcm").read_bytes())
    at = data.index(b"\x08\x00\x60\x00CS")  # (0008,0060) Modality
    length = int.from_bytes(data[at + 6:at + 8], "little")
    data[at + 4:at + 8] = b"UN\0\0"
    data[at + 8:at + 8] = length.to_bytes(4, "little")
    path = tmp_path / "un.dcm"
    path.write_bytes(bytes(data))
    assert not walked(path)
    assert not dicomfile.probe(path).meta_consistent


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(VARIED), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=3),
       tail=st.binary(max_size=12), keywords=st.sampled_from([KEYWORDS, frozenset()]))
def test_cut_and_damaged_files_probe_alike_either_way(tmp_path, name, cut, flips, tail,
                                                      keywords):
    data = bytearray(data_file(name).read_bytes())
    for where, byte in flips:  # mostly in the header, where the walk looks
        data[int(where * min(len(data) - 1, 4000))] = byte
    data = data[:max(1, int(cut * len(data)) if cut < 0.97 else len(data))] + tail
    path = tmp_path / "x.dcm"
    path.write_bytes(bytes(data))
    if walked(path):
        assert answer(path, keywords) == full_read(path, keywords)
    else:
        answer(path, keywords)  # the full read's answer, a Probe or a reason; never a crash


@pytest.mark.parametrize("keep", [133, 141, 150, 200])
def test_a_file_cut_inside_its_meta_is_refused_with_a_reason(tmp_path, keep):
    """A value cut short inside the file meta (the group length's 4 bytes, say) is a
    reason in words, never pydicom's exception."""
    path = tmp_path / "cut.dcm"
    path.write_bytes(data_file("CT_small.dcm").read_bytes()[:keep])
    with pytest.raises(NotDicomError, match="not readable as DICOM|truncated"):
        dicomfile.probe(path)


def _explicit(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    if vr in (b"OB", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _implicit(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def _part10(dataset: bytes, syntax: bytes = b"1.2.840.10008.1.2.1", full_meta: bool = True,
            sop_class: bytes = b"1.2.3") -> bytes:
    body = (_explicit(2, 2, b"UI", sop_class) + _explicit(2, 3, b"UI", b"1.2.3.4")
            + _explicit(2, 0x10, b"UI", syntax))
    if full_meta:  # else the first meta element is a UID, which the reader decodes
        body = _explicit(2, 1, b"OB", b"\0\1") + body
        body = _explicit(2, 0, b"UL", struct.pack("<I", len(body))) + body
    return b"\0" * 128 + b"DICM" + body + dataset


UIDS = _explicit(8, 0x16, b"UI", b"1.2.3") + _explicit(8, 0x18, b"UI", b"1.2.3.4")
ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 12)
# a value the reader decodes while it reads, whose warning would name the value's text
ODD_CHARSET = _explicit(8, 5, b"CS", b"EOF")
IMPLICIT_UIDS = _implicit(8, 0x16, b"1.2.3\0") + _implicit(8, 0x18, b"1.2.3.4\0")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case, data, keywords", [
    ("an unknown character set", _part10(ODD_CHARSET + UIDS), ()),
    ("an unknown character set inside an item",
     _part10(UIDS + _explicit(8, 0x1110, b"SQ", ITEM + ODD_CHARSET)), ()),
    ("meta without group length and version, an odd first value",
     _part10(UIDS, full_meta=False, sop_class=b"1.2.3.eof"), ()),
    ("a routing value whose VR depends on Pixel Representation (implicit VR)",
     _part10(IMPLICIT_UIDS + _implicit(0x28, 0x103, b"\1\0") + _implicit(0x28, 0x106, b"\xfb\xff"),
             syntax=b"1.2.840.10008.1.2"), ("SmallestImagePixelValue",)),
    ("a sequence as a routing value",
     _part10(UIDS + _explicit(8, 0x1110, b"SQ", b"")), ("ReferencedStudySequence",)),
])
def test_what_the_reader_decodes_on_its_way_is_left_to_it(tmp_path, case, data, keywords):
    path = tmp_path / "f.dcm"
    path.write_bytes(data)
    with open(path, "rb") as fp:
        assert headwalk.walk(fp.fileno(), len(data), dicomfile._tags(frozenset(keywords))) \
            is None, case
    real, headwalk.walk = headwalk.walk, lambda *a: None
    try:
        try:
            expected: object = dicomfile.probe(path, frozenset(keywords))
        except NotDicomError as exc:
            expected = str(exc)
    finally:
        headwalk.walk = real
    try:
        assert dicomfile.probe(path, frozenset(keywords)) == expected, case
    except NotDicomError as exc:
        assert str(exc) == expected, case


def test_a_known_character_set_is_walked(tmp_path):
    path = tmp_path / "f.dcm"
    data = _part10(_explicit(8, 5, b"CS", b"ISO_IR 100") + UIDS
                   + _explicit(0x10, 0x10, b"PN", "Müller^Jörg".encode("latin-1")))
    path.write_bytes(data)
    assert walked(path)
    assert dicomfile.probe(path).phi["PatientName"] == "Müller^Jörg"


DEFLATABLE = ["CT_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm", "test-SR.dcm",
              "waveform_ecg.dcm", "image_dfl.dcm"]


def deflated(tmp_path: Path, name: str) -> Path:
    """pydicom's file written again in the deflated syntax (explicit VR inside)."""
    from pydicom import dcmread

    ds = dcmread(data_file(name))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    path = tmp_path / f"deflated-{name}"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", DEFLATABLE)
def test_a_deflated_file_is_walked_as_it_inflates_and_probes_alike(tmp_path, name):
    path = deflated(tmp_path, name)
    for keywords in (KEYWORDS, frozenset()):
        assert answer(path, keywords) == full_read(path, keywords)
    assert walked(path)


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(DEFLATABLE), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=2),
       tail=st.binary(max_size=12), keywords=st.sampled_from([KEYWORDS, frozenset()]))
def test_cut_and_damaged_deflated_files_probe_alike_either_way(tmp_path, name, cut, flips,
                                                               tail, keywords):
    data = bytearray(deflated(tmp_path, name).read_bytes())
    for where, byte in flips:
        data[int(where * (len(data) - 1))] = byte
    data = data[:max(1, int(cut * len(data)) if cut < 0.9 else len(data))] + tail
    path = tmp_path / "x.dcm"
    path.write_bytes(bytes(data))
    if walked(path):
        assert answer(path, keywords) == full_read(path, keywords)
    else:
        answer(path, keywords)  # the full read's answer, a Probe or a reason; never a crash


def test_a_vr_the_standard_does_not_define_on_a_uid_is_a_reason(tmp_path):
    """The walk leaves it to the reader, which reads it raw and cannot decode it: a
    reason for the file, never a traceback from send or a crash of intake."""
    data = bytearray(data_file("CT_small.dcm").read_bytes())
    at = data.index(b"\x08\x00\x16\x00UI", 132)
    data[at + 4:at + 6] = b"QI"
    path = tmp_path / "qi.dcm"
    path.write_bytes(bytes(data))
    assert not walked(path)
    assert answer(path) == ("refused", "not readable as DICOM: Unknown Value Representation "
                                       "'QI' in tag (0008,0016)")
