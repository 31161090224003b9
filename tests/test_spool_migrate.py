"""Spools made by earlier versions open, keep every job and take the current schema; the
schema's version is ``PRAGMA user_version``; an index from a newer version is refused."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from forwarder.errors import SpoolError
from forwarder.retry import Backoff
from forwarder.spool import Spool, db

# The index as the first released spool created it: no claims, no destination streaks, no
# intake or delivered tables, ``seen`` without ctime or content.
FIRST = """
CREATE TABLE objects (
  id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, sha256 TEXT NOT NULL, size INTEGER,
  sop_class TEXT, sop_instance TEXT, transfer_syntax TEXT, study TEXT,
  meta_consistent INTEGER, source TEXT, watch TEXT, accepted_at REAL);
CREATE INDEX objects_sha ON objects(sha256);
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY, object_id INTEGER NOT NULL REFERENCES objects(id),
  destination TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  aborts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, created_at REAL NOT NULL,
  updated_at REAL, last_error TEXT);
CREATE INDEX jobs_due ON jobs(destination, state, next_attempt_at);
CREATE INDEX jobs_object ON jobs(object_id);
CREATE TABLE destinations (
  name TEXT PRIMARY KEY, state TEXT NOT NULL DEFAULT 'ok', until REAL, reason TEXT,
  failures INTEGER NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0, updated_at REAL);
CREATE TABLE seen (
  path TEXT NOT NULL, inode INTEGER NOT NULL, size INTEGER, mtime_ns INTEGER,
  PRIMARY KEY (path, inode));
