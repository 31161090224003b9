"""A destination's health as one worker sees and keeps it: backoff, held, probe, expiry.

Mixed into :class:`forwarder.worker.Worker`. Health lives in the spool, so every worker of
a destination (and a restarted daemon) sees the same state; only worker 0 probes and
expires, so a destination never gets a probe storm. The peer's settings, secrets
included, are read again for every association and probe.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from typing import Any

from forwarder import outcome, retry
from forwarder.association import AssociationFailed, PeerSettings, echo
from forwarder.config import Destination
from forwarder.errors import ForwarderError
from forwarder.logs import event
from forwarder.peers import peer_for
from forwarder.spool import Spool

LOGGER = logging.getLogger("forwarder.worker")
EXPIRE_EVERY = 60.0
CLOCK_STEP = 60.0  # the wall clock moved this much more or less than the monotonic one
EXPIRY_WARNING = 0.8        # jobs this far into max_age are announced (``expiring``) ...
EXPIRY_WARN_EVERY = 3600.0  # ... again when more join them, or after this long


def destination_fields(dest: Destination) -> dict[str, Any]:
    """The journal fields naming a destination and its peer, on every event about it."""
    return {"DESTINATION": dest.name, "PEER": dest.peer, "CALLED_AE": dest.called_ae_title}


class DestinationHealth:
    """The health half of a worker (it provides the attributes declared here)."""

    dest: Destination
    name: str
    index: int
    calling_ae: str
    spool: Spool
    policy: retry.Backoff
    rand: random.Random
    peer: PeerSettings | None
    _peer_error: str | None
    next_expire: float
    _clock: tuple[float, float] | None  # the wall and monotonic clocks at the last look
    _ageing: int
    _ageing_said: float

    def _close(self) -> None:
        raise NotImplementedError

    def _wait(self, timeout: float) -> None:
        raise NotImplementedError

    def _read_peer(self) -> PeerSettings | None:
        """The peer's settings with its secrets read now: a fixed password, key password
        or token file is used by the next association or probe, without a restart."""
        try:
            self.peer, self._peer_error = peer_for(self.dest, self.calling_ae), None
        except ForwarderError as exc:  # an unreadable secret: hold, keep the jobs
            self.peer, self._peer_error = None, str(exc)
        return self.peer

    @property
    def fields(self) -> dict[str, Any]:
        return destination_fields(self.dest)

    def stepped_back(self, when: float | None, now: float) -> bool:
        """Is ``when`` (a retry or probe time) further ahead than any backoff (the clock
        was set back, or retry.max lowered)? Then every such time of this destination
        is made due now, and said."""
        latest = retry.latest(now, self.policy)
        if when is None or when <= latest:
            return False
        moved = self.spool.clock_stepped_back(self.name, latest, now)
        LOGGER.warning("%s: a retry time lay further ahead than any backoff (the clock was "
                       "set back, or retry.max lowered): the destination is probed and %d "
                       "job(s) are due now", self.name, moved)
        return True

    def _healthy(self) -> bool:
        state = self.spool.health(self.name)
        if state.state == "ok":
            return True
        self._close()
        now = time.time()
        if self.stepped_back(state.until, now):
            return False  # no backoff is that long: due now, probed at the next look
        if state.until is not None and now < state.until:
            self._wait(min(state.until - now, 1.0))
        elif self.index == 0:  # one probe per destination, not a storm
            self.probe()
        else:
            self._wait(0.2)
        return False

    def _expire(self) -> None:
        self.next_expire = time.monotonic() + EXPIRE_EVERY
        self._clock_step()
        n = self.spool.expire(self.name, self.policy.max_age)
        if n:
            event(LOGGER, "expired", "%d job(s) for %s older than %.0fs failed: expired (kept; "
                  "requeue with 'dicom-forwarder retry')", n, self.name, self.policy.max_age,
                  level=logging.ERROR, **self.fields)
        warn_age = self.policy.max_age * EXPIRY_WARNING
        ageing, oldest = self.spool.older_than(self.name, warn_age)
        now = time.monotonic()
        if ageing and (ageing > self._ageing or now >= self._ageing_said + EXPIRY_WARN_EVERY):
            self._ageing_said = now
            left = max(0.0, self.policy.max_age - oldest)
            health = self.spool.health(self.name)
            event(LOGGER, "expiring", "%d job(s) for %s waited more than %.0f%% of max_age "
                  "(%.0fs); the oldest expires in %.0fs unless it is delivered (destination "
                  "%s%s)", ageing, self.name, EXPIRY_WARNING * 100, self.policy.max_age, left,
                  health.state, f": {health.reason}" if health.reason else "",
                  level=logging.WARNING, JOBS=ageing, **self.fields)
        self._ageing = ageing

    def _clock_step(self) -> None:
        """max_age is the time a job waited: a step ahead of the wall clock (an edge box
        that took files before NTP set its clock, a suspend) is taken out of the ages of
        the jobs made before it, seen as the wall clock moving unlike the monotonic one.
        Those jobs are the ones stamped before the unstepped now (``wall - step``): the
        jobs made after the step are stamped later. A step back only makes ages read
        short (nothing expires early), and jobs made before and after it cannot be told
        apart by their stamps: it is logged, and ``status`` shows no age below zero."""
        wall, mono = time.time(), time.monotonic()
        if self._clock is not None:
            step = (wall - self._clock[0]) - (mono - self._clock[1])
            if step > CLOCK_STEP:
                n = self.spool.clock_stepped(self.name, step, wall - step)
                LOGGER.warning("%s: the clock stepped ahead by %.0fs; %d waiting job(s) "
                               "keep the age they had (max_age counts the time waited)",
                               self.name, step, n)
            elif step < -CLOCK_STEP:
                LOGGER.warning("%s: the clock stepped back by %.0fs; the jobs made before "
                               "read up to that much younger, so none expires early",
                               self.name, -step)
        self._clock = (wall, mono)

    def degrade(self, action: outcome.Action, now: float | None = None,
                attempts: int = 0) -> None:
        """Destination-level fault: backoff with jitter (growing with ``attempts`` too), or
        held and probed slowly."""
        now = time.time() if now is None else now
        health = self.spool.health(self.name)
        if action.kind == outcome.HOLD:
            until = now + self.policy.max
            self.spool.set_health(self.name, "held", until, action.reason, now=now)
            event(LOGGER, "destination_held", "%s held: %s; jobs are kept, next probe in %.0fs",
                  self.name, action.reason, until - now, level=logging.ERROR,
                  REASON=action.reason, **self.fields)
        else:
            until = now + retry.delay(max(health.failures + 1, attempts), self.policy,
                                      self.rand.random())
            self.spool.set_health(self.name, "backoff", until, action.reason, now=now)
            event(LOGGER, "destination_backoff", "%s unavailable: %s; next try in %.1fs",
                  self.name, action.reason, until - now, level=logging.WARNING,
                  REASON=action.reason, **self.fields)

    def probe(self) -> bool:
        """C-ECHO with the full settings; on success the destination is ``ok`` again."""
        peer = self._read_peer()
        if peer is None:
            self.degrade(outcome.Action(outcome.HOLD, self._peer_error or "no peer settings"))
            return False
        try:
            answer = echo(peer)
        except AssociationFailed as exc:
            self.degrade(outcome.association_failure(exc.kind, str(exc), exc.result,
                                                     exc.source, exc.reason))
            return False
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.degrade(outcome.Action(outcome.BACKOFF, f"cannot reach the peer: {exc}"))
            return False
        except Exception as exc:  # noqa: BLE001 - a bug or a missing module: say which
            LOGGER.error("%s: probe failed: %s: %s", self.name, type(exc).__name__, exc,
                         exc_info=True)
            self.degrade(outcome.Action(outcome.BACKOFF, f"probe failed: "
                                        f"{type(exc).__name__}: {exc}"))
            return False
        self.spool.set_health(self.name, "ok")
        event(LOGGER, "destination_ok", "%s reachable again (%s)", self.name, answer,
              **self.fields)
        return True

