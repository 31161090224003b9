"""Convert a dataset to a transfer syntax the peer accepted.

Between the uncompressed syntaxes (implicit/explicit VR, little/big endian, deflated)
the dataset is re-encoded as it is sent (:func:`forwarder.scu.store.encode`);
compressed pixel data is decompressed with pydicom's pixel handlers and the pylibjpeg
plugins, per the destination's ``decompress`` policy.
Choosing a syntax needs no pydicom: it is loaded when a file is converted or refused.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from forwarder.negotiation import DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE

PLAIN = (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED_LE)
LOSSLESS = {
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
}

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


class CannotConvert(Exception):
    """The file cannot be carried in any syntax the peer accepted; the message says why."""


def is_plain(ts: str) -> bool:
    return ts in PLAIN


def convertible(source_ts: str, decompress: str) -> list[str]:
    """Syntaxes ``source_ts`` can become, best first; empty when policy forbids it."""
    if is_plain(source_ts):
        return [ts for ts in PLAIN if ts != source_ts]
    if decompress == "always" or (decompress == "lossless" and source_ts in LOSSLESS):
        return list(PLAIN)
    return []


def prepare(path: str | os.PathLike[str], source_ts: str, target_ts: str) -> Dataset:
    """The dataset of ``path`` ready to be sent in ``target_ts`` (written as it is sent).

    The dataset's own SOP Class and Instance UIDs are what the peer gets, whatever the
    file meta says. A compressed file sent in its own syntax (an element to re-type, an
    odd length) is re-encoded with its encapsulated pixel data as it is.
    """
    with text_kept(CannotConvert):
        try:
            return _prepare(path, source_ts, target_ts)
        except CannotConvert:
            raise
        except Exception as exc:  # noqa: BLE001 - a value pydicom cannot re-encode: it fails
            text = str(exc).split(". ")[0][:200]
            tag = re.search(r"\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)", str(exc))
            where = f" (element {tag.group(0)})" if tag and tag.group(0) not in text else ""
            raise CannotConvert(f"cannot re-encode the dataset{where}: {text}") from exc


# pydicom's words when it reads or writes text it cannot represent: it substitutes
# characters (U+FFFD, '?') and goes on
_TEXT_LOST = ("replacement characters", "unknown escape sequence", "Unknown encoding")


@contextlib.contextmanager
def text_kept(error: type[Exception]) -> Iterator[None]:
    """Raise ``error`` saying why when pydicom, reading or writing a data set inside the
    block, warned that it substituted text (bytes not valid in the declared character
    set): re-encoding would change it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        said = str(w.message)
        if any(words in said for words in _TEXT_LOST):
            raise error("text in the data set is not valid in its Specific Character Set, "
                        f"and re-encoding it would change it ({said.split(' - ')[0]})")


def _prepare(path: str | os.PathLike[str], source_ts: str, target_ts: str) -> Dataset:
    from pydicom.uid import UID

    from forwarder.byteorder import ByteOrderError, change_byte_order
    from forwarder.dicomfile import read_dataset

    ds = read_dataset(path)
    # a compressed syntax over no pixel data: the rest is explicit VR LE, nothing to decode
    decode = not is_plain(source_ts) and source_ts != target_ts and \
        any(tag in ds for tag in (0x7FE00008, 0x7FE00009, 0x7FE00010))
    if decode:
        try:
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # noqa: BLE001 - every decoder fault is the same outcome
            raise CannotConvert(f"cannot decompress {UID(source_ts).name}: {exc}") from exc
        if source_ts not in LOSSLESS:
            ds.LossyImageCompression = "01"
    if not is_plain(target_ts) and target_ts != source_ts:
        raise CannotConvert(f"cannot compress to {UID(target_ts).name}")
    target = UID(target_ts)
    implicit, little = ds.original_encoding
    if decode:
        little = True  # decoded pixels are little endian
    # private elements without a VR of their own stay UN; across a byte order change
    # that fails the file below: only their VR would say how to swap them
    keep_private_un(ds, implicit_too=bool(little) != target.is_little_endian)
    for _elem in ds.iterall():  # convert raw elements: implicit VR ones get their VR here
        pass
    if source_ts != target_ts:
        drop_group_lengths(ds)
    try:
        change_byte_order(ds, bool(little), target.is_little_endian)
    except ByteOrderError as exc:
        raise CannotConvert(f"cannot convert {UID(source_ts).name} to {target.name}: "
                            f"{exc}") from exc
    ds.set_original_encoding(target.is_implicit_VR, target.is_little_endian,
                             ds.original_character_set)
    meta = ds.file_meta
    meta.TransferSyntaxUID = target
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def keep_private_un(ds: Dataset, implicit_too: bool = False) -> None:
    """Private elements encoded UN stay UN, their bytes as they are, nested ones
    included (with ``implicit_too``, those read in implicit VR as well). The reader would
    re-type them from pydicom's private dictionary, which knows other versions of
    vendors' elements than a file may hold: a value would be re-encoded, or fail (3
    bytes under an SS entry), text would lose its padding, and across a change of byte
    order a value would be swapped by a VR the file never said (4 bytes swapped as two
    US). A byte order change refuses an element left UN."""
    from pydicom.dataelem import DataElement, RawDataElement

    for tag, elem in list(ds._dict.items()):
        vr = elem.VR
        if isinstance(elem, RawDataElement) and (vr == "UN" or implicit_too and vr is None) \
                and tag.is_private and not tag.is_private_creator \
                and elem.length != 0xFFFFFFFF:
            ds._dict[tag] = DataElement(tag, "UN", elem.value, elem.value_tell,
                                        already_converted=True)
        elif vr in ("SQ", None) and ds[tag].VR == "SQ":  # None: implicit VR, read now
            for item in ds[tag].value or ():
                keep_private_un(item, implicit_too)


def drop_group_lengths(ds: Dataset) -> None:
    """Remove (gggg,0000) group lengths, nested ones included: re-encoding in another
    syntax changes the lengths they state (PS3.5 7.2 makes them optional)."""
    for tag in [t for t in ds.keys() if t.element == 0]:
        del ds[tag]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or ():
                drop_group_lengths(item)


def describe_refusal(sop_class: str, source_ts: str, accepted: list[tuple[str, str]],
                     decompress: str) -> str:
    """A one-line reason naming the SOP class, the file's syntax and what the peer took."""
    from pydicom.uid import UID

    syntaxes = {ts for sop, ts in accepted if sop == sop_class}
    offered = sorted(UID(ts).name for ts in syntaxes)
    what = ", ".join(offered) if offered else "nothing for this SOP class"
    extra = ""
    if offered and not any(is_plain(ts) for ts in syntaxes):
        extra = " (only compressed syntaxes, and the forwarder never compresses)"
    elif offered and not is_plain(source_ts) and not convertible(source_ts, decompress):
        allows = "lossless" if decompress == "never" and source_ts in LOSSLESS else "always"
        extra = (f" (decompress: {decompress} forbids decompressing it; decompress: {allows} "
                 "allows it" + ("" if source_ts in LOSSLESS else
                                ", the copy marked Lossy Image Compression 01") + ")")
    return (f"{UID(sop_class).name} in {UID(source_ts).name}: the peer accepted {what}"
            f"{extra}")
