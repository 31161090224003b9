"""Intake: settled candidate -> probe -> route -> spool (in batches), or quarantine with a reason.

Intake owns the source file's fate. A source is removed only after the spool's
commit returned (or, with ``keep_source``, remembered as seen so it is never taken
twice; see :mod:`forwarder.sources`); it is opened with O_NOFOLLOW, so a symlink's
target is never read, moved or deleted; a file with other hard links is copied, never
linked into the spool; a file another process still holds open for writing is left in
place until it is closed, or dealt with as it is, by copy, after ``truncated_after``
(see :mod:`forwarder.unfinished`). A bad input is an outcome (quarantine, one event),
never an exception that stops the daemon; a spool that cannot write durably is (see
:class:`~forwarder.errors.SpoolError`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from forwarder import router
from forwarder.batches import BATCH_BYTES, Batches
from forwarder.candidate import Candidate, under
from forwarder.config import Config
from forwarder.dicomfile import Probe, probe, uid_problem
from forwarder.errors import NotDicomError, SourceChanged, SpoolError, SpoolFull
from forwarder.faults import in_words, spool_wide, trace
from forwarder.incomplete import image_unfinished
from forwarder.logs import event, probe_fields
from forwarder.settle import Signature
from forwarder.sources import LEFT, UNROUTED_FATE, dispose, quarantine, remove_source
from forwarder.spool import Incoming, Spool
from forwarder.unfinished import Unfinished

LOGGER = logging.getLogger(__name__)
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class _Open:
    cand: Candidate
    fd: int
    st: os.stat_result
    probe: Probe
    destinations: tuple[str, ...]
    keep: bool  # the source stays in place, remembered (keep_source, or still being written)
    held: bool  # still open for writing after truncated_after unchanged: taken by copy


class Intake:
    """One thread taking candidates from the watchers in batches of ``batch`` files or
    ``batch_bytes``, whichever is reached first (see :mod:`forwarder.batches`)."""

    def __init__(self, cfg: Config, spool: Spool, batch: int = 100, capacity: int = 2000,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 full_pause: float = 2.0, gather: float = 0.02,
                 batch_bytes: int = BATCH_BYTES):
        self.cfg = cfg
        self.spool = spool
        self.on_fatal = on_fatal
        self.full_pause = full_pause
        self._queue = Batches(batch, capacity, gather, batch_bytes)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.paused_full: str | None = None  # why intake is paused on a full spool
        self._no_room: set[str] = set()  # paths put back for want of room, not yet taken
        self.beat = time.monotonic()  # the intake thread's last sign of progress
        self.accepted = 0
        self.quarantined = 0
        self.unfinished = Unfinished()  # files left for their writers (held open, cut short)
        self._judged: set[int] = set()  # ids of the batch in hand's candidates given a verdict

    # --- the queue ---------------------------------------------------------------

    def offer(self, cand: Candidate) -> bool:
        """Called by a watcher; never blocks (see :meth:`Batches.offer`; False once
        stopping)."""
        return not self._stop.is_set() and self._queue.offer(cand)

    @property
    def alive(self) -> bool:
        """The intake thread runs (or was never started)."""
        return self._thread is None or self._thread.is_alive()

    def stalled(self, limit: float = 120.0) -> bool:
        """Running, but without a heartbeat for ``limit`` seconds (it beats every second
        while it waits for files, and after every batch)."""
        return self._thread is not None and self._thread.is_alive() and \
            time.monotonic() - self.beat > limit

    @property
    def queued(self) -> int:
        return len(self._queue)

    def set_config(self, cfg: Config) -> None:
        """Reload: new routes apply to the next batch."""
        self.cfg = cfg

    def start(self) -> Intake:
        self.beat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="fwd-intake", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Finish the batch in hand; what is still queued stays in the watch folders."""
        self._stop.set()
        self._queue.wake()
        if self._thread is not None:
            self._thread.join(60)
        for cand in self._queue.close():
            cand.finished(False)

    def __enter__(self) -> Intake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take(self) -> list[Candidate]:
        return self._queue.take(self._stop, self._beat)

    def _beat(self) -> None:
        self.beat = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat = time.monotonic()
            cands = self._take()
            while cands and not self._stop.is_set():
                try:
                    self.process(cands)
                    self._no_room.difference_update(c.path for c in cands)
                    cands = []
                    # the pause ends when no file waits for room any more (taken, or gone):
                    # files taken past one still waiting do not end it
                    if self.paused_full and not self._no_room:
                        self.paused_full = None
                        event(LOGGER, "spool_full", "spool has room again: intake resumed",
                              level=logging.WARNING)
                except SpoolFull as exc:
                    cands = exc.undecided  # the rest got their verdict: not offered twice
                    if len(cands) > 1:  # take what fits; the rest goes back to the front
                        half = len(cands) // 2
                        self._queue.requeue(cands[half:])
                        cands = cands[:half]
                        continue
                    first = not self.paused_full  # said once; status shows it as it is now
                    self.paused_full = f"{exc}: intake paused, files stay in the " \
                        f"watch folders; {self.spool.what_frees_space()}"
                    if first:
                        event(LOGGER, "spool_full", "%s", self.paused_full,
                              level=logging.ERROR)
                    self._no_room.update(c.path for c in cands)
                    self._queue.defer(cands)  # to the back of the line: smaller ones may fit
                    cands = []
                    self._stop.wait(self.full_pause)
                    self.beat = time.monotonic()
                except BaseException as exc:  # SpoolError or a bug: the daemon must stop
                    for c in cands:
                        c.finished(False)
                    LOGGER.critical("intake stopped: %s", exc, exc_info=not isinstance(
                        exc, SpoolError))
                    if self.on_fatal:
                        self.on_fatal(exc)
                    return
            for c in cands:  # stopping with a batch in hand: it stays in the folder
                c.finished(False)

    # --- one batch ---------------------------------------------------------------

    def process(self, cands: list[Candidate]) -> int:
        """Take a batch: quarantine the bad, accept the rest with one commit, then
        remove (or remember) the sources; the number of files accepted. Raises
        SpoolFull with every source untouched, its ``undecided`` the candidates that got
        no verdict (a file found gone or changed got one already, and its watcher looks
        at it again). An unexpected error about one file is contained to it (see
        :mod:`.faults`)."""
        ready: list[_Open] = []
        kept = False
        self._judged.clear()
        before = self.accepted
        cfg = self.cfg  # one configuration for the whole batch, whatever a reload does
        cands, stale = under(cands, cfg.watch)
        for cand in stale:  # its watcher is being stopped: the new ones look afresh
            cand.finished(True)
            self._no_room.discard(cand.path)  # waits for room no more: may end a pause
        if stale:
            LOGGER.info("%d file(s) found under the configuration a reload replaced are "
                        "left in place for the watch folders of the new one", len(stale))
        try:
            for cand in cands:
                opened = self._guarded_open(cand, cfg)
                if opened is not None:
                    ready.append(opened)
            self._accept(ready)
        except SpoolFull as exc:
            kept = True  # the caller puts them back in intake's queue: no verdict yet
            exc.undecided = [c for c in cands if id(c) not in self._judged]
            raise
        finally:
            for o in ready:
                os.close(o.fd)
                if not kept:
                    self._verdict(o.cand, False)
        return self.accepted - before

    def _verdict(self, cand: Candidate, left_in_place: bool,
                 again_after: float | None = None) -> None:
        """Tell ``cand``'s watcher what became of it; the batch in hand notes that it
        was judged, so that a full spool's retry does not judge it again."""
        self._judged.add(id(cand))
        cand.finished(left_in_place, again_after)

    def _accept(self, ready: list[_Open]) -> None:
        """Commit ``ready`` in one batch; each file dealt with leaves the list. When the
        batch fails for a reason other than the spool's, each file is taken alone and
        the one that still fails is quarantined."""
        if not ready:
            return
        incoming = [Incoming(o.fd, o.cand.shown, o.probe, o.destinations, o.cand.watch.name,
                             link_ok=not o.keep and o.st.st_nlink == 1,
                             stat=o.st, remember=o.keep, path=o.cand.path)
                    for o in ready]
        try:
            done = self.spool.accept(incoming)
        except Exception as exc:
            if spool_wide(exc):
                raise
            if isinstance(exc, SourceChanged) and len(ready) == 1:  # written to: later
                [o] = ready
                ready.clear()
                os.close(o.fd)
                self._verdict(o.cand, False)
                return
            if len(ready) > 1:
                for o in list(ready):
                    ready.remove(o)
                    one = [o]
                    try:
                        self._accept(one)
                    finally:
                        ready.extend(one)  # not dealt with (the spool's fault): still ours
                return
            [o] = ready
            try:
                self._contain(o.cand, o.fd, o.st, exc, "taking it into the spool", o.probe,
                              leave=o.held)
            except Exception as again:
                if spool_wide(again):
                    raise  # not dealt with: it stays in ``ready``, whose owner closes it
                self._left_alone(o.cand, again)
            ready.clear()
            os.close(o.fd)
            return
        for o, what in zip(list(ready), done, strict=True):
            ready.remove(o)
            self._verdict(o.cand, self._accepted(o, what.queued))

    def _guarded_open(self, cand: Candidate, cfg: Config) -> _Open | None:
        try:
            return self._open(cand, cfg)
        except Exception as exc:
            if spool_wide(exc):
                raise
            self._left_alone(cand, exc)
            return None

    def _left_alone(self, cand: Candidate, exc: Exception) -> None:
        """The file could not even be quarantined: leave it, say so, once per change."""
        event(LOGGER, "intake_error", "%s: %s; left in place until it changes", cand.shown,
              in_words(exc, "taking this file"), level=logging.ERROR,
              FORWARDER_FILE=cand.shown, WATCH=cand.watch.name, TRACEBACK=trace(exc))
        self._verdict(cand, True)

    def _contain(self, cand: Candidate, fd: int, st: os.stat_result, exc: Exception,
                 doing: str, found: Probe | None = None, leave: bool = False) -> None:
        """An unexpected error about this one file: quarantine it with the error in words,
        and the traceback in the journal."""
        reason = in_words(exc, doing)
        event(LOGGER, "intake_error", "%s: %s", cand.shown, reason, level=logging.ERROR,
              FORWARDER_FILE=cand.shown, WATCH=cand.watch.name, REASON=reason,
              TRACEBACK=trace(exc))
        self._quarantine(cand, fd, st, reason, found, leave)

    def _open(self, cand: Candidate, cfg: Config) -> _Open | None:
        """Open and probe one candidate under ``cfg``; None when it was dealt with here."""
        try:
            fd = os.open(cand.path, OPEN_FLAGS)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                event(LOGGER, "ignored", "%s: became a symlink, left alone", cand.shown,
                      level=logging.WARNING, FORWARDER_FILE=cand.shown)
                self._verdict(cand, True)
            elif exc.errno == errno.ENOENT:
                self._verdict(cand, False)
            elif exc.errno == errno.EAGAIN:  # another process holds a write lease on it
                self._verdict(cand, True, again_after=self.unfinished.leased(cand))
            else:
                event(LOGGER, "intake_error", "%s: cannot open: %s; left in place until it "
                      "changes", cand.shown, exc.strerror, level=logging.ERROR,
                      FORWARDER_FILE=cand.shown)
                self._verdict(cand, True)
            return None
        keep = False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                event(LOGGER, "ignored", "%s: not a regular file, left alone", cand.shown,
                      level=logging.WARNING, FORWARDER_FILE=cand.shown)
                self._verdict(cand, True)
                return None
            if Signature.of(st) != cand.sig:  # written to since it settled: settle again
                self._verdict(cand, False)
                return None
            watch = cand.watch
            if self.spool.is_seen(cand.shown, st, fd):  # kept, or could not be removed
                self._verdict(cand, True)
                return None
            wait = self.unfinished.wait_for_writer(cand, fd)
            if wait:  # a writer paused longer than min_age: leave it to the writer
                self._verdict(cand, True, again_after=wait)
                return None
            held = wait is not None  # held for truncated_after: taken, the source left
            why = (" (still open for writing, unchanged for at least "
                   f"{watch.truncated_after:g}s; the source is left in place)") if held else ""
            found: Probe | None = None
            try:
                with open(fd, "rb", closefd=False) as fp:
                    found = probe(fp, cfg.attribute_keywords)
                bad = uid_problem(found.sop_instance_uid) or image_unfinished(found)
                if bad:
                    raise NotDicomError(bad)
                decision = router.route(cfg.routes, watch.name, cand.relpath,
                                        found.attributes)
            except NotDicomError as exc:
                if held or not self._waits(cand, fd, st, str(exc)):
                    self._quarantine(cand, fd, st, f"{exc}{why}", leave=held)
                return None
            except router.RouteError as exc:  # the configuration's fault, shown on the file
                self._quarantine(cand, fd, st, f"{exc}, then drop the file again{why}", found,
                                 leave=held)
                return None
            except Exception as exc:  # a reader or routing bug must not stop intake
                if spool_wide(exc):
                    raise
                self._contain(cand, fd, st, exc, "reading it as DICOM" if found is None
                              else "routing it", found, leave=held)
                return None
            if not decision.destinations:
                if held and cfg.unrouted == "delete":  # the writer's next bytes: lost
                    self.spool.remember(cand.shown, st)
                    self.unfinished.not_deleted(cand)
                    self._verdict(cand, True)
                    return None
                if cfg.unrouted == "delete":
                    fate = remove_source(self.spool, cand, st, unrouted=True)
                    if watch.keep_source or fate != LEFT:  # else it said why it is left
                        event(LOGGER, "unrouted_deleted", "%s: no route matched, %s",
                              cand.shown, UNROUTED_FATE[fate], FORWARDER_FILE=cand.shown,
                              **probe_fields(found))
                    self._verdict(cand, fate == LEFT)
                    return None
                self._quarantine(cand, fd, st, f"no route matched (unrouted: quarantine){why}",
                                 found, leave=held)
                return None
            keep = True
            return _Open(cand, fd, st, found, decision.destinations, watch.keep_source or held,
                         held)
        finally:
            if not keep:
                os.close(fd)

    def _waits(self, cand: Candidate, fd: int, st: os.stat_result, reason: str) -> bool:
        """A file that looks cut short may still be written: leave it, look again when it
        changes; after ``truncated_after`` unchanged, quarantine a copy and leave it."""
        left = self.unfinished.wait_for_rest(cand, reason)
        if left is None:
            return False
        if left > 0:
            self._verdict(cand, True, again_after=left)
            return True
        self._quarantine(cand, fd, st, f"{reason} (unchanged for at least "
                         f"{cand.watch.truncated_after:g}s; the source is left in place)",
                         leave=True)
        return True

    def _quarantine(self, cand: Candidate, fd: int, st: os.stat_result, reason: str,
                    found: Probe | None = None, leave: bool = False) -> None:
        left = quarantine(self.spool, cand, fd, st, reason, found, leave)
        self.quarantined += 1
        self._verdict(cand, left)

    def _accepted(self, o: _Open, queued: tuple[str, ...]) -> bool:
        """Report one accepted file (``queued``: the destinations that got a job; the
        others had its identical content queued already) and remove its source; True if
        it stays in place."""
        self.unfinished.taken(o.cand)
        self.accepted += 1
        fields = {"FORWARDER_FILE": o.cand.shown,
                  "DESTINATION": ",".join(queued or o.destinations),
                  "WATCH": o.cand.watch.name, **probe_fields(o.probe)}
        had = [d for d in o.destinations if d not in queued]
        if queued:
            also = f" (identical content already queued for {', '.join(had)})" if had else ""
            event(LOGGER, "accepted", "%s: accepted for %s%s", o.cand.shown,
                  ", ".join(queued), also, **fields)
        else:
            event(LOGGER, "duplicate", "%s: identical content already queued for %s",
                  o.cand.shown, ", ".join(o.destinations), **fields)
        os.close(o.fd)
        if o.held:
            event(LOGGER, "writing", "%s: still open for writing, unchanged for at least %gs: "
                  "taken as it is, by copy; the source is left in place and taken "
                  "again if it changes", o.cand.shown, o.cand.watch.truncated_after,
                  level=logging.WARNING, **fields)
        if o.keep:  # kept sources were remembered in the commit
            return True
        return dispose(self.spool, o.cand, o.st)
