"""Three small, documented fixes to pynetdicom's association machinery.

1. **The reactor pause race** (pynetdicom issue #875, seen with 3.0.4). ``send_c_store()``
   clears ``_reactor_checkpoint`` and waits for ``_is_paused``; the association thread
   sets ``_is_paused = True`` *before* ``checkpoint.wait()`` and may already be past the
   wait when the checkpoint is cleared. It then takes the C-STORE response off the DIMSE
   queue itself ("Received unexpected C-STORE service message"), and the sender waits
   for the whole DIMSE timeout. The replacement loop below checks the checkpoint and
   does its work inside one lock-protected step, and lowers ``_is_paused`` before the
   check, so once the caller sees ``_is_paused`` true no step can still take a message.

   Its poll interval can be raised while the association is idle (see :func:`pace`).

2. **QUICKACK after every read.** Linux turns TCP_QUICKACK off again by itself; without
   it the kernel delays the ACK of a C-STORE response and a peer running with Nagle on
   (DCMTK storescp as shipped) holds its next response until that ACK comes. Re-arming
   it after each ``recv()`` on our sockets keeps one round trip per C-STORE.

3. **Connection failures are reported once, by us.** pynetdicom's transport logs a failed
   connect at ERROR and, for a TLS error, the Python traceback too (a peer that refuses
   our certificate, or whose certificate we refuse, is a configuration matter, not a
   bug). The caller names the failure (``TLS handshake with ... failed: ...``, ``cannot
   connect``) in its own event, so those records are dropped.

Nothing here changes pynetdicom on import. :func:`install` puts fixes 1 and 2 on one
association (the requestor :func:`forwarder.association.open_association` opens), so the
in-process acceptors of a test or of ``receive`` run pynetdicom's own code; fix 3 is a
logger filter that :func:`forwarder.runtime.setup` adds. Fix 1 replaces a private method:
:func:`check` refuses to install it over a reactor whose source is not the one it was
written for (pynetdicom 3.0.4), so a pynetdicom that changed it (perhaps fixing the race)
is noticed at start, not guessed at.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import socket
import threading
from types import MethodType
from typing import Any, cast

import pynetdicom
from pynetdicom import evt
from pynetdicom.association import LOGGER as PDN_LOGGER
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from forwarder.errors import ForwarderError

# sha256 of inspect.getsource(Association._run_reactor) in pynetdicom 3.0.4, the reactor
# whose race fix 1 closes and whose loop body _reactor_step repeats
WRITTEN_FOR = "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee"
_checked: list[object] = []  # the upstream reactor function that passed check()


class ReactorChanged(ForwarderError):
    """pynetdicom's association reactor is not the one the fix was written for."""


def reactor_source_hash() -> str:
    return hashlib.sha256(inspect.getsource(Association._run_reactor).encode()).hexdigest()


def reactor_is_known() -> bool:
    """pynetdicom's reactor is the one fix 1 was written for (and still has the race)."""
    return reactor_source_hash() == WRITTEN_FOR


def check() -> None:
    """Refuse (:class:`ReactorChanged`) to replace a reactor that is not the one the fix
    was written for: its loop body is repeated here, and a changed one may have fixed the
    race, or moved it."""
    upstream = Association._run_reactor
    if _checked and _checked[0] is upstream:
        return
    found = reactor_source_hash()
    if found != WRITTEN_FOR:
        raise ReactorChanged(
            f"pynetdicom {pynetdicom.__version__}: Association._run_reactor is not the one "
            "the fix in forwarder/pdnpatch.py was written for (pynetdicom 3.0.4; source "
            f"sha256 {found[:12]}, expected {WRITTEN_FOR[:12]}); install pynetdicom 3.0.4, "
            "or check whether pynetdicom issue #875 is fixed in this version and update "
            "forwarder/pdnpatch.py (tests/test_pdnpatch.py shows the race)")
    _checked[:] = [upstream]


class _WakingCheckpoint(threading.Event):
    """The reactor checkpoint, whose ``clear()`` (a request to pause) also wakes the
    reactor, so ``send_c_store()`` does not wait out the reactor's poll interval."""

    _fwd_wake: threading.Event

    def clear(self) -> None:
        super().clear()
        self._fwd_wake.set()


