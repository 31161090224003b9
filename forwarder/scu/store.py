"""C-STORE of one probed file on a :class:`forwarder.scu.Association`, as
:func:`forwarder.cstore.store_file` does on a pynetdicom one: the file's own bytes when
the peer accepted its exact transfer syntax, else converted and encoded by pynetdicom."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from forwarder.dicomfile import Probe
from forwarder.negotiation import choose_context
from forwarder.scu.association import Association, NoContext
from forwarder.scu.pdu import AssociationLost

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from forwarder.cstore import StoreResult


def store_on(assoc: Association, path: str | os.PathLike[str], probe: Probe,
             decompress: str = "lossless", modify: Callable[[Dataset], None] | None = None,
             message_id: int = 1) -> StoreResult:
    """The peer's answer; status None when the association ended first (the reason in
    ``comment``), ``refused`` when no context fits or the conversion failed."""
    from forwarder.cstore import StoreResult
    from forwarder.transcode import CannotConvert, convertible, describe_refusal, prepare

    pairs = assoc.accepted_pairs()
    chosen = choose_context(pairs, probe.sop_class_uid, probe.transfer_syntax,
                            convertible(probe.transfer_syntax, decompress))
    if chosen is None:
        return StoreResult(None, refused=describe_refusal(
            probe.sop_class_uid, probe.transfer_syntax, pairs, decompress))
    streamed = chosen == probe.transfer_syntax and probe.meta_consistent and modify is None
    try:
        if streamed:
            rsp = assoc.send_c_store(path, probe.sop_class_uid, probe.sop_instance_uid, chosen,
                                     message_id)
        else:
            from pydicom.uid import UID
            from pynetdicom.dsutils import encode

            try:
                ds = prepare(path, probe.transfer_syntax, chosen)
            except CannotConvert as exc:
                return StoreResult(None, refused=str(exc))
            if modify is not None:
                modify(ds)
            ts = UID(chosen)
            data = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
            if data is None:
                return StoreResult(None, refused="the converted dataset cannot be encoded")
            rsp = assoc.send_c_store(data, str(ds.SOPClassUID), str(ds.SOPInstanceUID), chosen,
                                     message_id)
    except NoContext as exc:
        return StoreResult(None, refused=str(exc))
    except (AssociationLost, OSError) as exc:  # SourceUnreadable too
        return StoreResult(None, str(exc), streamed=streamed)
    return StoreResult(rsp.status, rsp.comment, streamed=streamed)
