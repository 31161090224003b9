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
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import LOGGER as PDN_LOGGER
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

_applied = False
ORIGINAL_RUN_REACTOR = Association._run_reactor  # kept for the test that shows the race


class _WakingCheckpoint(threading.Event):
    """The reactor checkpoint, whose ``clear()`` (a request to pause) also wakes the
    reactor, so ``send_c_store()`` does not wait out the reactor's poll interval."""

    _fwd_wake: threading.Event

    def clear(self) -> None:
        super().clear()
        self._fwd_wake.set()


def _run_reactor(self: Association) -> None:
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


def _not_a_connect_failure(record: logging.LogRecord) -> bool:
    text = str(record.msg)
    return not (text.startswith(("Association request failed: unable to connect",
                                 "TCP Initialisation Error"))
                or (record.exc_info is not None and record.funcName == "connect"))


def apply() -> None:
    """Install the fixes once, for every association in this process."""
    global _applied
    if _applied:
        return
    logging.getLogger("pynetdicom.transport").addFilter(_not_a_connect_failure)
    Association._run_reactor = _run_reactor  # type: ignore[method-assign]
    if hasattr(socket, "TCP_QUICKACK"):
        AssociationSocket.recv = _recv  # type: ignore[method-assign]
    _applied = True
