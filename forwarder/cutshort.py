"""Does a file the reader cannot follow simply end too early? A walk of its structure.

A writer that pauses (a modality waiting on its network, a copy that stalls) leaves a
file that stops anywhere: inside a value, or inside a sequence, an item or encapsulated
pixel data of undefined length, none of which is closed yet. pydicom's reader names the
first kind (its deferred values are checked against the file's size), but stumbles over
the second with words that hide it: "No tag to read at file position ..." (a hex offset
inside the sequence), or a delimiter not found. The probe then asks this walk, which
reads element headers only (no value is decoded, none is read but the meta's transfer
syntax) and follows every sequence, item and fragment by its length or to its
delimiter, as PS3.5 7.1 and 7.5 lay them out: explicit or implicit VR (an item in
implicit VR inside an explicit data set too, as PS3.5 6.2.2 allows), little or big
endian, in a Part 10 file or a bare data set.

Its answer is where the file ends, when everything before the end is well formed and
the end falls inside something still open: the words of a "truncated" reason. Anything
that does not follow the rules before the end gives None, and the reader's own words
stand: the file is malformed, not unfinished. The rules: a VR the standard defines,
elements in ascending order, items and delimiters only where they belong, items that
tile their sequence, nesting no deeper than the reader's limit; in implicit VR, where no
VR shows bytes read as a header by mistake, a tag the data dictionary knows or a private
one in a block its creator reserved; and the value the file ends in no longer than its
VR allows (a 4 GB UID is a length gone wrong, not a cut). A file that ends where its
data set may end (no structure open) gives None too, and so does a deflated one, whose
cut the inflater names (:class:`forwarder.scu.inflating.Cut`).
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from forwarder.elements import (
    ITEM,
    ITEM_END,
    KNOWN_VRS,
    LONG_VRS,
    MAX_DEPTH,
    PIXEL_DATA,
    SEQ_END,
    UNDEFINED,
    looks_explicit,
)
from forwarder.errors import NotDicomError
from forwarder.negotiation import DEFLATED_LE, EXPLICIT_BE

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

_SYNTAX = 0x00020010
_ENCODED_VRS = KNOWN_VRS | {b"UN"}
_WINDOW = 65536
# the sizes of single values (PS3.5 Table 6.2-1): fixed, or at most (in bytes, as long as
# UTF-8 or ISO 2022 escapes make them, and longer than writers that exceed them write)
_FIXED = {"AT": 4, "FD": 8, "FL": 4, "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8}
_TEXT = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "SH", "TM", "UI"})  # 64 bytes
_MOST = {"LO": 256, "PN": 1024, "ST": 4096, "LT": 40960}
_NOT_PRIVATE = frozenset({0x0001, 0x0003, 0x0005, 0x0007, 0xFFFF})  # odd, yet not private


class _Cut(Exception):
    """The file ends inside something still open; the message says where."""


class _Malformed(Exception):
    """The bytes before the end do not follow the rules: not a cut the walk can name."""


def where_cut(fd: int, size: int, has_meta: bool) -> str | None:
    """Where the file open as ``fd`` (``size`` bytes; with file meta information or a bare
    data set) ends inside a value, element header, sequence, item or encapsulated pixel
    data still open, in words; None when it does not (see the module's words)."""
    try:
        return cut_in(_Window(fd), size, has_meta)
    except OSError:
        return None  # the file cannot be read again: the reader's words stand


def unreadable(fd: int, size: int, has_meta: bool, why: str) -> NotDicomError:
    """The reader cannot follow the file open as ``fd``, for ``why``: "truncated" when the walk of its
    structure finds it ends inside something still open (a value, a sequence, item or
    encapsulated pixel data of undefined length not closed yet), so a writer that paused
    there may still complete it; "not readable" otherwise, in the reader's words."""
    cut = where_cut(fd, size, has_meta)
    if cut is not None:
        return NotDicomError(f"truncated: {cut}")
    return NotDicomError(f"not readable as DICOM: {why}")


def check_closed(fd: int, ds: Dataset, size: int, has_meta: bool) -> None:
    """pydicom does not record where an element of undefined length ends, and stops
    quietly where fewer than 8 bytes are left: when the last element it read has
    undefined length, the file must end with the sequence delimiter that closes it, or
    it ends inside the header of an element after it (a writer paused there)."""
    elements = list(ds._dict.values())  # in the file's order, as the reader found them
    last = elements[-1] if elements else None
    if getattr(last, "length", None) != UNDEFINED and \
            not getattr(last, "is_undefined_length", False):
        return
    delimiter = struct.pack("<HHI" if ds.original_encoding[1] is not False else ">HHI",
                            0xFFFE, 0xE0DD, 0)
    if size < 8 or os.pread(fd, 8, size - 8) != delimiter:
        cut = where_cut(fd, size, has_meta)
        if cut is not None:
            raise NotDicomError(f"truncated: {cut}")


class _Window:
    """The bytes of a file read with :func:`os.pread` a window at a time: the walk reads
    headers, and skips values by their lengths."""

    def __init__(self, fd: int):
        self.fd, self.at, self.buf = fd, 0, b""

    def __call__(self, pos: int, n: int) -> bytes:
        if pos < self.at or pos + n > self.at + len(self.buf):
            self.at, self.buf = pos, os.pread(self.fd, max(n, _WINDOW), pos)
        return self.buf[pos - self.at:pos - self.at + n]


def cut_in(read: Callable[[int, int], bytes], size: int, has_meta: bool) -> str | None:
    """:func:`where_cut` over ``read(pos, n)``, which gives the ``n`` bytes at ``pos`` (fewer
    at the end): the pure walk, for the tests and bytes already in memory."""
    try:
        _Walk(read, size).run(has_meta)
    except _Cut as cut:
        return str(cut)
    except (_Malformed, struct.error):
        return None
    return None


@functools.cache
def _entry(tag: int) -> tuple[str, str] | None:
    """The data dictionary's VR and VM of a standard ``tag`` (repeating groups too), or
    None. Implicit VR has no VR to say which elements are sequences, nor how long a value
    may be."""
    from pydicom.datadict import get_entry

    try:
        return get_entry(tag)[:2]
    except KeyError:
        return None


def _plausible(tag: int, vr: str | None, length: int) -> bool:
    """Can the element the file ends in hold ``length`` bytes? A single value of a VR with
    a fixed size, or a limit (PS3.5 Table 6.2-1; in bytes, as long as UTF-8 or ISO 2022
    may make it), cannot hold more: a longer one is a length gone wrong, not a cut."""
    if not tag & 0xFFFF:
        return length == 4  # a group length (UL)
    entry = _entry(tag)
    if entry is None:
        return True  # private, or unknown: any length
    vr = vr or entry[0][:2]
    if vr in _FIXED:
        size = _FIXED[vr]
        return length % size == 0 and (entry[1] != "1" or length == size)
    most = 64 if vr in _TEXT else _MOST.get(vr, length)
    return entry[1] != "1" or length <= most


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walk:
    """One walk of a file's element headers; :class:`_Cut` where it ends inside
    something open, :class:`_Malformed` where the bytes break the rules."""

    def __init__(self, read: Callable[[int, int], bytes], size: int):
        self.size = size
        # never past ``size``: a file still being written may have grown since
        self.read = lambda pos, n: read(pos, max(0, min(n, size - pos)))
        # what the walk is inside, outermost first: its words, where it starts, and the
        # delimiter that closes it (None: it has a length)
        self.open: list[tuple[str, int, str | None]] = []
        self.little = True

    def run(self, has_meta: bool) -> None:
        pos, syntax = 0, None
        if has_meta:
            pos, syntax = self._meta(132)
            if syntax == DEFLATED_LE or pos >= self.size:
                return  # the inflater names a cut; meta alone, the probe says so itself
        first = self.read(pos, 6)
        if len(first) < 6:
            self._ends("an element's header", pos)
        implicit = not looks_explicit(first)  # the reader follows the bytes, as here
        if has_meta:
            self.little = syntax != EXPLICIT_BE
        else:  # the reader's guess: a big endian group reads as 1024 or more
            self.little = implicit or struct.unpack_from("<H", first)[0] < 1024
        self._dataset(pos, self.size, implicit, 0)

    def _ends(self, inside: str, at: int, closing: str = "") -> NoReturn:
        """Raise :class:`_Cut`: the file ends inside ``inside`` (at ``at``), within what
        the walk is in."""
        words = f"the file ends at byte {self.size} inside {inside} at byte {at}{closing}"
        if self.open and self.open[0][:2] != (inside, at):
            words += f", within {self.open[0][0]} at byte {self.open[0][1]}"
        raise _Cut(words)

    def _head(self, pos: int, n: int) -> bytes:
        head = self.read(pos, n)
        if len(head) < n:
            if pos + n <= self.size:
                raise _Malformed  # shorter than its size said: changed while read
            self._ends("an element's header", pos)
        return head

    def _meta(self, pos: int) -> tuple[int, str | None]:
        """Walk the file meta (explicit VR little endian, PS3.10 7.1); where the data set
        starts, and the transfer syntax named."""
        syntax = None
        self.open.append(("the file meta information", 132, None))
        while pos < self.size:
            head = self._head(pos, 4 if pos + 8 > self.size else 8)
            if struct.unpack_from("<H", head)[0] != 2:
                break
            head = self._head(pos, 8)
            group, elem, vr, length = struct.unpack("<HH2sH", head)
            at = pos + 8
            if vr not in _ENCODED_VRS or vr == b"SQ":
                raise _Malformed
            if vr in LONG_VRS:
                length, at = struct.unpack("<I", self._head(pos, 12)[8:])[0], pos + 12
            if length == UNDEFINED:
                raise _Malformed
            if at + length > self.size:
                self._ends(f"the value of {_tag(group << 16 | elem)}", at,
                           f", which needs {length} bytes")
            if group << 16 | elem == _SYNTAX:
                syntax = self.read(at, length).decode("ascii", "replace").rstrip("\0 ")
            pos = at + length
        self.open.pop()
        return pos, syntax

    def _dataset(self, pos: int, end: int | None, implicit: bool, depth: int) -> int:
        """Walk a data set from ``pos`` to ``end`` (the file's size at the top, where the
        end of the file is the end of the data set; an item's end; None: an item of
        undefined length, up to its delimiter); the offset after it."""
        top = depth == 0
        fmt = "<" if self.little else ">"
        limit = None if top else end  # what may not run past it (at the top, the file may)
        last = -1
        creators: set[int] = set()  # private blocks reserved so far: group and block
        while True:
            if end is not None and pos >= end:
                if pos > end:
                    raise _Malformed  # the last element runs past its item
                return pos
            if pos >= self.size:
                self._unclosed()
            head = self._head(pos, 8)
            group, elem, length = struct.unpack(fmt + "HHI", head)
            tag = group << 16 | elem
            if group == 0xFFFE:
                if tag == ITEM_END and end is None and not top and length == 0:
                    return pos + 8
                raise _Malformed  # an item or delimiter where none belongs
            if tag <= last:
                raise _Malformed  # out of order, or twice (PS3.5 7.1)
            last = tag
            at, vr = pos + 8, None
            if implicit:
                self._implicit_tag(group, elem, length, creators)
            else:
                vr = head[4:6]
                if vr not in _ENCODED_VRS:
                    raise _Malformed
                if vr in LONG_VRS:
                    length, at = struct.unpack(fmt + "I", self._head(pos, 12)[8:])[0], pos + 12
                else:
                    length = struct.unpack(fmt + "H", head[6:])[0]
            if vr is None:  # implicit VR: the dictionary, or an undefined length, says
                sequence = tag != PIXEL_DATA if length == UNDEFINED else \
                    (_entry(tag) or ("",))[0] == "SQ"
            else:  # UN of undefined length holds a sequence in implicit VR (PS3.5 6.2.2)
                sequence = vr == b"SQ" or (vr == b"UN" and length == UNDEFINED)
            if sequence:
                pos = self._sequence(tag, pos, at, length, implicit, depth + 1, limit)
            elif length == UNDEFINED:
                if vr not in (None, b"OB", b"OW"):
                    raise _Malformed  # only sequences and fragments have no length
                pos = self._fragments(tag, pos, at, limit)
            else:
                if limit is not None and at + length > limit:
                    raise _Malformed  # longer than its item
                if at + length > self.size:
                    if not _plausible(tag, vr.decode() if vr else None, length):
                        raise _Malformed  # a length gone wrong, not a value cut short
                    self._ends(f"the value of {_tag(tag)}", at, f", which needs {length} bytes")
                pos = at + length

    @staticmethod
    def _implicit_tag(group: int, elem: int, length: int, creators: set[int]) -> None:
        """An element in implicit VR has no VR to check it by: its tag must be one the
        data dictionary knows, or a private one in a block its creator reserved (PS3.5
        7.8.1), so that bytes read as a header by mistake are not taken for one."""
        if not elem:
            if length != 4:
                raise _Malformed  # a group length is one UL
        elif not group & 1:
            if _entry(group << 16 | elem) is None:
                raise _Malformed
        elif group in _NOT_PRIVATE or elem < 0x10 or 0x100 <= elem < 0x1000:
            raise _Malformed
        elif 0x10 <= elem < 0x100:  # a private creator: LO, one value
            if length > 64:
                raise _Malformed
            creators.add(group << 8 | elem)
        elif (group << 8 | elem >> 8) not in creators:
            raise _Malformed

    def _unclosed(self) -> NoReturn:
        """The file ends between elements, inside the innermost structure still open."""
        what, at, delimiter = self.open[-1]
        self._ends(what, at, f", not closed (no {delimiter} yet)" if delimiter else
                   ", shorter than its length says")

    def _sequence(self, tag: int, head_at: int, pos: int, length: int, implicit: bool,
                  depth: int, limit: int | None) -> int:
        """Walk a sequence's items from ``pos``; the offset after it."""
        if depth > MAX_DEPTH:
            raise _Malformed
        fmt = "<" if self.little else ">"
        end = None if length == UNDEFINED else pos + length
        if end is not None and limit is not None and end > limit:
            raise _Malformed  # longer than its item
        kind = "undefined-length" if end is None else f"{length}-byte"
        self.open.append((f"the {kind} sequence {_tag(tag)}", head_at,
                          "sequence delimiter" if end is None else None))
        while True:
            if end is not None and pos >= end:
                if pos > end:
                    raise _Malformed  # its items run past it
                self.open.pop()
                return pos
            if pos >= self.size:
                self._unclosed()
            group, elem, item_length = struct.unpack(fmt + "HHI", self._head(pos, 8))
            if group << 16 | elem == SEQ_END and end is None and item_length == 0:
                self.open.pop()
                return pos + 8
            if group << 16 | elem != ITEM:
                raise _Malformed
            item_end = None if item_length == UNDEFINED else pos + 8 + item_length
            if item_end is not None and end is not None and item_end > end:
                raise _Malformed  # an item longer than its sequence
            kind = "an undefined-length" if item_end is None else f"a {item_length}-byte"
            self.open.append((f"{kind} item of {_tag(tag)}", pos,
                              "item delimiter" if item_end is None else None))
            item_implicit = implicit
            if not implicit:  # an item may be in implicit VR (PS3.5 6.2.2), as the reader takes it
                first = self.read(pos + 8, 6)
                item_implicit = len(first) == 6 and first[:2] != b"\xfe\xff" and \
                    first[:2] != b"\xff\xfe" and not looks_explicit(first)
            pos = self._dataset(pos + 8, item_end, item_implicit, depth)
            self.open.pop()

    def _fragments(self, tag: int, head_at: int, pos: int, limit: int | None) -> int:
        """Walk encapsulated fragments (items of defined length up to the sequence
        delimiter, PS3.5 A.4); the offset after them."""
        fmt = "<" if self.little else ">"
        what = ("the encapsulated pixel data (7FE0,0010)" if tag == PIXEL_DATA
                else f"the encapsulated value of {_tag(tag)}")
        self.open.append((what, head_at, "sequence delimiter"))
        while True:
            if limit is not None and pos >= limit:
                raise _Malformed  # runs past its item
            if pos >= self.size:
                self._unclosed()
            group, elem, length = struct.unpack(fmt + "HHI", self._head(pos, 8))
            if group << 16 | elem == SEQ_END and length == 0:
                self.open.pop()
                return pos + 8
            if group << 16 | elem != ITEM or length == UNDEFINED:
                raise _Malformed
            if pos + 8 + length > self.size:
                self._ends(f"a fragment of {what}", pos, f", which needs {length} bytes")
            pos += 8 + length
