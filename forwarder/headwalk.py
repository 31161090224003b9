"""The probe's fast path: walk a plain Part 10 file by its element headers alone.

pydicom builds an object for every element it reads (about 1 ms for a file of a few
hundred elements); the probe needs only a handful of values and the certainty that every
element, nested ones included, lies whole inside the file. This walker reads the headers
with :func:`os.pread` a window at a time (no ``mmap``: a file cut while it is read gives
a short read here, never a SIGBUS), skips values by their lengths, walks sequences and
encapsulated fragments item by item, and keeps the raw bytes of the elements asked for.
Their values are then decoded by pydicom itself, from a :class:`~pydicom.dataset.Dataset`
of those raw elements, so a value reads exactly as it does from a full read (or, for the
few plain values :mod:`forwarder.dicomfile` decodes itself, as it would).

The walk itself needs no pydicom for the common case (explicit VR little endian,
uncompressed, the default or a Latin-1/UTF-8 character set): ``send`` then starts
without loading pydicom and numpy. Implicit VR (the data dictionary says which
elements are sequences), other transfer syntaxes and other character sets ask pydicom.

A deflated data set is walked as it inflates (:mod:`forwarder.scu.inflating`), never
held inflated: its offsets are the file meta's length plus those in the inflated bytes.

It takes only the plain case: file meta starting with its group length or version, a
little-endian transfer syntax (or the deflated one), every explicit VR one pydicom knows
and none of them UN, the encoding the meta names from the first element on, items that
tile their sequences exactly, the last element ending at the end of the file (or only
zeros after it, in whole 8-byte headers, as the reader takes them), character
sets pydicom knows (at any depth), no wanted value longer than the probe reads (4 KiB),
no routing value that is a sequence or (in implicit VR) has a VR that depends on another
element. The reader decodes some values while it reads, and the probe takes its warnings
about them for a reason; these rules keep such files for it. Anything else returns None
and the full reader decides, with its own words for what is wrong.
"""

from __future__ import annotations

import functools
import os
import struct
import zlib
from typing import TYPE_CHECKING, NamedTuple

from forwarder import zerotail
from forwarder.elements import (
    EXPLICIT,
    HEAD,
    ITEM,
    KNOWN_VRS,
    LONG_VRS,
    MAX_DEPTH,
    PIXELS_FROM,
    SEQ_END,
    U32,
    UNDEFINED,
    looks_explicit,
)
from forwarder.negotiation import DEFLATED_LE, EXPLICIT_LE, IMPLICIT_LE

if TYPE_CHECKING:
    from forwarder.scu.inflating import Window

# what the probe always reads: charset, SOP Class and Instance UIDs, Study Instance UID,
# Patient's Name and ID
ALWAYS = frozenset({0x00080005, 0x00080016, 0x00080018, 0x0020000D, 0x00100010, 0x00100020})
KEPT_MAX = 4096  # the full reader defers longer values: they are not read here either

_TAG = struct.Struct("<HH")
_SHORT_KNOWN, _LONG_KNOWN = KNOWN_VRS - LONG_VRS, KNOWN_VRS & LONG_VRS  # UN is in neither
# character set terms the walk accepts without asking pydicom (ASCII, Latin-1, UTF-8)
PLAIN_CHARSETS = frozenset({"ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6",
                            "ISO 2022 IR 100"})
_CHARSET = 0x00080005
_META_FIRST = (0x00020000, 0x00020001)  # the reader decodes the first meta element it finds
_WINDOW = 65536


class Raw(NamedTuple):
    """One element as found: its VR (None in implicit VR), length, value bytes and offset."""

    vr: str | None
    length: int
    value: bytes
    at: int


class Walked(NamedTuple):
    """A plain file's kept top-level elements and file meta, by tag, and its encoding."""

    dataset: dict[int, Raw]
    meta: dict[int, Raw]
    implicit: bool
    pixels: bool = False  # a top-level tag from (7FE0,0008) on: pixel data or past it


class _NotPlain(Exception):
    """The file is not the plain case: the full reader takes it."""


