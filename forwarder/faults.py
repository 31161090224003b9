"""Fault boundaries: which errors stop the daemon, and an unexpected error told in words.

Only a spool-wide fault (the index or the disk under the spool cannot be written)
stops the daemon: restarting is the only way out and systemd does it. Any other error
met while taking one file is about that file (a reader or routing bug set off by its
content, a name or value that cannot be encoded) and is contained to it: the file is
quarantined with a reason an operator can read, the traceback goes to the journal.
"""

from __future__ import annotations

import sqlite3
import traceback

from forwarder.errors import SpoolError, SpoolFull


def spool_wide(exc: BaseException) -> bool:
    """Does ``exc`` concern the whole spool rather than the file in hand?"""
    if not isinstance(exc, Exception):
        return True  # KeyboardInterrupt, SystemExit: never contained
    return isinstance(exc, (SpoolError, SpoolFull, sqlite3.OperationalError,
                            sqlite3.InternalError)) or type(exc) is sqlite3.DatabaseError


def in_words(exc: BaseException, doing: str) -> str:
    """A reason for the quarantine record: what failed while ``doing`` what, without a
    bare Python message ("can only concatenate str ...") that says nothing about the file."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{doing} failed: {exc.strerror}"
    if isinstance(exc, MemoryError):
        return f"{doing} ran out of memory: the file is too large to read whole"
    if isinstance(exc, RecursionError):
        return f"{doing} failed: its content is nested too deeply to read"
    if isinstance(exc, UnicodeError):
        return f"{doing} failed: it holds text that is not valid in its character set"
    return (f"{doing} failed with an internal error of the forwarder ({type(exc).__name__}) "
            "set off by this file's content; the file is kept here unchanged, and the "
            "journal's intake_error event has the details for a bug report")


def trace(exc: BaseException) -> str:
    """The traceback as one journal field (TRACEBACK=), never as lines of the message."""
    return "".join(traceback.format_exception(exc))[-4000:]
