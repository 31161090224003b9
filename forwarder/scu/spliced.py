"""A data set made of new bytes and ranges of its source, sent without being built whole.

A re-encoded data set (:mod:`forwarder.reencode`) differs from its source only in element
headers and padding; its large values are the source's own bytes. :class:`Spliced` lists
the pieces in order: new bytes (headers, small values, padding), ranges of the source
file read only as they are sent, or slices of a buffer (a data set inflated in memory).
The association fills its P-DATA-TF windows from it as it fills them from a file, so
memory stays at the headers' size however large the values are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

Piece = bytes | bytearray | memoryview | tuple[int, int]
"""New bytes or a buffer's slice, or (file offset, length) in the source file."""


def pread_exactly(fd: int, views: Sequence[memoryview], offset: int) -> None:
    """Fill ``views`` with the file's bytes from ``offset`` on: one ``preadv``, then more
    for what a short read left; OSError when the file ends first."""
    got = os.preadv(fd, views, offset)
    if got == sum(len(v) for v in views):
        return
    for view in views:
        if got >= len(view):
            got -= len(view)
            offset += len(view)
            continue
        rest, at = view[got:], offset + got
        while rest:
            n = os.preadv(fd, [rest], at)
            if n == 0:
                raise OSError(f"the file ended at byte {at} while its dataset was sent")
            rest, at = rest[n:], at + n
        offset += len(view)
        got = 0


class Spliced:
    """The pieces of a data set in order; ``path`` names the file that the ranges are of
    (None when there are none). Read front to back by :meth:`fill`."""

    def __init__(self, pieces: Sequence[Piece], path: str | None = None):
        self.pieces = [p for p in pieces if _size(p)]
        self.path = path
        self.length = sum(_size(p) for p in self.pieces)
        self._index = self._offset = self._at = 0  # where the next fill starts

    def __len__(self) -> int:
        return self.length

    def fill(self, fd: int | None, slots: Sequence[memoryview], at: int) -> None:
        """Fill ``slots`` in order with the data set's bytes from ``at`` on, reading file
        ranges from ``fd``; OSError when the file cannot be read."""
        if at != self._at:
            self._seek(at)
        reads: list[memoryview] = []  # consecutive views of one file range, read at once
        read_from = 0
        for slot in slots:
            done = 0
            while done < len(slot):
                piece = self.pieces[self._index]
                n = min(_size(piece) - self._offset, len(slot) - done)
                view = slot[done:done + n]
                if isinstance(piece, tuple):
                    if not reads:
                        read_from = piece[0] + self._offset
                    reads.append(view)
                else:
                    view[:] = piece[self._offset:self._offset + n]
                done += n
                self._offset += n
                if self._offset == _size(piece):
                    if reads:
                        pread_exactly(_fd(fd), reads, read_from)
                        reads = []
                    self._index, self._offset = self._index + 1, 0
        if reads:
            pread_exactly(_fd(fd), reads, read_from)
        self._at = at + sum(len(s) for s in slots)

    def tobytes(self) -> bytes:
        """The whole data set (reading the file's ranges): for tests and small data."""
        out = bytearray(self.length)
        if self.path is None:
            self.fill(None, [memoryview(out)], 0)
            return bytes(out)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.fill(fd, [memoryview(out)], 0)
        finally:
            os.close(fd)
        return bytes(out)

    def _seek(self, at: int) -> None:
        self._index, self._offset, self._at = 0, at, at
        while self._index < len(self.pieces) and self._offset >= _size(self.pieces[self._index]):
            self._offset -= _size(self.pieces[self._index])
            self._index += 1


def _size(piece: Piece) -> int:
    return piece[1] if isinstance(piece, tuple) else len(piece)


def _fd(fd: int | None) -> int:
    if fd is None:
        raise OSError("a range of the source file was asked for, and no file is open")
    return fd
