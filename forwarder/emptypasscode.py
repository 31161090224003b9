"""Let pynetdicom send a user identity with an empty passcode (storescu ``-epw``).

PS3.7 D.3.3.7.1 gives the secondary field (the passcode of type 2, user name and
passcode) a length that may be zero, and DCMTK sends it so; pynetdicom 3.0 refuses to
encode it ("Secondary Field must be set when User Identity is 2") inside its network
thread, where the error cannot reach the caller: the request never leaves and the
association waits for its ACSE timeout. This builds that one sub-item itself.
"""

from __future__ import annotations

from typing import Any

from pynetdicom.pdu_items import UserIdentitySubItemRQ
from pynetdicom.pdu_primitives import UserIdentityNegotiation

_ORIGINAL = UserIdentityNegotiation.from_primitive


def _from_primitive(self: UserIdentityNegotiation) -> Any:
    if (self.server_response is None and self.user_identity_type == 2
            and self.primary_field and self.secondary_field == b""):
        item = UserIdentitySubItemRQ()
        item.from_primitive(self)  # copies the fields without pynetdicom's check
        return item
    return _ORIGINAL(self)


def apply() -> None:
    """Installed by :func:`forwarder.runtime.setup` for the whole process (it changes only
    what pynetdicom would refuse to encode)."""
    UserIdentityNegotiation.from_primitive = _from_primitive  # type: ignore[method-assign]
