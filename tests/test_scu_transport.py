"""The single-threaded SCU transport (forwarder.scu) against every peer the suite has.

Real peers: pynetdicom's storage SCP, DCMTK storescp (bit-preserving, so what it stores
is what arrived) and Orthanc. A scripted raw-socket peer plays the misbehaving ones:
stalls in the middle of a PDU, unknown and malformed PDUs, releases and aborts of its
own, and answers that arrive before the request is complete.
"""

from __future__ import annotations

import io
import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext

from forwarder.asconfig import parse_profile
from forwarder.association import (
    AssociationFailed,
    IdentitySettings,
    PeerSettings,
    TLSSettings,
)
from forwarder.dicomfile import probe
from forwarder.negotiation import PROPOSE_MODES, Context, storescu_contexts
from forwarder.scu import Association, AssociationLost, MalformedPDU, dimse
from forwarder.scu import pdu as P
from forwarder.scu.setup import proposal, request_pdu
from tests.corpus import data_file, unique_copies
from tests.peers import OrthancProcess, StoreSCPProcess, wait_for
from tests.tlsutil import make_pki, server_context

FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm",
         "image_dfl.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm")
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


def settings_for(port: int, **kw: Any) -> PeerSettings:
    return PeerSettings("127.0.0.1", port, **{"dimse_timeout": 20.0, "acse_timeout": 10.0,
                                               "network_timeout": 10.0, **kw})


def contexts_for(paths: list[Path]) -> list[Context]:
    seen = []
    for path in paths:
        p = probe(path)
        cx = Context(p.sop_class_uid, (p.transfer_syntax,))
        if cx not in seen:
            seen.append(cx)
    return seen


def dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[split_dataset(path)[1]:]


def store_all(assoc: Association, paths: list[Path]) -> list[int]:
    out = []
    for path in paths:
        p = probe(path)
        out.append(assoc.send_c_store(path, p.sop_class_uid, p.sop_instance_uid,
                                      p.transfer_syntax).status)
    return out


# -- codecs ------------------------------------------------------------------------------

def pynetdicom_command(primitive: Any, message: Any) -> bytes:
    msg = message()
    msg.primitive_to_message(primitive)
    return encode(msg.command_set, True, True)


@given(msg_id=st.integers(0, 0xFFFF), priority=st.sampled_from([0, 1, 2]),
       instance=st.from_regex(r"\A[12](\.[1-9][0-9]{0,8}){1,6}\Z"),
       originator=st.one_of(st.none(), st.from_regex(r"\A[A-Z][A-Z0-9]{0,15}\Z")))
def test_command_sets_match_pynetdicoms_encoding(msg_id: int, priority: int, instance: str,
                                                 originator: str | None) -> None:
    rq = C_STORE()
    rq.MessageID, rq.Priority = msg_id, priority
    rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID = CT, instance
    rq.DataSet = io.BytesIO(b"\0\0")
    if originator:
        rq.MoveOriginatorApplicationEntityTitle, rq.MoveOriginatorMessageID = originator, 7
    ours = dimse.c_store_rq(msg_id, CT, instance, priority, originator,
                            7 if originator else None)
    assert ours == pynetdicom_command(rq, C_STORE_RQ)
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = msg_id, dimse.VERIFICATION
    assert dimse.c_echo_rq(msg_id) == pynetdicom_command(echo, C_ECHO_RQ)


@given(status=st.integers(0, 0xFFFF), msg_id=st.integers(0, 0xFFFF),
       comment=st.one_of(st.none(), st.from_regex(r"\A[A-Za-z0-9 ]{1,60}\Z")))
def test_a_response_reads_as_pydicom_wrote_it(status: int, msg_id: int,
                                              comment: str | None) -> None:
    cs = Dataset()
    cs.CommandGroupLength = 0
    cs.AffectedSOPClassUID = CT
    cs.CommandField = 0x8001
    cs.MessageIDBeingRespondedTo = msg_id
    cs.CommandDataSetType = 0x0101
    cs.Status = status
    if comment:
        cs.ErrorComment = comment
    rsp = dimse.parse_response(encode(cs, True, True), "in the test")
    assert (rsp.command_field, rsp.message_id, rsp.status, rsp.has_dataset) == (
        0x8001, msg_id, status, False)
    assert rsp.comment == (comment.strip() if comment else None)


@given(cut=st.integers(1, 60))
def test_a_cut_response_is_malformed_with_its_offset(cut: int) -> None:
    cs = Dataset()
    cs.CommandGroupLength = 0
    cs.CommandField = 0x8001
    cs.MessageIDBeingRespondedTo = 1
    cs.CommandDataSetType = 0x0101
    cs.Status = 0
    data = encode(cs, True, True)
    with pytest.raises(MalformedPDU, match="malformed command set in the test: (.*command byte|no valid)"):
        dimse.parse_response(data[:-cut] if cut < len(data) else data[:3], "in the test")


@pytest.mark.parametrize("name", FILES)
def test_dataset_offset_agrees_with_pynetdicom(name: str) -> None:
    path = data_file(name)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert dimse.dataset_offset(fd) == split_dataset(path)[1]
    finally:
        os.close(fd)


