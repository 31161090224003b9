"""forwarder.scu.acse against pynetdicom's PDU codec and negotiation as the oracle.

What we encode, pynetdicom reads to the same values (byte for byte the A-ASSOCIATE-RQ it
would have sent itself); what pynetdicom encodes, we read to the same values; our
negotiation outcome is negotiate_as_requestor's; damaged PDUs are a MalformedPDU naming
the PDU type and offset, never another exception. And the requestor opens, uses and
closes an association with none of pynetdicom, pydicom or numpy loaded.
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
)
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_requestor

from forwarder.association import AssociationFailed, IdentitySettings, PeerSettings
from forwarder.negotiation import Context
from forwarder.scu import Association, MalformedPDU, acse, dimse
from forwarder.scu import pdu as P
from forwarder.scu.setup import proposal, request_pdu
from tests.corpus import data_file
from tests.peers import StoreSCPProcess, free_port, wait_for

uids = st.from_regex(r"\A1\.2(\.[1-9][0-9]{0,5}){1,8}\Z")
aets = st.from_regex(r"\A[A-Z][A-Z0-9_ ]{0,14}[A-Z0-9]\Z|\A[A-Z]\Z")
role_pairs = st.sampled_from([(True, True), (True, False), (False, True), (False, False)])
HEAVY = ("pynetdicom", "pydicom", "numpy")
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(autouse=True)
def quiet_oracle() -> Iterator[None]:
    """pynetdicom logs every made-up UID it is given; the oracle's words are not needed."""
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def test_implementation_class_and_version_are_pynetdicoms() -> None:
    assert acse.IMPLEMENTATION_CLASS_UID == pynetdicom.PYNETDICOM_IMPLEMENTATION_UID
    assert acse.IMPLEMENTATION_VERSION_NAME == pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION


# -- A-ASSOCIATE-RQ ----------------------------------------------------------------------

def pynetdicom_rq(peer: PeerSettings, contexts: list[Context],
                  roles: dict[str, tuple[bool, bool]]) -> bytes:
    """The A-ASSOCIATE-RQ pynetdicom encodes from the same request."""
    prim = A_ASSOCIATE()
    prim.application_context_name = acse.APPLICATION_CONTEXT  # type: ignore[assignment]
    prim.calling_ae_title, prim.called_ae_title = peer.calling_ae, peer.called_ae
    pcs = []
    for i, cx in enumerate(contexts):
        pc = PresentationContext()
        pc.context_id, pc.abstract_syntax = 2 * i + 1, cx.abstract_syntax
        pc.transfer_syntax = list(cx.transfer_syntaxes)
        pcs.append(pc)
    prim.presentation_context_definition_list = pcs
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = peer.max_pdu
    klass = ImplementationClassUIDNotification()
    klass.implementation_class_uid = pynetdicom.PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION
    items: list = [maximum, klass, version]
    for sop_class, (scu, scp) in roles.items():
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = sop_class  # type: ignore[assignment]
        role.scu_role, role.scp_role = scu, scp
        items.append(role)
    if peer.identity.kind:
        ident = UserIdentityNegotiation()
        ident.user_identity_type = peer.identity.kind
        ident.primary_field = peer.identity.primary
        if peer.identity.kind == 2:
            ident.secondary_field = peer.identity.secondary
        ident.positive_response_requested = peer.identity.positive_response
        items.append(ident)
    prim.user_information = items
    return A_ASSOCIATE_RQ(prim).encode()


@settings(max_examples=120, deadline=None)
@given(calling=aets, called=aets, max_pdu=st.integers(0, 0xFFFFFFFF),
       contexts=st.lists(st.tuples(uids, st.lists(uids, min_size=1, max_size=4, unique=True)),
                         min_size=1, max_size=40),
       kind=st.integers(0, 5), primary=st.binary(min_size=1, max_size=2000),
       secondary=st.binary(min_size=1, max_size=100), positive=st.booleans(),
       roles=st.dictionaries(uids, st.sampled_from([(True, False), (False, True), (True, True)]),
                             max_size=4))
