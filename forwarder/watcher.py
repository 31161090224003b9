"""Watch folders: watchdog observer (:mod:`forwarder.observer`) + startup scan + periodic rescan.

Events only make a file known sooner. What guarantees that nothing is missed is the
full scan at start and every ``rescan`` period (watchdog hides inotify queue
overflows), and one as soon as intake has room again after settled files seen through
events were forgotten (a burst larger than intake's queue and the watcher's bounded line
together). Each known file waits in :class:`~forwarder.settle.Settler` until it has
been unchanged for ``min_age``; then it is handed to intake once. Symlinks are never
followed: a symlink is reported once and left alone. Every few seconds one stat checks
that the folder at the path is still the one watched (removed, or renamed away, and made
again: its events would never come).
"""

from __future__ import annotations

import collections
import errno
import heapq
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from forwarder.candidate import Candidate, Finished
from forwarder.config import Watch
from forwarder.logs import event
from forwarder.observer import Events, MovedIn, start_observer
from forwarder.paths import shown
from forwarder.settle import Settler, Signature, ignored, wanted

LOGGER = logging.getLogger(__name__)

# Files remembered in memory per map (left in place, reported, settled and waiting for
# intake): beyond this the oldest are forgotten. Nothing is lost: a forgotten file is still
# in the folder and the next scan finds it; a kept source the scan finds is passed over
# by the spool's seen table (``known``), so it never takes the room of new files.
MEMORY_LIMIT = 10000
RETRY = 10.0  # seconds between looks for a folder that is unavailable


