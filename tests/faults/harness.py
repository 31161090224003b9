"""Fault injection around the running daemon: a TCP gate in front of a peer, invariants."""

from __future__ import annotations

import selectors
import socket
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

from tests.peers import free_port


class Gate:
    """A TCP relay on 127.0.0.1 in front of a real peer. ``down``: every connection is
    accepted and closed at once (a peer that is not there); ``up``: relayed. Counts every
    connection attempt, so a test can see whether the daemon storms a dead peer."""

    def __init__(self, target_port: int, down: bool = True):
        self.port = free_port()
        self.target = target_port
        self.down = down
        self.attempts = 0
        self.times: list[float] = []  # when each attempt came (time.monotonic())
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._run, name="test-gate", daemon=True)
        self._accept.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.times.append(time.monotonic())
            self.attempts += 1
            if self.down:
                conn.close()
                continue
            t = threading.Thread(target=self._relay, args=(conn,), name="test-gate-relay",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:
            client.close()
            return
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.2):
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._accept.join(5)
        for t in self._threads:
            t.join(5)


def spool_view(spool: Path) -> dict[str, set[str]]:
    """What the spool holds, read the way an operator's tool would (after the daemon)."""
    db = sqlite3.connect(spool / "index.sqlite")
    try:
        rows = db.execute("SELECT j.state, o.sop_instance, j.last_error FROM jobs j "
                          "JOIN objects o ON o.id = j.object_id").fetchall()
        quarantined = {r[0] for r in db.execute("SELECT source FROM quarantine")}
    finally:
        db.close()
    out: dict[str, set[str]] = {"pending": set(), "sending": set(), "failed": set(),
                                "done": set(), "quarantined": quarantined}
    for state, uid, _err in rows:
        out[state].add(uid)
    return out


def assert_nothing_lost(expected: set[str], delivered: Counter[str], spool: Path,
                        at_source: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Every expected object is at the peer, still in the spool (pending or failed with a
    reason), or still at its source: never simply gone."""
    view = spool_view(spool)
    kept = view["pending"] | view["sending"] | view["failed"]
    lost = expected - set(delivered) - kept - at_source
    assert not lost, f"{len(lost)} object(s) lost, e.g. {sorted(lost)[:3]}"
