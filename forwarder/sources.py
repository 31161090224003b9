"""A source's fate once the spool holds it (accepted, or quarantined by move or copy).

The source is removed only while it is still the file intake read: the same device and
inode at its path, since a new file of the same name is new work. With ``keep_source``,
or when it cannot be removed, it is remembered in the spool's seen table, so it is never
taken twice while it is unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from forwarder.candidate import Candidate
from forwarder.logs import event, probe_fields
from forwarder.model import Probe
from forwarder.spool import Spool

LOGGER = logging.getLogger(__name__)


def same_file(path: str, st: os.stat_result) -> bool:
    """``path`` still names the file ``st`` describes (not removed, not replaced)."""
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


REMOVED, LEFT, REPLACED, GONE = "removed", "left", "replaced", "gone"
# what intake says of a file no route takes under ``unrouted: delete``, by its fate (LEFT
# only in a folder that keeps its sources: else remove_source() says why it is left)
UNROUTED_FATE = {
    REMOVED: "deleted (unrouted: delete)",
    LEFT: "not taken (unrouted: delete): left in place, as its folder keeps its sources, "
          "and not looked at again while unchanged",
    REPLACED: "not deleted (unrouted: delete): a new file of the same name replaced it, "
              "and is looked at as new work",
    GONE: "not deleted (unrouted: delete): another program removed it first",
}


def dispose(spool: Spool, cand: Candidate, st: os.stat_result) -> bool:
    """:func:`remove_source` after the spool holds it; True when the source stays in
    place."""
    return remove_source(spool, cand, st) == LEFT


def remove_source(spool: Spool, cand: Candidate, st: os.stat_result,
                  unrouted: bool = False) -> str:
    """After the spool holds it (or, ``unrouted``, when no route takes it under
    ``unrouted: delete``): remove the source, or remember it (keep_source). A source that
    cannot be removed (a subfolder of another account, a read-only mount) is remembered
    and reported once, so it is never taken twice while it is unchanged. Returns what
    became of it: REMOVED, LEFT in place (and remembered), REPLACED by a new file of the
    same name (new work, not touched) or GONE (another program removed it)."""
    if cand.watch.keep_source:
        spool.remember(cand.shown, st)
        return LEFT
    if not same_file(cand.path, st):
        return REPLACED if os.path.lexists(cand.path) else GONE
    try:
        os.unlink(cand.path)
    except FileNotFoundError:
        return GONE
    except OSError as exc:
        spool.remember(cand.shown, st)
        what = "no route matched (unrouted: delete)" if unrouted else "taken"
        event(LOGGER, "source_kept", "%s: %s, but the source cannot be removed (%s); it is "
              "left in place and will not be %s again while unchanged", cand.shown, what,
              exc.strerror, "looked at" if unrouted else "taken", level=logging.WARNING,
              FORWARDER_FILE=cand.shown, WATCH=cand.watch.name, ERROR=exc.strerror)
        return LEFT
    return REMOVED


def quarantine(spool: Spool, cand: Candidate, fd: int, st: os.stat_result, reason: str,
               found: Probe | None = None, leave: bool = False) -> bool:
    """Quarantine the file open as ``fd`` with ``reason``: moved into the quarantine when it
    is still the file read and may go, else copied. ``leave``: the source stays in place
    and is remembered, whatever the folder's ``keep_source`` (a writer may still be at
    work on it). True when the source stays in place."""
    keep_source = cand.watch.keep_source or leave
    move = Path(cand.path) if not keep_source and st.st_nlink == 1 and \
        same_file(cand.path, st) else None
    where = spool.quarantine(fd, cand.shown, reason, move=move)
    event(LOGGER, "quarantined", "%s: quarantined as %s: %s", cand.shown, where.name, reason,
          level=logging.WARNING, FORWARDER_FILE=cand.shown, WATCH=cand.watch.name,
          REASON=reason, QUARANTINE_FILE=str(where), **probe_fields(found))
    if leave:
        spool.remember(cand.shown, st)
        return True
    if move is None or os.path.lexists(cand.path):
        return dispose(spool, cand, st)
    return keep_source