uids = st.from_regex(r"\A1\.2(\.[1-9][0-9]{0,5}){1,8}\Z")
aets = st.from_regex(r"\A[A-Z][A-Z0-9_]{0,15}\Z")


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(calling=aets, called=aets, max_pdu=st.sampled_from([0, 4096, 16384, 65536, 1 << 20]),
       contexts=st.lists(st.tuples(uids, st.lists(uids, min_size=1, max_size=4, unique=True)),
                         min_size=1, max_size=20),
       kind=st.integers(0, 5), primary=st.binary(min_size=1, max_size=300),
       secondary=st.binary(min_size=1, max_size=50), positive=st.booleans(),
       roles=st.dictionaries(uids, st.sampled_from([(True, False), (False, True), (True, True)]),
                             max_size=3))
def test_associate_rq_round_trips_through_pynetdicom(
        calling: str, called: str, max_pdu: int, contexts: list, kind: int, primary: bytes,
        secondary: bytes, positive: bool, roles: dict) -> None:
    identity = IdentitySettings(kind, primary, secondary if kind == 2 else b"", positive)
    peer = PeerSettings("127.0.0.1", 104, called, calling, max_pdu=max_pdu, identity=identity)
    raw = request_pdu(peer, proposal([Context(sop, tuple(ts)) for sop, ts in contexts], roles),
                      roles)
    assert raw[0] == P.ASSOCIATE_RQ and struct.unpack(">I", raw[2:6])[0] == len(raw) - 6
    back = A_ASSOCIATE_RQ()
    back.decode(raw)
    prim = back.to_primitive()
    assert (prim.calling_ae_title, prim.called_ae_title) == (calling, called)
    assert prim.maximum_length_received == max_pdu
    assert [(cx.context_id, cx.abstract_syntax, cx.transfer_syntax)
            for cx in prim.presentation_context_definition_list] == [
        (2 * i + 1, sop, syntaxes) for i, (sop, syntaxes) in enumerate(contexts)]
    got_roles = {str(i.sop_class_uid): (i.scu_role, i.scp_role) for i in prim.user_information
                 if isinstance(i, SCP_SCU_RoleSelectionNegotiation)}
    assert got_roles == roles
    ident = [i for i in prim.user_information if isinstance(i, UserIdentityNegotiation)]
    if kind:
        assert (ident[0].user_identity_type, ident[0].primary_field,
                ident[0].positive_response_requested) == (kind, primary, positive)
        if kind == 2:
            assert ident[0].secondary_field == secondary
    else:
        assert not ident


@given(data=st.binary(max_size=5000), fragment=st.integers(1, 1200), context=st.integers(1, 255)
       .filter(lambda n: n % 2 == 1), command=st.booleans())
def test_pdata_fragments_round_trip(data: bytes, fragment: int, context: int,
                                    command: bool) -> None:
    raw = P.pdata_pdus(context, 0x01 if command else 0x00, data, fragment)
    pos, pieces, controls = 0, [], []
    while pos < len(raw):
        length = struct.unpack(">I", raw[pos + 2:pos + 6])[0]
        body = raw[pos:pos + 6 + length]
        assert length <= fragment + 6
        pdu = P_DATA_TF()
        pdu.decode(body)  # pynetdicom reads what we framed
        assert pdu.encode() == body  # and frames it the same way
        for pcid, control, piece in P.pdv_items(body, pos):
            assert pcid == context
            pieces.append(piece)
            controls.append(control)
        pos += 6 + length
    assert b"".join(pieces) == data
    assert controls == [(1 if command else 0) | (2 if i == len(controls) - 1 else 0)
                        for i in range(len(controls))]


def accept_primitive(rq: A_ASSOCIATE, max_pdu: int, reject: set[int] = frozenset(),
                     user_response: bytes | None = None) -> A_ASSOCIATE:
    ac = A_ASSOCIATE()
    ac.application_context_name = "1.2.840.10008.3.1.1.1"
    ac.calling_ae_title, ac.called_ae_title = rq.calling_ae_title, rq.called_ae_title
    ac.result = 0
    results = []
    for cx in rq.presentation_context_definition_list:
        pc = PresentationContext()
        pc.context_id = cx.context_id
        pc.transfer_syntax = [cx.transfer_syntax[0]]
        pc.result = 3 if cx.context_id in reject else 0
        results.append(pc)
    ac.presentation_context_definition_results_list = results
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_pdu
    items: list = [maximum]
    if user_response is not None:
        ident = UserIdentityNegotiation()
        ident.server_response = user_response
        items.append(ident)
    ac.user_information = items
    return ac


@settings(max_examples=150)
@given(cut=st.integers(0, 400), flip=st.integers(0, 400), value=st.integers(0, 255))
def test_a_damaged_associate_ac_is_read_or_named_never_crashes(cut: int, flip: int,
                                                               value: int) -> None:
    rq = A_ASSOCIATE_RQ()
    peer = PeerSettings("127.0.0.1", 104)
    rq.decode(request_pdu(peer, proposal([Context(CT, (EXPLICIT_LE,))], None), None))
    raw = bytearray(A_ASSOCIATE_AC(accept_primitive(rq.to_primitive(), 16384, set(),
                                                    b"ok")).encode())
    if flip < len(raw):
        raw[flip] = value
    body = bytes(raw[:max(6, len(raw) - cut)])
    try:
        P.decode(P.ASSOCIATE_AC, body, 0)
    except MalformedPDU as exc:
        assert "A-ASSOCIATE-AC (type 0x02) at offset 0" in str(exc)


