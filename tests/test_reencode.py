"""Exact conversion from explicit to implicit VR little endian: every value's bytes kept.

pydicom reads each converted data set back; every value must be the source's bytes (an
odd one padded), every sequence must hold the same items, and what the module does not
convert must give None rather than a guess.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from forwarder.dicomfile import probe
from forwarder.errors import NotDicomError
from forwarder.reencode import rewrite, to_implicit
from forwarder.scu.dimse import dataset_offset

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def explicit_files() -> list[Path]:
    """pydicom's own test files in explicit VR little endian (a truncated one included)."""
    found = []
    for path in sorted(TEST_FILES.rglob("*.dcm")):
        try:
            if dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == EXPLICIT_LE:
                found.append(path)
        except Exception:  # noqa: BLE001, S112 - files pydicom itself cannot read: not ours
            continue
    return found


def data_set(path: Path) -> bytes:
    with open(path, "rb") as fp:
        fp.seek(dataset_offset(fp.fileno()))
        return fp.read()


def values(data: bytes, implicit: bool) -> list[tuple[Any, ...]]:
    """Every element as (path, raw value bytes), sequences as (path, item count), group
    lengths left out."""
    out: list[tuple[Any, ...]] = []

    def walk(ds: Dataset, where: tuple[Any, ...]) -> None:
        for tag in list(ds._dict):
            if tag.element == 0:
                continue
            raw = ds._dict[tag]
            elem = ds[tag]
            if elem.VR == "SQ":
                out.append((*where, tag, len(elem.value)))
                for i, item in enumerate(elem.value):
                    walk(item, (*where, tag, i))
            else:
                out.append((*where, tag, getattr(raw, "value", None) or b""))

    walk(read_dataset(io.BytesIO(data), implicit, True), ())
    return out


FILES = explicit_files()


def test_pydicom_has_enough_explicit_files_to_compare() -> None:
    assert len(FILES) >= 12, [f.name for f in FILES]


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_every_value_of_a_real_file_is_copied(path: Path) -> None:
    data = data_set(path)
    converted = to_implicit(data)
    if path.name == "MR_truncated.dcm":
        assert converted is None  # its last value runs past the end: pydicom says why
        return
    assert converted is not None
    assert values(converted, True) == values(data, False)
    again = rewrite(data, explicit=True)  # as for a data set of odd length: the same values
    assert again is not None and values(again, False) == values(data, False)


def explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF,
                       len(value) if length is None else length) + value


ITEM_END = implicit(0xFFFEE00D, b"")
SEQ_END = implicit(0xFFFEE0DD, b"")


def test_padding_and_text_keep_their_bytes_and_odd_values_are_padded() -> None:
    """What pydicom's writer changed: DS spaces, NUL padding, trailing spaces; a Latin-1
    byte under UTF-8. An odd value gets a space (text) or a NUL (UI, binary)."""
    data = b"".join([
        explicit(0x00080005, b"CS", b"ISO_IR 192"),
        explicit(0x00080060, b"CS", b"CT\0\0"),
        explicit(0x00100010, b"PN", b"M\xfcller^Hans"),
        explicit(0x00181050, b"DS", b" 3.0 \\ 4.5"),
        explicit(0x00200013, b"IS", b" 17"),
        explicit(0x00200052, b"UI", b"1.2.3"),
        explicit(0x00280010, b"US", b"\x00\x02"),
        explicit(0x00291010, b"UN", b"\x01\x02\x03"),
    ])
    assert to_implicit(data) == b"".join([
        implicit(0x00080005, b"ISO_IR 192"),
        implicit(0x00080060, b"CT\0\0"),
        implicit(0x00100010, b"M\xfcller^Hans "),
        implicit(0x00181050, b" 3.0 \\ 4.5"),
        implicit(0x00200013, b" 17 "),
        implicit(0x00200052, b"1.2.3\0"),
        implicit(0x00280010, b"\x00\x02"),
        implicit(0x00291010, b"\x01\x02\x03\0"),
    ])