def test_our_rq_is_the_one_pynetdicom_encodes(calling: str, called: str, max_pdu: int,
                                              contexts: list, kind: int, primary: bytes,
                                              secondary: bytes, positive: bool,
                                              roles: dict) -> None:
    identity = IdentitySettings(kind, primary, secondary if kind == 2 else b"", positive)
    peer = PeerSettings("127.0.0.1", 104, called, calling, max_pdu=max_pdu, identity=identity)
    cxs = [Context(sop, tuple(ts)) for sop, ts in contexts]
    ours = request_pdu(peer, proposal(cxs, roles), roles)
    assert ours == pynetdicom_rq(peer, cxs, roles)
    back = A_ASSOCIATE_RQ()
    back.decode(ours)
    prim = back.to_primitive()
    assert (prim.called_ae_title, prim.calling_ae_title) == (called, calling)
    assert prim.maximum_length_received == max_pdu
    assert [(cx.context_id, cx.abstract_syntax, cx.transfer_syntax)
            for cx in prim.presentation_context_definition_list] == [
        (2 * i + 1, sop, ts) for i, (sop, ts) in enumerate(contexts)]


def test_an_empty_passcode_goes_as_a_zero_length_secondary_field() -> None:
    """storescu --user U --empty-password: type 2, passcode of length 0 (PS3.7 D.3.3.7.1),
    which pynetdicom reads back; pynetdicom itself refuses to encode it."""
    identity = IdentitySettings(2, b"alice", b"", True)
    peer = PeerSettings("127.0.0.1", 104, identity=identity)
    raw = request_pdu(peer, proposal([Context("1.2.840.10008.1.1", ("1.2.840.10008.1.2",))],
                                     None), None)
    item = b"\x58\x00\x00\x0b\x02\x01\x00\x05alice\x00\x00"
    assert raw.endswith(item)
    back = A_ASSOCIATE_RQ()
    back.decode(raw)
    ident = [i for i in back.to_primitive().user_information
             if isinstance(i, UserIdentityNegotiation)]
    assert [(i.user_identity_type, i.primary_field, i.secondary_field,
             i.positive_response_requested) for i in ident] == [(2, b"alice", b"", True)]
    with pytest.raises(ValueError):
        pynetdicom_rq(peer, [Context("1.2.840.10008.1.1", ("1.2.840.10008.1.2",))], {})


def test_fields_that_cannot_be_encoded_are_a_value_error() -> None:
    with pytest.raises(ValueError, match="at most 65535"):
        acse.user_identity_item(5, b"x" * 70000)
    with pytest.raises(ValueError, match="longer than 16"):
        acse.encode_associate_rq("A" * 17, "B", [acse.Proposed(1, "1.2", ("1.2.3",))], 0)


def test_an_identity_too_long_for_its_item_holds_before_connecting() -> None:
    """Nothing listens on the port: the failure is the identity's, found before connecting."""
    port = free_port()
    peer = PeerSettings("127.0.0.1", port, identity=IdentitySettings(5, b"j" * 70000))
    with pytest.raises(AssociationFailed) as caught:
        Association.open(peer, [Context(CT, (EXPLICIT_LE,))])
    assert caught.value.kind == "identity"
    assert "cannot carry this user identity: user identity of 70000 bytes" in str(caught.value)


# -- A-ASSOCIATE-AC, RJ, A-RELEASE, A-ABORT ----------------------------------------------

answers = st.lists(st.tuples(st.integers(0, 4), uids), min_size=1, max_size=30)


def pynetdicom_ac(results: list[tuple[int, int, str]], max_pdu: int | None,
                  version: str | None, roles: dict[str, tuple[bool, bool]],
                  response: bytes | None) -> bytes:
    ac = A_ASSOCIATE()
    ac.application_context_name = acse.APPLICATION_CONTEXT  # type: ignore[assignment]
    ac.calling_ae_title, ac.called_ae_title = "STORESCU", "ANY-SCP"
    ac.result = 0
    pcs = []
    for cid, result, ts in results:
        pc = PresentationContext()
        pc.context_id, pc.result, pc.transfer_syntax = cid, result, [ts]
        pcs.append(pc)
    ac.presentation_context_definition_results_list = pcs
    klass = ImplementationClassUIDNotification()
    klass.implementation_class_uid = "1.2.3.4"  # type: ignore[assignment]
    items: list = [klass]
    if max_pdu is not None:
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = max_pdu
        items.insert(0, maximum)
    if version is not None:
        name = ImplementationVersionNameNotification()
        name.implementation_version_name = version
        items.append(name)
    for sop_class, (scu, scp) in roles.items():
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = sop_class  # type: ignore[assignment]
        role.scu_role, role.scp_role = scu, scp
        items.append(role)
    if response is not None:
        ident = UserIdentityNegotiation()
        ident.server_response = response
        items.append(ident)
    ac.user_information = items
    return A_ASSOCIATE_AC(ac).encode()


