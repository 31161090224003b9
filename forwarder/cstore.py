"""C-STORE one file on an open association: streamed unchanged when possible, else converted.

Used by `send` and by the daemon's sender, so both pick contexts and convert alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from forwarder.association import accepted_pairs
from forwarder.dicomfile import Probe
from forwarder.negotiation import choose_context
from forwarder.scu import Association as ScuAssociation
from forwarder.scu.store import store_on
from forwarder.transcode import CannotConvert, convertible, describe_refusal, prepare


@dataclass(frozen=True)
class StoreResult:
    """``status`` is the DIMSE status, or None when no response came (timeout, abort)."""

    status: int | None
    comment: str | None = None
    refused: str | None = None  # no usable context or conversion failed: why, in words
    streamed: bool = False


def store_file(assoc: Association | ScuAssociation, path: str | os.PathLike[str], probe: Probe,
               decompress: str = "lossless",
               modify: Callable[[Dataset], None] | None = None,
               message_id: int = 1) -> StoreResult:
    """Send ``path`` (probed as ``probe``) and return the peer's answer.

    The file goes unchanged (read in chunks, never decoded) when the peer accepted its
    exact transfer syntax and its file meta agrees with the dataset; otherwise the
    dataset is decoded, converted and re-encoded (PS3.5 10: a syntax change keeps every
    attribute value).
    """
    if isinstance(assoc, ScuAssociation):
        return store_on(assoc, path, probe, decompress, modify, message_id)
    pairs = accepted_pairs(assoc)
    options = convertible(probe.transfer_syntax, decompress)
    chosen = choose_context(pairs, probe.sop_class_uid, probe.transfer_syntax, options)
    if chosen is None:
        return StoreResult(None, refused=describe_refusal(
            probe.sop_class_uid, probe.transfer_syntax, pairs, decompress))
    streamed = chosen == probe.transfer_syntax and probe.meta_consistent and modify is None
    payload: Dataset | str
    if streamed:
        payload = os.fspath(path)
    else:
        try:
            payload = prepare(path, probe.transfer_syntax, chosen)
        except CannotConvert as exc:
            return StoreResult(None, refused=str(exc))
        if modify is not None:
            modify(payload)
    try:
        rsp = assoc.send_c_store(payload, msg_id=message_id)
    except ValueError as exc:  # no accepted context after all
        return StoreResult(None, refused=str(exc))
    if "Status" not in rsp:
        return StoreResult(None, streamed=streamed)
    comment = rsp.get("ErrorComment")
    return StoreResult(int(rsp.Status), str(comment) if comment else None, streamed=streamed)
