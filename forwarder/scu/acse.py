"""The association control PDUs a requestor writes and reads (PS3.8 9.3), with ``struct``.

Encodes the A-ASSOCIATE-RQ (application context, presentation contexts, user information
with maximum length, implementation class and version, SCP/SCU role selection and user
identity, PS3.7 D.3.3), the A-RELEASE-RQ/RP and the A-ABORT; decodes the
A-ASSOCIATE-AC/RJ and the A-ABORT; and matches an A-ASSOCIATE-AC to the proposal the way
an association requestor must (:func:`negotiate`, PS3.7 D.3.3.4 for the roles).

Decoding raises :class:`ACSEError` with the PDU byte where it went wrong; the caller
(:func:`forwarder.scu.pdu.decode`) names the PDU type and its offset in the stream.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# what pynetdicom 3.0.4 sends (the values peers have seen from this software so far)
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.3811.3.0.4"
IMPLEMENTATION_VERSION_NAME = "PYNETDICOM_304"

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
RELEASE_RQ, RELEASE_RP, ABORT = 0x05, 0x06, 0x07

_HEADER = struct.Struct(">BBI")
_ITEM = struct.Struct(">BBH")
_UINT2 = struct.Struct(">H")
_UINT4 = struct.Struct(">I")
_FIXED = 68  # protocol version .. the 32 reserved bytes, after the 6-byte PDU header

# PS3.8 Table 9-21: the reason of an A-ASSOCIATE-RJ by its source (same words as pynetdicom)
REJECT_REASONS = {
    1: {1: "No reason given", 2: "Application context name not supported",
        3: "Calling AE title not recognised", 4: "Reserved", 5: "Reserved", 6: "Reserved",
        7: "Called AE title not recognised", 8: "Reserved", 9: "Reserved", 10: "Reserved"},
    2: {1: "No reason given", 2: "Protocol version not supported"},
    3: {0: "Reserved", 1: "Temporary congestion", 2: "Local limit exceeded", 3: "Reserved",
        4: "Reserved", 5: "Reserved", 6: "Reserved", 7: "Reserved"},
}

Roles = tuple[bool | None, bool | None]  # (SCU role, SCP role); None: not proposed
_DEFAULT_ROLE = (True, False)
# PS3.7 Table D.3-11: our roles from what we proposed and what the acceptor answered,
# where they differ from the default (SCU only); the same table as pynetdicom's
_ROLE_OUTCOME: dict[tuple[Roles, Roles], tuple[bool, bool]] = {
    ((True, True), (True, True)): (True, True),
    ((True, True), (False, False)): (False, False),
    ((True, True), (False, True)): (False, True),
    ((True, False), (False, False)): (False, False),
    ((True, False), (False, True)): (False, False),
    ((False, True), (True, True)): (False, True),
    ((False, True), (True, False)): (False, False),
    ((False, True), (False, False)): (False, False),
    ((False, True), (False, True)): (False, True),
    **{((False, False), (scu, scp)): (False, False) for scu in (True, False)
       for scp in (True, False)},
}


class ACSEError(ValueError):
    """A PDU that cannot be read; the text says what and at which PDU byte."""


@dataclass(frozen=True)
class Proposed:
    """One presentation context of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    roles: Roles = (None, None)  # as proposed in an SCP/SCU role selection item


@dataclass(frozen=True)
class ContextResult:
    """One presentation context item of an A-ASSOCIATE-AC."""

    context_id: int
    result: int  # 0 acceptance, 1 user rejection, 2 no reason, 3 abstract, 4 transfer syntax
    transfer_syntax: str | None


@dataclass
class AssociateAC:
    called_ae: str
    calling_ae: str
    application_context: str | None = None
    results: list[ContextResult] = field(default_factory=list)
    max_pdu: int | None = None  # None: no maximum length item
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    identity_response: bytes | None = None  # None: no user identity item


@dataclass(frozen=True)
class AssociateRJ:
    result: int  # 1 permanent, 2 transient
    source: int  # 1 service user, 2 provider (ACSE), 3 provider (presentation)
    reason: int

    @property
    def reason_str(self) -> str:
        return REJECT_REASONS.get(self.source, {}).get(self.reason, "(no value available)")


@dataclass(frozen=True)
class Abort:
    source: int
    reason: int


@dataclass(frozen=True)
class Release:
    pdu_type: int  # RELEASE_RQ or RELEASE_RP


