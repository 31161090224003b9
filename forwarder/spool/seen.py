"""Files left in place (``keep_source``, or a source that cannot be removed): never taken twice
while unchanged, taken again after any rewrite.

A file is known by path and inode; it is unchanged while its size, mtime and ctime are
what they were when it was taken. ``cp -p``, ``rsync -t --inplace`` and unzip rewrite
a file and set its old mtime back, and slices of one series often have the same size,
but none of them can set the ctime back: a changed ctime makes the content itself
decide (its SHA-256 against the one recorded at intake). The same content under a new
ctime (chmod, chown, a hard link made) is remembered with that ctime, so it is hashed
once. Rows written before ctime and content were recorded fall back to size and mtime.

A row names the file by its folder's real path (:func:`key`): a folder named another
way (through a symlink, or with ``..`` in it, after a reload or a restart) still knows
its files. Two folders holding hard links to one file are still two folders.
"""

from __future__ import annotations

import os
import sqlite3
import time

from forwarder.paths import shown, unshown
from forwarder.spool.durable import digest

# a folder's real path, looked up again after this many seconds (a symlink retargeted)
FOLDER_TTL = 5.0
_folders: dict[str, tuple[str, float]] = {}


def key(path: str, fresh: bool = False) -> str:
    """The index's name (shown form) for the file at ``path`` (shown form): the real
    path of its folder, symlinks and ``..`` resolved, then its own name (a symlink in
    the last place is the file itself, never followed). ``fresh``: the folder looked up
    now, for a row about to be written. It reads the file system: never call it with
    the spool's lock held (a hung mount would stall every sender)."""
    folder, name = os.path.split(unshown(path))
    now = time.monotonic()
    real = _folders.get(folder)
    if fresh or real is None or now - real[1] > FOLDER_TTL:
        if len(_folders) >= 1024:
            _folders.clear()
        real = _folders[folder] = (os.path.realpath(folder), now)
    return shown(os.path.join(real[0], name))


def lookup(db: sqlite3.Connection, name: str, st: os.stat_result, fd: int | None) -> bool:
    """Was this very file (``st``, open as ``fd``; ``name``: its :func:`key`) taken
    before and is it unchanged?"""
    row = db.execute("SELECT size, mtime_ns, ctime_ns, sha256 FROM seen WHERE path=? AND "
                     "inode=?", (name, st.st_ino)).fetchone()
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
        record(db, name, st, now or sha)
    return same


def unchanged(db: sqlite3.Connection, name: str, st: os.stat_result) -> bool:
    """Was this very file (``name``: its :func:`key`) taken before, and are its size,
    mtime and ctime still what they were then? Reads nothing but the index: a changed
    ctime answers False, and :func:`lookup` then lets the content decide."""
    row = db.execute("SELECT size, mtime_ns, ctime_ns FROM seen WHERE path=? AND inode=?",
                     (name, st.st_ino)).fetchone()
    return row is not None and tuple(row) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def record(db: sqlite3.Connection, name: str, st: os.stat_result, sha: str | None) -> None:
    """Remember the file ``name`` (its :func:`key`, looked up fresh) as ``st`` shows it."""
    db.execute("INSERT OR REPLACE INTO seen (path, inode, size, mtime_ns, ctime_ns, sha256) "
               "VALUES (?, ?, ?, ?, ?, ?)",
               (name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, sha))


def rekey(db: sqlite3.Connection) -> None:
    """Rows written under a folder's path as it was spelt, named by :func:`key` instead;
    of one file remembered under two spellings, the row written last (its ctime) stays."""
    rows = db.execute("SELECT path, inode, coalesce(ctime_ns, 0) FROM seen").fetchall()
    for path, inode, ctime in rows:
        if (new := key(path)) == path:
            continue
        there = db.execute("SELECT coalesce(ctime_ns, 0) FROM seen WHERE path=? AND inode=?",
                           (new, inode)).fetchone()
        if there is not None and there[0] >= ctime:
            db.execute("DELETE FROM seen WHERE path=? AND inode=?", (path, inode))
        else:
            db.execute("UPDATE OR REPLACE seen SET path=? WHERE path=? AND inode=?",
                       (new, path, inode))
