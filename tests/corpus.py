"""Real DICOM files for tests: pydicom's bundled test files, and fast unique copies of them."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file


def data_file(name: str) -> Path:
    """A file shipped inside pydicom (never downloaded)."""
    return Path(get_testdata_file(name, download=False))


def unique_copies(folder: Path, count: int, name: str | Path = "CT_small.dcm",
                  prefix: str = "f") -> dict[str, Path]:
    """``count`` copies of a test file, each with its own SOP Instance UID (same length,
    written in place in the bytes, file meta and dataset alike); {uid: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    src = name if isinstance(name, Path) else data_file(name)
    data = src.read_bytes()
    uid = str(dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    digits = len(str(count))
    stem = uid[: len(uid) - digits - 1] + "9"
    out = {}
    for i in range(count):
        new = f"{stem}{i:0{digits}d}"
        assert len(new) == len(uid)
        path = folder / f"{prefix}{i:06d}.dcm"
        path.write_bytes(data.replace(uid.encode(), new.encode()))
        out[new] = path
    return out


def tiny_template(folder: Path) -> Path:
    """A small real CT object (pydicom's CT_small.dcm cut down to 8x8 pixels), for corpora
    of tens of thousands of files."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = dcmread(data_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 8
    ds.PixelData = bytes(range(128))
    for tag in [e.tag for e in ds if e.tag.is_private or e.VR == "SQ"]:
        del ds[tag]
    path = folder / "tiny.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def with_open_sequences(syntax: str = "1.2.840.10008.1.2.1", meta: bool = True) -> bytes:
    """pydicom's CT_small.dcm (8x8 pixels) with sequences and items of undefined length
    as a writer may leave them open: Referenced Image Sequence (0008,1140) of undefined
    length, its first item of undefined length holding a nested Purpose of Reference Code
    Sequence (0040,A170) of undefined length, its second item of defined length; and
    Referenced Study Sequence (0008,1110) of defined length around an item of undefined
    length. Written in ``syntax`` (implicit or explicit VR, little or big endian), with
    file meta information or (``meta`` False) as a bare data set."""
    from io import BytesIO

    from pydicom import dcmwrite
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID

    ds = dcmread(data_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 8
    ds.PixelData = ds.PixelData[:128]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121311", "DCM", "Localizer"
    code.is_undefined_length_sequence_item = True
    images = []
    for i in range(2):
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}"
        images.append(item)
    images[0].PurposeOfReferenceCodeSequence = Sequence([code])
    images[0]["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    images[0].is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = Sequence(images)
    ds["ReferencedImageSequence"].is_undefined_length = True
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.9"
    study.is_undefined_length_sequence_item = True
    ds.ReferencedStudySequence = Sequence([study])
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    for elem in ds.iterall():
        elem.value  # noqa: B018 - every value decoded, so a change of byte order re-encodes it
    if not meta:
        del ds.file_meta
        ds.preamble = None
    out = BytesIO()
    uid = UID(syntax)
    dcmwrite(out, ds, implicit_vr=uid.is_implicit_VR, little_endian=uid.is_little_endian,
             force_encoding=True)
    return out.getvalue()