def _run_reactor(self: Association) -> None:
    """Fix 1: pynetdicom's reactor loop with each step under a lock (installed per
    association by :func:`install`)."""
    lock = self.__dict__.setdefault("_fwd_step_lock", threading.Lock())
    checkpoint = self._reactor_checkpoint
    if type(checkpoint) is threading.Event:  # the same object send_c_store() uses
        checkpoint._fwd_wake = threading.Event()  # type: ignore[attr-defined]
        checkpoint.__class__ = _WakingCheckpoint
    wake = getattr(checkpoint, "_fwd_wake", None) or threading.Event()
    self._is_paused = False
    while not self._kill:
        with lock:
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                self._is_paused = True
            else:
                if _reactor_step(self):
                    return
        if self._is_paused:
            self._reactor_checkpoint.wait(0.05)
        else:
            wake.wait(getattr(self, "_fwd_loop_delay", 0.001))
            wake.clear()


def _reactor_step(self: Association) -> bool:
    """One pass of pynetdicom's ``_run_reactor`` body; True when the association ended."""
    context_id, msg = self.dimse.get_msg(block=False)
    if msg:
        self._serve_request(msg, cast(int, context_id))
    if self.is_established and self.acse.is_release_requested():
        self.acse.send_release(is_response=True)
        PDN_LOGGER.info("Association Released")
        self.is_released = True
        self.is_established = False
        evt.trigger(self, evt.EVT_RELEASED, {})
        self.kill()
        return True
    if self.acse.is_aborted():
        PDN_LOGGER.info("Association Aborted")
        self.dul.receive_pdu(wait=False)
        self.is_aborted = True
        self.is_established = False
        evt.trigger(self, evt.EVT_ABORTED, {})
        self.kill()
        return True
    if not self.dul.is_alive():
        self.kill()
        return True
    if self.dul.idle_timer_expired():
        PDN_LOGGER.error("Network timeout reached")
        self.abort()
        self.kill()
        return True
    return False


_original_recv = AssociationSocket.recv


def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """Fix 2: pynetdicom's ``recv``, then QUICKACK armed again."""
    data = _original_recv(self, nr_bytes)
    sock: Any = self.socket
    if sock is not None and getattr(self, "_fwd_quickack", True):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except (OSError, AttributeError):
            self.__dict__["_fwd_quickack"] = False  # not TCP (or not Linux): stop trying
    return data


def pace(assoc: Association, idle: bool) -> None:
    """Both of an association's threads poll every millisecond; that is the latency of a
    C-STORE while busy, and a few percent of a core while an association sits idle
    waiting for files. Idle, they poll every 20 ms instead; the first C-STORE after it
    waits at most that long."""
    delay = 0.02 if idle else 0.001
    assoc._fwd_loop_delay = delay  # type: ignore[attr-defined]
    if assoc.dul is not None:
        assoc.dul._run_loop_delay = delay


def not_a_connect_failure(record: logging.LogRecord) -> bool:
    """Fix 3, a filter for the ``pynetdicom.transport`` logger."""
    text = str(record.msg)
    return not (text.startswith(("Association request failed: unable to connect",
                                 "TCP Initialisation Error"))
                or (record.exc_info is not None and record.funcName == "connect"))


def install_log_filter() -> None:
    """Fix 3, for the whole process (called by :func:`forwarder.runtime.setup`)."""
    transport = logging.getLogger("pynetdicom.transport")
    if not_a_connect_failure not in transport.filters:
        transport.addFilter(not_a_connect_failure)


def install(assoc: Association) -> None:
    """Fixes 1 and 2 on this association only: called when its connection opens, before
    its reactor starts (the caller has run :func:`check`)."""
    assoc._run_reactor = MethodType(_run_reactor, assoc)  # type: ignore[method-assign]
    sock = assoc.dul.socket if assoc.dul is not None else None
    if hasattr(socket, "TCP_QUICKACK") and sock is not None:
        sock.recv = MethodType(_recv, sock)  # type: ignore[method-assign]


def installed(assoc: Association) -> bool:
    """Fix 1 runs this association's reactor."""
    method = assoc.__dict__.get("_run_reactor")
    return getattr(method, "__func__", None) is _run_reactor
