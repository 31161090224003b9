"""Failed jobs and quarantine kept until an operator purges them (by command or by the
configured retention), and the spool's own bookkeeping bounded."""

from __future__ import annotations

import os
import time
from pathlib import Path

from forwarder.cli import main
from forwarder.spool import Spool, retention
from tests.corpus import unique_copies
from tests.daemonutil import DaemonProcess, write_config
from tests.peers import free_port, wait_for
from tests.sendutil import enqueue

DAY = 86400.0


def _aged_spool(tmp_path: Path, now: float) -> tuple[Path, dict[str, Path]]:
    """Two failed jobs 40 days old (one object also pending for another destination),
    one failed yesterday; two quarantined files 40 days old, one from yesterday."""
    files = unique_copies(tmp_path / "corpus", 4)
    paths = list(files.values())
    with Spool(tmp_path / "spool") as spool:
        enqueue(spool, paths[:2], ("pacs",))
        enqueue(spool, paths[2:3], ("pacs", "ai"))
        enqueue(spool, paths[3:], ("pacs",))
        jobs = spool.claim("pacs", 10)
        by_uid = {j.probe.sop_instance_uid: j for j in jobs}
        uids = list(files)
        spool.fail(by_uid[uids[0]].id, "A900 refused", now=now - 40 * DAY)
        spool.fail(by_uid[uids[2]].id, "A900 refused", now=now - 40 * DAY)
        spool.fail(by_uid[uids[1]].id, "A900 refused", now=now - 1 * DAY)
        spool.done([by_uid[uids[3]].id])
        for i, age in enumerate((40, 40, 1)):
            junk = tmp_path / f"junk{i}.bin"
            junk.write_bytes(b"junk %d" % i)
            spool.quarantine(None, str(junk), "not DICOM", move=junk, now=now - age * DAY)
    return write_config(tmp_path, free_port()), files


def test_purge_command_deletes_only_what_is_older(tmp_path: Path, capsys) -> None:
    now = time.time()
    cfg, files = _aged_spool(tmp_path, now)
    uids = list(files)
    args = ["purge", "-c", str(cfg), "--failed-older-than", "30d",
            "--quarantine-older-than", "30d"]
    assert main([*args, "--dry-run"]) == 0
    assert "would delete 2 failed job(s)" in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "deleted 2 failed job(s) older than 30d" in out
    assert "deleted 2 quarantined file(s) older than 30d" in out
    with Spool(tmp_path / "spool") as spool:
        assert [j["sop_instance_uid"] for j in spool.failed_jobs()] == [uids[1]]
        assert spool.counts() == {"failed": 1, "pending": 1}  # uids[2] still goes to ai
        objects = sorted(p.read_bytes() for p in spool.objects.iterdir())
        assert objects == sorted([files[uids[1]].read_bytes(), files[uids[2]].read_bytes()])
        q = spool.quarantined()
        assert [Path(r["source"]).name for r in q] == ["junk2.bin"]
        assert sorted(p.name for p in spool.quarantine_dir.iterdir()) == \
            sorted([Path(q[0]["file"]).name, Path(q[0]["file"]).name + ".json"])
    assert main(["purge", "-c", str(cfg)]) == 2
    assert main(["purge", "-c", str(cfg), "--failed-older-than", "soon"]) == 2