@settings(max_examples=150, deadline=None)
@given(answer=answers, max_pdu=st.none() | st.integers(0, 0xFFFFFFFF),
       version=st.none() | st.from_regex(r"\A[A-Z0-9_]{1,16}\Z"),
       roles=st.dictionaries(uids, role_pairs.filter(any), max_size=4),  # pynetdicom: not 0/0
       response=st.none() | st.binary(max_size=300))
def test_an_ac_pynetdicom_encodes_reads_the_same(answer: list, max_pdu: int | None,
                                                 version: str | None, roles: dict,
                                                 response: bytes | None) -> None:
    results = [(2 * i + 1, result, ts) for i, (result, ts) in enumerate(answer)]
    raw = pynetdicom_ac(results, max_pdu, version, roles, response)
    ours = P.decode(P.ASSOCIATE_AC, raw, 0)
    assert isinstance(ours, acse.AssociateAC)
    theirs = A_ASSOCIATE_AC()
    theirs.decode(raw)
    prim = theirs.to_primitive()
    assert (ours.called_ae, ours.calling_ae) == (prim.called_ae_title, prim.calling_ae_title)
    assert ours.application_context == prim.application_context_name
    assert [(r.context_id, r.result, r.transfer_syntax) for r in ours.results] == [
        (pc.context_id, pc.result, pc.transfer_syntax[0] if pc.transfer_syntax else None)
        for pc in prim.presentation_context_definition_results_list]
    assert ours.max_pdu == prim.maximum_length_received
    assert ours.implementation_class_uid == prim.implementation_class_uid == "1.2.3.4"
    assert [ours.implementation_version_name] == [
        i.implementation_version_name for i in prim.user_information
        if isinstance(i, ImplementationVersionNameNotification)] or [None]
    assert ours.roles == {str(i.sop_class_uid): (i.scu_role, i.scp_role)
                          for i in prim.user_information
                          if isinstance(i, SCP_SCU_RoleSelectionNegotiation)}
    ident = [i.server_response for i in prim.user_information
             if isinstance(i, UserIdentityNegotiation)]
    assert [ours.identity_response] == (ident or [None])


def test_unknown_user_information_items_are_skipped() -> None:
    raw = bytearray(pynetdicom_ac([(1, 0, "1.2.840.10008.1.2")], 16384, None, {}, b"ok"))
    extra = b"\x53\x00\x00\x04\x00\x01\x00\x01" + b"\x7a\x00\x00\x03abc"  # async window, ??
    at = raw.index(b"\x50\x00") + 2
    struct.pack_into(">H", raw, at, struct.unpack_from(">H", raw, at)[0] + len(extra))
    raw += extra
    struct.pack_into(">I", raw, 2, len(raw) - 6)
    ac = P.decode(P.ASSOCIATE_AC, bytes(raw), 0)
    assert isinstance(ac, acse.AssociateAC)
    assert (ac.max_pdu, ac.identity_response, ac.results) == (
        16384, b"ok", [acse.ContextResult(1, 0, "1.2.840.10008.1.2")])


def test_reject_reasons_read_as_pynetdicom_words_them() -> None:
    for result in (1, 2):
        for source in range(5):
            for reason in range(12):
                pdu = A_ASSOCIATE_RJ()
                pdu.result, pdu.source, pdu.reason_diagnostic = result, source, reason
                raw = pdu.encode()
                ours = P.decode(P.ASSOCIATE_RJ, raw, 0)
                assert ours == acse.AssociateRJ(result, source, reason)
                prim = A_ASSOCIATE()  # set past its checks: reason_str words every pair
                prim._result_source, prim._diagnostic = source, reason
                assert isinstance(ours, acse.AssociateRJ)
                assert ours.reason_str == prim.reason_str


