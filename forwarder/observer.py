"""The watchdog observer of one watch folder: inotify, or polling where the kernel's
inotify limits are reached or the folder asks for it (network shares)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from forwarder.config import Watch
from forwarder.logs import event

LOGGER = logging.getLogger("forwarder.watcher")

# What makes a file known: created, renamed into place, closed after writing. Writes and
# attribute changes (IN_MODIFY, IN_ATTRIB) are not subscribed: they could not shorten
# the settling wait, and our own links and unlinks would flood the observer.
EVENT_FILTER = [FileCreatedEvent, DirCreatedEvent, FileMovedEvent, DirMovedEvent,
                FileClosedEvent]


class MovedIn(str):
    """A path a rename put into the folder: its content was written before, elsewhere or
    under another name, so its mtime may count for the settling wait
    (:mod:`forwarder.settle`)."""


class Events(FileSystemEventHandler):
    """Hands the path an event names to ``sink``: a rename's destination as
    :class:`MovedIn` (also one from outside the folder: the observer reports unmatched
    moves), any other path as it is; a move out of the folder names nothing."""

    def __init__(self, sink: Callable[[str], None]):
        self.sink = sink

    def on_any_event(self, ev: FileSystemEvent) -> None:
        if ev.event_type == "moved":
            if ev.dest_path:
                self.sink(MovedIn(os.fsdecode(ev.dest_path)))
        elif ev.event_type in ("created", "closed"):
            self.sink(os.fsdecode(ev.src_path))


def _inotify_observer() -> Any:
    """The kernel's observer, reporting a file renamed in from outside the folder as a
    move (not as a creation); the platform's default observer elsewhere."""
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:  # not Linux
        return Observer()
    return InotifyObserver(generate_full_events=True)


def start_observer(watch: Watch, handler: FileSystemEventHandler,
                   factory: Callable[[], Any] | None = None) -> tuple[Any, bool]:
    """Start the observer for one folder; (observer, polling). When the kernel's inotify
    limits are reached, say so and poll this folder instead."""
    if not watch.polling:
        obs = (factory or _inotify_observer)()
        obs.daemon = True
        try:
            obs.start()
            obs.schedule(handler, watch.path, recursive=watch.recursive,
                         event_filter=EVENT_FILTER)
            return obs, False
        except OSError as exc:
            obs.stop()
            if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                raise
            event(LOGGER, "watch_fallback",
                  "watch %s: %s (raise fs.inotify.max_user_watches or max_user_instances); "
                  "polling %s instead", watch.name, exc.strerror, watch.path,
                  level=logging.WARNING, WATCH=watch.name)
    obs = PollingObserver(timeout=max(0.5, min(watch.min_age, 5.0)))
    obs.daemon = True
    obs.start()
    obs.schedule(handler, watch.path, recursive=watch.recursive, event_filter=EVENT_FILTER)
    return obs, True
