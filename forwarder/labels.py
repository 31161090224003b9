"""Does a file's label tell the truth about its data set? The probe's checks of the
transfer syntax its file meta names against the bytes that follow.

A peer reads a data set by the syntax negotiated for it, which is the label's: a data
set encoded otherwise, pixel fragments under an uncompressed label, or an element
encoded UN whose VR is known (which DCMTK and Orthanc refuse) would be stored wrong or
refused. pydicom's reader follows the bytes where it can, so these are checked here:
such a file is re-encoded (:func:`encoding_matches`, :func:`known_un`,
:func:`encoded_otherwise`) or refused with the reason
(:func:`fragments_fit`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from forwarder import elements
from forwarder.errors import NotDicomError
from forwarder.negotiation import DEFLATED_LE

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def known_un(ds: Dataset) -> bool:
    """An element encoded with VR UN whose tag the data dictionary knows (nested ones
    included): such a file is re-encoded with the element's own VR (PS3.5 6.2.2)."""
    from pydicom.datadict import dictionary_has_tag

    for tag, raw in ds._dict.items():
        if getattr(raw, "VR", None) == "UN" and dictionary_has_tag(tag):
            return True
        value = getattr(raw, "value", None)
        if getattr(raw, "VR", None) == "SQ" and isinstance(value, list):
            if any(known_un(item) for item in value):
                return True
    return False


def encoding_matches(ds: Dataset, ts: str) -> bool:
    """The reader found the data set in the encoding (VR, byte order) ``ts`` names."""
    from pydicom.uid import UID

    uid = UID(ts)
    if not uid.is_transfer_syntax:
        return False
    implicit, little = ds.original_encoding
    if implicit is None:
        return True
    return (implicit, little) == (uid.is_implicit_VR, uid.is_little_endian)


def encoded_otherwise(fd: int, ts: str | None) -> bool:
    """The dataset of the file open as ``fd`` is in implicit VR where its syntax ``ts``
    says explicit, or the reverse, judged by its first element as the reader judges it
    (a VR is two capital letters)."""
    from pydicom.uid import UID

    from forwarder.scu.dimse import dataset_offset

    if not ts or ts == DEFLATED_LE:
        return False  # deflated: the bytes are compressed
    syntax = UID(ts)
    if not syntax.is_transfer_syntax:
        return False  # unknown: nothing to compare with
    head = os.pread(fd, 6, dataset_offset(fd))
    return len(head) == 6 and elements.looks_explicit(head) == syntax.is_implicit_VR


def fragments_fit(ds: Dataset, ts: str | None) -> None:
    """Encapsulated pixel data (fragments of undefined length) belongs to a compressed
    syntax (PS3.5 A.4). Under a native one, or with no file meta to name the syntax, a
    peer would store the compressed bytes as pixel values and answer success."""
    from pydicom.uid import UID

    pixels = ds._dict.get(0x7FE00010)  # type: ignore[call-overload]
    if pixels is None or getattr(pixels, "length", None) != 0xFFFFFFFF:
        return
    if not ts:
        raise NotDicomError("the pixel data is encapsulated (compressed fragments), but "
                            "nothing names its compressed transfer syntax (no file meta, "
                            "or no Transfer Syntax UID in it)")
    syntax = UID(ts)
    if syntax.is_transfer_syntax and not syntax.is_encapsulated:
        raise NotDicomError(f"mislabelled: the pixel data is encapsulated (compressed "
                            f"fragments), but the file meta names {syntax.name} ({ts}), "
                            "an uncompressed transfer syntax (PS3.5 A.4)")