@given(source=st.integers(0, 255), reason=st.integers(0, 255))
def test_aborts_and_releases_match_pynetdicom(source: int, reason: int) -> None:
    theirs = A_ABORT_RQ()
    theirs.source, theirs.reason_diagnostic = source, reason
    assert acse.encode_abort(source, reason) == theirs.encode()
    assert P.decode(P.ABORT, theirs.encode(), 0) == acse.Abort(source, reason)
    assert acse.encode_release() == A_RELEASE_RQ().encode()
    assert acse.encode_release(acse.RELEASE_RP) == A_RELEASE_RP().encode()
    assert P.decode(P.RELEASE_RP, A_RELEASE_RP().encode(), 0) == acse.Release(P.RELEASE_RP)


# -- negotiation -------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(proposed=st.lists(st.tuples(st.sampled_from(["1.2.1", "1.2.2", "1.2.3", "1.2.4"]),
                                   st.lists(uids, min_size=1, max_size=3, unique=True),
                                   st.none() | role_pairs), min_size=1, max_size=12),
       data=st.data(),
       ac_roles=st.dictionaries(st.sampled_from(["1.2.1", "1.2.2", "1.2.3", "1.2.9"]),
                                role_pairs, max_size=4))
def test_negotiation_is_negotiate_as_requestors(proposed: list, data: Any,
                                                ac_roles: dict) -> None:
    """Most proposed contexts answered (most accepted), some left out, some answers for
    IDs never proposed."""
    answered = [(2 * i + 1, data.draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4])),
                 data.draw(uids)) for i in range(len(proposed)) if data.draw(st.integers(0, 4))]
    answered += data.draw(st.lists(st.tuples(st.integers(12, 127).map(lambda n: 2 * n + 1),
                                             st.integers(0, 4), uids), max_size=2,
                                   unique_by=lambda a: a[0]))
    ours_rq = [acse.Proposed(2 * i + 1, sop, tuple(ts), roles or (None, None))
               for i, (sop, ts, roles) in enumerate(proposed)]
    rq = []
    for cx in ours_rq:
        pc = PresentationContext()
        pc.context_id, pc.abstract_syntax = cx.context_id, cx.abstract_syntax
        pc.transfer_syntax = list(cx.transfer_syntaxes)
        pc.scu_role, pc.scp_role = cx.roles
        rq.append(pc)
    ac, ours_ac = [], []
    for cid, result, ts in answered:
        pc = PresentationContext()
        pc.context_id, pc.result, pc.transfer_syntax = cid, result, [ts]
        ac.append(pc)
        ours_ac.append(acse.ContextResult(cid, result, ts))
    theirs = negotiate_as_requestor(rq, ac, ac_roles)  # type: ignore[arg-type]
    assert [(o.context_id, o.abstract_syntax, o.transfer_syntax, o.result, o.as_scu, o.as_scp)
            for o in acse.negotiate(ours_rq, ours_ac, ac_roles)] == [
        (cx.context_id, cx.abstract_syntax, cx.transfer_syntax[0], cx.result, cx.as_scu,
         cx.as_scp) for cx in theirs]


# -- damaged PDUs ------------------------------------------------------------------------

def sample_pdus() -> list[tuple[int, bytes]]:
    ac = pynetdicom_ac([(1, 0, "1.2.840.10008.1.2.1"), (3, 3, "1.2.3"), (5, 4, "1.2.840.10008.1.2")],
                       16384, "X_1", {"1.2.840.10008.5.1.4.1.1.2": (True, True)}, b"token")
    rj = A_ASSOCIATE_RJ()
    rj.result, rj.source, rj.reason_diagnostic = 1, 1, 7
    ab = A_ABORT_RQ()
    ab.source, ab.reason_diagnostic = 2, 6
    return [(P.ASSOCIATE_AC, ac), (P.ASSOCIATE_RJ, rj.encode()), (P.ABORT, ab.encode()),
            (P.RELEASE_RQ, A_RELEASE_RQ().encode()), (P.RELEASE_RP, A_RELEASE_RP().encode())]


