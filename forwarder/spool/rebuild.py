"""``dicom-forwarder spool rebuild``: for an index that is missing, empty or damaged (see
:mod:`forwarder.spool.db`). It moves whatever index there is aside and takes the spool's
objects again through the current routes; objects that are not DICOM or match no route go
to quarantine with the reason. A readable index holding anything a rebuild would forget
is refused unless forced.

``rebuild.unfinished`` in the spool says a rebuild is at work: made (durably) before the
old index is moved aside, removed once every object is taken. While it is there the
daemon and the commands refuse the index, which holds only part of the objects, and a
rebuild run again starts over without asking for ``--force``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from forwarder import router
from forwarder.dicomfile import probe
from forwarder.errors import NotDicomError, UsageError
from forwarder.spool import durable, recovery
from forwarder.spool.accept import add_object
from forwarder.spool.db import INDEX, UNFINISHED

if TYPE_CHECKING:
    from forwarder.config import Config
    from forwarder.spool import Spool


# what a readable index holds and a new one would start without, as (table, what is
# counted, the query): a rebuild only takes objects/ again through the current routes and
# lists the quarantine's .json records; sources left in place are then taken and sent again
_HOLDINGS = (
    ("jobs", "job(s)", "SELECT count(*) FROM jobs"),
    ("seen", "source(s) left in place and remembered", "SELECT count(*) FROM seen"),
    ("quarantine", "quarantine record(s)", "SELECT count(*) FROM quarantine"),
    ("destinations", "delivered file(s) counted",
     "SELECT coalesce(sum(done), 0) FROM destinations"),
)


def _holdings(index: Path) -> list[str] | None:
    """What a readable index holds that is worth keeping, as "N what" phrases (none for
    an index with nothing in it); None when it is missing, empty or damaged."""
    if not index.exists() or index.stat().st_size == 0:
        return None
    try:
        db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
        try:
            if db.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok":
                return None
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE "
                                               "type = 'table'")}
            counts = [(what, int(db.execute(query).fetchone()[0]))
                      for table, what, query in _HOLDINGS if table in tables]
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return None
    return [f"{n} {what}" for what, n in counts if n]


def require_spool(root: Path) -> None:
    """``root`` is a spool (it has ``objects/``), or a usage error says it is not."""
    if not (root / "objects").is_dir():
        raise UsageError(f"{root} is not a spool (no objects/ directory)")


def rebuild(cfg: Config, force: bool = False, now: float | None = None) -> dict[str, int]:
    """Move the index aside and take ``objects/`` again through ``cfg``'s routes."""
    from forwarder.spool import Spool

    now = time.time() if now is None else now
    root = Path(cfg.spool)
    index = root / INDEX
    require_spool(root)
    unfinished = root / UNFINISHED
    again = unfinished.exists()  # the index is a rebuild's that did not finish
    held = None if again else _holdings(index)
    if held and not force:
        raise UsageError(f"the spool index {index} is readable and holds {', '.join(held)}; "
                         "rebuild is for a missing, empty or damaged index, and a new one "
                         "starts without these (--force to rebuild anyway)")
    report = {"moved_aside": 0, "queued": 0, "quarantined": 0, "quarantine_listed": 0}
    first = stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    n = 1
    while any((root / f"{INDEX}{suffix}.damaged-{stamp}").exists()
              for suffix in ("", "-wal", "-shm")):  # one moved aside this second: kept
        n += 1
        stamp = f"{first}-{n}"
    if not again:
        os.close(durable.create(unfinished))
        durable.fsync_dir(root)
    for suffix in ("", "-wal", "-shm"):
        old = root / (INDEX + suffix)
        if old.exists():
            os.rename(old, root / f"{INDEX}{suffix}.damaged-{stamp}")
            report["moved_aside"] += 1
    spool = Spool(root, rebuild=True)
    try:
        report["quarantine_listed"] = recovery.quarantine_records(spool, now)
        for path in sorted(spool.objects.iterdir(), key=lambda p: p.stat().st_mtime):
            _retake(cfg, spool, path, now, report)
    finally:
        spool.close()
    unfinished.unlink(missing_ok=True)
    durable.fsync_dir(root)
    return report


def _retake(cfg: Config, spool: Spool, path: Path, now: float,
            report: dict[str, int]) -> None:
    source = f"{path} (spool rebuild)"
    try:
        with open(path, "rb") as fp:
            found = probe(fp, cfg.attribute_keywords)
            digest = durable.digest(fp.fileno())
        size = path.stat().st_size
    except (NotDicomError, OSError) as exc:
        spool.quarantine(None, source, f"spool rebuild: {exc}", move=path, now=now)
        report["quarantined"] += 1
        return
    try:
        dests = router.route(cfg.routes, "", path.name, found.attributes).destinations
    except router.RouteError as exc:
        dests, why = (), f"spool rebuild: {exc}"
    else:
        why = "spool rebuild: no route matches it now"
    if not dests:
        spool.quarantine(None, source, why, move=path, now=now)
        report["quarantined"] += 1
        return
    with spool._tx() as db:
        add_object(db, path.name, digest, size, found, source, "", dests, now)
    report["queued"] += 1