def test_sequences_keep_their_kind_of_length_and_group_lengths_go() -> None:
    """A defined length is recounted (implicit headers are shorter), an undefined one stays
    undefined with its delimiters; a group length would count the old headers."""
    name = explicit(0x00100010, b"PN", b"A^B ")
    inner = explicit(0x00081150, b"UI", b"1.2\0")
    defined_item = implicit(0xFFFEE000, inner)
    undefined_item = implicit(0xFFFEE000, inner + ITEM_END, 0xFFFFFFFF)
    data = b"".join([
        explicit(0x00080000, b"UL", b"\x10\x00\x00\x00"),
        explicit(0x00081115, b"SQ", defined_item + undefined_item),
        explicit(0x00081140, b"SQ", defined_item + SEQ_END)[:8] + b"\xff\xff\xff\xff"
        + defined_item + SEQ_END,
        name,
    ])
    implicit_inner = implicit(0x00081150, b"1.2\0")
    assert to_implicit(data) == b"".join([
        implicit(0x00081115, implicit(0xFFFEE000, implicit_inner)
                 + implicit(0xFFFEE000, implicit_inner + ITEM_END, 0xFFFFFFFF)),
        implicit(0x00081140, implicit(0xFFFEE000, implicit_inner) + SEQ_END, 0xFFFFFFFF),
        implicit(0x00100010, b"A^B "),
    ])


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="no data set"),
    pytest.param(implicit(0x00080060, b"CT"), id="implicit VR under an explicit label"),
    pytest.param(explicit(0x00080060, b"CS", b"CT")[:-1], id="a value cut short"),
    pytest.param(explicit(0x00080060, b"CS", b"CT") + b"\x08\x00", id="a stray half header"),
    pytest.param(explicit(0x7FE00010, b"OB", b"")[:8] + b"\xff\xff\xff\xff"
                 + implicit(0xFFFEE000, b"") + SEQ_END, id="encapsulated pixel data"),
    pytest.param(explicit(0x00291010, b"UN", b"")[:8] + b"\xff\xff\xff\xff" + SEQ_END,
                 id="UN of undefined length"),
    pytest.param(explicit(0x00081115, b"SQ", implicit(0x00100010, b"A^B ")),
                 id="an element where an item belongs"),
    pytest.param(explicit(0x00081115, b"SQ", implicit(0xFFFEE000, b"", 0xFFFFFFFF)),
                 id="an item without its delimiter"),
])
def test_what_it_does_not_convert_is_left_to_pydicom(data: bytes) -> None:
    assert to_implicit(data) is None


def test_nesting_deeper_than_64_is_left_to_pydicom() -> None:
    data = b""
    for _ in range(70):
        data = explicit(0x00081115, b"SQ", implicit(0xFFFEE000, data))
    assert to_implicit(data) is None


def test_a_deflated_file_is_inflated_as_it_is_or_then_converted(tmp_path: Path) -> None:
    """The deflated syntax is explicit VR little endian compressed: inflated, its data set
    goes as it is to a peer taking explicit VR, or converted as above to implicit VR."""
    import zlib

    from forwarder.reencode import exactly

    path = Path(pydicom.data.get_testdata_file("image_dfl.dcm"))
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data_set(path))
    deflated = "1.2.840.10008.1.2.1.99"
    again = exactly(path, deflated, EXPLICIT_LE, True)
    assert again is not None and again.tobytes() == inflated
    assert again.fd is not None  # its pixel data: inflated again from the file as sent
    again.close()
    assert exactly(path, deflated, EXPLICIT_LE, False) is None  # a UN to re-type: pydicom
    converted = exactly(path, deflated, "1.2.840.10008.1.2", False)
    assert converted is not None and converted.tobytes() == to_implicit(inflated)
    converted.close()
    assert values(to_implicit(inflated) or b"", True) == values(inflated, False)
    assert exactly(path, deflated, "1.2.840.10008.1.2.2", True) is None  # big endian
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:-100])
    assert exactly(cut, deflated, EXPLICIT_LE, True) is None  # the reader says what is missing


