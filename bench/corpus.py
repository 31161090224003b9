"""Generate benchmark corpora from pydicom's CT_small.dcm: fresh UIDs, chosen pixel size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def make_corpus(folder: Path, count: int, side: int) -> list[Path]:
    """``count`` CT files of ``side`` x ``side`` 16-bit pixels (512 -> about 0.5 MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = dcmread(get_testdata_file("CT_small.dcm"))
    base.Rows = base.Columns = side
    rng = np.random.default_rng(0)
    base.PixelData = rng.integers(0, 4000, (side, side), dtype=np.uint16).tobytes()
    study = generate_uid()
    out = []
    for i in range(count):
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        base.StudyInstanceUID = study
        path = folder / f"f{i:05d}.dcm"
        base.save_as(path, enforce_file_format=True)
        out.append(path)
    return out
