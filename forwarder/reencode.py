"""Exact conversion to implicit VR little endian, and from deflated: every value's bytes kept.

The common conversions are for a peer that takes implicit VR only, or one that does not
take the deflated syntax. pydicom's reader and writer decode every value and write it
back in their own form: a NUL padding becomes a space, a DS or IS loses its spaces,
trailing spaces go, and text not valid in its character set would be substituted.
Explicit VR little endian (also as inflated from the deflated syntax) and implicit VR
little endian differ only in element headers (PS3.5 7.1.2, 7.1.3), so this module
rewrites the headers and copies every value as it is, as DCMTK does; an inflated data
set goes as it is to a peer that takes explicit VR. Sequences and items keep the kind of
length they had, a defined one recounted; group lengths (gggg,0000) are left out (PS3.5
7.2 makes them optional), since the headers' sizes change what they count; a value of
odd length is padded as PS3.5 7.1.1 asks (a space for text, a NUL for UI and binary
values); the Data Set Trailing Padding goes as it is (storescu leaves it out). What it
does not take (a VR the standard does not define, UN or other values of undefined
length, items that do not tile their sequence, nesting deeper than 64, a deflated
stream cut short) gives None, and pydicom converts the file instead, as it does every
conversion from implicit VR, to or from big endian, and to the deflated syntax.
"""

from __future__ import annotations

import os
import struct
import zlib

from forwarder.headwalk import KNOWN_VRS, LONG_VRS
from forwarder.negotiation import DEFLATED_LE, EXPLICIT_LE, IMPLICIT_LE

_EXPLICIT = struct.Struct("<HH2sH")
_HEAD = struct.Struct("<HHI")
_U32 = struct.Struct("<I")
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_TEXT = frozenset({b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"LT", b"PN",
                   b"SH", b"ST", b"TM", b"UC", b"UR", b"UT"})
_TAKEN = KNOWN_VRS | {b"UN"}
_MAX_DEPTH = 64
_OPEN_ITEM = _HEAD.pack(0xFFFE, 0xE000, _UNDEFINED)
_CLOSE_ITEM = _HEAD.pack(0xFFFE, 0xE00D, 0)
_CLOSE_SEQUENCE = _HEAD.pack(0xFFFE, 0xE0DD, 0)


class _NotTaken(Exception):
    """Something this module does not convert: pydicom does."""


def exactly(path: str | os.PathLike[str], source: str, target: str,
            consistent: bool) -> bytes | bytearray | None:
    """The data set of the file at ``path`` (in ``source``) as ``target`` encodes it, every
    value byte for byte, when both are little-endian uncompressed syntaxes this module
    converts between; None otherwise (pydicom converts). ``consistent``: the probe found
    nothing to re-type (no known element encoded UN), so explicit VR may stay as it is."""
    if source == target or source not in (EXPLICIT_LE, DEFLATED_LE) or \
            target not in (IMPLICIT_LE, EXPLICIT_LE):
        return None
    if target == EXPLICIT_LE and not consistent:
        return None  # an element encoded UN gets its own VR: pydicom's dictionary
    from forwarder.scu.dimse import dataset_offset

    with open(path, "rb") as fp:
        fp.seek(dataset_offset(fp.fileno()))
        data = fp.read()
    if source == DEFLATED_LE:
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflate.decompress(data)
        except zlib.error:
            return None
        if not inflate.eof:
            return None  # cut short: the reader names what is missing
    if target == EXPLICIT_LE:
        return data if len(data) % 2 == 0 else None
    return to_implicit(data)


def to_implicit(data: bytes) -> bytearray | None:
    """An explicit VR little endian data set as implicit VR little endian; None when it
    holds something this module does not convert (see the module's words)."""
    out = bytearray()
    try:
        _elements(memoryview(data), 0, len(data), out, 0, False)
    except (_NotTaken, struct.error):
        return None
    return out or None  # an empty data set is not one to send


def _elements(buf: memoryview, pos: int, end: int, out: bytearray, depth: int,
              delimited: bool) -> int:
    """Copy the elements from ``pos`` up to ``end`` (or, ``delimited``, up to the item's
    delimiter); the offset after them."""
    while pos < end:
        group, elem, vr, length = _EXPLICIT.unpack_from(buf, pos)
        if group == 0xFFFE:
            if delimited and (group, elem) == _ITEM_END and _HEAD.unpack_from(buf, pos)[2] == 0:
                return pos + 8
            raise _NotTaken
        vr = bytes(vr)
        if vr not in _TAKEN:
            raise _NotTaken  # not explicit VR after all, or a VR the standard has not
        at = pos + 8
        if vr in LONG_VRS:
            length, at = _U32.unpack_from(buf, pos + 8)[0], pos + 12
        if vr == b"SQ":
            if length == _UNDEFINED:
                out += _HEAD.pack(group, elem, _UNDEFINED)
                pos = _items(buf, at, None, end, out, depth + 1)
                out += _CLOSE_SEQUENCE
            else:
                inner = bytearray()
                pos = _items(buf, at, at + length, end, inner, depth + 1)
                out += _HEAD.pack(group, elem, len(inner))
                out += inner
            continue
        if length == _UNDEFINED or at + length > end:
            raise _NotTaken  # fragments, UN holding a sequence, or a value cut short
        pos = at + length
        if elem == 0:
            continue  # a group length: its count changes with the headers
        value = buf[at:pos]
        if length % 2:
            out += _HEAD.pack(group, elem, length + 1)
            out += value
            out += b" " if vr in _TEXT else b"\0"
        else:
            out += _HEAD.pack(group, elem, length)
            out += value
    if delimited or pos != end:
        raise _NotTaken  # no item delimiter, or the last element runs past the end
    return pos


def _items(buf: memoryview, pos: int, end: int | None, limit: int, out: bytearray,
           depth: int) -> int:
    """Copy the items of a sequence from ``pos`` to ``end`` (None: to its delimiter)."""
    if depth > _MAX_DEPTH or (end is not None and end > limit):
        raise _NotTaken
    while True:
        if end is not None and pos >= end:
            if pos != end:
                raise _NotTaken
            return pos
        group, elem, length = _HEAD.unpack_from(buf, pos)
        if end is None and (group, elem) == _SEQ_END:
            if length:
                raise _NotTaken
            return pos + 8
        if (group, elem) != _ITEM:
            raise _NotTaken
        if length == _UNDEFINED:
            out += _OPEN_ITEM
            pos = _elements(buf, pos + 8, end if end is not None else limit, out, depth, True)
            out += _CLOSE_ITEM
        else:
            item_end = pos + 8 + length
            if item_end > (end if end is not None else limit):
                raise _NotTaken
            inner = bytearray()
            pos = _elements(buf, pos + 8, item_end, inner, depth, False)
            out += _HEAD.pack(0xFFFE, 0xE000, len(inner))
            out += inner