def test_written_again_in_explicit_vr_odd_values_are_padded_and_order_is_checked() -> None:
    """A data set of odd length (or a deflated one, inflated) re-encoded in explicit VR:
    headers as they were, odd values padded, lengths recounted; elements out of order or
    repeated are left to pydicom, which sorts them."""
    name = explicit(0x00100010, b"PN", b"A^B")
    number = explicit(0x00200013, b"IS", b"1")
    assert rewrite(name + number, explicit=True) == \
        explicit(0x00100010, b"PN", b"A^B ") + explicit(0x00200013, b"IS", b"1 ")
    item = implicit(0xFFFEE000, explicit(0x00081150, b"UI", b"1.2.3"))
    assert rewrite(explicit(0x00081115, b"SQ", item), explicit=True) == \
        explicit(0x00081115, b"SQ", implicit(0xFFFEE000,
                                             explicit(0x00081150, b"UI", b"1.2.3\0")))
    assert rewrite(number + name, explicit=True) is None
    assert rewrite(name + name, explicit=True) is None


def deflated_file(path: Path, data_set_bytes: bytes) -> Path:
    """A Part 10 file in the deflated syntax around ``data_set_bytes``."""
    import zlib

    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(data_set_bytes) + deflate.flush()
    path.write_bytes(b"\0" * 128 + b"DICM" + fp.getvalue() + body + b"\0" * (len(body) % 2))
    return path


def test_a_deflated_data_set_in_implicit_vr_is_left_to_pydicom(tmp_path: Path) -> None:
    """Deflated means explicit VR; a writer that deflated an implicit data set made a file
    that sent as it is would be read as garbage in an explicit VR context."""
    from forwarder.reencode import exactly

    body = implicit(0x00080016, b"1.2.840.10008.5.1.4.1.1.7\0") + implicit(0x00080018,
                                                                           b"1.2.3.4\0")
    path = deflated_file(tmp_path / "implicit.dcm", body)
    deflated = "1.2.840.10008.1.2.1.99"
    assert exactly(path, deflated, EXPLICIT_LE, True) is None
    assert exactly(path, deflated, "1.2.840.10008.1.2", True) is None
    assert not probe(path).meta_consistent  # never streamed, even to a peer taking deflated


