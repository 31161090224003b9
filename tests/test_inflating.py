"""A deflated data set read as its inflated bytes, never held whole.

Whatever the order of reads and seeks, the bytes must be those zlib inflates at once; a
file that ends inside its stream is told apart from one that holds no deflate stream,
since the probe calls the first truncated (a writer may still be at it) and the second
mislabelled.
"""

from __future__ import annotations

import contextlib
import io
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.scu.inflating import Cut, Inflating

PREFIX = b"\0" * 132  # what stands before the stream in a file: a file meta, say


def deflated(tmp_path: Path, data: bytes, after: bytes = b"") -> Path:
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    path = tmp_path / "stream"
    path.write_bytes(PREFIX + deflate.compress(data) + deflate.flush() + after)
    return path


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Inflating]:
    fd = os.open(path, os.O_RDONLY)
    try:
        yield Inflating(fd, len(PREFIX))
    finally:
        os.close(fd)


# compressible runs and random bytes, so deflate's blocks differ in kind and size
DATA = st.lists(st.one_of(st.binary(max_size=3000),
                          st.tuples(st.integers(0, 255), st.integers(1, 300_000)).map(
                              lambda run: bytes([run[0]]) * run[1])),
                max_size=8).map(b"".join)
READS = st.lists(st.tuples(st.integers(0, 700_000), st.integers(0, 200_000)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(data=DATA, reads=READS)
def test_reads_anywhere_give_what_zlib_inflates(tmp_path_factory: pytest.TempPathFactory,
                                                data: bytes,
                                                reads: list[tuple[int, int]]) -> None:
    path = deflated(tmp_path_factory.mktemp("s"), data, after=b"trailing bytes")
    with opened(path) as raw:
        buffered = io.BufferedReader(raw, 1 << 16)
        assert raw.size() == len(data)
        for offset, n in reads:
            buffered.seek(offset)
            expected = data[offset:offset + n]
            assert buffered.read(n) == expected
            assert buffered.tell() == offset + len(expected)
        assert raw.head == data[:8]


def test_fill_reads_in_order_and_again_from_the_start(tmp_path: Path) -> None:
    data = os.urandom(50_000) + b"\1" * 300_000 + os.urandom(10_000)
    with opened(deflated(tmp_path, data)) as raw:
        for _ in range(2):  # the second pass starts the stream again
            out = bytearray(len(data))
            view = memoryview(out)
            for at in range(0, len(data), 70_000):
                raw.fill([view[at:at + 30_000], view[at + 30_000:at + 70_000]], at)
            assert out == data


def test_a_file_that_ends_inside_its_stream_is_cut(tmp_path: Path) -> None:
    """The probe calls it truncated (its words match zlib's own for a cut stream), and a
    fill says the file changed while it was sent."""
    path = deflated(tmp_path, os.urandom(200_000))
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    with opened(path) as raw:
        with pytest.raises(Cut, match="incomplete or truncated stream: the file ends at byte"):
            raw.size()
        with pytest.raises(OSError, match="changed while it was sent"):
            raw.fill([memoryview(bytearray(150_000))], 0)


def test_bytes_that_are_not_deflate_s_are_zlib_s_error_not_a_cut(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_bytes(PREFIX + b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" * 100)
    with opened(path) as raw:
        with pytest.raises(zlib.error) as caught:
            raw.read(100)
        assert not isinstance(caught.value, Cut)


def test_a_seek_forward_reads_nothing_until_bytes_are_asked_for(tmp_path: Path) -> None:
    """A reader skipping a large value seeks over it; only a read inflates what lies
    between (the probe's reader seeks past deferred values)."""
    with opened(deflated(tmp_path, os.urandom(300_000))) as raw:
        raw.seek(250_000)
        assert raw.tell() == 250_000 and raw._made == 0
        raw.seek(10, io.SEEK_CUR)
        assert raw.read(5) and raw._made >= 250_015
        assert raw.seek(0, io.SEEK_END) == 300_000
        with pytest.raises(ValueError, match="negative seek position"):
            raw.seek(-1)


@pytest.mark.parametrize("size", [65_537, 131_073, 1 << 20])
def test_the_last_input_can_hold_more_than_one_read_of_output(tmp_path: Path,
                                                               size: int) -> None:
    """Zeros deflate a thousandfold: the whole file is taken in while inflating stops at
    the size asked for (one byte short, at these sizes). What it holds back is still
    the stream's, not a cut."""
    with opened(deflated(tmp_path, bytes(size))) as raw:
        assert raw.size() == size
        out = bytearray(b"x" * size)
        raw.fill([memoryview(out)], 0)
        assert not any(out)


def test_a_deflated_file_whose_stream_inflates_a_thousandfold_is_whole(tmp_path: Path) -> None:
    """A file pydicom wrote: the probe takes it, and it converts as DCMTK does."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from forwarder.dicomfile import probe
    from forwarder.reencode import exactly

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    ds.PatientID = "1"
    ds.EncapsulatedDocument = bytes(65516)
    path = tmp_path / "document.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert probe(path).sop_instance_uid == "1.2.3.4.5.6.7.8.9"
    with exactly(path, DeflatedExplicitVRLittleEndian, "1.2.840.10008.1.2", True) as spliced:
        assert spliced is not None and len(spliced.tobytes()) == len(spliced)


def test_a_stream_refused_as_too_large_keeps_what_it_had_right(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from forwarder.scu import inflating
    from forwarder.scu.inflating import TooLarge

    monkeypatch.setattr(inflating, "MAX_INFLATED", 300_000)
    data = os.urandom(500_000)
    with opened(deflated(tmp_path, data)) as raw:
        with pytest.raises(TooLarge, match="inflates to more than 0 MiB"):
            raw.size()
        assert raw._made <= 300_000 and isinstance(raw.failed, TooLarge)
        raw.seek(raw._made - 1000)
        assert raw.read(1000) == data[raw._made - 1000:raw._made]
