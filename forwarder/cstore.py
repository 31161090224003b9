"""C-STORE one file on an open association: streamed unchanged when possible, else converted.

Used by `send` and by the daemon's sender, so both pick contexts and convert alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from forwarder.model import Probe, StoreResult
from forwarder.negotiation import (
    DEFLATED_LE,
    ENCAPSULATED_UNCOMPRESSED,
    EXPLICIT_LE,
    choose_context,
    without_pixels_context,
)
from forwarder.reencode import exactly
from forwarder.scu import Association
from forwarder.scu.spliced import Spliced
from forwarder.scu.store import send_on
from forwarder.transcode import (
    LOSSLESS,
    CannotConvert,
    convertible,
    describe_refusal,
    prepare,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def store_file(assoc: Association, path: str | os.PathLike[str], probe: Probe,
               decompress: str = "lossless",
               modify: Callable[[Dataset], None] | None = None,
               message_id: int = 1,
               while_waiting: Callable[[], None] | None = None,
               deflate_level: int = 6) -> StoreResult:
    """Send ``path`` (probed as ``probe``) and return the peer's answer.

    The file goes unchanged (read in chunks, never decoded) when the peer accepted its
    exact transfer syntax and its file meta agrees with the dataset. A data set without
    pixel data goes under a compressed syntax the peer accepted when it accepted none it
    can be converted to: in explicit VR little endian, which is what such a syntax makes
    of every element but pixel data (PS3.5 A.4). An explicit VR
    little endian data set (or a deflated one, inflated) is written again with every
    value kept byte for byte, in implicit VR or, padded, in explicit VR
    (:mod:`forwarder.reencode`); otherwise the dataset is decoded, converted and
    re-encoded (PS3.5 10: a syntax change keeps every attribute value). A file whose
    dataset has odd length (an unpadded value, a deflated stream without its pad byte)
    is re-encoded in its own syntax with its values padded (see :func:`odd_stream`).

    ``while_waiting`` is called once the request is on its way, before the response is
    read (not at all when nothing is sent). ``deflate_level``: zlib's level when the
    dataset is deflated as it is sent (storescu ``+cl``).
    """
    pairs = assoc.accepted_pairs()
    options = convertible(probe.transfer_syntax, decompress)
    chosen = choose_context(pairs, probe.sop_class_uid, probe.transfer_syntax, options)
    encoding = chosen  # the data set's encoding: the context's syntax, but for one case
    if chosen is None and not _holds_pixels(path, probe):
        chosen = without_pixels_context(pairs, probe.sop_class_uid,
                                        {*LOSSLESS, ENCAPSULATED_UNCOMPRESSED})
        encoding = EXPLICIT_LE
    if chosen is None or encoding is None:
        from pydicom.uid import UID

        if probe.sop_class_uid not in _proposed(assoc):
            return StoreResult(None, refused=f"{UID(probe.sop_class_uid).name} was not "
                               "proposed on this association (not in the fixed list or "
                               "the negotiation profile proposed; send -R, and the daemon "
                               "without a profile, propose the files' own)")
        return StoreResult(None, refused=describe_refusal(
            probe.sop_class_uid, probe.transfer_syntax, pairs, decompress))
    streamed = (encoding == probe.transfer_syntax and probe.meta_consistent and modify is None
                and not odd_stream(path, probe.transfer_syntax))
    payload: Dataset | str | Spliced | None = None
    if streamed:
        payload = os.fspath(path)
    elif modify is None:  # between the little-endian syntaxes: headers rewritten, values kept
        payload = exactly(path, probe.transfer_syntax, encoding, probe.meta_consistent)
    if payload is None:
        try:
            payload = prepare(path, probe.transfer_syntax, encoding)
        except CannotConvert as exc:
            return StoreResult(None, refused=str(exc))
        if modify is not None:
            modify(payload)
    try:
        return send_on(assoc, payload, chosen, message_id, probe, while_waiting, deflate_level)
    finally:
        if isinstance(payload, Spliced):
            payload.close()


def _holds_pixels(path: str | os.PathLike[str], probe: Probe) -> bool:
    """Does the file hold pixel data (or anything from (7FE0,0008) on)? A probe that says
    it does may be a spooled job's, which does not know: the file is looked at again."""
    if not probe.pixels:
        return False
    from forwarder.dicomfile import probe as look
    from forwarder.errors import NotDicomError

    try:
        return look(path).pixels
    except (NotDicomError, OSError):
        return True


def _proposed(assoc: Association) -> set[str]:
    """The SOP classes proposed on ``assoc``."""
    return {cx.abstract_syntax for cx in assoc.accepted} | \
        {cx.abstract_syntax for cx in assoc.rejected}


def odd_stream(path: str | os.PathLike[str], transfer_syntax: str) -> bool:
    """The file's dataset (the bytes after the file meta) has odd length: a value of odd
    length left unpadded, or a deflated stream without its pad byte (PS3.5 7.1.1, A.5).
    A PDV carries an even number of bytes, and peers abort on the odd one, so such a
    file is re-encoded, its values padded, never streamed. One stat decides for almost
    every file: the file meta's elements have even lengths, so an even file is even."""
    size = os.path.getsize(path)
    if size % 2 == 0 and transfer_syntax != DEFLATED_LE:
        return False
    from forwarder.scu.dimse import dataset_offset

    with open(path, "rb") as fp:
        offset = dataset_offset(fp.fileno())
    return (size - offset) % 2 == 1
