from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import StoreSCP, StoreSCPProcess


@pytest.fixture
def scp() -> Iterator[StoreSCP]:
    peer = StoreSCP().start()
    yield peer
    peer.stop()


@pytest.fixture
def make_scp() -> Iterator:
    started: list[StoreSCP] = []

    def make(**kw) -> StoreSCP:
        peer = StoreSCP(**kw).start()
        started.append(peer)
        return peer

    yield make
    for peer in started:
        peer.stop()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCPProcess]:
    peer = StoreSCPProcess(tmp_path / "storescp-out")
    yield peer
    peer.stop()


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves our own threads running (pynetdicom's may linger briefly)."""
    before = set(threading.enumerate())
    yield
    from tests.peers import wait_for

    def ours_gone() -> bool:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()
                and t.name.startswith("fwd-")]
        return not left

    wait_for(ours_gone, 10, "forwarder threads to stop")