# -- the pynetdicom SCP ------------------------------------------------------------------

@pytest.mark.parametrize("max_pdu", [4096, 16384, 131072, 0])
def test_files_arrive_byte_for_byte_at_pynetdicom(make_scp, max_pdu: int) -> None:
    scp = make_scp()
    scp.ae.maximum_pdu_size = max_pdu
    paths = [data_file(n) for n in FILES]
    with Association.open(settings_for(scp.port, max_pdu=max_pdu), contexts_for(paths)) as a:
        assert a.peer_max_pdu == max_pdu
        assert store_all(a, paths) == [0] * len(paths)
    wait_for(lambda: scp.releases_seen == 1, 10, "the release")
    assert [r.transfer_syntax for r in scp.received] == [probe(p).transfer_syntax for p in paths]
    for got, path in zip(scp.received, paths, strict=True):  # some share one SOP instance UID
        assert got.dataset_bytes == dataset_bytes(path), path.name


def test_encoded_bytes_and_echo(scp) -> None:
    path = data_file("CT_small.dcm")
    p = probe(path)
    cxs = [Context(p.sop_class_uid, (p.transfer_syntax,)), Context(dimse.VERIFICATION,
                                                                   (IMPLICIT_LE,))]
    with Association.open(settings_for(scp.port), cxs) as a:
        assert a.send_c_echo().status == 0
        rsp = a.send_c_store(dataset_bytes(path), p.sop_class_uid, p.sop_instance_uid,
                             p.transfer_syntax, message_id=4242)
        assert (rsp.status, rsp.message_id) == (0, 4242)
    assert scp.received[0].dataset_bytes == dataset_bytes(path)


@pytest.mark.parametrize("mode", sorted(PROPOSE_MODES))
def test_every_proposal_mode_is_proposed_as_planned(make_scp, mode: str) -> None:
    scp = make_scp()
    for combine in (False, True):
        planned = storescu_contexts(mode, combine, [CT])
        try:
            with Association.open(settings_for(scp.port), planned) as a:
                assert {cx.abstract_syntax for cx in a.accepted} == {CT}
                assert [cx.context_id for cx in a.accepted] == sorted(
                    cx.context_id for cx in a.accepted)
        except AssociationFailed as exc:  # a syntax pynetdicom's SCP does not take
            assert exc.kind == "no_contexts", exc
    wait_for(lambda: len(scp.requested) == 2, 10, "both requests")
    assert scp.requested == [[(c.abstract_syntax, c.transfer_syntaxes)
                              for c in storescu_contexts(mode, combine, [CT])]
                             for combine in (False, True)]


def test_rejected_contexts_and_no_context(make_scp) -> None:
    scp = make_scp(transfer_syntaxes=[IMPLICIT_LE])
    cxs = [Context(CT, (EXPLICIT_LE,)), Context(CT, (IMPLICIT_LE,))]
    with Association.open(settings_for(scp.port), cxs) as a:
        assert [(c.context_id, c.transfer_syntax) for c in a.accepted] == [(3, IMPLICIT_LE)]
        assert a.rejected == [Context(CT, (EXPLICIT_LE,))]
        p = probe(data_file("CT_small.dcm"))
        with pytest.raises(ValueError, match="no accepted presentation context"):
            a.send_c_store(data_file("CT_small.dcm"), CT, p.sop_instance_uid, EXPLICIT_LE)
        assert a.is_established  # nothing was sent
    with pytest.raises(AssociationFailed) as failed:
        Association.open(settings_for(scp.port), [Context(CT, (EXPLICIT_LE,))])
    assert failed.value.kind == "no_contexts"


def test_user_identity_every_type(make_scp) -> None:
    seen: list[tuple[int, bytes, bytes]] = []

    def check(event: Any) -> tuple[bool, bytes | None]:
        seen.append((event.user_id_type, event.primary_field, event.secondary_field))
        return event.primary_field != b"mallory", b"welcome"

    scp = make_scp(user_check=check)
    for kind in (1, 2, 3, 4, 5):  # pynetdicom confirms types 3-5 only
        ident = IdentitySettings(kind, b"alice", b"secret" if kind == 2 else b"", kind > 2)
        with Association.open(settings_for(scp.port, identity=ident), [Context(CT, (
                EXPLICIT_LE,))]) as a:
            assert a.identity_response == (b"welcome" if kind > 2 else None)
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5]
    assert seen[1] == (2, b"alice", b"secret")
    with pytest.raises(AssociationFailed) as refused:
        Association.open(settings_for(scp.port, identity=IdentitySettings(1, b"mallory")),
                         [Context(CT, (EXPLICIT_LE,))])
    assert refused.value.kind == "rejected"
    plain = make_scp()  # ignores identity: no response item
    with pytest.raises(AssociationFailed) as unconfirmed:
        Association.open(settings_for(plain.port, identity=IdentitySettings(1, b"a", b"", True)),
                         [Context(CT, (EXPLICIT_LE,))])
    assert unconfirmed.value.kind == "identity"
    wait_for(lambda: plain.aborts_seen == 1, 10, "our abort")


