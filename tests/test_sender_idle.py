"""The daemon's associations on its own requestor: what it proposes, and a peer that ends a
kept association while it sits idle (the worker notices it before its next C-STORE, opens
a new one, and charges no file for it: nothing of any file was sent)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from forwarder.sender import DestinationSender
from forwarder.spool import Spool
from tests.corpus import unique_copies
from tests.peers import wait_for
from tests.sendutil import destination, enqueue, states


@pytest.fixture
def spool(tmp_path: Path):  # noqa: ANN201
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


@pytest.mark.parametrize("how", ["release", "abort"])
def test_an_association_the_peer_ended_while_idle_is_replaced_at_no_files_cost(
        make_scp, spool: Spool, tmp_path: Path, how: str, capfd) -> None:
    peer = make_scp()
    first, second = unique_copies(tmp_path / "c", 2).values()
    with DestinationSender(destination(peer.port, "idle_release: 120s"), "FORWARDER", spool):
        uids = enqueue(spool, [first])
        wait_for(lambda: states(spool)["done"] == 1, 30, "the first file stored")
        [kept] = peer.server.active_associations
        # the worker reads nothing while idle: a release waits for its answer until the
        # worker looks again, so it runs beside the test
        ending = threading.Thread(target=getattr(kept, how), daemon=True)
        ending.start()
        if how == "abort":
            ending.join(10)
            wait_for(lambda: peer.aborts_seen == 1, 10, "the peer's abort")
        uids += enqueue(spool, [second])
        wait_for(lambda: states(spool)["done"] == 2, 30, "the second file stored")
        ending.join(30)
        assert not ending.is_alive()
    assert peer.counts() == {u: 1 for u in uids}
    assert peer.associations == 2
    said = capfd.readouterr().err
    assert "next attempt" not in said and "failed at" not in said, said  # no file charged
    assert spool.health("pacs").failures == 0
    if how == "release":
        assert peer.releases_seen >= 1


@pytest.mark.parametrize("max_pdu", [32768, 0])
def test_the_daemon_proposes_its_max_pdu(make_scp, spool: Spool, tmp_path: Path,
                                         max_pdu: int) -> None:
    peer = make_scp()
    uids = enqueue(spool, list(unique_copies(tmp_path / "c", 1).values()))
    with DestinationSender(destination(peer.port, f"max_pdu: {max_pdu}"), "FORWARDER",
                           spool):
        wait_for(lambda: states(spool)["done"] == 1, 30, "the file stored")
    assert peer.counts() == {uids[0]: 1}
    assert peer.requestor_max_pdu == [max_pdu]  # 0: no limit (PS3.8 D.1)
