"""A data set made of new bytes and ranges of its source, sent without being built whole.

A re-encoded data set (:mod:`forwarder.reencode`) differs from its source only in element
headers and padding; its large values are the source's own bytes. :class:`Spliced` lists
the pieces in order: new bytes (headers, small values, padding), ranges of the source
file read only as they are sent (or inflated again, for a deflated file), or slices of a
buffer (a data set already in memory).
The association fills its P-DATA-TF windows from it as it fills them from a file, so
memory grows with the new bytes, not with the values left in the file. The ranges are read
through the descriptor the headers were read through, so a file renamed over the path
meanwhile cannot lend its bytes to the old headers; close it once sent.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence

from forwarder.scu.inflating import Inflating

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
                raise OSError(f"the file ended before byte {at} (cut short while its "
                              "dataset was sent)")
            rest, at = rest[n:], at + n
        offset += len(view)
        got = 0


class Spliced:
    """The pieces of a data set in order; ``fd``: the open file the ranges are of (None
    when there are none), owned from now on, ``path`` its name for messages;
    ``inflated_from``: the ranges are of the data set deflated in the file from that
    offset on, inflated again as they are read. Read front to back by :meth:`fill`; a
    context manager that closes ``fd`` (so does the collector, if it is left open)."""

    def __init__(self, pieces: Sequence[Piece], fd: int | None = None, path: str = "",
                 inflated_from: int | None = None):
        self.pieces = [p for p in pieces if _size(p)]
        self.fd, self.path = fd, path
        self._inflating = None if inflated_from is None or fd is None else \
            Inflating(fd, inflated_from)
        self.length = sum(_size(p) for p in self.pieces)
        self._index = self._offset = self._at = 0  # where the next fill starts
        self._closer = None if fd is None else weakref.finalize(self, os.close, fd)

    def __len__(self) -> int:
        return self.length

    def __enter__(self) -> Spliced:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closer is not None:
            self._closer()  # closes fd once, however often it is called
        self.fd = None

    def fill(self, slots: Sequence[memoryview], at: int) -> None:
        """Fill ``slots`` in order with the data set's bytes from ``at`` on: where the
        last fill ended, or 0 to read it again from the start. OSError when the file
        cannot be read (the next fill must then start at 0)."""
        if at != self._at:
            if at != 0:
                raise ValueError(f"a spliced data set is read in order: byte {at} asked "
                                 f"for, byte {self._at} is next")
            self._index = self._offset = 0
        wanted = sum(len(s) for s in slots)
        if at + wanted > self.length:
            raise ValueError(f"{wanted} bytes asked for at byte {at} of a data set of "
                             f"{self.length}")
        self._at = -1  # until this fill is done
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
                        self._read(reads, read_from)
                        reads = []
                    self._index, self._offset = self._index + 1, 0
        if reads:
            self._read(reads, read_from)
        self._at = at + wanted

    def tobytes(self) -> bytes:
        """The whole data set (reading the file's ranges): for tests and small data."""
        out = bytearray(self.length)
        self.fill([memoryview(out)], 0)
        return bytes(out)

    def _read(self, views: list[memoryview], offset: int) -> None:
        """Fill ``views`` from the range at ``offset``: read from the file, or inflated."""
        if self.fd is None:
            raise OSError(f"{self.path or 'the file its values are in'} is not open")
        if self._inflating is not None:
            self._inflating.fill(views, offset)
        else:
            pread_exactly(self.fd, views, offset)


def _size(piece: Piece) -> int:
    return piece[1] if isinstance(piece, tuple) else len(piece)
