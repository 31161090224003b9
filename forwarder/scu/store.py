"""The sending half of :func:`forwarder.cstore.store_file` on a
:class:`forwarder.scu.Association`: the file's own bytes when it goes unchanged, else the
dataset that store_file prepared, encoded by pynetdicom in the chosen syntax."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from forwarder.model import Probe, StoreResult
from forwarder.scu.association import Association, NoContext
from forwarder.scu.pdu import AssociationLost

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def send_on(assoc: Association, payload: Dataset | str, chosen: str, message_id: int,
            probe: Probe, while_waiting: Callable[[], None] | None = None) -> StoreResult:
    """The peer's answer; status None when the association ended first (the reason in
    ``comment``), ``refused`` when no context fits after all or the dataset cannot be
    encoded; the OSError when the file cannot be opened (nothing was sent).
    ``while_waiting``: see :meth:`Association.send_c_store`."""
    try:
        if isinstance(payload, (str, os.PathLike)):
            rsp = assoc.send_c_store(payload, probe.sop_class_uid, probe.sop_instance_uid,
                                     chosen, message_id, while_waiting=while_waiting)
        else:
            from pydicom.uid import UID
            from pynetdicom.dsutils import encode

            ts = UID(chosen)
            data = encode(payload, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
            if data is None:
                return StoreResult(None, refused="the converted dataset cannot be encoded")
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