def test_a_deflated_data_set_cut_inside_is_refused_by_the_probe(tmp_path: Path) -> None:
    """The stream is whole, the data set inside it is not: the last value runs past it.
    Bytes after the stream are passed over, as pydicom and DCMTK pass them over (a gzip
    trailer, as in pydicom's own image_dfl.dcm)."""
    body = explicit(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0") + \
        explicit(0x00080018, b"UI", b"1.2.3.4\0") + \
        explicit(0x7FE00010, b"OB", b"\0" * 100)[:12] + b"\0" * 10
    path = deflated_file(tmp_path / "cut.dcm", body)
    with pytest.raises(NotDicomError, match=r"^truncated: element \(7FE0,0010\) needs 100 "
                       r"bytes at offset \d+, the inflated data set has \d+$"):
        probe(path)
    whole = deflated_file(tmp_path / "whole.dcm", body[:-22])
    assert probe(whole).meta_consistent
    trailer = tmp_path / "trailer.dcm"
    trailer.write_bytes(whole.read_bytes() + bytes.fromhex("4ed058451a020400"))
    assert probe(trailer).meta_consistent


@pytest.mark.parametrize("target", [EXPLICIT_LE, "1.2.840.10008.1.2"])
def test_a_deflated_data_set_s_large_values_are_inflated_again_as_they_are_sent(
        tmp_path: Path, target: str) -> None:
    """A deflated data set is never held inflated: each value over 4 KiB is a range of the
    inflated bytes, inflated again from the file as it is sent, and lengths around them
    are counted again as for a plain file. The bytes are those of the data set inflated
    whole and rewritten, however often they are read; a file changed meanwhile is an
    error, never other bytes."""
    from forwarder.reencode import INLINE, exactly

    odd, even = os.urandom(INLINE + 905), b"\7" * 300_000
    body = explicit(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0") + \
        explicit(0x00080018, b"UI", b"1.2.3.4\0") + \
        explicit(0x00081115, b"SQ", implicit(0xFFFEE000, explicit(0x00420011, b"OB", odd))) + \
        explicit(0x00100010, b"PN", b"A^B ") + explicit(0x7FE00010, b"OW", even)
    path = deflated_file(tmp_path / "large.dcm", body)
    spliced = exactly(path, "1.2.840.10008.1.2.1.99", target, True)
    assert spliced is not None and spliced.fd is not None
    try:
        ranges = [p for p in spliced.pieces if isinstance(p, tuple)]
        assert [body[at:at + n] for at, n in ranges] == [odd, even]
        expected = rewrite(body, explicit=target == EXPLICIT_LE)
        assert spliced.tobytes() == expected
        assert spliced.tobytes() == expected  # from the start again: inflated again
        path.write_bytes(path.read_bytes()[:-1000])
        with pytest.raises(OSError, match="changed while it was sent"):
            spliced.tobytes()
    finally:
        spliced.close()


@pytest.mark.parametrize("path", [f for f in FILES if f.name != "MR_truncated.dcm"],
                         ids=lambda f: f.name)
def test_from_the_file_large_values_stay_in_it_as_ranges(path: Path) -> None:
    """Converted from its file, a data set is the same as converted in memory, every
    value over 4 KiB is a range of the file (read as it is sent), and the rest is held."""
    from forwarder.reencode import exactly

    data = data_set(path)
    spliced = exactly(path, EXPLICIT_LE, "1.2.840.10008.1.2", True)
    assert spliced is not None
    with spliced:
        assert spliced.tobytes() == to_implicit(data)
        ranges = sorted(length for p in spliced.pieces if isinstance(p, tuple)
                        for length in [p[1]])
        large = sorted(len(v[-1]) for v in values(data, False)
                       if isinstance(v[-1], bytes) and len(v[-1]) > 4096)
        assert ranges == large
        assert (spliced.fd is not None) == bool(ranges)
    assert spliced.fd is None


def test_ct_small_s_pixel_data_is_left_in_the_file() -> None:
    from forwarder.reencode import exactly

    path = TEST_FILES / "CT_small.dcm"
    with exactly(path, EXPLICIT_LE, "1.2.840.10008.1.2", True) as spliced:
        [(offset, length)] = [p for p in spliced.pieces if isinstance(p, tuple)]
        assert length == 128 * 128 * 2
        assert path.read_bytes()[offset - 12:offset - 4] == b"\xe0\x7f\x10\x00OW\x00\x00"
        held = sum(len(p) for p in spliced.pieces if not isinstance(p, tuple))
        assert held < 8192  # the headers and small values: about 6 KB


@pytest.mark.parametrize("kind", ["rewrite", "exactly"])
@pytest.mark.parametrize("explicit_vr", [False, True], ids=["to implicit", "to explicit"])
def test_lengths_around_a_value_left_in_the_file_are_counted_again(
        tmp_path: Path, kind: str, explicit_vr: bool) -> None:
    """A defined-length sequence and item holding a value over 4 KiB, elements after it:
    their lengths are filled in after the value, in the bytes written before it."""
    from forwarder.reencode import exactly

    large = explicit(0x00420011, b"OB", bytes(range(256)) * 20 + b"\x01")  # odd: padded
    item = explicit(0x00081150, b"UI", b"1.2.3\0") + large + \
        explicit(0x00420012, b"LO", b"text/plain")
    data = explicit(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.104.1\0") + \
        explicit(0x00081115, b"SQ", implicit(0xFFFEE000, item) + implicit(0xFFFEE000, item)) \
        + explicit(0x00200013, b"IS", b"12")
    if kind == "rewrite":
        out = rewrite(data, explicit=explicit_vr)
    else:
        path = tmp_path / "bare.dcm"
        path.write_bytes(data)  # a bare data set: no file meta
        spliced = exactly(path, EXPLICIT_LE, EXPLICIT_LE if explicit_vr else
                          "1.2.840.10008.1.2", True)
        assert spliced is not None
        with spliced:
            assert sum(1 for p in spliced.pieces if isinstance(p, tuple)) == 2
            out = spliced.tobytes()
    assert out is not None
    padded = [(*v[:-1], v[-1] + b"\0") if v[-2] == 0x00420011 else v
              for v in values(data, False)]
    assert values(out, not explicit_vr) == padded
    [sequence] = [v for v in values(out, not explicit_vr) if v[-2] == 0x00081115]
    assert sequence[-1] == 2
    ds = read_dataset(io.BytesIO(out), not explicit_vr, True)
    assert [len(item.EncapsulatedDocument) for item in ds.ReferencedSeriesSequence] == \
        [5122, 5122]


def test_a_file_renamed_over_the_path_lends_no_bytes_to_the_headers_read(
        tmp_path: Path) -> None:
    """The ranges are read through the descriptor the headers were read through: a file
    put in the converted one's place before it is sent (here the same data set behind a
    longer file meta, so every offset differs) changes nothing that is sent."""
    from forwarder.reencode import exactly

    source = TEST_FILES / "CT_small.dcm"
    path = tmp_path / "ct.dcm"
    path.write_bytes(source.read_bytes())
    expected = to_implicit(data_set(source))
    spliced = exactly(path, EXPLICIT_LE, "1.2.840.10008.1.2", True)
    assert spliced is not None
    ds = dcmread(source)
    ds.file_meta.ImplementationVersionName = "A_LONGER_NAME"
    ds.save_as(tmp_path / "other.dcm", enforce_file_format=True)
    assert (tmp_path / "other.dcm").stat().st_size != path.stat().st_size
    os.replace(tmp_path / "other.dcm", path)
    with spliced:
        assert spliced.tobytes() == expected


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, 40), max_size=12), sizes=st.lists(st.integers(0, 9),
                                                                       min_size=1, max_size=8))
