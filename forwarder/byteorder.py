"""Change the byte order of the values pydicom keeps as raw bytes.

When a dataset changes endianness (Explicit VR Big Endian to or from a little endian
syntax), pydicom re-encodes every value it has parsed (numbers, tags, text) but writes
OW, OL, OF, OD, OV and UN values as the bytes it read. Those are swapped here, by the
size of their words; Pixel Data by its Bits Allocated, Waveform Data by its Waveform
Bits Allocated. Anything whose byte order cannot be known fails the conversion.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr

PIXEL_DATA = 0x7FE00010
WAVEFORM_DATA = 0x54001010
_WORD = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


class ByteOrderError(Exception):
    """A value whose byte order cannot be changed exactly; the message says which."""


def change_byte_order(ds: Dataset, source_little: bool, target_little: bool) -> None:
    """Rewrite the raw-byte values of ``ds`` (nested items included) for ``target_little``."""
    if source_little == target_little:
        return
    # 'OB or OW', 'US or SS', 'US or OW' resolved while the values are still as read
    correct_ambiguous_vr(ds, source_little)
    _walk(ds, source_little)


def _walk(ds: Dataset, source_little: bool) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or ():
                _walk(item, source_little)
            continue
        if elem.value is None or elem.is_empty or not isinstance(elem.value, bytes):
            continue
        if elem.tag == PIXEL_DATA:
            size = _pixel_word(ds, elem, source_little)
        elif elem.tag == WAVEFORM_DATA and elem.VR == "OW":
            bits = int(ds.get("WaveformBitsAllocated", 16))
            size = max(2, bits // 8)
        elif elem.VR in _WORD:
            size = _WORD[elem.VR]
        elif elem.VR == "UN":
            raise ByteOrderError(f"element {elem.tag} has VR UN: the byte order of its value "
                                 f"is unknown")
        elif " or " in elem.VR:
            raise ByteOrderError(f"element {elem.tag} has an ambiguous VR ({elem.VR})")
        else:
            continue  # OB and the text VRs: bytes, no byte order
        elem.value = _swapped(elem, size)


def _pixel_word(ds: Dataset, elem: DataElement, source_little: bool) -> int:
    if elem.is_undefined_length:
        raise ByteOrderError("encapsulated pixel data cannot change byte order")
    bits = ds.get("BitsAllocated")
    if bits in (1, 8) and source_little:
        elem.VR = "OB"  # little endian OW bytes are OB bytes; big endian takes OB as is
        return 1
    if bits == 1:
        if elem.VR == "OW":
            raise ByteOrderError("1-bit pixel data encoded as OW in big endian: the order "
                                 "of its bits is ambiguous")
        return 1
    if bits == 8:
        return 2 if elem.VR == "OW" else 1  # 8-bit OW is swapped pairwise (PS3.5 8.1.1)
    if bits in (16, 32, 64):
        return int(bits) // 8
    raise ByteOrderError(f"pixel data with Bits Allocated {bits} cannot change byte order")


def _swapped(elem: DataElement, size: int) -> bytes:
    value: bytes = elem.value
    if size == 1:
        return value
    if len(value) % size:
        raise ByteOrderError(f"element {elem.tag} ({elem.VR}) has {len(value)} bytes, not a "
                             f"multiple of its {size}-byte words")
    return np.frombuffer(value, dtype=f"u{size}").byteswap().tobytes()