SAMPLES = sample_pdus()


@settings(max_examples=400, deadline=None)
@given(which=st.integers(0, len(SAMPLES) - 1), cut=st.integers(0, 200),
       flips=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=4),
       tail=st.binary(max_size=12))
def test_damaged_control_pdus_are_read_or_named_never_crash(which: int, cut: int,
                                                            flips: list, tail: bytes) -> None:
    pdu_type, good = SAMPLES[which]
    raw = bytearray(good)
    for at, value in flips:
        if at < len(raw):
            raw[at] = value
    body = bytes(raw[:max(6, len(raw) - cut)]) + tail
    try:
        got: Any = P.decode(pdu_type, body, 4242)
    except MalformedPDU as exc:
        assert f"{P.name(pdu_type)} at offset 4242" in str(exc)
    else:
        assert got is not None


@settings(max_examples=300, deadline=None)
@given(items=st.binary(max_size=400))
def test_garbage_after_the_fixed_fields_is_read_or_named(items: bytes) -> None:
    body = bytes([P.ASSOCIATE_AC, 0]) + struct.pack(">I", 68 + len(items)) + bytes(68) + items
    try:
        P.decode(P.ASSOCIATE_AC, body, 7)
    except MalformedPDU as exc:
        assert "A-ASSOCIATE-AC (type 0x02) at offset 7" in str(exc)


def test_an_accepted_context_without_transfer_syntax_is_malformed() -> None:
    """(pynetdicom never encodes one; a rejected one without it is fine)"""
    def ac(result: int) -> bytes:
        items = b"\x21\x00\x00\x04\x01\x00" + bytes([result]) + b"\x00"
        return b"\x02\x00" + struct.pack(">I", 68 + len(items)) + bytes(68) + items

    got = P.decode(P.ASSOCIATE_AC, ac(3), 0)
    assert isinstance(got, acse.AssociateAC)
    assert got.results == [acse.ContextResult(1, 3, None)]
    with pytest.raises(MalformedPDU, match="context 1 .* accepted without a transfer syntax"):
        P.decode(P.ASSOCIATE_AC, ac(0), 0)


# -- no pynetdicom, pydicom or numpy on the requestor's path ----------------------------

def test_importing_the_requestor_loads_no_dicom_or_numeric_library() -> None:
    code = ("import sys, forwarder.scu, forwarder.identity, forwarder.association, "
            "forwarder.runtime; forwarder.runtime.setup(); "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split() == [], f"loaded: {out.stdout.strip()}"


def test_an_association_is_opened_used_and_released_without_them(tmp_path: Path) -> None:
    """Echo, store a file as it lies on disk and release, with the user identity of
    storescu -epw, against DCMTK storescp (bit-preserving): none of the three libraries
    is loaded, and the dataset arrives byte for byte."""
    path = data_file("CT_small.dcm")
    instance = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    scp = StoreSCPProcess(tmp_path / "out", ("+B",))
    try:
        code = textwrap.dedent(f"""
            import sys
            from forwarder.association import AssociationFailed, IdentitySettings, PeerSettings, echo
            from forwarder.negotiation import Context
            from forwarder.scu import Association
            peer = PeerSettings("127.0.0.1", {scp.port}, acse_timeout=10, dimse_timeout=20,
                                network_timeout=10,
                                identity=IdentitySettings(2, b"alice", b"", False))
            print(echo(peer))
            ct = "{CT}"
            with Association.open(peer, [Context(ct, ("{EXPLICIT_LE}",))]) as a:
                print(hex(a.send_c_store({str(path)!r}, ct, "{instance}", "{EXPLICIT_LE}").status))
            print("loaded:", " ".join(m for m in {HEAVY!r} if m in sys.modules))
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[1:] == ["0x0", "loaded: "], out.stdout
        wait_for(lambda: len(scp.files()) == 1, 10, "storescp to write the file")
    finally:
        scp.stop()
    fd = os.open(path, os.O_RDONLY)
    try:
        dataset = path.read_bytes()[dimse.dataset_offset(fd):]
    finally:
        os.close(fd)
    assert scp.files()[0].read_bytes().endswith(dataset)
