"""Our own storage SCU transport: one association, one blocking socket, one thread.

:mod:`forwarder.scu.pdu` frames PDUs on the socket, :mod:`forwarder.scu.acse` encodes
and decodes the association control PDUs, :mod:`forwarder.scu.dimse` packs the C-STORE
and C-ECHO command sets and finds a file's dataset, :mod:`forwarder.scu.setup` connects
and negotiates, :mod:`forwarder.scu.association` stores, releases and aborts, and
:mod:`forwarder.scu.spliced` holds a data set made of new bytes and ranges of its file.
None of them imports pynetdicom or pydicom.
"""

from forwarder.scu.association import Association, NoContext, SourceUnreadable
from forwarder.scu.dimse import Response
from forwarder.scu.pdu import AssociationLost, MalformedPDU
from forwarder.scu.setup import Accepted

__all__ = ["Accepted", "Association", "AssociationLost", "MalformedPDU", "NoContext",
           "Response", "SourceUnreadable"]
