"""Pure backoff schedule: exponential with a cap and jitter, clock-step guard."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float = 10.0
    max: float = 600.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_age: float = 7 * 86400.0


def delay(attempts: int, policy: Backoff, rand: float) -> float:
    """Seconds to wait after the ``attempts``-th failure; ``rand`` in [0, 1) spreads retries
    so a peer coming back is not hit by the whole queue at once."""
    n = max(attempts, 1) - 1
    base = min(policy.max, policy.initial * policy.multiplier ** min(n, 64))
    return max(0.0, base * (1.0 + policy.jitter * (2.0 * rand - 1.0)))


def next_attempt(now: float, attempts: int, policy: Backoff, rand: float) -> float:
    return now + delay(attempts, policy, rand)


def latest(now: float, policy: Backoff) -> float:
    """Times are wall-clock (they must survive a restart); after the clock steps back, a job
    could wait far longer than any backoff: never due later than the cap plus jitter."""
    return now + policy.max * (1.0 + policy.jitter)


def clamp_future(next_at: float, now: float, policy: Backoff) -> float:
    """``next_at``, or :func:`latest` when that is sooner."""
    return min(next_at, latest(now, policy))