def walk(fd: int, size: int, wanted: frozenset[int]) -> Walked | None:
    """The raw top-level elements whose tags are in ``wanted`` (and :data:`ALWAYS`) and
    the file meta of a plain file opened as ``fd`` of ``size`` bytes; None when the file
    is not the plain case. A deflated data set that inflates past what is allowed raises
    :class:`forwarder.scu.inflating.TooLarge`: the full reader would inflate it again."""
    try:
        return _Walker(fd, size, *_plan(wanted)).run()
    except OSError as exc:
        from forwarder.scu.inflating import TooLarge  # imported only when a read failed

        if isinstance(exc, TooLarge):
            raise
        return None
    except (_NotPlain, struct.error, zlib.error):
        return None  # zlib.error: a deflated stream cut short, or not deflate's


@functools.lru_cache(maxsize=8)
def _plan(wanted: frozenset[int]) -> tuple[frozenset[int], bool]:
    """The tags to keep (``wanted`` and :data:`ALWAYS`), and whether one of them has a VR
    that depends on another element ("US or SS"): in implicit VR the reader resolves it
    with elements the walk does not keep. Once per configuration, not per file."""
    if not wanted:
        return ALWAYS, False
    from pydicom.datadict import DicomDictionary

    return (wanted | ALWAYS,
            any(" or " in DicomDictionary.get(t, ("",))[0] for t in wanted))