@dataclass(frozen=True)
class Outcome:
    """A proposed presentation context after the answer, as :func:`negotiate` finds it."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str | None  # the accepted one, or what the answer or proposal named
    result: int
    as_scu: bool
    as_scp: bool


# -- encoding ----------------------------------------------------------------------------

def _item(item_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"item 0x{item_type:02X} of {len(value)} bytes: at most 65535 fit")
    return _ITEM.pack(item_type, 0, len(value)) + value


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def _ae(value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) > 16:
        raise ValueError(f"AE title {value!r} is longer than 16 characters")
    return raw.ljust(16)


def user_identity_item(kind: int, primary: bytes, secondary: bytes = b"",
                       positive_response: bool = False) -> bytes:
    """The user identity negotiation sub-item (0x58, PS3.7 D.3.3.7.1); the secondary
    field (type 2's passcode) may be empty, and is for every other type."""
    if not 1 <= kind <= 5:
        raise ValueError(f"user identity type {kind}: 1 to 5")
    secondary = secondary if kind == 2 else b""
    if len(primary) + len(secondary) > 0xFFFF - 6:
        raise ValueError(f"user identity of {len(primary) + len(secondary)} bytes: at most "
                         f"{0xFFFF - 6} fit (at most 65535 bytes in its item)")
    return _item(0x58, bytes([kind, 1 if positive_response else 0])
                 + _UINT2.pack(len(primary)) + primary + _UINT2.pack(len(secondary)) + secondary)


def encode_associate_rq(called_ae: str, calling_ae: str, contexts: Sequence[Proposed],
                        max_pdu: int, roles: Mapping[str, Roles] | None = None,
                        identity: bytes | None = None,
                        implementation_class_uid: str = IMPLEMENTATION_CLASS_UID,
                        implementation_version_name: str = IMPLEMENTATION_VERSION_NAME) -> bytes:
    """The whole A-ASSOCIATE-RQ PDU: a role selection item for each SOP class in
    ``roles`` (a role given as None goes as 0); ``identity``: a :func:`user_identity_item`.
    ValueError when a field cannot be encoded."""
    items = [_item(0x10, _uid(APPLICATION_CONTEXT))]
    for cx in contexts:
        sub = _item(0x30, _uid(cx.abstract_syntax)) + b"".join(
            _item(0x40, _uid(ts)) for ts in cx.transfer_syntaxes)
        items.append(_item(0x20, bytes([cx.context_id, 0, 0, 0]) + sub))
    user = [_item(0x51, _UINT4.pack(max_pdu)), _item(0x52, _uid(implementation_class_uid)),
            _item(0x55, implementation_version_name.encode("ascii"))]
    for sop_class, (scu, scp) in (roles or {}).items():
        uid = _uid(sop_class)
        user.append(_item(0x54, _UINT2.pack(len(uid)) + uid + bytes([bool(scu), bool(scp)])))
    if identity is not None:
        user.append(identity)
    items.append(_item(0x50, b"".join(user)))
    body = (_UINT2.pack(1) + b"\0\0" + _ae(called_ae) + _ae(calling_ae) + bytes(32)
            + b"".join(items))
    return _HEADER.pack(ASSOCIATE_RQ, 0, len(body)) + body


def encode_release(pdu_type: int = RELEASE_RQ) -> bytes:
    return _HEADER.pack(pdu_type, 0, 4) + bytes(4)


def encode_abort(source: int, reason: int) -> bytes:
    return _HEADER.pack(ABORT, 0, 4) + bytes([0, 0, source, reason])


# -- decoding ----------------------------------------------------------------------------

def _items(pdu: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(item type, value start, value end) of the items in ``pdu[start:end]``."""
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise ACSEError(f"{end - pos} stray bytes at PDU byte {pos}")
        item_type, _, length = _ITEM.unpack_from(pdu, pos)
        if pos + 4 + length > end:
            raise ACSEError(f"item 0x{item_type:02X} at PDU byte {pos} claims {length} bytes, "
                            f"{end - pos - 4} are left")
        yield item_type, pos + 4, pos + 4 + length
        pos += 4 + length


def _text(pdu: bytes, start: int, end: int, what: str) -> str:
    raw = pdu[start:end]
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ACSEError(f"{what} at PDU byte {start} is not ASCII") from None


def _need(start: int, end: int, length: int, what: str) -> None:
    if end - start < length:
        raise ACSEError(f"{what} at PDU byte {start - 4} has {end - start} bytes, "
                        f"{length} are needed")


def decode_associate_ac(pdu: bytes) -> AssociateAC:
    """The whole A-ASSOCIATE-AC PDU (header included); unknown items are skipped."""
    if len(pdu) < 6 + _FIXED:
        raise ACSEError(f"{len(pdu)} bytes, shorter than its fixed fields ({6 + _FIXED})")
    ac = AssociateAC(pdu[10:26].decode("ascii", "replace").strip(),
                     pdu[26:42].decode("ascii", "replace").strip())
    for item_type, start, end in _items(pdu, 6 + _FIXED, len(pdu)):
        if item_type == 0x10:
            ac.application_context = _text(pdu, start, end, "the application context")
        elif item_type == 0x21:
            _need(start, end, 4, "presentation context item")
            syntax = None
            for sub, s_start, s_end in _items(pdu, start + 4, end):
                if sub == 0x40 and syntax is None:
                    syntax = _text(pdu, s_start, s_end, "transfer syntax")
            if pdu[start + 2] == 0 and not syntax:
                raise ACSEError(f"presentation context {pdu[start]} at PDU byte {start - 4} is "
                                "accepted without a transfer syntax")
            ac.results.append(ContextResult(pdu[start], pdu[start + 2], syntax or None))
        elif item_type == 0x50:
            _user_information(pdu, start, end, ac)
    return ac


def _user_information(pdu: bytes, start: int, end: int, ac: AssociateAC) -> None:
    for sub, s_start, s_end in _items(pdu, start, end):
        if sub == 0x51:
            _need(s_start, s_end, 4, "maximum length item")
            ac.max_pdu = _UINT4.unpack_from(pdu, s_start)[0]
        elif sub == 0x52:
            ac.implementation_class_uid = _text(pdu, s_start, s_end, "implementation class")
        elif sub == 0x55:
            ac.implementation_version_name = _text(pdu, s_start, s_end,
                                                   "implementation version name")
        elif sub == 0x54:
            _need(s_start, s_end, 2, "role selection item")
            n = _UINT2.unpack_from(pdu, s_start)[0]
            _need(s_start, s_end, 4 + n, "role selection item")
            scu, scp = pdu[s_start + 2 + n], pdu[s_start + 3 + n]
            if scu > 1 or scp > 1:
                raise ACSEError(f"role selection item at PDU byte {s_start - 4}: roles "
                                f"{scu}/{scp}, 0 or 1 each")
            uid = _text(pdu, s_start + 2, s_start + 2 + n, "role selection SOP class")
            ac.roles[uid] = (bool(scu), bool(scp))
        elif sub == 0x59:
            _need(s_start, s_end, 2, "user identity item")
            n = _UINT2.unpack_from(pdu, s_start)[0]
            _need(s_start, s_end, 2 + n, "user identity item")
            ac.identity_response = bytes(pdu[s_start + 2:s_start + 2 + n])


def decode_associate_rj(pdu: bytes) -> AssociateRJ:
    if len(pdu) != 10:
        raise ACSEError(f"{len(pdu)} bytes, 10 expected")
    return AssociateRJ(pdu[7], pdu[8], pdu[9])


def decode_abort(pdu: bytes) -> Abort:
    if len(pdu) != 10:
        raise ACSEError(f"{len(pdu)} bytes, 10 expected")
    return Abort(pdu[8], pdu[9])


# -- negotiation -------------------------------------------------------------------------

def negotiate(proposed: Sequence[Proposed], results: Sequence[ContextResult],
              roles: Mapping[str, tuple[bool, bool]]) -> list[Outcome]:
    """Each proposed context as the answer left it, by context ID: accepted (result 0,
    in the answer's transfer syntax) or not, with our roles on it (PS3.7 D.3.3.4). A
    context the answer left out counts as rejected (result 2, no reason)."""
    answered = {r.context_id: r for r in results}
    out = []
    for cx in {c.context_id: c for c in proposed}.values():
        r = answered.get(cx.context_id)
        if r is None:
            out.append(Outcome(cx.context_id, cx.abstract_syntax, cx.transfer_syntaxes[0], 2,
                               False, False))
            continue
        scu, scp = _DEFAULT_ROLE
        theirs = roles.get(cx.abstract_syntax)
        if r.result == 0 and theirs is not None:
            scu, scp = _ROLE_OUTCOME.get((cx.roles, theirs), _DEFAULT_ROLE)
        out.append(Outcome(cx.context_id, cx.abstract_syntax, r.transfer_syntax, r.result,
                           scu, scp))
    return sorted(out, key=lambda o: o.context_id)
