"""A deflated data set read as its inflated bytes, a window at a time (PS3.5 A.5).

The deflated syntax compresses the whole data set after the file meta as one deflate
stream. :class:`Inflating` inflates it from the file as it is read, so a large data set
is never held inflated: the probe walks its headers through it (or pydicom's reader
reads through a buffered view of it), the re-encoder walks its headers through it, and
the association reads the large values again through it as it sends them. Reading
forward inflates what lies between; the last 256 KiB inflated are kept, so a reader that
looks ahead and steps back costs nothing; reading further back starts the stream again
from the top. Bytes after the end of the stream are passed over, as pydicom's reader and
DCMTK pass them over. A stream that inflates to more than :data:`MAX_INFLATED` is
refused: no peer takes such a data set, and inflating it would take minutes.
"""

from __future__ import annotations

import io
import os
import zlib
from collections import deque
from collections.abc import Sequence

_CHUNK = 1 << 16  # deflated bytes read from the file at a time, and inflated at most
_BACK = 1 << 18  # inflated bytes kept for a reader that steps back (4 of its buffers)
MAX_INFLATED = 4 << 30


class Cut(zlib.error):
    """The file ends before its deflate stream does."""


class TooLarge(OSError):
    """The stream inflates to more than :data:`MAX_INFLATED` bytes."""


class Inflating(io.RawIOBase):
    """The stream deflated in the file open as ``fd`` from ``base`` on, inflated as read.
    The descriptor stays its owner's. zlib.error for a stream that is not deflate's,
    :class:`Cut` for one the file ends inside, :class:`TooLarge`; the first of these is
    kept as :attr:`failed`, for a caller whose reader (pydicom's) puts its own words on
    what it catches."""

    def __init__(self, fd: int, base: int):
        super().__init__()
        self.fd, self.base = fd, base
        self.head = b""  # the first 8 bytes inflated: how the data set starts
        self.failed: Exception | None = None
        self._at = 0  # where the next read starts: a seek only moves this
        self._start()

    def _start(self) -> None:
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._read_at = self.base  # the next deflated byte to read from the file
        self._tail = b""  # deflated bytes read but not inflated yet
        self._made = 0  # inflated bytes produced so far
        self._back: deque[bytes] = deque()  # the last of them: at least _BACK, if made
        self._kept = 0  # bytes in _back

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._at
        elif whence == io.SEEK_END:
            offset += self.size()
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        self._at = offset  # the next read goes there
        return offset

    def size(self) -> int:
        """The inflated length (the stream inflated to its end, the position kept)."""
        while self._more(_CHUNK):
            pass
        return self._made

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._at < self._made - self._kept:
            self._start()  # further back than what is kept: inflated again from the top
        done = 0
        if self._at < self._made:  # among the bytes kept (a reader that stepped back)
            kept = b"".join(self._back)[self._kept - (self._made - self._at):]
            done = min(len(view), len(kept))
            view[:done] = kept[:done]
        while self._made < self._at:  # a seek forward: inflate what lies between
            if not self._more(min(self._at - self._made, _CHUNK)):
                return 0
        while done < len(view):
            data = self._more(len(view) - done)
            if not data:
                break
            view[done:done + len(data)] = data
            done += len(data)
        self._at += done
        return done

    def fill(self, views: Sequence[memoryview], offset: int) -> None:
        """Fill ``views`` with the inflated bytes from ``offset`` on; OSError when the
        stream ends first or cannot be inflated (the file changed since it was read)."""
        self.seek(offset)
        try:
            for view in views:
                if self.readinto(view) != len(view):
                    raise OSError(f"the deflated data set ended before inflated byte "
                                  f"{self._at + 1} (the file changed while it was sent)")
        except zlib.error as exc:
            raise OSError(f"the deflated data set cannot be inflated at inflated byte "
                          f"{self._at} ({exc}; the file changed while it was sent)") from exc

    def _more(self, most: int) -> bytes:
        """Up to ``most`` inflated bytes from where the stream is; b"" at its end."""
        try:
            return self._inflated(most)
        except (zlib.error, TooLarge) as exc:
            self.failed = self.failed or exc
            raise

    def _inflated(self, most: int) -> bytes:
        while not self._inflate.eof:
            # with no input left, this still hands out what the last call held back at
            # ``most``: only when nothing comes out is more input needed
            data = self._inflate.decompress(self._tail, most)
            self._tail = self._inflate.unconsumed_tail
            if data:
                if self._made + len(data) > MAX_INFLATED:
                    raise TooLarge(f"the deflated data set inflates to more than "
                                   f"{MAX_INFLATED >> 20} MiB (a deflate bomb, or a data "
                                   "set no peer would take)")
                if self._made < 8 and len(self.head) == self._made:  # the first time
                    self.head += data[:8 - self._made]
                self._made += len(data)
                self._back.append(data)
                self._kept += len(data)
                while self._kept - len(self._back[0]) >= _BACK:
                    self._kept -= len(self._back.popleft())
                return data
            if self._inflate.eof:
                break
            self._tail = os.pread(self.fd, _CHUNK, self._read_at)
            self._read_at += len(self._tail)
            if not self._tail:
                raise Cut(f"incomplete or truncated stream: the file ends at byte "
                          f"{self._read_at} before its deflated data set does")
        return b""


class Window:
    """Windows of an inflated stream for a reader that goes forward: a window keeps
    what the next read needs of the last one, so the stream never goes back."""

    def __init__(self, inflating: Inflating, size: int = _CHUNK):
        self.inflating, self.size = inflating, size
        self.start, self.buf = 0, b""

    def view(self, pos: int, n: int) -> tuple[bytes, int]:
        """A buffer holding the inflated bytes from ``pos`` on (fewer than ``n`` at the
        end of the stream), and where ``pos`` is in it."""
        end = self.start + len(self.buf)
        if pos < self.start or pos + n > end:
            keep = self.buf[pos - self.start:] if self.start <= pos < end else b""
            self.inflating.seek(pos + len(keep))
            self.start = pos
            self.buf = keep + self.inflating.read(max(n, self.size) - len(keep))
        return self.buf, pos - self.start