class Watcher:
    """One folder: its observer, its scans and its settling files; one thread."""

    def __init__(self, watch: Watch, deliver: Callable[[Candidate], bool],
                 observer_factory: Callable[[], Any] | None = None, events: bool = True,
                 on_state: Callable[[], None] | None = None,
                 known: Callable[[str, os.stat_result], bool] | None = None):
        self.watch = watch
        self.root = os.path.abspath(watch.path)
        self.deliver = deliver  # False: intake is full (or stopping): offer it again later
        # the spool's word that a file was taken, left in place and is untouched since
        # (by its shown path): a scan passes it over even when this watcher forgot it
        self.known = known
        self._observer_factory = observer_factory
        self._use_events = events
        self._on_state = on_state  # told when the folder becomes unavailable or available
        self.settler = Settler(watch.min_age, trust_times=not watch.polling)
        # paths seen by events, intake's verdicts, and None to wake the loop for a stop
        self._queue: queue.SimpleQueue[str | Finished | None] = queue.SimpleQueue()
        self._heap: list[tuple[float, str]] = []
        self._scheduled: dict[str, float] = {}
        self._lock = threading.Lock()
        self._inflight: set[str] = set()
        # left in place on purpose, while unchanged (and until a monotonic time, if set)
        self._left: dict[str, tuple[Signature, float | None]] = {}
        self._reported: dict[str, None] = {}  # special files already reported (ordered)
        self._unlisted: dict[str, None] = {}  # subfolders that cannot be listed, reported
        # files that arrived by a rename and were not written in place since (ordered)
        self._moved: dict[str, None] = {}
        self._fresh: set[str] = set()
        self._waiting: collections.deque[Candidate] = collections.deque()  # settled, not taken
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.observer: Any = None
        self.polling = watch.polling
        self.scans = 0
        self.limit = MEMORY_LIMIT  # at most this many entries in each map kept here
        self.dropped = 0  # settled files forgotten while intake was full (found by a scan)
        # files seen through events were forgotten since the last scan: scan once intake has
        # room (a scan's own finds never cause one, so a folder of files left in place
        # cannot keep it scanning)
        self._behind = False
        self.unavailable: str | None = None  # why the folder cannot be watched now
        self.retry = max(0.5, min(RETRY, watch.rescan))
        self._root_id: tuple[int, int] | None = None  # (device, inode) of the folder watched

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> Watcher:
        """Start the folder's thread. A folder that is missing or cannot be read (not yet
        mounted, removed, no permission) does not stop anything: it is reported as
        unavailable and looked for again every ``RETRY`` seconds (at most ``rescan``)."""
        self._attach()  # the observer runs before start returns: no event is missed
        self._thread = threading.Thread(target=self._run, name=f"fwd-watch-{self.watch.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def _attach(self) -> bool:
        """Check the folder and start its observer; False (and reported) when unavailable."""
        try:
            try:
                st = os.stat(self.root)
            except FileNotFoundError:
                st = None
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise FileNotFoundError(errno.ENOENT, "does not exist or is not a directory")
            with os.scandir(self.root):
                pass
            if self._root_id is not None and not self._watching(st):
                # removed or renamed away, and made again: the observer watches the old one
                # or none (a removed folder's inode number may come back at once)
                event(LOGGER, "watch_replaced", "watch %s: %s is a new folder (the one "
                      "watched was removed or renamed); watching the new one and scanning it",
                      self.watch.name, shown(self.root), level=logging.WARNING,
                      WATCH=self.watch.name)
                self._detach()
            self._root_id = (st.st_dev, st.st_ino)
            if self._use_events and self.observer is None:
                self.observer, self.polling = start_observer(
                    self.watch, Events(self._queue.put), self._observer_factory)
        except OSError as exc:
            self._unavailable(exc.strerror or str(exc))
            return False
        if self.unavailable is not None:
            self.unavailable = None
            event(LOGGER, "watch_available", "watch %s: %s is available again; scanning it",
                  self.watch.name, shown(self.root), WATCH=self.watch.name)
            if self._on_state:
                self._on_state()
        return True

    def _unavailable(self, why: str) -> None:
        self._detach()
        if self.unavailable != why:
            self.unavailable = why
            event(LOGGER, "watch_unavailable", "watch %s: %s: %s; files there wait, every "
                  "other folder and destination goes on; looking again every %gs",
                  self.watch.name, shown(self.root), why, self.retry, level=logging.ERROR,
                  WATCH=self.watch.name, REASON=why)
            if self._on_state:
                self._on_state()

    def _detach(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(10)
            self.observer = None

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(30)
        self._detach()

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _finished(self, verdict: Finished) -> None:
        """Apply intake's verdict on a candidate (on the watcher's thread)."""
        cand = verdict.cand
        with self._lock:
            self._inflight.discard(cand.path)
            if verdict.left_in_place:
                until = None if verdict.again_after is None else \
                    time.monotonic() + verdict.again_after
                self._left.pop(cand.path, None)
                self._left[cand.path] = (cand.sig, until)
                while len(self._left) > self.limit:
                    del self._left[next(iter(self._left))]
                if until is not None:  # looked at again then, without waiting for a scan
                    self._schedule(cand.path, until)
        if not verdict.left_in_place and not self._stop.is_set():
            self._consider(cand.path, fresh=True)  # still there (written to meanwhile)? look again

    @property
    def alive(self) -> bool:
        """The watcher's thread runs (or was never started)."""
        return self._thread is None or self._thread.is_alive()

    @property
    def pending(self) -> int:
        """Files known and not yet complete, for status lines."""
        return len(self.settler)

    @property
    def offered(self) -> int:
        """Files offered to intake and not judged yet."""
        with self._lock:
            return len(self._inflight)

    # --- the loop ----------------------------------------------------------------

    def _replaced(self) -> bool:
        """The folder watched is gone, or another folder now has its path (its events
        would never come): a scan now reports it or watches the new one."""
        try:
            st = os.stat(self.root)
        except OSError:
            return True
        return not self._watching(st)

    def _watching(self, st: os.stat_result) -> bool:
        """``st`` is the folder watched, and its observer, if any, has not stopped by
        itself (watchdog ends a folder's watch when the folder is removed)."""
        obs = self.observer
        return (st.st_dev, st.st_ino) == self._root_id and (
            obs is None or bool(obs.is_alive() and obs.emitters and
                                all(e.is_alive() for e in obs.emitters)))

    def _run(self) -> None:
        next_scan = 0.0
        next_look = time.monotonic() + self.retry
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_look:  # every few seconds: one stat, the folder is still ours
                next_look = now + self.retry
                if self.unavailable is None and self._replaced():
                    next_scan = now
            if self._behind and not self._waiting:
                next_scan = now  # what was forgotten is found now, not a rescan period later
            if now >= next_scan:
                if not self._waiting:  # a scan while the line is full finds what it forgot
                    self._behind = False  # and forgets it again: still behind
                if self._attach() and self._scan(self.root, fresh=False):
                    self.scans += 1
                    self._sweep()
                    next_scan = time.monotonic() + self.watch.rescan
                else:
                    next_scan = time.monotonic() + self.retry
            self._flush_waiting()
            wake = min(next_scan, next_look, self._heap[0][0] if self._heap else next_scan)
            if self._waiting:
                wake = min(wake, time.monotonic() + 0.1)
            batch: list[str | Finished | None] = []
            try:
                batch.append(self._queue.get(timeout=max(0.0, wake - time.monotonic())))
                while len(batch) < 10000:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            for item in batch:
                if isinstance(item, Finished):
                    self._finished(item)
                elif item is not None and not self._stop.is_set():
                    path = str(item)
                    if isinstance(item, MovedIn):
                        self._moved[path] = None
                        while len(self._moved) > self.limit:  # forgotten: counts by ctime
                            del self._moved[next(iter(self._moved))]
                    else:  # created or written in place since: its ctime counts again
                        self._moved.pop(path, None)
                    self._consider(path, fresh=True)
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now and not self._stop.is_set():
                _due, path = heapq.heappop(self._heap)
                if self._scheduled.get(path) == _due:
                    del self._scheduled[path]
                    self._check(path)

    def _scan(self, folder: str, fresh: bool) -> bool:
        """Scan ``folder`` (recursively); False when the watch folder itself is unavailable."""
        try:
            it = os.scandir(folder)
        except OSError as exc:
            if folder == self.root:
                self._unavailable(exc.strerror or str(exc))
                return False
            self._cannot_list(folder, exc)
            return True
        if folder in self._unlisted:  # the error said so: say it is over
            del self._unlisted[folder]
            event(LOGGER, "watch_available", "watch %s: subfolder %s can be listed again; "
                  "its files are taken", self.watch.name, shown(folder),
                  FORWARDER_FILE=shown(folder), WATCH=self.watch.name)
        with it:
            for entry in it:
                if self._stop.is_set():
                    return True
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if self.watch.recursive and not ignored(entry.name, self.watch.ignore):
                            self._scan(entry.path, fresh)
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                self._seen(entry.path, st, fresh)
        return True

    def _cannot_list(self, folder: str, exc: OSError) -> None:
        """A subfolder that cannot be listed: its files wait there; said once until it
        can be listed again (or is gone)."""
        if folder in self._unlisted or not os.path.lexists(folder):
            return
        self._unlisted[folder] = None
        while len(self._unlisted) > self.limit:
            del self._unlisted[next(iter(self._unlisted))]
        why = exc.strerror or str(exc)
        event(LOGGER, "intake_error", "watch %s: subfolder %s cannot be listed (%s): the files "
              "in it wait there until it can be (give the daemon's user read and execute "
              "on it); looked at again at every rescan", self.watch.name, shown(folder), why,
              level=logging.ERROR, FORWARDER_FILE=shown(folder), WATCH=self.watch.name,
              REASON=why)

    def _sweep(self) -> None:
        """After a full scan: forget what was left in place or reported and is gone."""
        with self._lock:
            left = list(self._left)
        gone = [p for p in [*left, *self._reported] if not os.path.lexists(p)]
        with self._lock:
            for p in gone:
                self._left.pop(p, None)
        for p in gone:
            self._reported.pop(p, None)

    def _consider(self, path: str, fresh: bool) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            self.settler.forget(path)
            self._reported.pop(path, None)
            with self._lock:
                self._left.pop(path, None)
            return
        if stat.S_ISDIR(st.st_mode):
            # a new subfolder may already hold files its watch was too late for
            if self.watch.recursive and path != self.root and \
                    not ignored(os.path.basename(path), self.watch.ignore):
                self._scan(path, fresh)
            return
        self._seen(path, st, fresh)

    def _relpath(self, path: str) -> str | None:
        rel = os.path.relpath(path, self.root)
        if rel.startswith("..") or (not self.watch.recursive and os.sep in rel):
            return None
        return rel.replace(os.sep, "/")

    def _seen(self, path: str, st: os.stat_result, fresh: bool) -> None:
        rel = self._relpath(path)
        if rel is None or not wanted(rel, self.watch.patterns, self.watch.ignore):
            return
        if not stat.S_ISREG(st.st_mode):
            if path not in self._reported:
                self._reported[path] = None
                while len(self._reported) > self.limit:
                    del self._reported[next(iter(self._reported))]
                kind = "symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                event(LOGGER, "ignored", "%s: %s, left alone (its target is never read)",
                      shown(path), kind, level=logging.WARNING, FORWARDER_FILE=shown(path),
                      WATCH=self.watch.name)
            return
        sig = Signature.of(st)
        with self._lock:
            left = self._left.get(path)
            if path in self._inflight or (left is not None and left[0] == sig and (
                    left[1] is None or time.monotonic() < left[1])):
                return
            self._left.pop(path, None)
        if not fresh and self.known is not None and self.known(shown(path), st):
            # left in place before and forgotten here (more such files than the memory
            # holds): offered again, it would take the room of files not yet taken
            return
        if fresh:
            self._fresh.add(path)
        due = self.settler.observe(path, sig, time.monotonic(), time.time(),
                                   moved=path in self._moved)
        self._schedule(path, due)

    def _schedule(self, path: str, due: float) -> None:
        current = self._scheduled.get(path)
        if current is not None and current <= due:
            return
        self._scheduled[path] = due
        heapq.heappush(self._heap, (due, path))

    def _check(self, path: str) -> None:
        try:
            st: os.stat_result | None = os.lstat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):  # gone, or no longer a file
            self.settler.forget(path)
            self._fresh.discard(path)
            self._moved.pop(path, None)
            return
        sig = Signature.of(st)
        now = time.monotonic()
        moved = path in self._moved
        if not self.settler.ready(path, sig, now, time.time(), moved):
            self._schedule(path, self.settler.observe(path, sig, now, time.time(), moved))
            return
        rel = self._relpath(path)
        if rel is None:
            return
        with self._lock:
            if path in self._inflight:
                return
            self._inflight.add(path)
        self.settler.forget(path)
        self._moved.pop(path, None)
        fresh = path in self._fresh
        self._fresh.discard(path)
        cand = Candidate(self.watch, path, rel, sig, fresh=fresh, outbox=self._queue)
        if (self._waiting and not fresh) or not self.deliver(cand):
            if len(self._waiting) >= self.limit:  # intake is behind: the next scan finds it
                self.dropped += 1
                self._behind = self._behind or fresh
                with self._lock:
                    self._inflight.discard(path)
                return
            self._waiting.append(cand)  # intake is busy with a backlog: later, in order

    def _flush_waiting(self) -> None:
        while self._waiting and not self._stop.is_set():
            if not self.deliver(self._waiting[0]):
                return
            self._waiting.popleft()
