"""A file cut short inside a sequence, an item or encapsulated pixel data of undefined
length reads as "truncated" (left for its writer), never as "not readable" (moved out at
once, so a writer that resumes leaves a second, headless piece); a file malformed before
its end still reads as "not readable"."""

from __future__ import annotations

import os
import struct
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from forwarder import cutshort, dicomfile
from forwarder.errors import NotDicomError
from tests.corpus import data_file, with_open_sequences

SYNTAXES = {"explicit-little": "1.2.840.10008.1.2.1", "implicit-little": "1.2.840.10008.1.2",
            "explicit-big": "1.2.840.10008.1.2.2"}
# what intake does with a file it cannot take at once: the words of a file left in place
LEFT = ("truncated: ", "empty file")
REFERENCED_IMAGES, REFERENCED_STUDY = 0x00081140, 0x00081110


def answer(path: Path) -> str:
    """The probe's answer as intake gets it (from an open descriptor): "whole", or why not."""
    with open(os.open(path, os.O_RDONLY), "rb") as fp:
        try:
            dicomfile.probe(fp)
        except NotDicomError as exc:
            return str(exc)
    return "whole"


def starts(data: bytes) -> dict[int, int]:
    """Where each top-level element of a whole file starts (its file meta's too), by
    tag, as pydicom reads it; the end of the file under -1. A cut at one of these leaves
    a data set with nothing open."""
    ds = dcmread(BytesIO(data), force=True)
    found = {-1: len(data)}
    for dataset, implicit in ((getattr(ds, "file_meta", None), False),
                              (ds, ds.original_encoding[0])):
        for tag, elem in (dataset._dict.items() if dataset is not None else ()):
            tell = getattr(elem, "value_tell", None) or elem.file_tell
            long = not implicit and elem.VR in EXPLICIT_VR_LENGTH_32
            found[tag] = tell - (12 if long else 8)
    return found


def probe_cut(path: Path, data: bytes, n: int) -> str:
    path.write_bytes(data[:n])
    return answer(path)


@pytest.mark.parametrize("syntax, meta", [(s, True) for s in SYNTAXES.values()]
                         + [(SYNTAXES["explicit-little"], False)],
                         ids=[*SYNTAXES, "bare-data-set"])
def test_every_cut_inside_sequences_and_items_of_undefined_length_is_truncated(
        tmp_path: Path, syntax: str, meta: bool) -> None:
    """Referenced Study Sequence (a defined length around an item of undefined length)
    and Referenced Image Sequence (undefined length, items of both kinds, one holding a
    nested sequence of undefined length), cut at every byte up to inside the header of
    the element after them: whole only where a top-level element ends (the reader stops
    quietly less than a header before the end), truncated everywhere else."""
    data = with_open_sequences(syntax, meta)
    at = starts(data)
    ends = set(at.values())
    following = min(v for v in at.values() if v > at[REFERENCED_IMAGES])
    path = tmp_path / "cut.dcm"
    for n in range(at[REFERENCED_STUDY] + 1, following + 12):
        reason = probe_cut(path, data, n)
        if n in ends:
            assert reason == "whole", (n, reason)
        else:
            assert reason.startswith("truncated: "), (n, reason)


def test_every_cut_of_jpeg2000_is_truncated_and_only_the_whole_file_is_taken(
        tmp_path: Path) -> None:
    """Encapsulated pixel data (fragments up to a sequence delimiter) is the last element:
    no cut past its start is taken; no cut anywhere is refused as not readable."""
    data = data_file("JPEG2000.dcm").read_bytes()
    at = starts(data)
    ends = set(at.values())
    path = tmp_path / "cut.dcm"
    for n in range(132, len(data) + 1):
        reason = probe_cut(path, data, n)
        if n == len(data):
            assert reason == "whole"
        elif n in ends and n <= at[0x7FE00010]:  # a data set that may end there, as read
            assert reason in ("whole", "no SOP Class UID or SOP Instance UID in the dataset") \
                or reason.startswith(LEFT), (n, reason)
        else:
            assert reason.startswith("truncated: "), (n, reason)


