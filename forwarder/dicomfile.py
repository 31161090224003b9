"""Header probe: is a file a storable DICOM object, and what are its UIDs and routing attributes?

A plain Part 10 file is walked by its element headers (:mod:`forwarder.headwalk`); when
every value the probe needs is plain too (valid UIDs, short printable ASCII names, no
routing keywords), the answer is read straight from the bytes and pydicom is not even
loaded: ``send`` starts quickly. Otherwise pydicom decodes the walked elements, or reads
the whole file without keeping large values in memory (``defer_size``), walking every
element to the end, so truncation anywhere (header or pixel data) is noticed: a pydicom
warning about a premature end counts as an error.
"""

from __future__ import annotations

import functools
import io
import os
import re
import struct
import warnings
import zlib
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any

from forwarder import cutshort, elements, headwalk, labels
from forwarder.errors import NotDicomError
from forwarder.model import Probe
from forwarder.negotiation import DEFLATED_LE
from forwarder.plainprobe import MEDIA_STORAGE_DIRECTORY, plain_answer, plain_uid
from forwarder.scu.inflating import Inflating

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TRUNCATION_WORDS = ("end of file", "truncat", "eof", "premature", "not enough")


class _Unnamed:
    """A file object whose ``name`` is not a path (an fd opened by intake): pydicom
    would take the fd number for a file name when reading deferred values, so it is
    shown the stream itself, with no name to reopen."""

    name = None

    def __init__(self, fp: IO[bytes]):
        self._fp = fp
        self.read, self.seek, self.tell = fp.read, fp.seek, fp.tell  # the hot path

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._fp, attr)


@functools.lru_cache(maxsize=8)
def _tags(keywords: frozenset[str]) -> frozenset[int]:
    """The tags of the keywords a route matches on (an unknown keyword matches nothing)."""
    if not keywords:  # send: no routes, no configuration to load
        return frozenset()
    from forwarder.config.keywords import keyword_tags

    known = keyword_tags()
    return frozenset(known[k] for k in keywords if k in known)


@functools.lru_cache(maxsize=8)
def _in_meta(keywords: frozenset[str]) -> frozenset[str]:
    """The keywords of file meta elements (group 0002): matched against the file meta."""
    if not keywords:
        return frozenset()
    from forwarder.config.keywords import keyword_tags

    known = keyword_tags()
    return frozenset(k for k in keywords if known.get(k, 0) >> 16 == 0x0002)


def _value(ds: Dataset, keyword: str) -> str | None:
    try:
        elem = ds.data_element(keyword)
    except (KeyError, ValueError):
        return None
    if elem is None:
        return None
    v: Any = elem.value
    if v is None:  # present but empty (pydicom's empty number)
        return ""
    single = elem.VR == "FL"
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(_text(x, single) for x in v)
    return _text(v, single)


def _text(value: Any, single: bool) -> str:
    """One value as routes compare it: without padding spaces (PS3.5 6.2); a binary
    float as Python writes a float (``30.0``), an FL in single precision (0.1 is ``0.1``,
    not the double ``0.10000000149011612``; FLT_MAX ``3.4028235e+38``)."""
    if type(value) is float and single:
        import numpy

        return str(numpy.float32(value))
    return str(value).strip()


def _uid(ds: Dataset, tag: int, keyword: str) -> str | None:
    """A UID element's value as :func:`_value` gives it, straight from the raw bytes when
    they are a valid UID (pydicom decodes those to the same text, with no warning); any
    other value by pydicom."""
    from pydicom.dataelem import RawDataElement

    raw = ds._dict.get(tag)  # type: ignore[call-overload]
    if type(raw) is RawDataElement and raw.VR in ("UI", None):
        text = plain_uid(raw.value)
        if text is not None:
            return text
    return _value(ds, keyword)


def _datasets(walked: headwalk.Walked) -> tuple[Dataset, Dataset]:
    """pydicom datasets of a walked file's raw elements, to decode as a full read would."""
    from pydicom.dataelem import RawDataElement, empty_value_for_VR
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

    def elements(raws: dict[int, headwalk.Raw], implicit: bool) -> dict:
        return {BaseTag(tag): RawDataElement(
            BaseTag(tag), r.vr, r.length,  # type: ignore[arg-type]
            r.value if r.length else empty_value_for_VR(r.vr, raw=True),  # type: ignore[arg-type]
            r.at, implicit, True) for tag, r in raws.items()}

    ds = Dataset(elements(walked.dataset, walked.implicit))
    ds.set_original_encoding(walked.implicit, True)
    return ds, Dataset(elements(walked.meta, False))