def test_a_purge_killed_part_way_never_brings_a_purged_file_back(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Killed between removing a purged object's file and its row, or after deleting the
    jobs and before their objects: the next start quarantines nothing (no purged file
    comes back as an orphan's "last copy"), and the next purge removes the leftovers."""
    now = time.time()
    cfg, files = _aged_spool(tmp_path, now)
    uids = list(files)
    with Spool(tmp_path / "spool") as spool:
        tx, calls = spool._tx, []

        def killed_at_the_second(*args: object, **kw: object) -> object:
            calls.append(1)
            if len(calls) == 2:  # the jobs are gone, the first object's file too
                raise KeyboardInterrupt
            return tx(*args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(spool, "_tx", killed_at_the_second)
        try:
            retention.purge_failed(spool, 30 * DAY, now=now)
        except KeyboardInterrupt:
            pass
        monkeypatch.undo()
        assert len(spool.db.execute("SELECT * FROM objects").fetchall()) == 3  # rows kept
        assert len(list(spool.objects.iterdir())) == 2  # a purged object's file gone
        report = spool.recover()
        assert report["orphan_objects"] == 0 and report["finished_cleanup"] == 1
        # purged, not delivered: an orphan of that content would be the last copy
        assert spool.db.execute("SELECT count(*) FROM delivered").fetchone()[0] == 1
        assert [Path(q["source"]).name for q in spool.quarantined()] == \
            ["junk0.bin", "junk1.bin", "junk2.bin"]  # only the junk quarantined before
        assert [j["sop_instance_uid"] for j in spool.failed_jobs()] == [uids[1]]
        with spool._tx() as db:  # a kill after the jobs, before any of their objects
            db.execute("DELETE FROM jobs WHERE state = 'failed'")
        assert retention.purge_failed(spool, 30 * DAY, now=now) == 0
        assert spool.counts() == {"pending": 1}
        assert sorted(p.read_bytes() for p in spool.objects.iterdir()) == \
            [files[uids[2]].read_bytes()]


def test_configured_retention_runs_in_the_daemon(tmp_path: Path) -> None:
    now = time.time()
    cfg, files = _aged_spool(tmp_path, now)
    cfg.write_text(cfg.read_text().replace(
        "log: {level: info}\n", "log: {level: info}\nretention: {failed: 30d, "
        "quarantine: 30d, every: 1m}\n"))
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        wait_for(lambda: "retention: 2 failed job(s) and 2 quarantined file(s)" in d.output(),
                 30, "the retention run at start")
    finally:
        assert d.stop() == 0
    with Spool(tmp_path / "spool") as spool:
        assert len(spool.failed_jobs()) == 1 and len(spool.quarantined()) == 1


def test_seen_rows_of_files_gone_are_pruned_but_not_for_an_empty_folder(
        tmp_path: Path) -> None:
    present, emptied = tmp_path / "share", tmp_path / "unmounted"
    present.mkdir()
    emptied.mkdir()
    with Spool(tmp_path / "spool") as spool:
        for folder, n in ((present, 3), (emptied, 2)):
            for i in range(n):
                f = folder / f"f{i}.dcm"
                f.write_bytes(b"x")
                spool.remember(str(f), f.stat())
        (present / "f0.dcm").unlink()
        (present / "f1.dcm").unlink()
        (present / "f1.dcm").write_bytes(b"another file, same name")
        for f in emptied.iterdir():
            f.unlink()  # as a share looks when it is not mounted
        report = retention.prune_bookkeeping(spool)
        assert report["seen_pruned"] == 2
        left = {Path(r[0]).relative_to(tmp_path).as_posix() for r in
                spool.db.execute("SELECT path FROM seen")}
        assert left == {"share/f2.dcm", "unmounted/f0.dcm", "unmounted/f1.dcm"}
        spool.db.execute("INSERT INTO delivered VALUES ('old', ?), ('new', ?)",
                         (time.time() - 8 * DAY, time.time()))
        assert retention.prune_bookkeeping(spool)["delivered_digests_pruned"] == 1
    assert os.path.isdir(emptied)


def test_seen_rows_in_subfolders_removed_are_pruned_when_the_watch_folder_holds_files(
        tmp_path: Path, capsys) -> None:
    """A modality writing a folder per day into a keep_source folder: day1 deleted, half
    of day3 deleted. Their rows go (the watch folder holds files, so it is mounted). An
    emptied day2 keeps its rows: an empty folder below the watch folder may be a share's
    mount point, not mounted now, whose files would be sent again. So do the rows of a
    folder outside every watch folder. By the purge command, as by retention."""
    cfg = write_config(tmp_path, free_port())
    watch = tmp_path / "in"
    other = tmp_path / "unmounted"
    with Spool(tmp_path / "spool") as spool:
        for folder in ("day1", "day2", "day3", "."):
            (watch / folder).mkdir(parents=True, exist_ok=True)
            for i in range(4):
                f = watch / folder / f"f{i}.dcm"
                f.write_bytes(b"x")
                spool.remember(str(f), f.stat())
        (other / "sub").mkdir(parents=True)
        f = other / "sub" / "f.dcm"
        f.write_bytes(b"x")
        spool.remember(str(f), f.stat())
    for f in [*(watch / "day1").iterdir(), *(watch / "day2").iterdir(), *(other / "sub").iterdir()]:
        f.unlink()
    (watch / "day1").rmdir()
    (watch / "day3" / "f0.dcm").unlink()
    (watch / "day3" / "f1.dcm").unlink()
    assert main(["purge", "-c", str(cfg), "--failed-older-than", "30d"]) == 0
    with Spool(tmp_path / "spool") as spool:
        left = {Path(r[0]).relative_to(tmp_path).as_posix() for r in
                spool.db.execute("SELECT path FROM seen")}
    assert left == {"in/day3/f2.dcm", "in/day3/f3.dcm", "unmounted/sub/f.dcm",
                    *(f"in/day2/f{i}.dcm" for i in range(4)),
                    *(f"in/f{i}.dcm" for i in range(4))}


def test_the_jobs_of_a_removed_destination_can_be_purged(tmp_path: Path, capsys) -> None:
    """A destination taken out of the configuration keeps its jobs held, and their
    objects, for ever: the operator can drop them, never those of one still configured,
    and an object another destination still needs stays."""
    files = unique_copies(tmp_path / "corpus", 3)
    paths = list(files.values())
    with Spool(tmp_path / "spool") as spool:
        enqueue(spool, paths[:1], ("old",))
        enqueue(spool, paths[1:], ("pacs", "old"))
        [job] = [j for j in spool.claim("old", 10) if j.probe.sop_instance_uid == list(files)[1]]
        spool.done([job.id])
    cfg = write_config(tmp_path, free_port())  # its one destination: pacs
    args = ["purge", "-c", str(cfg), "--removed-destination"]
    assert main([*args, "pacs"]) == 2
    assert "'pacs' is a destination in" in capsys.readouterr().err
    assert main([*args, "olde"]) == 2
    assert "no job for 'olde' (removed destinations with jobs: old)" in capsys.readouterr().err
    assert main([*args, "old", "--dry-run"]) == 0
    assert "would delete the jobs of removed destination old: 2 not delivered" in \
        capsys.readouterr().out
    with Spool(tmp_path / "spool") as spool:
        assert len(list(spool.objects.iterdir())) == 3
    assert main([*args, "old"]) == 0
    assert "deleted the jobs of removed destination old: 2 not delivered" in \
        capsys.readouterr().out
    with Spool(tmp_path / "spool") as spool:
        assert set(spool.status(["pacs"])["destinations"]) == {"pacs"}
        assert spool.counts() == {"pending": 2}  # pacs still gets its two
        assert sorted(p.read_bytes() for p in spool.objects.iterdir()) == \
            sorted(p.read_bytes() for p in paths[1:])


def test_a_destination_a_running_daemon_still_sends_to_is_not_purged(tmp_path: Path,
                                                                     capsys) -> None:
    """Taken out of the file but not yet reloaded, the daemon still claims and sends its
    jobs: purge waits until the daemon holds it as removed."""
    from forwarder.daemon import REMOVED
    from forwarder.spoollock import SpoolLock

    files = unique_copies(tmp_path / "corpus", 2)
    with Spool(tmp_path / "spool") as spool:
        enqueue(spool, list(files.values()), ("old",))
    cfg = write_config(tmp_path, free_port())  # the file on disk no longer has "old"
    args = ["purge", "-c", str(cfg), "--removed-destination", "old"]
    lock = SpoolLock(tmp_path / "spool").acquire(str(cfg))  # as the running daemon does
    try:
        assert main(args) == 2
        assert "still sends to 'old': reload it with the destination removed" in \
            capsys.readouterr().err
        with Spool(tmp_path / "spool") as spool:
            assert spool.counts() == {"pending": 2}
            spool.set_health("old", "held", None, REMOVED)  # the daemon, once reloaded
        assert main(args) == 0
        assert "deleted the jobs of removed destination old: 2 not delivered" in \
            capsys.readouterr().out
        for name in ("old", "oldx"):  # purged already; never configured: no daemon's doing
            assert main([*args[:-1], name]) == 2
            assert f"the spool holds no job for '{name}' (removed destinations with jobs: " \
                   "none)" in capsys.readouterr().err
    finally:
        lock.release()
    with Spool(tmp_path / "spool") as spool:
        assert spool.counts() == {} and not list(spool.objects.iterdir())
