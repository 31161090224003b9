"""Pure: files that look cut short, and how long they have looked so.

A writer that pauses longer than ``min_age`` (a modality waiting on its network, a copy
that stalls) leaves a file that settled but reads as truncated or empty, or an image
that ends before its pixel data (a writer that closed the file between them). It is left in
place and looked at again when it changes; only when it has stayed the same for
``truncated_after`` is it quarantined, by copy, with the source left where it is. The
clock starts again at each change; where ctime can be trusted it starts when the file
last changed, not when it was first seen. At most ``limit`` files are tracked: beyond
that the oldest entries are forgotten, so memory stays bounded (their clocks start
again where ctime cannot be trusted).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from forwarder.model import Probe

LIMIT = 10000
# JPIP Referenced (Deflate), JPIP HTJ2K Referenced (Deflate): the pixels stay on a JPIP
# server, named by Pixel Data Provider URL (0028,7FE0) in place of Pixel Data
_JPIP = frozenset({"1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95",
                   "1.2.840.10008.1.2.4.204", "1.2.840.10008.1.2.4.205"})


def looks_incomplete(reason: str) -> bool:
    """Is a probe's refusal one a writer still at work could cause?"""
    return reason.startswith(("truncated", "empty file"))


def image_unfinished(found: Probe) -> str | None:
    """Why a file an image's writer may not have finished looks so: an image storage
    object whose data set ends before its pixel data (PS3.3 C.7.6.3: Type 1C, needed
    unless a JPIP transfer syntax names a Pixel Data Provider URL instead). A writer that
    closes the file between its header and its pixels, and pauses longer than
    ``min_age``, leaves such a file: complete in every element it holds."""
    if found.pixels or found.transfer_syntax in _JPIP:
        return None
    from pydicom.uid import UID

    name = UID(found.sop_class_uid).name
    if "Image Storage" not in name:
        return None
    return (f"truncated: {name} without Pixel Data (an image's data set ends with it; "
            "its writer may not be done)")


class Incomplete:
    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self._since: OrderedDict[str, tuple[float, Hashable]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._since)

    def wait_left(self, key: str, sig: Hashable, now: float, patience: float,
                  untouched: float = 0.0) -> tuple[float, bool]:
        """(seconds still to wait, 0 when the wait is over; True if ``sig`` is new for
        ``key``, the moment to say the file waits). ``untouched``: how long the file is
        known to have been as it is when first seen (its ctime's age on a local disk),
        so a restart of the daemon, or an entry forgotten, does not start its clock
        again."""
        entry = self._since.get(key)
        new = entry is None or entry[1] != sig
        if new:
            self._since.pop(key, None)
            self._since[key] = entry = (now - min(max(untouched, 0.0), patience), sig)
            while len(self._since) > self.limit:
                self._since.popitem(last=False)
        assert entry is not None
        left = patience - (now - entry[0])
        if left <= 0:
            self._since.pop(key, None)
            return 0.0, new
        return left, new

    def forget(self, key: str) -> None:
        self._since.pop(key, None)
