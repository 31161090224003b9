"""A settled file offered to intake, and intake's verdict on it, sent back to its watcher.

A watcher hands intake a :class:`Candidate` once the file has been unchanged for
``min_age``; intake gives each one exactly one verdict with :meth:`Candidate.finished`.
The verdict travels back as a :class:`Finished` value on the watcher's own queue, so the
watcher's state is only ever changed on the watcher's thread.
"""

from __future__ import annotations

import functools
import queue
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from forwarder.config import Watch
from forwarder.paths import shown
from forwarder.settle import Signature


@dataclass(frozen=True)
class Candidate:
    """A file that has settled: intake decides its fate and says it with ``finished``."""

    watch: Watch
    path: str
    relpath: str
    sig: Signature
    fresh: bool  # seen through an event (new work) rather than found by a scan
    # where the verdict goes: the queue its watcher reads (a stopped watcher's is unread)
    outbox: queue.SimpleQueue[Any] | None = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def shown(self) -> str:
        """The path as text for the index, logs and journal (see :mod:`forwarder.paths`)."""
        return shown(self.path)

    def finished(self, left_in_place: bool, again_after: float | None = None) -> None:
        """Intake is done with it; ``left_in_place``: the file stays and must not be
        offered again while it is unchanged (keep_source, symlink, unreadable...), or
        not before ``again_after`` seconds (its watcher looks at it again then).
        The verdict travels forward as a value: the watcher's own thread applies it."""
        if self.outbox is not None:
            self.outbox.put(Finished(self, left_in_place, again_after))


@dataclass(frozen=True)
class Finished:
    """Intake's verdict on a candidate, read by its watcher from the watcher's queue."""

    cand: Candidate
    left_in_place: bool
    again_after: float | None = None


def under(cands: Iterable[Candidate], watches: Sequence[Watch]) -> tuple[list[Candidate],
                                                                        list[Candidate]]:
    """``cands`` split by a configuration's ``watches``: those whose watch folder it has
    as they were found, and the others, found under a configuration a reload replaced
    (the folder renamed, its settings or filters changed, or removed). The watchers of
    the new configuration look at those folders afresh: not to be taken from here."""
    kept: list[Candidate] = []
    stale: list[Candidate] = []
    for c in cands:
        (kept if c.watch in watches else stale).append(c)
    return kept, stale
