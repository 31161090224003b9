"""Our own storage SCU transport: one association, one blocking socket, one thread.

:mod:`forwarder.scu.pdu` frames PDUs on the socket (codecs from pynetdicom),
:mod:`forwarder.scu.dimse` packs the C-STORE and C-ECHO command sets and finds a file's
dataset, :mod:`forwarder.scu.setup` connects and negotiates, :mod:`forwarder.scu.association`
stores, releases and aborts.
"""

from forwarder.scu.association import Association, NoContext, SourceUnreadable
from forwarder.scu.dimse import Response
from forwarder.scu.pdu import AssociationLost, MalformedPDU
from forwarder.scu.setup import Accepted

__all__ = ["Accepted", "Association", "AssociationLost", "MalformedPDU", "NoContext",
           "Response", "SourceUnreadable"]