def probe(source: str | os.PathLike[str] | IO[bytes], keywords: frozenset[str] = frozenset(),
          require_meta: bool = False, dataset_only: bool = False) -> Probe:
    """Probe a path or an open binary file; raise :class:`NotDicomError` with the reason.

    ``require_meta`` refuses bare datasets (storescu ``+fo``); ``dataset_only`` reads a
    dataset without file meta (storescu ``-f``).
    """
    fp: IO[bytes] = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(getattr(fp, "name", None), str):
        fp = _Unnamed(fp)  # type: ignore[assignment]
    try:
        size = os.fstat(fp.fileno()).st_size
        if size == 0:
            raise NotDicomError("empty file (0 bytes)")
        fp.seek(0)
        head = fp.read(132)
        fp.seek(0)
        has_meta = len(head) == 132 and head[128:132] == b"DICM"
        if require_meta and not has_meta:
            raise NotDicomError("no DICOM file meta information (no 'DICM' at offset 128)")
        if dataset_only and has_meta:
            raise NotDicomError("has file meta information, but a bare dataset was asked for")
        if not has_meta and not _starts_like_dataset(head):
            raise NotDicomError(f"not DICOM: no 'DICM' marker at offset 128 and no DICOM "
                                f"element at the start (it begins with {head[:8]!r})")
        if has_meta:
            try:
                found = headwalk.walk(fp.fileno(), size, _tags(keywords))
            except OSError as exc:  # a deflate bomb, refused once, not inflated twice
                raise NotDicomError(f"not readable as DICOM: {_short(exc)}") from exc
            if found is not None:
                answer = None if keywords else plain_answer(found, size)
                if answer is None:
                    ds, meta = _datasets(found)
                    answer = _summary(ds, meta, True, size, keywords, retype=False)
                return answer if found.pixels else replace(answer, pixels=False)
        from pydicom.dataset import Dataset
        from pydicom.errors import BytesLengthException, InvalidDicomError

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds, inflating = _read(fp, has_meta)
                meta_ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
                if inflating is not None:  # the offsets are in the inflated data set
                    _check_extent(ds, inflating.size(), "the inflated data set has")
                    # judged by its first element, as the reader judges it
                    implicit_inside = len(inflating.head) >= 6 and \
                        not elements.looks_explicit(inflating.head)
                else:
                    implicit_inside = False
                    _check_extent(ds, size)
                    cutshort.check_closed(fp.fileno(), ds, size, has_meta)
                _parse_sequences(ds)
                # re-encoded, never sent as it is: an element encoded UN whose VR is known
                # (checked before any value is read: reading re-types), or a dataset in
                # the other VR encoding than its meta's syntax says (the reader follows
                # the bytes; a peer would follow the label and read garbage)
                retype = labels.known_un(ds) or implicit_inside or (
                    has_meta and labels.encoded_otherwise(fp.fileno(), meta_ts))
                labels.fragments_fit(ds, meta_ts)
            except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
                raise cutshort.unreadable(fp.fileno(), size, has_meta, _short(exc)) from exc
            except zlib.error as exc:  # labelled deflated: cut short, or no deflate stream
                if "incomplete or truncated" in str(exc):
                    raise NotDicomError(f"truncated: the deflated data set stops before its "
                                        f"end ({_short(exc)})") from exc
                raise NotDicomError(f"mislabelled: the file meta names the deflated syntax "
                                    f"({DEFLATED_LE}), but the data set after it is not "
                                    f"deflate-compressed ({_short(exc)})") from exc
            except (TypeError, KeyError, IndexError, OverflowError, NotImplementedError,
                    AttributeError, struct.error, BytesLengthException) as exc:
                # the reader tripped on the bytes
                raise cutshort.unreadable(fp.fileno(), size, has_meta, f"malformed data near "
                                         f"byte {_where(fp)} of {size} (an element's tag, VR or "
                                         "length that the reader cannot follow)") from exc
            except (RecursionError, MemoryError) as exc:
                raise NotDicomError(f"not readable as DICOM: {type(exc).__name__}") from exc
        for w in caught:
            text = str(w.message).lower()
            if any(word in text for word in _TRUNCATION_WORDS):  # where, if the walk can say
                raise NotDicomError(f"truncated: "
                                    f"{cutshort.where_cut(fp.fileno(), size, has_meta) or w.message}")
        if has_meta and len(ds._dict) == 0:
            raise NotDicomError("truncated: file meta information but no dataset after it")
        meta = getattr(ds, "file_meta", None) or Dataset()
        answer = _summary(ds, meta, has_meta, size, keywords, retype)
        return answer if max(ds._dict, default=0) >= elements.PIXELS_FROM else \
            replace(answer, pixels=False)
    finally:
        if isinstance(source, (str, os.PathLike)):
            fp.close()