def test_tls_mutual_and_untrusted(make_scp, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", "other-ca")
    scp = make_scp(ssl_context=server_context(pki))
    tls = TLSSettings(cert=str(pki["client.pem"]), key=str(pki["client.key"]),
                      ca_files=(str(pki["ca.pem"]),))
    paths = [data_file("CT_small.dcm"), data_file("MR_small.dcm")]
    with Association.open(settings_for(scp.port, tls=tls, max_pdu=4096),
                          contexts_for(paths)) as a:
        assert store_all(a, paths) == [0, 0]
    assert {r.sop_instance: r.dataset_bytes for r in scp.received} == {
        probe(p).sop_instance_uid: dataset_bytes(p) for p in paths}
    bad = TLSSettings(cert=str(other["client.pem"]), key=str(other["client.key"]),
                      ca_files=(str(other["ca.pem"]),))
    with pytest.raises(AssociationFailed) as failed:
        Association.open(settings_for(scp.port, tls=bad), contexts_for(paths))
    assert failed.value.kind == "tls" and "TLS handshake" in str(failed.value)


@pytest.mark.parametrize("profile", ["bcp195", "bcp195-nd", "bcp195-ex", "aes"])
def test_tls_profiles(make_scp, tmp_path: Path, profile: str) -> None:
    # PS3.15 B.3 AES profile: TLS_RSA_WITH_AES_128_CBC_SHA, RSA keys, and a cipher a
    # default server context no longer offers
    pki = make_pki(tmp_path / "pki", rsa_keys=profile == "aes")
    server = server_context(pki, require_client=False)
    if profile == "aes":
        server.set_ciphers("AES128-SHA:@SECLEVEL=0")
    scp = make_scp(ssl_context=server)
    tls = TLSSettings(ca_files=(str(pki["ca.pem"]),), profile=profile)
    path = data_file("CT_small.dcm")
    with Association.open(settings_for(scp.port, tls=tls), contexts_for([path])) as a:
        assert isinstance(a.sock, ssl.SSLSocket)
        if profile == "aes":  # the profile is enforced, not only offered
            assert a.sock.cipher()[0] == "AES128-SHA"
        assert store_all(a, [path]) == [0]
    assert scp.received[0].dataset_bytes == dataset_bytes(path)


def test_release_and_abort_from_our_side(scp) -> None:
    cxs = [Context(CT, (EXPLICIT_LE,))]
    a = Association.open(settings_for(scp.port), cxs)
    a.release()
    assert a.state == "released"
    wait_for(lambda: scp.releases_seen == 1, 10, "the release")
    b = Association.open(settings_for(scp.port), cxs)
    b.abort()
    assert b.state == "aborted"
    wait_for(lambda: scp.aborts_seen == 1, 10, "the abort")
    with pytest.raises(AssociationLost, match="has ended"):
        b.send_c_echo()


def test_refused_connection_is_named(scp) -> None:
    from tests.peers import free_port

    with pytest.raises(AssociationFailed) as failed:
        Association.open(settings_for(free_port()), [Context(CT, (EXPLICIT_LE,))])
    assert failed.value.kind == "refused" and "cannot connect" in str(failed.value)


# -- DCMTK storescp ----------------------------------------------------------------------

@pytest.mark.parametrize("pdu", ["4096", "131072"])
def test_storescp_stores_byte_for_byte(tmp_path: Path, pdu: str) -> None:
    peer = StoreSCPProcess(tmp_path / "out", ("+B", "-pdu", pdu))
    try:
        paths = [data_file(n) for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
        with Association.open(settings_for(peer.port, max_pdu=8192), contexts_for(paths)) as a:
            assert a.peer_max_pdu == int(pdu)
            assert store_all(a, paths) == [0, 0, 0]
        stored = {}
        for f in wait_for(lambda: len(peer.files()) == 3 and peer.files(), 10, "3 files"):
            stored[str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)] = dataset_bytes(f)
        assert stored == {probe(p).sop_instance_uid: dataset_bytes(p) for p in paths}
    finally:
        peer.stop()


@pytest.mark.parametrize("mode", ["uncompressed", "little", "big", "implicit", "lossless",
                                  "deflated"])
def test_storescp_negotiates_every_uncompressed_mode(storescp, mode: str) -> None:
    for combine in (False, True):
        with Association.open(settings_for(storescp.port),
                              storescu_contexts(mode, combine, [CT])) as a:
            assert a.accepted and all(c.abstract_syntax == CT for c in a.accepted)


def test_storescp_profile_from_dcmtk_config(storescp) -> None:
    cfg = Path("/etc/dcmtk/storescu.cfg")
    contexts = parse_profile(cfg.read_text(), "Default", str(cfg))
    with Association.open(settings_for(storescp.port), contexts[:128]) as a:
        assert len(a.accepted) + len(a.rejected) == len(contexts[:128])


@pytest.mark.parametrize("how", ["--abort-after", "--abort-during"])
def test_storescp_abort_is_an_association_lost(tmp_path: Path, how: str) -> None:
    peer = StoreSCPProcess(tmp_path / "out", (how,))
    try:
        paths = [data_file("CT_small.dcm")]
        a = Association.open(settings_for(peer.port), contexts_for(paths))
        with pytest.raises(AssociationLost) as lost:
            store_all(a, paths)
        assert lost.value.kind in ("aborted", "closed")
        assert not a.is_established
    finally:
        peer.stop()


def test_storescp_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    peer = StoreSCPProcess(tmp_path / "out", ("+B", "+tls", str(pki["server.key"]),
                                              str(pki["server.pem"]), "+cf", str(pki["ca.pem"])))
    try:
        tls = TLSSettings(cert=str(pki["client.pem"]), key=str(pki["client.key"]),
                          ca_files=(str(pki["ca.pem"]),))
        path = data_file("CT_small.dcm")
        with Association.open(settings_for(peer.port, tls=tls), contexts_for([path])) as a:
            assert store_all(a, [path]) == [0]
        f = wait_for(lambda: peer.files(), 10, "the stored file")[0]
        assert dataset_bytes(f) == dataset_bytes(path)
    finally:
        peer.stop()


# -- Orthanc -----------------------------------------------------------------------------

def test_orthanc_stores_every_file(tmp_path: Path) -> None:
    orthanc = OrthancProcess(tmp_path / "orthanc")
    try:
        files = unique_copies(tmp_path / "in", 5)
        paths = list(files.values())
        with Association.open(settings_for(orthanc.port, called_ae=orthanc.aet),
                              contexts_for(paths)) as a:
            assert store_all(a, paths) == [0] * 5
        assert orthanc.sop_instance_uids() == {uid: 1 for uid in files}
    finally:
        orthanc.stop()


# -- a scripted raw peer -----------------------------------------------------------------

class RawPeer:
    """One connection on 127.0.0.1 handled by ``script(conn)`` in a thread; what the
    script records goes to ``self.log``; its failures are raised by :meth:`join`."""

    def __init__(self, script: Callable[[socket.socket, RawPeer], None]):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.script = script
        self.log: list[Any] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="raw-peer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.listener.settimeout(20)
            conn, _ = self.listener.accept()
            conn.settimeout(20)
            with conn:
                self.script(conn, self)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc
        finally:
            self.listener.close()

    def join(self) -> None:
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def recv_exact(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_pdu(conn: socket.socket) -> tuple[int, bytes]:
    head = recv_exact(conn, 6)
    return head[0], head + recv_exact(conn, struct.unpack(">I", head[2:])[0])


def accept(conn: socket.socket, max_pdu: int = 16384) -> A_ASSOCIATE:
    pdu_type, body = read_pdu(conn)
    assert pdu_type == P.ASSOCIATE_RQ
    rq = A_ASSOCIATE_RQ()
    rq.decode(body)
    prim = rq.to_primitive()
    conn.sendall(A_ASSOCIATE_AC(accept_primitive(prim, max_pdu)).encode())
    return prim


def read_message(conn: socket.socket, peer: RawPeer | None = None,
                 on_command: Callable[[dict], None] | None = None) -> tuple[dict, bytes, int]:
    """One request: its command elements, its dataset, the largest PDU length seen."""
    command, dataset, largest, cmd = b"", b"", 0, None
    while True:
        pdu_type, body = read_pdu(conn)
        assert pdu_type == P.P_DATA_TF, pdu_type
        largest = max(largest, len(body) - 6)
        for _pcid, control, data in P.pdv_items(body, 0):
            if control & 1:
                command += data
                if control & 2:
                    cmd = dimse.parse_command(command, "test")
                    if on_command:
                        on_command(cmd)
                    if struct.unpack("<H", cmd[0x0800])[0] == dimse.NO_DATASET:
                        return cmd, b"", largest
            else:
                dataset += data
                if control & 2:
                    assert cmd is not None
                    return cmd, dataset, largest


def store_rsp(cmd: dict, status: int = 0, context_id: int = 1) -> bytes:
    cs = Dataset()
    cs.CommandGroupLength = 0
    cs.AffectedSOPClassUID = cmd[0x0002].rstrip(b"\0").decode()
    cs.CommandField = 0x8001 if struct.unpack("<H", cmd[0x0100])[0] == 1 else 0x8030
    cs.MessageIDBeingRespondedTo = struct.unpack("<H", cmd[0x0110])[0]
    cs.CommandDataSetType = 0x0101
    cs.Status = status
    raw = encode(cs, True, True)
    return P.pdata_pdus(context_id, 0x01, raw, 16000)


@pytest.fixture
def ct() -> tuple[Path, Any]:
    path = data_file("CT_small.dcm")
    return path, probe(path)


def store_one(a: Association, ct: tuple[Path, Any]) -> dimse.Response:
    path, p = ct
    return a.send_c_store(path, p.sop_class_uid, p.sop_instance_uid, p.transfer_syntax)


def test_our_max_pdu_is_proposed_and_the_peers_is_kept(ct) -> None:
    def script(conn: socket.socket, peer: RawPeer) -> None:
        rq = accept(conn, max_pdu=4096)
        peer.log.append(rq.maximum_length_received)
        cmd, dataset, largest = read_message(conn)
        peer.log += [dataset, largest]
        conn.sendall(store_rsp(cmd))
        assert read_pdu(conn)[0] == P.RELEASE_RQ
        conn.sendall(P.HEADER.pack(P.RELEASE_RP, 0, 4) + bytes(4))

    peer = RawPeer(script)
    with Association.open(settings_for(peer.port, max_pdu=65536),
                          contexts_for([ct[0]])) as a:
        assert store_one(a, ct).status == 0
    peer.join()
    assert peer.log == [65536, dataset_bytes(ct[0]), 4096]


def test_max_send_pdu_caps_what_we_send(ct) -> None:
    def script(conn: socket.socket, peer: RawPeer) -> None:
        accept(conn, max_pdu=0)  # no limit from the peer
        cmd, _, largest = read_message(conn)
        peer.log.append(largest)
        conn.sendall(store_rsp(cmd))

    peer = RawPeer(script)
    a = Association.open(settings_for(peer.port, max_send_pdu=5000), contexts_for([ct[0]]))
    assert store_one(a, ct).status == 0
    a.abort()
    peer.join()
    assert peer.log == [5000]


def test_a_response_that_arrives_before_the_request_is_complete_is_read(tmp_path: Path) -> None:
    """The peer answers as soon as it has the command, while we still write the dataset:
    the answer waits in the socket for the one thread that wrote the request."""
    files = list(unique_copies(tmp_path, 30).values())

    def script(conn: socket.socket, peer: RawPeer) -> None:
        accept(conn, max_pdu=4096)
        for _ in files:
            cmd, dataset, _ = read_message(conn, on_command=lambda c: conn.sendall(store_rsp(c)))
            peer.log.append(len(dataset))
        assert read_pdu(conn)[0] == P.RELEASE_RQ
        conn.sendall(P.HEADER.pack(P.RELEASE_RP, 0, 4) + bytes(4))

    peer = RawPeer(script)
    with Association.open(settings_for(peer.port, dimse_timeout=5.0),
                          contexts_for(files[:1])) as a:
        assert store_all(a, files) == [0] * len(files)
    peer.join()
    assert peer.log == [len(dataset_bytes(f)) for f in files]


def test_while_waiting_runs_after_the_request_and_before_its_response(ct) -> None:
    """The caller's own work (the worker's previous done mark) runs once the whole
    request is written and before the response is read; an exception from it aborts the
    association and leaves, and nothing more is written."""
    answer = threading.Event()

    def script(conn: socket.socket, peer: RawPeer) -> None:
        accept(conn)
        cmd, dataset, _ = read_message(conn)
        peer.log.append(len(dataset))
        assert answer.wait(10)
        conn.sendall(store_rsp(cmd, status=0xB000))
        cmd, dataset, _ = read_message(conn)
        peer.log.append(len(dataset))
        try:
            peer.log.append(read_pdu(conn)[0])
        except (EOFError, OSError):
            peer.log.append("closed")

    peer = RawPeer(script)
    a = Association.open(settings_for(peer.port), contexts_for([ct[0]]))
    path, p = ct
    seen: list[Any] = []

    def during() -> None:  # the peer has the whole file and has not answered yet
        wait_for(lambda: len(peer.log) == 1, 10, "the whole request at the peer")
        seen.append(a.reader.pending())
        answer.set()

    rsp = a.send_c_store(path, p.sop_class_uid, p.sop_instance_uid, p.transfer_syntax,
                         while_waiting=during)
    assert rsp.status == 0xB000 and seen == [False]

    def fails() -> None:
        raise RuntimeError("the spool cannot record it")

    with pytest.raises(RuntimeError, match="cannot record"):
        a.send_c_store(path, p.sop_class_uid, p.sop_instance_uid, p.transfer_syntax,
                       while_waiting=fails)
    assert a.state == "aborted"
    peer.join()
    size = len(dataset_bytes(path))
    assert peer.log == [size, size, P.ABORT]


def test_a_peer_that_stalls_mid_pdu_times_out_with_a_clear_error(ct) -> None:
    release = threading.Event()

    def script(conn: socket.socket, peer: RawPeer) -> None:
        accept(conn)
        cmd, _, _ = read_message(conn)
        rsp = store_rsp(cmd)
        conn.sendall(rsp[:20])
        release.wait(20)

    peer = RawPeer(script)
    a = Association.open(settings_for(peer.port, network_timeout=0.5), contexts_for([ct[0]]))
    with pytest.raises(AssociationLost) as lost:
        store_one(a, ct)
    release.set()
    peer.join()
    assert lost.value.kind == "timeout"
    assert "stalled in the middle of P-DATA-TF (type 0x04) at offset" in str(lost.value)
    assert a.state == "aborted"


@pytest.mark.parametrize("dimse, network, name", [(0.5, 10.0, "DIMSE"),
                                                  (None, 0.5, "network")])
def test_no_response_within_the_dimse_or_network_timeout_aborts(ct, dimse: float | None,
                                                                network: float,
                                                                name: str) -> None:
    def script(conn: socket.socket, peer: RawPeer) -> None:
        accept(conn)
        read_message(conn)
        peer.log.append(read_pdu(conn))

    peer = RawPeer(script)
    a = Association.open(settings_for(peer.port, dimse_timeout=dimse, network_timeout=network),
                         contexts_for([ct[0]]))
    with pytest.raises(AssociationLost, match=rf"no C-STORE response .* within the {name} "
                       r"timeout \(0.5s\)"):
        store_one(a, ct)
    peer.join()
    assert peer.log[0][0] == P.ABORT


@pytest.mark.parametrize("reply, words", [
    (b"\x42\x00\x00\x00\x00\x04abcd", r"unknown PDU type 0x42 at offset \d+"),
    (P.PDATA_HEADER.pack(4, 0, 30, 900, 1, 3) + bytes(24),
     r"malformed P-DATA-TF \(type 0x04\) at offset \d+: the PDV item at PDU byte 6 claims 900"),
    (P.HEADER.pack(P.RELEASE_RP, 0, 9) + bytes(9), r"malformed A-RELEASE-RP \(type 0x06\) at offset \d+: PDU length 9"),
    (None, "unexpected A-ASSOCIATE-AC \\(type 0x02\\) at offset"),
    (P.pdata_pdus(1, 0x03, b"\x00\x00\x00\x01\x02\x00\x00\x00\x01", 100),
     r"malformed command set of the C-STORE response ending at offset \d+"),
])
def test_a_malformed_or_unexpected_pdu_aborts_naming_type_and_offset(ct, reply: bytes | None,
                                                                     words: str) -> None:
    def script(conn: socket.socket, peer: RawPeer) -> None:
        rq = accept(conn)
        read_message(conn)
        conn.sendall(reply if reply is not None else
                     A_ASSOCIATE_AC(accept_primitive(rq, 16384)).encode())
        pdu_type, body = read_pdu(conn)
        peer.log.append((pdu_type, body[8:10]))

    peer = RawPeer(script)
    a = Association.open(settings_for(peer.port), contexts_for([ct[0]]))
    with pytest.raises(MalformedPDU, match=words) as bad:
        store_one(a, ct)
    peer.join()
    assert isinstance(bad.value, AssociationLost) and bad.value.kind == "malformed"
    assert peer.log[0][0] == P.ABORT and peer.log[0][1][0] == 2  # source: service provider
    assert not a.is_established


def test_a_malformed_associate_ac_fails_the_setup_with_its_offset() -> None:
    def script(conn: socket.socket, peer: RawPeer) -> None:
        read_pdu(conn)
        body = bytearray(74) + b"\x21\x00\x03\x00"  # a context item longer than the PDU
        body[0], body[2:6] = P.ASSOCIATE_AC, struct.pack(">I", len(body) - 6)
        conn.sendall(body)
        peer.log.append(read_pdu(conn)[0])

    peer = RawPeer(script)
    with pytest.raises(AssociationFailed, match=r"malformed A-ASSOCIATE-AC \(type 0x02\) at "
                       r"offset 0: item 0x21 at PDU byte 74 claims 768") as failed:
        Association.open(settings_for(peer.port), [Context(CT, (EXPLICIT_LE,))])
    peer.join()
    assert failed.value.kind == "aborted" and peer.log == [P.ABORT]


def test_no_associate_answer_within_the_acse_timeout() -> None:
    def script(conn: socket.socket, peer: RawPeer) -> None:
        read_pdu(conn)
        peer.log.append(read_pdu(conn)[0])

    peer = RawPeer(script)
    with pytest.raises(AssociationFailed, match="ACSE timeout") as failed:
        Association.open(settings_for(peer.port, acse_timeout=0.5), [Context(CT, (EXPLICIT_LE,))])
    peer.join()
    assert failed.value.kind == "timeout" and peer.log == [P.ABORT]


@pytest.mark.parametrize("when", ["idle", "awaiting"])
def test_the_peer_releases(ct, when: str) -> None:
    sent = threading.Event()

    def script(conn: socket.socket, peer: RawPeer) -> None:
        accept(conn)
        if when == "awaiting":
            read_message(conn)
        conn.sendall(P.HEADER.pack(P.RELEASE_RQ, 0, 4) + bytes(4))
        sent.set()
        peer.log.append(read_pdu(conn)[0])

    peer = RawPeer(script)
    a = Association.open(settings_for(peer.port), contexts_for([ct[0]]))
    if when == "idle":
        sent.wait(10)
        wait_for(lambda: a.reader.pending(), 10, "the peer's release request")
    with pytest.raises(AssociationLost, match="released the association while") as lost:
        store_one(a, ct)
    peer.join()
    assert lost.value.kind == "released" and peer.log == [P.RELEASE_RP]
    assert a.state == "released"


@pytest.mark.parametrize("when", ["idle", "awaiting"])
def test_the_peer_aborts(ct, when: str) -> None:
    def script(conn: socket.socket, peer: RawPeer) -> None:
        accept(conn)
        if when == "awaiting":
            read_message(conn)
        conn.sendall(P.encode_abort(0, 0))
        try:
            peer.log.append(conn.recv(100))
        except OSError:
            peer.log.append(b"")

    peer = RawPeer(script)
    a = Association.open(settings_for(peer.port), contexts_for([ct[0]]))
    if when == "idle":
        wait_for(lambda: a.reader.pending(), 10, "the peer's abort")
    with pytest.raises(AssociationLost, match="aborted by") as lost:
        store_one(a, ct)
    peer.join()
    assert lost.value.kind == "aborted" and a.state == "aborted"
    assert peer.log == [b""]  # nothing of the request was written after the abort


def test_release_collision_is_answered() -> None:
    def script(conn: socket.socket, peer: RawPeer) -> None:
        accept(conn)
        assert read_pdu(conn)[0] == P.RELEASE_RQ
        conn.sendall(P.HEADER.pack(P.RELEASE_RQ, 0, 4) + bytes(4))
        peer.log.append(read_pdu(conn)[0])
        conn.sendall(P.HEADER.pack(P.RELEASE_RP, 0, 4) + bytes(4))

    peer = RawPeer(script)
    a = Association.open(settings_for(peer.port), [Context(CT, (EXPLICIT_LE,))])
    a.release()
    peer.join()
    assert peer.log == [P.RELEASE_RP] and a.state == "released"


def test_a_file_that_shrinks_while_sent_aborts(tmp_path: Path, ct) -> None:
    def script(conn: socket.socket, peer: RawPeer) -> None:
        accept(conn)
        while True:
            pdu_type, _ = read_pdu(conn)
            if pdu_type != P.P_DATA_TF:
                peer.log.append(pdu_type)
                return

    peer = RawPeer(script)
    a = Association.open(settings_for(peer.port), contexts_for([ct[0]]))
    path = tmp_path / "shrinks.dcm"
    path.write_bytes(ct[0].read_bytes())
    real_fstat = os.fstat

    def lying_fstat(fd: int) -> os.stat_result:  # the size seen before the file was cut
        st_ = real_fstat(fd)
        return os.stat_result((*st_[:6], st_.st_size + 5000, *st_[7:]))

    os.fstat = lying_fstat  # type: ignore[assignment]
    try:
        from forwarder.scu import SourceUnreadable

        with pytest.raises(SourceUnreadable, match="the file ended before byte"):
            store_one(a, (path, ct[1]))
    finally:
        os.fstat = real_fstat  # type: ignore[assignment]
    peer.join()
    assert peer.log == [P.ABORT] and a.state == "aborted"


@pytest.fixture(autouse=True)
def _no_raw_peer_left() -> Iterator[None]:
    yield
    wait_for(lambda: not [t for t in threading.enumerate() if t.name == "raw-peer"
                          and t.is_alive()], 30, "raw peers to finish")


# -- `dicom-forwarder send` on this transport --------------------------------------------

def test_send_proposes_its_pdu_size_and_names_a_malformed_answer(ct, capsys) -> None:
    from forwarder.cli import main

    def script(conn: socket.socket, peer: RawPeer) -> None:
        rq = accept(conn, max_pdu=4096)
        peer.log.append(rq.maximum_length_received)
        _, dataset, largest = read_message(conn)
        peer.log += [dataset, largest]
        conn.sendall(b"\x09\x00\x00\x00\x00\x04abcd")  # no such PDU type
        peer.log.append(read_pdu(conn)[0])

    peer = RawPeer(script)
    assert main(["send", "-pdu", "65536", "-aec", "ANY-SCP", "127.0.0.1", str(peer.port),
                 str(ct[0])]) == 1
    peer.join()
    assert peer.log == [65536, dataset_bytes(ct[0]), 4096, P.ABORT]
    assert "no response from the peer (unknown PDU type 0x09 at offset" in capsys.readouterr().err


def test_send_converts_on_this_transport(make_scp, tmp_path: Path) -> None:
    """A peer that takes only implicit VR: the explicit VR file is re-encoded, every
    attribute kept."""
    from forwarder.cli import main

    scp = make_scp(transfer_syntaxes=[IMPLICIT_LE])
    path = data_file("CT_small.dcm")
    assert main(["send", "-R", "127.0.0.1", str(scp.port), str(path)]) == 0
    got = scp.received[0]
    assert got.transfer_syntax == IMPLICIT_LE
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    sent = read_dataset(DicomBytesIO(got.dataset_bytes), True, True)
    original = dcmread(path)
    assert sent.PixelData == original.PixelData
    assert [e.tag for e in sent] == [e.tag for e in original]


def test_role_selection_is_proposed_and_its_answer_applied() -> None:
    def script(conn: socket.socket, peer: RawPeer) -> None:
        pdu_type, body = read_pdu(conn)
        rq = A_ASSOCIATE_RQ()
        rq.decode(body)
        prim = rq.to_primitive()
        roles = [i for i in prim.user_information
                 if isinstance(i, SCP_SCU_RoleSelectionNegotiation)]
        peer.log.append([(str(r.sop_class_uid), r.scu_role, r.scp_role) for r in roles])
        ac = accept_primitive(prim, 16384)
        reply = SCP_SCU_RoleSelectionNegotiation()
        reply.sop_class_uid, reply.scu_role, reply.scp_role = CT, True, True
        ac.user_information = [*ac.user_information, reply]
        conn.sendall(A_ASSOCIATE_AC(ac).encode())
        peer.log.append(read_pdu(conn)[0])

    peer = RawPeer(script)
    a = Association.open(settings_for(peer.port), [Context(CT, (EXPLICIT_LE,)),
                                                   Context(dimse.VERIFICATION, (IMPLICIT_LE,))],
                         roles={CT: (True, True)})
    assert [(c.abstract_syntax, c.as_scu, c.as_scp) for c in a.accepted] == [
        (CT, True, True), (dimse.VERIFICATION, True, False)]
    a.abort()
    peer.join()
    assert peer.log == [[(CT, True, True)], P.ABORT]