def test_a_spliced_data_set_reads_the_same_however_its_windows_fall(
        tmp_path_factory: pytest.TempPathFactory, cuts: list[int], sizes: list[int]) -> None:
    """New bytes, buffer slices and file ranges, read into slots of any sizes, windows
    after windows, give the data set in order."""
    from forwarder.scu.spliced import Spliced

    folder = tmp_path_factory.mktemp("spliced")
    source = bytes(range(256)) * 4
    file = folder / "source"
    file.write_bytes(source)
    pieces: list[Any] = []
    expected = b""
    for i, size in enumerate(sizes):
        at = (i * 37) % 200
        kind = i % 3
        if kind == 0:
            pieces.append(bytearray(b"H" * size))
            expected += b"H" * size
        elif kind == 1:
            pieces.append(memoryview(source)[at:at + size])
            expected += source[at:at + size]
        else:
            pieces.append((at, size))
            expected += source[at:at + size]
    out = bytearray(len(expected))
    view, pos = memoryview(out), 0
    with Spliced(pieces, os.open(file, os.O_RDONLY), str(file)) as spliced:
        assert len(spliced) == len(expected) and spliced.tobytes() == expected
        for cut in [*cuts, len(expected)]:  # windows of a few slots each
            slots = []
            start = pos
            for _ in range(2):
                n = min(cut // 2 + 1, len(expected) - pos)
                slots.append(view[pos:pos + n])
                pos += n
            spliced.fill(slots, start)
            if pos >= len(expected):
                break
    assert pos == len(expected) and bytes(out) == expected


def test_a_spliced_data_set_is_read_in_order_and_again_from_the_start(tmp_path: Path) -> None:
    """A read that fails (the file cut short) leaves nothing half-done: the next read
    starts again at byte 0; a read elsewhere than where the last one ended, or past the
    end, is refused rather than answered with the wrong bytes."""
    from forwarder.scu.spliced import Spliced

    file = tmp_path / "values"
    file.write_bytes(b"0123")
    out = bytearray(12)
    with Spliced([b"AB", (0, 10)], os.open(file, os.O_RDONLY), str(file)) as spliced:
        with pytest.raises(OSError, match="ended before byte 4"):
            spliced.fill([memoryview(out)], 0)
        with pytest.raises(ValueError, match="read in order"):
            spliced.fill([memoryview(out)[2:]], 2)
        file.write_bytes(b"0123456789")
        spliced.fill([memoryview(out)[:3]], 0)
        spliced.fill([memoryview(out)[3:]], 3)
        assert bytes(out) == b"AB0123456789"
        with pytest.raises(ValueError, match="1 bytes asked for at byte 12"):
            spliced.fill([memoryview(bytearray(1))], 12)
    with pytest.raises(OSError, match="is not open"):
        spliced.fill([memoryview(out)], 0)


def test_a_deflated_file_with_no_data_set_is_named_so(tmp_path: Path) -> None:
    """An empty stream after the file meta: nothing to send, and the reason says what is
    missing, not that the file ends inside its stream."""
    path = deflated_file(tmp_path / "empty.dcm", b"")
    with pytest.raises(NotDicomError, match="^truncated: file meta information but no "
                                            "dataset after it$"):
        probe(path)


def _many_items(n: int, un: bool = False) -> bytes:
    """A data set with a sequence of ``n`` items of undefined length (and, ``un``, an
    element encoded UN, so the probe's walk leaves the file to pydicom's reader)."""
    items = implicit(0xFFFEE000, explicit(0x00081150, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0") +
                     ITEM_END, 0xFFFFFFFF) * n
    return explicit(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0") + \
        explicit(0x00080018, b"UI", b"1.2.3.4\0") + \
        (explicit(0x00090010, b"UN", b"PRIVATE ") if un else b"") + \
        implicit(0x0008114A, b"", 0xFFFFFFFF)[:4] + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF) + \
        items + implicit(0xFFFEE0DD, b"")


@pytest.mark.parametrize("un", [False, True])
def test_a_deflated_file_cut_anywhere_is_truncated_never_unreadable(tmp_path: Path,
                                                                     un: bool) -> None:
    """A cut stream is a file still being written: it must wait for its writer. pydicom's
    reader puts its own words ("No tag to read") on what it catches inside an item; the
    probe names the cut."""
    whole = deflated_file(tmp_path / "whole.dcm", _many_items(3000, un)).read_bytes()
    assert probe(tmp_path / "whole.dcm").sop_instance_uid == "1.2.3.4"
    start = len(whole) - len(zlib_body(whole))
    for at in range(start + 1, len(whole) - 8, max(1, (len(whole) - start) // 40)):
        cut = tmp_path / "cut.dcm"
        cut.write_bytes(whole[:at])
        with pytest.raises(NotDicomError, match="^truncated: the deflated data set stops"):
            probe(cut)


def zlib_body(file_bytes: bytes) -> bytes:
    """The deflated stream of a file written by :func:`deflated_file` (after its meta)."""
    return file_bytes[dataset_offset_of(file_bytes):]


def dataset_offset_of(file_bytes: bytes) -> int:
    group_length = struct.unpack_from("<I", file_bytes, 140)[0]
    return 144 + group_length


def test_a_reader_that_steps_back_does_not_inflate_the_stream_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom's reader looks 6 bytes ahead at every item and steps back: inflating from
    the top each time its buffer edge fell in between made the probe quadratic."""
    from forwarder.scu import inflating

    starts = []
    real = inflating.Inflating._start
    monkeypatch.setattr(inflating.Inflating, "_start",
                        lambda self: (starts.append(1), real(self))[1])
    path = deflated_file(tmp_path / "items.dcm", _many_items(60_000, un=True))  # 4 MB
    assert probe(path).sop_instance_uid == "1.2.3.4"
    assert len(starts) <= 3, f"the stream was inflated {len(starts)} times"


def test_a_deflate_bomb_is_refused_not_inflated(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from forwarder.scu import inflating

    monkeypatch.setattr(inflating, "MAX_INFLATED", 1 << 20)
    body = explicit(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0") + \
        explicit(0x00080018, b"UI", b"1.2.3.4\0") + explicit(0x7FE00010, b"OB", bytes(2 << 20))
    path = deflated_file(tmp_path / "bomb.dcm", body)
    starts = []
    real = inflating.Inflating._start
    monkeypatch.setattr(inflating.Inflating, "_start",
                        lambda self: (starts.append(1), real(self))[1])
    with pytest.raises(NotDicomError, match=r"^not readable as DICOM: the deflated data set "
                                            r"inflates to more than 1 MiB \(a deflate bomb"):
        probe(path)
    assert len(starts) == 1, "refused by the walk, then inflated again by the full reader"