def _read(fp: IO[bytes], has_meta: bool) -> tuple[Dataset, Inflating | None]:
    """The file read by pydicom, large values deferred; a deflated data set is read
    through :class:`Inflating` (returned too), so it is never held inflated whole."""
    from pydicom import dcmread

    if has_meta:
        from pydicom.dataset import FileDataset
        from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

        fp.seek(0)
        preamble = read_preamble(fp, False)  # type: ignore[arg-type]
        meta = _read_file_meta_info(fp)  # type: ignore[arg-type]
        if meta.get("TransferSyntaxUID") == DEFLATED_LE:
            from forwarder.scu.dimse import dataset_offset

            # where the meta's own lengths end it (the reader may have read past that)
            inflating = Inflating(fp.fileno(), dataset_offset(fp.fileno()))
            # no name to reopen: deferred values are read from the inflated stream
            stream = _Unnamed(io.BufferedReader(inflating, 1 << 16))  # type: ignore[arg-type]
            try:
                body = read_dataset(stream, False, True, defer_size=4096)  # type: ignore[arg-type]
            except Exception as exc:
                if inflating.failed is not None:  # the reader's words would hide a cut
                    raise inflating.failed from exc
                raise
            ds = FileDataset(stream, body, preamble, meta, False, True)  # type: ignore[arg-type]
            ds.set_original_encoding(False, True, body._character_set)
            return ds, inflating
        fp.seek(0)
    return dcmread(fp, force=not has_meta, defer_size=4096), None


def _summary(ds: Dataset, meta: Dataset, has_meta: bool, size: int, keywords: frozenset[str],
             retype: bool) -> Probe:
    """The probe's answer from a dataset read either way (walked or fully read). A value
    that cannot be decoded (a 4-byte number cut to 1 byte, say, or a VR the standard
    does not define) is a reason, not a crash."""
    from pydicom.errors import BytesLengthException

    try:
        return _answer(ds, meta, has_meta, size, keywords, retype)
    except BytesLengthException as exc:  # pydicom's word for a value of the wrong length
        raise NotDicomError(f"not readable as DICOM: {_short(exc)}") from exc
    except NotImplementedError as exc:  # pydicom's word for a VR it does not know
        raise NotDicomError(f"not readable as DICOM: {_short(exc)}") from exc


def _answer(ds: Dataset, meta: Dataset, has_meta: bool, size: int, keywords: frozenset[str],
            retype: bool) -> Probe:
    group_length = meta.get("FileMetaInformationGroupLength")
    if has_meta and isinstance(group_length, int) and 144 + group_length > size:
        raise NotDicomError(f"truncated: the file meta information needs "
                            f"{144 + group_length} bytes, the file has {size}")
    sop_class = _uid(ds, 0x00080016, "SOPClassUID")
    sop_instance = _uid(ds, 0x00080018, "SOPInstanceUID")
    meta_class = _uid(meta, 0x00020002, "MediaStorageSOPClassUID")
    if sop_class == MEDIA_STORAGE_DIRECTORY or meta_class == MEDIA_STORAGE_DIRECTORY:
        raise NotDicomError("DICOMDIR (media storage directory), not a storage object")
    if not sop_class or not sop_instance:
        raise NotDicomError("no SOP Class UID or SOP Instance UID in the dataset")
    if not _UID.match(sop_class.rstrip("\0 ")) or len(sop_class) > 64:
        raise NotDicomError(f"SOP Class UID {sop_class[:70]!r} is not a UID")
    ts = _uid(meta, 0x00020010, "TransferSyntaxUID")
    if not ts:
        ts = _guess_syntax(ds)
    # streamable as it is: encoded as its syntax says, no element to re-type; the file
    # meta's UIDs may disagree with the dataset's, which are the ones a C-STORE carries
    consistent = bool(has_meta and labels.encoding_matches(ds, ts) and not retype)
    in_meta = _in_meta(keywords)  # TransferSyntaxUID, SourceApplicationEntityTitle, ...
    attrs = {k: v for k in keywords
             if (v := _value(meta if k in in_meta else ds, k)) is not None}
    phi = {k: v for k in ("PatientName", "PatientID") if (v := _value(ds, k)) is not None}
    return Probe(sop_class.rstrip("\0 "), sop_instance.rstrip("\0 "), ts,
                 _uid(ds, 0x0020000D, "StudyInstanceUID"), has_meta, consistent, attrs, phi)


