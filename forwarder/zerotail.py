"""Zeros after a data set: space a writer set aside, or a medium's padding.

pydicom's reader reads every 8 zero bytes after a data set as an empty element
(0000,0000), some 4 MB a second, and so takes such a file as it is. The header walk
(:mod:`forwarder.headwalk`) gives the same answer without reading them as elements, once
it knows the file holds nothing but zeros from there to its end.
"""

from __future__ import annotations

import os

_ZEROS = bytes(1 << 20)  # compared with a file's tail, a MiB at a time


def first_nonzero(fd: int, pos: int, size: int) -> int:
    """Where the first byte from ``pos`` on that is not zero lies in the file open as
    ``fd`` (``size`` bytes long); ``size`` when there is none, and where a short read
    stopped when the file shrank."""
    while pos < size:
        chunk = os.pread(fd, min(len(_ZEROS), size - pos), pos)
        if not chunk:
            return pos
        if chunk != _ZEROS[:len(chunk)]:
            return pos + len(chunk) - len(chunk.lstrip(b"\0"))
        pos += len(chunk)
    return size
