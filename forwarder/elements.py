"""How a data set's elements are laid out (PS3.5 7.1, 7.5): what the walks share.

The probe's header walk (:mod:`forwarder.headwalk`), the walk that names where a cut
file ends (:mod:`forwarder.cutshort`), the re-encoder (:mod:`forwarder.reencode`), the
full reader's checks (:mod:`forwarder.dicomfile`) and the C-STORE data set finder read
element headers with these: the header layouts, the VRs and which of them have a 4-byte
length, the item and delimiter tags, the nesting limit, and pydicom's test for an
explicit VR.
"""

from __future__ import annotations

import struct

# element headers in little endian
HEAD = struct.Struct("<HHI")  # a tag and a 4-byte length: implicit VR, items, delimiters
EXPLICIT = struct.Struct("<HH2sH")  # tag, VR, 2-byte length
U32 = struct.Struct("<I")
# PS3.5 7.1.2: the VRs with a 4-byte length in explicit VR, and every VR but UN (the
# same sets as pydicom's EXPLICIT_VR_LENGTH_32 and ENCODED_VR; a test compares them)
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})
KNOWN_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS",
                       b"LO", b"LT", b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH",
                       b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UR",
                       b"US", b"UT", b"UV"})
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD  # PS3.5 7.5
UNDEFINED = 0xFFFFFFFF  # the length of a sequence, item or fragments closed by a delimiter
PIXEL_DATA = 0x7FE00010
PIXELS_FROM = 0x7FE00008  # Float Pixel Data; Double Float Pixel Data and Pixel Data follow
MAX_DEPTH = 64  # sequences nested deeper are refused, by every walk and the full reader


def looks_explicit(buf: bytes, at: int = 0) -> bool:
    """The element at ``at`` has an explicit VR: two capital letters after its tag, the
    test pydicom's reader makes before it follows the bytes rather than the syntax."""
    return 0x40 < buf[at + 4] < 0x5B and 0x40 < buf[at + 5] < 0x5B
