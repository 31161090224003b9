"""Changes to a data set that `send` and a destination can ask for, as storescu does:
UIDs stripped of their padding (``-up``; a destination's ``strip_uid_padding``) and the
VRs newer than the first standard sent as OB (``-u``; ``new_vrs: false``). Each is
listed in the conformance statement; a file asking for none goes unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def changes(strip_uid_padding: bool, new_vrs: bool,
            steps: list[Callable[[Dataset], None]] | None = None):  # noqa: ANN201
    """The changes asked for (storescu ``-up``, ``-u``; a destination's
    ``strip_uid_padding``, ``new_vrs: false``) after ``steps``, as one callable; None
    when there are none, so that a file can go unchanged."""
    steps = list(steps or ())
    if strip_uid_padding:
        steps.append(strip_uids)
    if not new_vrs:
        steps.append(old_vrs)
    if not steps:
        return None

    def apply(ds: Dataset) -> None:
        for step in steps:
            step(ds)
    return apply


def strip_uids(ds: Dataset) -> None:
    """storescu -up: trailing spaces (and NULs) taken from every UID, nested ones too."""
    for elem in ds.iterall():
        if elem.VR == "UI" and isinstance(elem.value, str):
            elem.value = elem.value.rstrip(" \0")


# the VRs DCMTK writes as OB when new VRs are disabled (dcmDisableGenerationOfNewVRs)
NEW_VRS = ("UN", "UT", "UC", "UR", "OF", "OD", "OL", "OV", "SV", "UV")


def old_vrs(ds: Dataset) -> None:
    """storescu -u: each element of a VR newer than the first standard is sent as OB,
    its value the very bytes its own VR encodes (text in its item's character set,
    padded; numbers in the byte order of the syntax it is sent in), as DCMTK writes it.
    Runs on a data set :func:`~forwarder.transcode.prepare` made ready to send, whose
    encoding is the one it goes in."""
    _as_ob(ds, ds.original_encoding[1] is not False, None)


def _as_ob(ds: Dataset, little: bool, encodings: str | list[str] | None) -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    encodings = ds.get("SpecificCharacterSet", encodings)  # an item's own, else its parent's
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or ():
                _as_ob(item, little, encodings)
        elif elem.VR in NEW_VRS:
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = little, False
            write_data_element(fp, elem, encodings)
            elem.VR = "OB"  # first: the value setter converts by the VR
            elem.value = fp.getvalue()[12:]  # after tag, VR, reserved and 4-byte length
