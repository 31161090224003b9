"""Files left in place (``keep_source``, or a source that cannot be removed): never taken twice
while unchanged, taken again after any rewrite.

A file is known by path and inode; it is unchanged while its size, mtime and ctime are
what they were when it was taken. ``cp -p``, ``rsync -t --inplace`` and unzip rewrite
a file and set its old mtime back, and slices of one series often have the same size,
but none of them can set the ctime back: a changed ctime makes the content itself
decide (its SHA-256 against the one recorded at intake). The same content under a new
ctime (chmod, chown, a hard link made) is remembered with that ctime, so it is hashed
once. Rows written before ctime and content were recorded fall back to size and mtime.
"""

from __future__ import annotations

import os
import sqlite3

from forwarder.spool.durable import digest


def lookup(db: sqlite3.Connection, path: str, st: os.stat_result, fd: int | None) -> bool:
    """Was this very file (``st``, open as ``fd``) taken before and is it unchanged?"""
    row = db.execute("SELECT size, mtime_ns, ctime_ns, sha256 FROM seen WHERE path=? AND "
                     "inode=?", (path, st.st_ino)).fetchone()
    if not row or (row[0], row[1]) != (st.st_size, st.st_mtime_ns):
        return False
    ctime, sha = row[2], row[3]
    if ctime == st.st_ctime_ns:
        return True
    if sha is None or fd is None:  # recorded without content: size and mtime decide
        same = sha is None
        now = digest(fd) if fd is not None else None
    else:
        now = digest(fd)
        same = now == sha
    if same:  # touched, not rewritten: remember the new ctime so it is hashed once
        record(db, path, st, now or sha)
    return same


def unchanged(db: sqlite3.Connection, path: str, st: os.stat_result) -> bool:
    """Was this very file taken before, and are its size, mtime and ctime still what
    they were then? Reads nothing but the index: a changed ctime answers False, and
    :func:`lookup` then lets the content decide."""
    row = db.execute("SELECT size, mtime_ns, ctime_ns FROM seen WHERE path=? AND inode=?",
                     (path, st.st_ino)).fetchone()
    return row is not None and tuple(row) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def record(db: sqlite3.Connection, path: str, st: os.stat_result, sha: str | None) -> None:
    db.execute("INSERT OR REPLACE INTO seen (path, inode, size, mtime_ns, ctime_ns, sha256) "
               "VALUES (?, ?, ?, ?, ?, ?)",
               (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, sha))
