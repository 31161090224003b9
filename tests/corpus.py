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
