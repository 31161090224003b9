"""pynetdicom #875: the association thread can take a C-STORE response meant for
send_c_store(). The race needs the reactor to look paused while it is about to run a
step, and the response to be queued before send_c_store() reads it. The tests force
that interleaving with events instead of timing (the reactor's checkpoint wait returns
only once a response is queued; send_msg returns only once the queue is read or a
moment passed), so pynetdicom's own reactor loses the response every time and ours never.
"""

from __future__ import annotations

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


def test_pynetdicoms_reactor_takes_the_response(scp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Association, "_run_reactor", pdnpatch.ORIGINAL_RUN_REACTOR)
    assert stores_until_no_response(scp.port, 5) < 5  # the race: a response is lost


def test_our_reactor_never_takes_a_response(scp) -> None:
    assert Association._run_reactor is pdnpatch._run_reactor
    assert stores_until_no_response(scp.port, 10) == 10
    assert len(scp.received) == 10
