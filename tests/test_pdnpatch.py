"""pynetdicom #875: the association thread can take a C-STORE response meant for
send_c_store(). The race needs the reactor to look paused while it is about to run a
step, and the response to be queued before send_c_store() reads it. The tests force
that interleaving with events instead of timing (the reactor's checkpoint wait returns
only once a response is queued; send_msg returns only once the queue is read or a
moment passed), so pynetdicom's own reactor loses the response every time and ours never.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
from pynetdicom.association import Association

from forwarder import pdnpatch
from forwarder.association import PeerSettings, open_association
from forwarder.dicomfile import probe
from forwarder.negotiation import plan_contexts
from tests.corpus import data_file


def force_the_interleaving(assoc: Association) -> None:
    dimse_queue = assoc.dimse.msg_queue

    class ReturnsWhenAResponseIsQueued(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            woke = super().wait(timeout)
            for _ in range(50):  # at most 0.5 s
                if dimse_queue.qsize():
                    break
                threading.Event().wait(0.01)
            return woke

    checkpoint = ReturnsWhenAResponseIsQueued()
    checkpoint.set()
    assoc._reactor_checkpoint = checkpoint
    send = assoc.dimse.send_msg

    def send_then_linger(primitive, context_id):  # noqa: ANN001, ANN202
        send(primitive, context_id)
        for _ in range(20):  # until someone took the response, at most 0.2 s
            if dimse_queue.qsize():
                break
            threading.Event().wait(0.01)
        for _ in range(20):
            if not dimse_queue.qsize():
                break
            threading.Event().wait(0.01)

    assoc.dimse.send_msg = send_then_linger


def stores_until_no_response(port: int, limit: int) -> int:
    ct = data_file("CT_small.dcm")
    pr = probe(ct)
    peer = PeerSettings("127.0.0.1", port, dimse_timeout=1.0, acse_timeout=5.0)
    assoc = open_association(peer, plan_contexts([(pr.sop_class_uid, pr.transfer_syntax)],
                                                 "uncompressed", False))
    force_the_interleaving(assoc)
    try:
        for n in range(limit):
            rsp = assoc.send_c_store(str(ct), msg_id=n + 1)
            if "Status" not in rsp:
                return n
        return limit
    finally:
        if assoc.is_established:
            assoc.release()


def test_pynetdicoms_reactor_takes_the_response_unless_upstream_fixed_it(
        scp, monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's own reactor on the association: the reactor the fix was written for
    loses a response; any other must not (or the fix has to be looked at again)."""
    monkeypatch.setattr(pdnpatch, "check", lambda: None)
    monkeypatch.setattr(pdnpatch, "install", lambda assoc: None)
    stored = stores_until_no_response(scp.port, 5)
    if pdnpatch.reactor_is_known():
        assert stored < 5  # the race: a response is lost
    else:
        assert stored == 5, "pynetdicom changed its reactor but it still loses responses"


def test_no_response_is_lost(scp) -> None:
    """Either our fix runs the association, or upstream's reactor no longer has the race:
    this holds the day pynetdicom fixes it and forwarder/pdnpatch.py is retired."""
    if pdnpatch.reactor_is_known():
        assoc = open_ct_association(scp.port)
        assert pdnpatch.installed(assoc)
        assoc.release()
    assert stores_until_no_response(scp.port, 10) == 10
    assert len(scp.received) == 10


def open_ct_association(port: int) -> Association:
    pr = probe(data_file("CT_small.dcm"))
    return open_association(PeerSettings("127.0.0.1", port, acse_timeout=5.0),
                            plan_contexts([(pr.sop_class_uid, pr.transfer_syntax)],
                                          "uncompressed", False))


def test_the_fix_is_per_association(scp) -> None:
    """Our requestor gets the fix; pynetdicom's class (the in-process acceptors of a test
    or of `receive`) keeps its own reactor."""
    assoc = open_ct_association(scp.port)
    try:
        assert pdnpatch.installed(assoc)
        assert Association.__dict__["_run_reactor"] is not pdnpatch._run_reactor
        assert not any(pdnpatch.installed(a) for a in scp.server.active_associations)
    finally:
        assoc.release()


def test_a_changed_reactor_is_refused(scp, monkeypatch: pytest.MonkeyPatch) -> None:
    def _run_reactor(self: Association) -> None:  # a different source: a new upstream
        pass

    monkeypatch.setattr(Association, "_run_reactor", _run_reactor)
    with pytest.raises(pdnpatch.ReactorChanged, match=r"pynetdicom 3\.0\.4.*#875"):
        pdnpatch.check()
    with pytest.raises(pdnpatch.ReactorChanged):
        open_ct_association(scp.port)
    assert not scp.received


def test_importing_changes_nothing_in_pynetdicom() -> None:
    """Only runtime.setup() changes process-wide state: importing the modules does not."""
    code = textwrap.dedent("""
        import logging, multiprocessing
        from pynetdicom import _config
        from pynetdicom.association import Association
        from pynetdicom.pdu_primitives import UserIdentityNegotiation
        from pynetdicom.transport import AssociationSocket
        before = (Association._run_reactor, AssociationSocket.recv,
                  UserIdentityNegotiation.from_primitive)
        import forwarder.association, forwarder.sender, forwarder.logs, forwarder.worker
        import forwarder.daemon, forwarder.receive
        assert not _config.STORE_SEND_CHUNKED_DATASET
        assert (Association._run_reactor, AssociationSocket.recv,
                UserIdentityNegotiation.from_primitive) == before
        assert logging.getLevelName(5) == "Level 5"
        assert not logging.getLogger("pynetdicom.transport").filters
        assert not logging.getLogger("pynetdicom._handlers").filters
        assert multiprocessing.get_start_method(allow_none=True) is None
        import multiprocessing.forkserver as fs
        assert fs._forkserver._preload_modules == ["__main__"]
        from forwarder import runtime
        runtime.setup()
        assert _config.STORE_SEND_CHUNKED_DATASET
        assert logging.getLevelName(5) == "TRACE"
        assert Association._run_reactor is before[0]  # per association, never the class
        assert "forwarder.worker" in fs._forkserver._preload_modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