def test_the_reason_says_what_is_left_open_and_where(tmp_path: Path) -> None:
    path = tmp_path / "cut.dcm"
    j2k = data_file("JPEG2000.dcm").read_bytes()
    delimiter = j2k.rindex(b"\xfe\xff\xdd\xe0")  # the pixel data's sequence delimiter
    pixels = starts(j2k)[0x7FE00010]
    assert probe_cut(path, j2k, delimiter) == (
        f"truncated: the file ends at byte {delimiter} inside the encapsulated pixel data "
        f"(7FE0,0010) at byte {pixels}, not closed (no sequence delimiter yet)")

    ct = with_open_sequences()
    images = starts(ct)[REFERENCED_IMAGES]
    first_item = images + 12
    nested = ct.index(b"\x40\x00\x70\xa1SQ", images)
    nested_item = nested + 12
    first_item_end = ct.index(b"\xfe\xff\x0d\xe0\0\0\0\0", ct.index(b"\xfe\xff\xdd\xe0", nested)) + 8
    assert probe_cut(path, ct, first_item_end) == (
        f"truncated: the file ends at byte {first_item_end} inside the undefined-length "
        f"sequence (0008,1140) at byte {images}, not closed (no sequence delimiter yet)")
    assert probe_cut(path, ct, nested_item + 8) == (
        f"truncated: the file ends at byte {nested_item + 8} inside an undefined-length item "
        f"of (0040,A170) at byte {nested_item}, not closed (no item delimiter yet), within "
        f"the undefined-length sequence (0008,1140) at byte {images}")
    assert probe_cut(path, ct, first_item + 20) == (
        f"truncated: the file ends at byte {first_item + 20} inside the value of (0008,1150) "
        f"at byte {first_item + 16}, which needs 26 bytes, within the undefined-length "
        f"sequence (0008,1140) at byte {images}")


def _damaged(syntax: str, damage: str) -> bytes:
    """The whole file, its first item's Referenced SOP Class UID (26 bytes) damaged."""
    data = bytearray(with_open_sequences(syntax))
    little = syntax != SYNTAXES["explicit-big"]
    implicit = syntax == SYNTAXES["implicit-little"]
    tag = struct.pack("<HH" if little else ">HH", 0x0008, 0x1150)
    at = data.index(tag, starts(bytes(data))[REFERENCED_IMAGES]) + 4
    field = "<I" if implicit else ("<H" if little else ">H")
    at += 0 if implicit else 2  # the length after the VR
    if damage == "bytes that are no element":
        data[at - 6:at + 10] = b"\x99" * 16
        return bytes(data)
    length = {"a length that lands inside a value": 20,
              "a length past the end of the file": 0x7FF0}[damage]
    struct.pack_into(field, data, at, length)
    return bytes(data)


@pytest.mark.parametrize("damage", ["a length that lands inside a value",
                                    "bytes that are no element",
                                    "a length past the end of the file"])
@pytest.mark.parametrize("syntax", SYNTAXES.values(), ids=SYNTAXES)
def test_a_file_malformed_before_its_end_is_still_not_readable(tmp_path: Path, syntax: str,
                                                              damage: str) -> None:
    """Moved out at once, as before: the walk names a cut only when everything before
    the end is well formed (a UID 32 KiB long is a length gone wrong, not a cut)."""
    data = _damaged(syntax, damage)
    path = tmp_path / "bad.dcm"
    path.write_bytes(data)
    assert answer(path).startswith("not readable as DICOM: "), answer(path)
    assert cutshort.cut_in(lambda pos, n: data[pos:pos + n], len(data), True) is None


@pytest.mark.filterwarnings("ignore")
def test_no_cut_of_a_shipped_file_is_refused_as_not_readable(tmp_path: Path) -> None:
    """Every file pydicom ships that the probe takes whole (explicit and implicit VR,
    big endian, nested and private sequences, every compressed syntax), cut at a dozen
    points past its file meta: truncated or taken, never not readable."""
    root = data_file("CT_small.dcm").parent
    path = tmp_path / "cut.dcm"
    taken = 0
    for source in sorted(p for p in root.rglob("*") if p.is_file()):
        if source.stat().st_size > 4_000_000 or answer(source) != "whole":
            continue
        taken += 1
        data = source.read_bytes()
        start = 132 if data[128:132] == b"DICM" else 8
        for n in range(start + 7, len(data), max(1, (len(data) - start) // 12)):
            reason = probe_cut(path, data, n)
            assert not reason.startswith(("not readable", "not DICOM")), (source.name, n, reason)
    assert taken >= 100
