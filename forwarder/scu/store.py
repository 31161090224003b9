"""The sending half of :func:`forwarder.cstore.store_file` on a
:class:`forwarder.scu.Association`: the file's own bytes when it goes unchanged, its data set
re-encoded with every value kept (:mod:`forwarder.reencode`), else the dataset that
store_file prepared, written in the chosen syntax by pydicom (:func:`encode`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from forwarder.model import Probe, StoreResult
from forwarder.scu.association import Association, NoContext
from forwarder.scu.pdu import AssociationLost
from forwarder.scu.spliced import Spliced

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def send_on(assoc: Association, payload: Dataset | str | bytes | bytearray | Spliced,
            chosen: str, message_id: int, probe: Probe,
            while_waiting: Callable[[], None] | None = None,
            deflate_level: int = 6) -> StoreResult:
    """The peer's answer; status None when the association ended first (the reason in
    ``comment``), ``refused`` when no context fits after all or the dataset cannot be
    encoded; the OSError when the file cannot be opened (nothing was sent).
    ``while_waiting``: see :meth:`Association.send_c_store`."""
    try:
        if isinstance(payload, (str, os.PathLike, bytes, bytearray, Spliced)):  # not decoded
            rsp = assoc.send_c_store(payload, probe.sop_class_uid, probe.sop_instance_uid,
                                     chosen, message_id, while_waiting=while_waiting)
        else:
            try:
                data = encode(payload, chosen, deflate_level)
            except Exception as exc:  # noqa: BLE001 - a value the writer refuses: this file fails
                why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                return StoreResult(None, refused=f"the converted dataset cannot be encoded: "
                                   f"{why}")
            rsp = assoc.send_c_store(data, str(payload.SOPClassUID),
                                     str(payload.SOPInstanceUID), chosen, message_id,
                                     while_waiting=while_waiting)
    except NoContext as exc:
        return StoreResult(None, refused=str(exc))
    except (AssociationLost, OSError) as exc:  # SourceUnreadable too
        if not isinstance(exc, AssociationLost) and assoc.is_established:
            raise  # the file cannot be opened: nothing was sent, the caller says why
        return StoreResult(None, str(exc))
    return StoreResult(rsp.status, rsp.comment)


def encode(ds: Dataset, syntax: str, deflate_level: int = 6) -> bytes:
    """``ds`` written in ``syntax`` for a P-DATA-TF (deflated at ``deflate_level`` and
    padded to even length where the syntax says so); the writer's exception, with the
    element it names, when a value cannot be written."""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import UID

    from forwarder.transcode import text_kept

    ts = UID(syntax)
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = ts.is_implicit_VR, ts.is_little_endian
    with text_kept(ValueError):
        write_dataset(fp, ds)
    data = fp.getvalue()
    if ts.is_deflated:
        deflate = zlib.compressobj(deflate_level, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = deflate.compress(data) + deflate.flush()
        data += b"\0" * (len(data) % 2)
    return data