def _parse_sequences(ds: Dataset, depth: int = 0) -> None:
    """Parse every sequence, nested ones included (pydicom parses them lazily), so a cut
    inside one is noticed; other values are not decoded: their extents are checked."""
    from pydicom.datadict import dictionary_VR

    if depth > elements.MAX_DEPTH:
        raise NotDicomError(f"sequences nested more than {elements.MAX_DEPTH} deep")
    for tag, raw in list(ds._dict.items()):
        vr = getattr(raw, "VR", None)
        if vr is None:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "SQ" if getattr(raw, "length", 0) == 0xFFFFFFFF else None
        if vr != "SQ":
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _parse_sequences(item, depth + 1)


def _starts_like_dataset(head: bytes) -> bool:
    """A bare dataset starts with an element of group 0002..0008 (in practice (0008,0005)
    or (0008,0016)), little or big endian; a PDF or a JPEG does not."""
    if len(head) < 8:
        return False
    le, be = struct.unpack("<H", head[:2])[0], struct.unpack(">H", head[:2])[0]
    return 0x0002 <= le <= 0x0008 or 0x0002 <= be <= 0x0008


def uid_problem(uid: str, what: str = "SOP Instance UID") -> str | None:
    """Why ``uid`` cannot be sent as a UID (PS3.5 9.1), or None. Refused: empty, longer
    than 64 characters, anything but digits and dots, an empty component (a leading,
    trailing or doubled dot). Leading zeros in a component are tolerated: older devices
    write them and peers store them."""
    if not uid:
        return f"empty {what}"
    if len(uid) > 64:
        return f"{what} is {len(uid)} characters long, more than the 64 allowed"
    if not _UID.match(uid):
        return (f"{what} {uid[:70]!r} is not a UID: only digits in components separated "
                "by single dots are allowed")
    return None


def _where(fp: IO[bytes]) -> str:
    try:
        return str(fp.tell())
    except (OSError, ValueError):
        return "?"


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _check_extent(ds: Dataset, size: int, whole: str = "the file has") -> None:
    """pydicom stops quietly at a short read and skips deferred values with seek():
    every value must lie inside the file, and the last one must end where the file does
    (a remainder shorter than an element header is a tag cut in half)."""
    end = 0
    for elem in ds._dict.values():
        tell = getattr(elem, "value_tell", None)
        length = getattr(elem, "length", None)
        if tell is None or length is None or length == 0xFFFFFFFF:
            end = max(end, size) if tell is not None else end
            continue
        if tell + length > size:
            raise NotDicomError(f"truncated: element {elem.tag} needs {length} bytes at offset "
                                f"{tell}, {whole} {size}")
        end = max(end, tell + length)
    if end and 0 < size - end < 8:
        raise NotDicomError(f"truncated: {size - end} stray bytes after the last element")


def _guess_syntax(ds: Dataset) -> str:
    implicit, little = ds.original_encoding
    if implicit:
        return "1.2.840.10008.1.2"
    return "1.2.840.10008.1.2.1" if little in (True, None) else "1.2.840.10008.1.2.2"


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read a whole object for conversion (pixel data included)."""
    from pydicom import dcmread
    from pydicom.uid import UID

    with open(path, "rb") as fp:
        head = fp.read(132)
        fp.seek(0)
        ds = dcmread(fp, force=not (len(head) == 132 and head[128:132] == b"DICM"))
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        from pydicom.dataset import FileMetaDataset

        meta = ds.file_meta if getattr(ds, "file_meta", None) else FileMetaDataset()
        meta.TransferSyntaxUID = UID(_guess_syntax(ds))
        ds.file_meta = meta
    return ds
