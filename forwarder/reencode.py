"""Exact re-encoding of explicit VR little endian data sets: every value's bytes kept.

The common conversions are for a peer that takes implicit VR only, or one that does not
take the deflated syntax. pydicom's reader and writer decode every value and write it
back in their own form: a NUL padding becomes a space, a DS or IS loses its spaces,
trailing spaces go, and text not valid in its character set would be substituted.
Explicit VR little endian (also as inflated from the deflated syntax) and implicit VR
little endian differ only in element headers (PS3.5 7.1.2, 7.1.3), so this module
rewrites the headers and copies every value as it is, as DCMTK does. The same walk
writes explicit VR again where a data set must be re-encoded in it: inflated from the
deflated syntax for a peer that does not take it, or of odd length (PS3.5 7.1.1).
Elements must come in ascending tag order, each once. Sequences and items keep the kind
of length they had, a defined one recounted; group lengths (gggg,0000) are left out
(PS3.5 7.2 makes them optional), since the headers' sizes change what they count; a
value of odd length is padded as PS3.5 7.1.1 asks (a space for text, a NUL for UI and
binary values); the Data Set Trailing Padding goes as it is (storescu leaves it out).
What it does not take (a VR the standard does not define, which is also how a data set
in implicit VR under an explicit label shows, UN or other values of undefined length,
elements out of order or repeated, items that do not tile their sequence, nesting deeper
than 64, a deflated stream cut short) gives None, and pydicom converts the file instead,
as it does every conversion from implicit VR, to or from big endian, and to the deflated
syntax.

The result is a :class:`forwarder.scu.spliced.Spliced`: the new headers with the values
of up to 4 KiB among them, and every larger value as a range of the file, read only as
it is sent. Converting a file reads its headers and small values (64 KiB at a time), so
memory grows with those, not with its pixel data. A deflated data set is inflated as it
is read, and its large values are ranges of the inflated bytes, inflated again from the
file as they are sent (:mod:`forwarder.scu.inflating`): never held whole.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

from forwarder.elements import EXPLICIT, HEAD, KNOWN_VRS, LONG_VRS, MAX_DEPTH, U32
from forwarder.negotiation import DEFLATED_LE, EXPLICIT_LE, IMPLICIT_LE
from forwarder.scu.inflating import Inflating, Window
from forwarder.scu.spliced import Piece, Spliced

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_TEXT = frozenset({b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"LT", b"PN",
                   b"SH", b"ST", b"TM", b"UC", b"UR", b"UT"})
_TAKEN = KNOWN_VRS | {b"UN"}
_OPEN_ITEM = HEAD.pack(0xFFFE, 0xE000, _UNDEFINED)
_CLOSE_ITEM = HEAD.pack(0xFFFE, 0xE00D, 0)
_CLOSE_SEQUENCE = HEAD.pack(0xFFFE, 0xE0DD, 0)
INLINE = 4096  # values up to this many bytes are copied among the headers
_WINDOW = 1 << 16  # the headers are read from the file this much at a time


class _NotTaken(Exception):
    """Something this module does not convert: pydicom does."""


def exactly(path: str | os.PathLike[str], source: str, target: str,
            consistent: bool) -> Spliced | None:
    """The data set of the file at ``path`` (in ``source``) as ``target`` encodes it, every
    value byte for byte, when this module converts between the two (see its words); None
    otherwise (pydicom converts). ``consistent``: the probe found nothing to re-type (no
    known element encoded UN, no VR encoding other than the syntax names), so explicit VR
    may stay as it is."""
    if source not in (EXPLICIT_LE, DEFLATED_LE) or target not in (IMPLICIT_LE, EXPLICIT_LE):
        return None
    if target == EXPLICIT_LE and not consistent:
        return None  # an element encoded UN gets its own VR: pydicom's dictionary
    from forwarder.scu.dimse import dataset_offset

    explicit = target == EXPLICIT_LE
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        start = dataset_offset(fd)
        if source != DEFLATED_LE:
            spliced = _spliced(_File(fd, start), os.fstat(fd).st_size - start, explicit,
                               fd, os.fspath(path))
            if spliced is not None and spliced.fd == fd:
                fd = -1  # the Spliced owns it now: its ranges are read through it, then closed
            return spliced
        inflating = Inflating(fd, start)
        try:
            spliced = _spliced(_Inflated(inflating), inflating.size(), explicit, fd,
                               os.fspath(path), inflated_from=start)
        except zlib.error:
            return None  # cut short, or not deflate's: the reader names what is wrong
        if spliced is not None and spliced.fd == fd:
            fd = -1  # its ranges are inflated again from the file as they are sent
        return spliced
    finally:
        if fd >= 0:
            os.close(fd)


def to_implicit(data: bytes) -> bytes | None:
    """An explicit VR little endian data set as implicit VR little endian (see
    :func:`rewrite`): for the tests, and data sets already in memory."""
    return rewrite(data, explicit=False)


def rewrite(data: bytes, explicit: bool) -> bytes | None:
    """An explicit VR little endian data set written again, in explicit or implicit VR
    little endian, every value copied (odd ones padded), as one ``bytes``; None when it
    holds something this module does not convert (see the module's words). The same
    walk as :func:`exactly`, for the tests and data sets already in memory."""
    spliced = _spliced(_Memory(data), len(data), explicit, None, "")
    return None if spliced is None else spliced.tobytes()


def _spliced(source: _File | _Inflated | _Memory, size: int, explicit: bool,
             fd: int | None, path: str, inflated_from: int | None = None) -> Spliced | None:
    """The data set re-encoded; its ranges (if any) are of ``fd`` (of the data set
    deflated in it from ``inflated_from`` on, if given), which it then holds."""
    writer = _Writer(source, explicit)
    try:
        writer.elements(0, size, 0, False)
    except (_NotTaken, struct.error):
        return None
    pieces = writer.done()
    ranges = any(isinstance(p, tuple) for p in pieces)
    spliced = Spliced(pieces, fd if ranges else None, path, inflated_from)
    return spliced if len(spliced) else None  # an empty data set is not one to send


class _Memory:
    """A data set in memory: its values' slices are pieces as they are."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)

    def view(self, pos: int, n: int) -> tuple[memoryview, int]:
        return self.data, pos

    def piece(self, pos: int, n: int) -> Piece:
        return self.data[pos:pos + n]


class _File:
    """A data set in a file from ``base`` on: read a window at a time where headers are,
    its large values left in the file as ranges."""

    def __init__(self, fd: int, base: int):
        self.fd, self.base = fd, base
        self.start, self.buf = 0, b""

    def view(self, pos: int, n: int) -> tuple[bytes, int]:
        """A buffer holding the bytes from ``pos`` on (fewer than ``n`` at the end of the
        file), and where ``pos`` is in it."""
        if pos < self.start or pos + n > self.start + len(self.buf):
            self.start, self.buf = pos, os.pread(self.fd, max(n, _WINDOW), self.base + pos)
        return self.buf, pos - self.start

    def piece(self, pos: int, n: int) -> Piece:
        return (self.base + pos, n)


class _Inflated(Window):
    """A deflated data set, inflated as its headers are read a window at a time; its
    large values are left as ranges of the inflated bytes, inflated again as they are
    sent."""

    def piece(self, pos: int, n: int) -> Piece:
        return (pos, n)


class _Writer:
    def __init__(self, source: _File | _Inflated | _Memory, explicit: bool):
        self.source, self.explicit = source, explicit
        self.pieces: list[Piece] = []
        self.out = bytearray()  # the new bytes since the last value left in its place
        self.written = 0  # bytes in self.pieces

    def done(self) -> list[Piece]:
        self.pieces.append(self.out)
        return self.pieces

    def tell(self) -> int:
        return self.written + len(self.out)

    def unpack(self, fmt: struct.Struct, pos: int) -> tuple[Any, ...]:
        buf, at = self.source.view(pos, fmt.size)
        return fmt.unpack_from(buf, at)

    def value(self, pos: int, length: int) -> None:
        """The value of ``length`` bytes at ``pos``: copied, or a piece of the source."""
        if length <= INLINE:
            buf, at = self.source.view(pos, length)
            if len(buf) - at < length:
                raise _NotTaken  # the file ended: the reader names what is missing
            self.out += buf[at:at + length]
            return
        self.pieces.append(self.out)
        self.pieces.append(self.source.piece(pos, length))
        self.written += len(self.out) + length
        self.out = bytearray()

    def head(self, group: int, elem: int, vr: bytes, length: int) -> tuple[bytearray, int]:
        """Write an element's header; where its length field is: the bytes it is in, and
        its offset there."""
        out = self.out
        if not self.explicit:
            out += HEAD.pack(group, elem, length)
            return out, len(out) - 4
        if vr in LONG_VRS:
            out += EXPLICIT.pack(group, elem, vr, 0)
            out += U32.pack(length)
            return out, len(out) - 4
        if length > 0xFFFF:
            raise _NotTaken  # a padded value too long for its 2-byte length
        out += EXPLICIT.pack(group, elem, vr, length)
        return out, len(out) - 2

    def elements(self, pos: int, end: int, depth: int, delimited: bool) -> int:
        """Copy the elements from ``pos`` up to ``end`` (or, ``delimited``, up to the
        item's delimiter), in ascending tag order; the offset after them."""
        last = -1
        while pos < end:
            group, elem, vr, length = self.unpack(EXPLICIT, pos)
            if group == 0xFFFE:
                if delimited and (group, elem) == _ITEM_END and \
                        self.unpack(HEAD, pos)[2] == 0:
                    return pos + 8
                raise _NotTaken
            tag = group << 16 | elem
            if tag <= last:
                raise _NotTaken  # out of order, or twice: the reader sorts, keeps the last
            last = tag
            if vr not in _TAKEN:
                raise _NotTaken  # not explicit VR after all, or a VR the standard has not
            at = pos + 8
            if vr in LONG_VRS:
                length, at = self.unpack(U32, pos + 8)[0], pos + 12
            if vr == b"SQ":
                pos = self.sequence(group, elem, at, length, end, depth + 1)
                continue
            if length == _UNDEFINED or at + length > end:
                raise _NotTaken  # fragments, UN holding a sequence, or a value cut short
            pos = at + length
            if elem == 0:
                continue  # a group length: what it counts changes
            self.head(group, elem, vr, length + length % 2)
            self.value(at, length)
            if length % 2:
                self.out += b" " if vr in _TEXT else b"\0"
        if delimited or pos != end:
            raise _NotTaken  # no item delimiter, or the last element runs past the end
        return pos

    def sequence(self, group: int, elem: int, pos: int, length: int, limit: int,
                 depth: int) -> int:
        """Copy a sequence's items; a defined length is counted again once they are
        written (the length field filled in afterwards, so each byte is copied once)."""
        if depth > MAX_DEPTH:
            raise _NotTaken
        field = self.head(group, elem, b"SQ", 0 if length != _UNDEFINED else _UNDEFINED)
        start = self.tell()
        end = None if length == _UNDEFINED else pos + length
        if end is not None and end > limit:
            raise _NotTaken
        while True:
            if end is not None and pos >= end:
                if pos != end:
                    raise _NotTaken
                U32.pack_into(*field, self.tell() - start)
                return pos
            group, elem, item_length = self.unpack(HEAD, pos)
            if end is None and (group, elem) == _SEQ_END:
                if item_length:
                    raise _NotTaken
                self.out += _CLOSE_SEQUENCE
                return pos + 8
            if (group, elem) != _ITEM:
                raise _NotTaken
            if item_length == _UNDEFINED:
                self.out += _OPEN_ITEM
                pos = self.elements(pos + 8, end if end is not None else limit, depth, True)
                self.out += _CLOSE_ITEM
                continue
            item_end = pos + 8 + item_length
            if item_end > (end if end is not None else limit):
                raise _NotTaken
            self.out += HEAD.pack(0xFFFE, 0xE000, 0)
            item = self.out, len(self.out) - 4
            item_start = self.tell()
            pos = self.elements(pos + 8, item_end, depth, False)
            U32.pack_into(*item, self.tell() - item_start)
