"""Settled files whose writer may still be at work: held open for writing, or cut short.

Both are left in place and looked at again when they change (a held one also every
``min_age``, to see whether its writer has closed it), and neither waits for ever: a
file unchanged for its watch folder's ``truncated_after`` is dealt with as it is. A file
still held open then is taken by copy, its source left in place and taken again if the
writer ever changes it; a file that still reads as cut short is quarantined by copy,
its source left in place. Only a file whose open is refused by another process's write
lease is tried again for as long as the lease lasts: it cannot be read at all.
"""

from __future__ import annotations

import logging
import time

from forwarder.candidate import Candidate
from forwarder.incomplete import Incomplete, looks_incomplete
from forwarder.logs import event
from forwarder.writers import ask

LOGGER = logging.getLogger(__name__)


class Unfinished:
    """Intake's memory of the files it leaves for their writers (bounded, see
    :class:`~forwarder.incomplete.Incomplete`)."""

    def __init__(self) -> None:
        self.held = Incomplete()  # open for writing by another process
        self.cut = Incomplete()  # read as truncated or empty
        self.told: set[str] = set()  # watch folders where writers cannot be seen, said once

    def wait_for_writer(self, cand: Candidate, fd: int) -> float | None:
        """Another process holds ``fd``'s file open for writing: the seconds until it
        should be looked at again, or 0.0 when it has been held unchanged for
        ``truncated_after`` (take it as it is, leave the source); None when nobody writes
        it. Where this cannot be told (see :mod:`forwarder.writers`), a file changed in
        any way (its ctime) less than ``min_age`` ago waits the rest of it, else None."""
        held, why = ask(fd)
        if not held:
            self.held.forget(cand.shown)
            if held is None and cand.watch.name not in self.told:
                self.told.add(cand.watch.name)
                event(LOGGER, "writing", "watch %s: cannot tell whether a settled file is still "
                      "open for writing (%s, for %s); such files are taken once unchanged for "
                      "min_age", cand.watch.name, why, cand.shown,
                      level=logging.WARNING, FORWARDER_FILE=cand.shown, WATCH=cand.watch.name)
            if held is None:
                # settled by an old mtime, with no lease to vouch that no writer holds it:
                # min_age counts from its last change of any kind (a writer that stamps an
                # old time before its last byte, then closes and comes back)
                # (a ctime ahead of the clock, after it stepped back, counts from now)
                rest = cand.watch.min_age - max(_untouched(cand), 0.0)
                if not cand.watch.polling and rest > 0:
                    return rest
            return None
        watch = cand.watch
        patience = watch.truncated_after
        left, new = self.held.wait_left(cand.shown, cand.sig, time.monotonic(), patience,
                                        _untouched(cand))
        if left > 0 and new:
            event(LOGGER, "writing", "%s: still open for writing by another process; left in "
                  "place until it is closed or changes (taken as it is, by copy, if held "
                  "unchanged for %gs)", cand.shown, patience, FORWARDER_FILE=cand.shown,
                  WATCH=watch.name)
        # its watcher looks again then, by its own timer: a close changes no size or time
        return min(left, max(watch.min_age, 0.5)) if left > 0 else 0.0

    def not_deleted(self, cand: Candidate) -> None:
        """Say why a file no route takes is left in place (``unrouted: delete``)."""
        event(LOGGER, "writing", "%s: no route matched, but it is still open for writing, unchanged "
              "for at least %gs: left in place, not deleted, until it changes", cand.shown,
              cand.watch.truncated_after, level=logging.WARNING, FORWARDER_FILE=cand.shown,
              WATCH=cand.watch.name)

    def leased(self, cand: Candidate) -> float:
        """Opening the file was refused (EAGAIN): another process holds a write lease on
        it (Samba with kernel oplocks does while a client writes). The seconds until it
        should be tried again; said once per change."""
        _left, new = self.held.wait_left(cand.shown, cand.sig, time.monotonic(), float("inf"))
        if new:
            event(LOGGER, "writing", "%s: another process holds it with a write lease (open "
                  "refused); left in place and tried again every %gs", cand.shown,
                  max(cand.watch.min_age, 0.5), FORWARDER_FILE=cand.shown,
                  WATCH=cand.watch.name)
        return max(cand.watch.min_age, 0.5)

    def wait_for_rest(self, cand: Candidate, reason: str) -> float | None:
        """The probe refused the file for ``reason``: the seconds to leave it in place
        when it looks cut short (a writer that paused may complete it), 0.0 when it has
        looked so, unchanged, for ``truncated_after``; None for any other reason."""
        if not looks_incomplete(reason):
            return None
        patience = cand.watch.truncated_after
        left, new = self.cut.wait_left(cand.shown, cand.sig, time.monotonic(), patience,
                                       _untouched(cand))
        if left > 0 and new:
            event(LOGGER, "incomplete", "%s: %s; left in place and looked at again when it "
                  "changes; quarantined (by copy) if unchanged for %gs", cand.shown, reason,
                  patience, level=logging.WARNING, FORWARDER_FILE=cand.shown, REASON=reason,
                  WATCH=cand.watch.name)
        return left

    def taken(self, cand: Candidate) -> None:
        self.cut.forget(cand.shown)
        self.held.forget(cand.shown)


def _untouched(cand: Candidate) -> float:
    """How long the file has been as it is, by its ctime (which every write, rename and
    chmod moves), where the clock that stamps it is ours: not on a polled network share,
    whose server keeps its own time."""
    if cand.watch.polling:
        return 0.0
    return time.time() - cand.sig.ctime_ns / 1e9