class _Walker:
    def __init__(self, fd: int, size: int, wanted: frozenset[int], ambiguous: bool):
        self.fd, self.size, self.wanted, self.ambiguous = fd, size, wanted, ambiguous
        self.base, self.buf = 0, b""
        self.kept: dict[int, Raw] = {}
        self.native = True  # the syntax is not an encapsulated one: no pixel fragments
        self.window: Window | None = None  # a deflated data set: read as it inflates
        self.meta_end = 0  # where the deflated stream starts in the file
        self.pixels = False  # a top-level tag from (7FE0,0008) on was walked
        self.nonzero_at = -1  # where a look for zeros to the end found other bytes

    def run(self) -> Walked:
        buf, i = self._bytes(128, 4)
        if buf[i:i + 4] != b"DICM":
            raise _NotPlain
        meta_raw, pos = self._meta(132)
        if not meta_raw or next(iter(meta_raw)) not in _META_FIRST:
            raise _NotPlain  # its value, decoded by the reader, could warn
        group_length = meta_raw.get(0x00020000)
        if group_length is not None and group_length.length != 4:
            raise _NotPlain  # the reader stops at it, with its own words
        syntax = meta_raw.get(0x00020010)
        if syntax is None or not syntax.value:
            raise _NotPlain
        name = syntax.value.decode("ascii", "replace").rstrip("\0 ")
        if name == DEFLATED_LE:  # explicit VR little endian, deflated
            from forwarder.scu.inflating import Inflating, Window

            inflating = Inflating(self.fd, pos)
            self.window, self.meta_end = Window(inflating, _WINDOW), pos
            self.size = pos + inflating.size()
            self.buf, self.base = b"", 0  # what follows the meta in the file is deflated
            implicit = False
        else:
            implicit = _implicit(name)
            self.native = name in (EXPLICIT_LE, IMPLICIT_LE) or not _encapsulated(name)
        if implicit and self.ambiguous:
            raise _NotPlain
        if pos >= self.size:
            raise _NotPlain  # meta and nothing after it: the full reader says so
        buf, i = self._bytes(pos, 8)
        if implicit and looks_explicit(buf, i):
            raise _NotPlain  # the reader switches to explicit VR here, with a warning
        self._dataset(pos, self.size, implicit, 0)
        return Walked(self.kept, meta_raw, implicit, self.pixels)

    def _bytes(self, pos: int, n: int) -> tuple[bytes, int]:
        """The buffer holding bytes ``pos`` to ``pos + n`` of the file, and where they
        start in it."""
        start = pos - self.base
        if start < 0 or start + n > len(self.buf):
            if pos + n > self.size:
                raise _NotPlain
            if self.window is not None:  # the data set of a deflated file
                self.buf, start = self.window.view(pos - self.meta_end, n)
                self.base = pos - start
            else:
                self.buf = os.pread(self.fd, max(n, _WINDOW), pos)
                self.base, start = pos, 0
            if len(self.buf) - start < n:
                raise _NotPlain  # shorter than fstat said: cut while being read
        return self.buf, start

    def _meta(self, pos: int) -> tuple[dict[int, Raw], int]:
        raw: dict[int, Raw] = {}
        while pos + 8 <= self.size:
            buf, i = self._bytes(pos, 8)
            group, elem, vr, length = EXPLICIT.unpack_from(buf, i)
            if group != 2:
                break
            if vr not in KNOWN_VRS or vr == b"SQ":
                raise _NotPlain
            head = 8
            if vr in LONG_VRS:
                buf, i = self._bytes(pos, 12)
                length, head = U32.unpack_from(buf, i + 8)[0], 12
            if length == UNDEFINED:
                raise _NotPlain
            raw[group << 16 | elem] = self._raw(vr.decode(), length, pos + head)
            pos += head + length
        return raw, pos

    def _raw(self, vr: str | None, length: int, at: int) -> Raw:
        if length > KEPT_MAX:
            raise _NotPlain
        if not length:
            return Raw(vr, 0, b"", at)
        buf, i = self._bytes(at, length)
        return Raw(vr, length, buf[i:i + length], at)

    def _dataset(self, pos: int, end: int | None, implicit: bool, depth: int) -> int:
        """Walk one dataset from ``pos`` to ``end``, or to its item delimiter when ``end``
        is None (an item of undefined length); the offset after it."""
        top = depth == 0
        size, wanted, kept = self.size, self.wanted, self.kept
        head_at, explicit_at = HEAD.unpack_from, EXPLICIT.unpack_from
        short_vrs, long_vrs = _SHORT_KNOWN, _LONG_KNOWN
        limit = size if end is None else end
        buf, base = self.buf, self.base
        blen = len(buf)
        while pos < limit:
            start = pos - base
            if start < 0 or start + 12 > blen:
                buf, start = self._bytes(pos, 12 if pos + 12 <= size else 8)
                base, blen = self.base, len(buf)
            if implicit:
                group, elem, length = head_at(buf, start)
                if not group and not elem and top and self._zeros_from(pos):
                    break  # zeros to the end of the file: no element, past the data set
                if group >= 0x7FE0 and top and group << 16 | elem >= PIXELS_FROM:
                    self.pixels = True
                if group == 0xFFFE:
                    if elem == 0xE00D and end is None and length == 0 and not top:
                        return pos + 8
                    raise _NotPlain
                code = None
                at = pos + 8
                if self._implicit_sequence(group << 16 | elem, length, at):
                    if top and group << 16 | elem in wanted:
                        raise _NotPlain  # a sequence as a routing value: the reader's text
                    pos = self._sequence(at, length, True, depth + 1)
                    buf, base, blen = self.buf, self.base, len(self.buf)
                    continue
            else:
                group, elem, code, length = explicit_at(buf, start)
                if not group and not elem and top and self._zeros_from(pos):
                    break  # zeros to the end of the file: no element, past the data set
                if group >= 0x7FE0 and top and group << 16 | elem >= PIXELS_FROM:
                    self.pixels = True
                if group == 0xFFFE:
                    length = head_at(buf, start)[2]
                    if elem == 0xE00D and end is None and length == 0 and not top:
                        return pos + 8
                    raise _NotPlain
                if code in short_vrs:
                    at = pos + 8
                elif code in long_vrs:
                    length, at = head_at(buf, start + 4)[2], pos + 12
                    if code == b"SQ":
                        if top and group << 16 | elem in wanted:
                            raise _NotPlain  # a sequence as a routing value: the reader's text
                        pos = self._sequence(at, length, False, depth + 1)
                        buf, base, blen = self.buf, self.base, len(self.buf)
                        continue
                else:
                    raise _NotPlain  # UN, unknown, or implicit VR inside an explicit file
            if length == UNDEFINED:
                if code not in (b"OB", b"OW") or (top and self.native):
                    raise _NotPlain  # fragments under a native syntax: the reader's check
                pos = self._fragments(at)
                buf, base, blen = self.buf, self.base, len(self.buf)
                continue
            pos = at + length
            if group == 8 and elem == 5:  # (0008,0005), at any depth: the reader decodes it
                self._charset(at, length)
                buf, base, blen = self.buf, self.base, len(self.buf)
            if top and group << 16 | elem in wanted:
                kept[group << 16 | elem] = self._raw(code.decode() if code else None, length, at)
                buf, base, blen = self.buf, self.base, len(self.buf)
        if pos > limit or (end is None and not top):
            raise _NotPlain  # cut short (the full reader names the element), or no delimiter
        return pos

    def _zeros_from(self, pos: int) -> bool:
        """Only zeros from ``pos`` to the end, in whole 8-byte headers (the reader calls a
        shorter rest stray; :mod:`forwarder.zerotail`)? Once other bytes are found, every
        look before them answers at once: in implicit VR each 8 zeros walk as an element."""
        if self.window is not None or (self.size - pos) % 8 or pos < self.nonzero_at:
            return False  # a deflated stream, a stray tail, or other bytes further on
        self.nonzero_at = zerotail.first_nonzero(self.fd, pos, self.size)
        return self.nonzero_at >= self.size

    def _charset(self, at: int, length: int) -> None:
        """A Specific Character Set the reader knows term by term, or not the plain case
        (the reader warns about others, with the value in its words)."""
        if length > KEPT_MAX:
            raise _NotPlain
        buf, i = self._bytes(at, length) if length else (b"", 0)
        value = buf[i:i + length]
        if b"\0" in value:
            raise _NotPlain  # the reader may look a NUL up as a codec name, and fail
        for term in value.decode("latin-1").split("\\"):
            term = term.strip(" ")
            if term and term not in PLAIN_CHARSETS:
                from pydicom.charset import python_encoding

                if term not in python_encoding:
                    raise _NotPlain

    def _implicit_sequence(self, tag: int, length: int, at: int) -> bool:
        dictionary, dictionary_VR = _dictionary()
        entry = dictionary.get(tag)
        if entry is not None:
            vr = entry[0]
        elif tag >> 16 & 1:  # private: a sequence only when it has undefined length
            vr = None
        else:
            try:
                vr = dictionary_VR(tag)  # repeating groups, e.g. (50xx,2600)
            except KeyError:
                vr = None
        if vr == "SQ":
            return True
        if length != UNDEFINED:
            return False
        if vr is None:
            buf, i = self._bytes(at, 4)
            if _TAG.unpack_from(buf, i) == (0xFFFE, 0xE000):  # items follow: the reader's look
                return True
        raise _NotPlain  # an undefined length on a value that is no sequence

    def _sequence(self, pos: int, length: int, implicit: bool, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise _NotPlain
        end = None if length == UNDEFINED else pos + length
        if end is not None and end > self.size:
            raise _NotPlain
        while True:
            if end is not None and pos >= end:
                if pos != end:
                    raise _NotPlain
                return pos
            buf, i = self._bytes(pos, 8)
            group, elem, item_length = HEAD.unpack_from(buf, i)
            tag = group << 16 | elem
            if tag == SEQ_END and end is None and item_length == 0:
                return pos + 8
            if tag != ITEM:
                raise _NotPlain
            if item_length == UNDEFINED:
                pos = self._dataset(pos + 8, None, implicit, depth)
            else:
                item_end = pos + 8 + item_length
                if item_end > self.size:
                    raise _NotPlain
                pos = self._dataset(pos + 8, item_end, implicit, depth)

    def _fragments(self, pos: int) -> int:
        """Encapsulated pixel data: items of defined length up to the sequence delimiter."""
        while True:
            buf, i = self._bytes(pos, 8)
            group, elem, length = HEAD.unpack_from(buf, i)
            tag = group << 16 | elem
            if tag == SEQ_END and length == 0:
                return pos + 8
            if tag != ITEM or length == UNDEFINED:
                raise _NotPlain
            pos += 8 + length
            if pos > self.size:
                raise _NotPlain


@functools.cache
def _dictionary():  # noqa: ANN202 - pydicom's data dictionary and its VR lookup
    """pydicom's data dictionary, loaded the first time an implicit VR file needs it."""
    from pydicom.datadict import DicomDictionary, dictionary_VR

    return DicomDictionary, dictionary_VR


def _encapsulated(syntax: str) -> bool:
    from pydicom.uid import UID

    return bool(UID(syntax).is_encapsulated)


def _implicit(syntax: str) -> bool:
    """Whether ``syntax``, a transfer syntax the walk takes, is implicit VR; a syntax it
    does not take (big endian, unknown) is not the plain case (the deflated one is taken
    before this is asked). Only syntaxes other than the two uncompressed little-endian
    ones are looked up in pydicom's table."""
    if syntax in (EXPLICIT_LE, IMPLICIT_LE):
        return syntax == IMPLICIT_LE
    from pydicom.uid import UID

    uid = UID(syntax)
    if not uid.is_transfer_syntax or not uid.is_little_endian or uid.is_deflated:
        raise _NotPlain
    return bool(uid.is_implicit_VR)