CREATE TABLE quarantine (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL, source TEXT, reason TEXT, at REAL);
"""

# The last index without a version: every table, the later columns added by ALTER TABLE.
UNVERSIONED = FIRST + """
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN claim_seq INTEGER;
ALTER TABLE jobs ADD COLUMN deaths INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN done_mark INTEGER;
ALTER TABLE destinations ADD COLUMN streak INTEGER NOT NULL DEFAULT 0;
ALTER TABLE destinations ADD COLUMN last_failed INTEGER;
ALTER TABLE destinations ADD COLUMN last_done_at REAL;
ALTER TABLE seen ADD COLUMN ctime_ns INTEGER;
ALTER TABLE seen ADD COLUMN sha256 TEXT;
CREATE INDEX jobs_state ON jobs(destination, state);
CREATE TABLE intake (
  name TEXT PRIMARY KEY, source TEXT NOT NULL, inode INTEGER, size INTEGER, mtime_ns INTEGER,
  committed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE delivered (sha256 TEXT PRIMARY KEY, at REAL NOT NULL);
"""


def _old_spool(root: Path, schema: str, kept: Path) -> None:
    """A spool as an earlier version left it: two objects queued for pacs (one failed), a
    file left in place recorded as seen, a quarantined file, pacs's health row."""
    for d in ("objects", "quarantine", "tmp"):
        (root / d).mkdir(parents=True)
    index = sqlite3.connect(root / db.INDEX)
    index.executescript(schema)
    for oid, body in ((1, b"first object"), (2, b"second object")):
        (root / "objects" / f"obj{oid}").write_bytes(body)
        index.execute("INSERT INTO objects (id, name, sha256, size, sop_class, sop_instance, "
                      "transfer_syntax, study, meta_consistent, source, watch, accepted_at) "
                      "VALUES (?, ?, ?, ?, '1.2.840.10008.5.1.4.1.1.2', ?, "
                      "'1.2.840.10008.1.2.1', '1.2.3', 1, ?, 'in', 50.0)",
                      (oid, f"obj{oid}", hashlib.sha256(body).hexdigest(), len(body),
                       f"1.2.3.{oid}", f"/in/{oid}.dcm"))
    index.execute("INSERT INTO jobs (object_id, destination, state, attempts, next_attempt_at, "
                  "created_at, updated_at) VALUES (1, 'pacs', 'pending', 2, 60.0, 50.0, 55.0)")
    index.execute("INSERT INTO jobs (object_id, destination, state, attempts, next_attempt_at, "
                  "created_at, updated_at, last_error) VALUES (2, 'pacs', 'failed', 5, 60.0, "
                  "50.0, 56.0, 'refused: 0xA700')")
    index.execute("INSERT INTO destinations (name, state, done) VALUES ('pacs', 'ok', 7)")
    st = kept.stat()
    index.execute("INSERT INTO seen (path, inode, size, mtime_ns) VALUES (?, ?, ?, ?)",
                  (str(kept), st.st_ino, st.st_size, st.st_mtime_ns))
    (root / "quarantine" / "q1").write_bytes(b"not dicom")
    index.execute("INSERT INTO quarantine (name, source, reason, at) VALUES "
                  "('q1', '/in/bad', 'not DICOM', 40.0)")
    index.commit()
    index.close()


def _columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("schema", [FIRST, UNVERSIONED], ids=["first", "unversioned"])
def test_a_spool_made_by_an_earlier_version_opens_with_every_job(tmp_path: Path,
                                                                   schema: str) -> None:
    root = tmp_path / "spool"
    kept = tmp_path / "kept.dcm"
    kept.write_bytes(b"left in place")
    _old_spool(root, schema, kept)
    index = root / db.INDEX
    assert _version(index) == 0

    with Spool(root, readonly=True) as old:  # the commands that only look, before any start
        assert old.status(["pacs"])["destinations"]["pacs"]["pending"] == 1
        assert old.last_success() == {}
    assert _version(index) == 0  # looking changes nothing

    with Spool(root) as spool:
        assert _version(index) == db.VERSION
        assert {"owner", "claim_seq", "deaths", "done_mark"} <= _columns(index, "jobs")
        assert {"streak", "last_failed", "last_done_at"} <= _columns(index, "destinations")
        assert {"ctime_ns", "sha256"} <= _columns(index, "seen")
        report = spool.recover(Backoff(max=100.0, jitter=0.0), now=100.0)
        assert report["orphan_objects"] == 0 and report["missing_objects"] == 0
        assert spool.counts() == {"pending": 1, "failed": 1}
        assert spool.is_seen(str(kept), kept.stat())  # a row without ctime: size and mtime
        assert spool.quarantined()[0]["reason"] == "not DICOM"
        [job] = spool.claim("pacs", 10, now=100.0, owner="1@t")
        assert job.probe.sop_instance_uid == "1.2.3.1" and job.attempts == 2
        assert job.path.read_bytes() == b"first object"
        spool.done([job.id], now=101.0, owner="1@t")
        assert not job.path.exists()
        status = spool.status(["pacs"], now=102.0)["destinations"]["pacs"]
        assert (status["pending"], status["failed"], status["done"]) == (0, 1, 8)
        assert spool.last_success() == {"pacs": 101.0}
        assert spool.failed_jobs()[0]["reason"] == "refused: 0xA700"
    with Spool(root) as again:  # at the current version: opened as it is
        assert again.counts() == {"failed": 1}
    assert _version(index) == db.VERSION


def test_a_new_spool_is_created_at_the_current_version(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool") as spool:
        assert spool.counts() == {}
    index = tmp_path / "spool" / db.INDEX
    assert _version(index) == db.VERSION
    for table, statement in (("jobs", "CREATE TABLE IF NOT EXISTS jobs"),
                             ("seen", "CREATE TABLE IF NOT EXISTS seen"),
                             ("destinations", "CREATE TABLE IF NOT EXISTS destinations")):
        assert statement in db.SCHEMA and _columns(index, table)
    assert {"ctime_ns", "sha256"} <= _columns(index, "seen")
    assert "last_done_at" in _columns(index, "destinations")


def test_an_index_from_a_newer_version_is_refused_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    Spool(root).close()
    index = root / db.INDEX
    with sqlite3.connect(index) as conn:
        conn.execute(f"PRAGMA user_version = {db.VERSION + 1}")
    before = os.stat(index).st_size
    with pytest.raises(SpoolError, match=f"schema version {db.VERSION + 1}, newer than") as exc:
        Spool(root)
    assert exc.value.exit_code == 78  # no restart fixes it: systemd does not restart
    assert _version(index) == db.VERSION + 1 and os.stat(index).st_size == before


def test_files_left_in_place_are_known_by_their_folders_real_path_after_the_upgrade(
        tmp_path: Path) -> None:
    """An index at version 1 remembered kept files under the folder as the configuration
    spelt it (here through a symlink; two files each under two spellings, the row written
    last under either one): opened, its rows name the real folder, one row per file, the
    one written last, and any spelling finds them."""
    folder = tmp_path / "in"
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    kept, other = folder / "kept.dcm", folder / "other.dcm"
    kept.write_bytes(b"left in place")
    other.write_bytes(b"left in place too")
    root = tmp_path / "spool"
    Spool(root).close()
    index = root / db.INDEX
    link = tmp_path / "link"
    # (spelling, file, rewritten since): a row of the file as it was before, an older ctime
    spelt = [(link / "kept.dcm", kept, True), (kept, kept, False),
             (link / "other.dcm", other, False), (other, other, True)]
    with sqlite3.connect(index) as conn:
        conn.execute("PRAGMA user_version = 1")
        for path, real, stale in spelt:
            st = real.stat()
            conn.execute("INSERT INTO seen (path, inode, size, mtime_ns, ctime_ns) VALUES "
                         "(?, ?, ?, ?, ?)", (str(path), st.st_ino, st.st_size - stale,
                                             st.st_mtime_ns, st.st_ctime_ns - stale))
    with Spool(root) as spool:
        assert _version(index) == db.VERSION
        rows = spool.db.execute("SELECT path, size FROM seen ORDER BY path").fetchall()
        assert rows == [(str(kept), kept.stat().st_size), (str(other), other.stat().st_size)]
        for path in [kept, link / "kept.dcm", other, link / "other.dcm",
                     link / ".." / "in" / "other.dcm"]:
            real = folder / path.name
            assert spool.is_seen(str(path), real.stat())
            assert spool.left_unchanged(str(path), real.stat())
