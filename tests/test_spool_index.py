"""A missing, empty or damaged spool index next to queued objects: the daemon refuses to
start (exit 78, the file and the way out named), and ``spool rebuild`` takes the objects
again through the current routes, so every queued file is still delivered once."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from forwarder.cli import main
from forwarder.errors import SpoolIndexError
from forwarder.spool import Spool
from tests.corpus import unique_copies
from tests.daemonutil import DaemonProcess, write_config
from tests.peers import free_port, wait_for
from tests.sendutil import enqueue

COUNT = 12


def _spool_with_jobs(tmp_path: Path, port: int) -> tuple[Path, dict[str, Path]]:
    cfg = write_config(tmp_path, port)
    files = unique_copies(tmp_path / "corpus", COUNT)
    with Spool(tmp_path / "spool") as spool:
        enqueue(spool, list(files.values()))
        assert spool.counts() == {"pending": COUNT}
    return cfg, files


def _refused(cfg: Path, tmp_path: Path, *words: str) -> str:
    d = DaemonProcess(cfg, tmp_path)
    assert d.wait(60) == 78, d.output()
    out = d.output()
    for w in words:
        assert w in out, out
    assert "permissions" not in out and "Traceback" not in out, out
    return out


def _rebuild_and_deliver(cfg: Path, tmp_path: Path, make_scp, port: int,
                         files: dict[str, Path], capsys) -> None:
    assert main(["spool", "rebuild", "-c", str(cfg)]) == 0
    assert f"{COUNT} object(s) queued again" in capsys.readouterr().out
    peer = make_scp(port=port)
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        wait_for(lambda: len(peer.counts()) == COUNT, 60, "every rebuilt job delivered")
    finally:
        assert d.stop() == 0
    assert peer.counts() == {uid: 1 for uid in files}
    assert not list((tmp_path / "spool" / "objects").iterdir())


def test_an_interrupted_rebuild_is_refused_at_start_then_run_again(
        tmp_path: Path, make_scp, capsys, monkeypatch) -> None:
    """A rebuild stopped part way (Ctrl-C here; a kill alike) leaves an index with only
    some of the objects: the daemon and the commands refuse it (exit 78) instead of
    taking the rest for orphans and quarantining them as last copies; the rebuild run
    again, without --force, starts over and every file is delivered once."""
    from forwarder.spool import rebuild

    port = free_port()
    cfg, files = _spool_with_jobs(tmp_path, port)
    (tmp_path / "spool" / "index.sqlite").unlink()
    retake, taken = rebuild._retake, []

    def interrupted(*args: object) -> None:
        if len(taken) == 5:
            raise KeyboardInterrupt
        taken.append(retake(*args))  # type: ignore[arg-type]

    monkeypatch.setattr(rebuild, "_retake", interrupted)
    assert main(["spool", "rebuild", "-c", str(cfg)]) == 130
    monkeypatch.setattr(rebuild, "_retake", retake)
    _refused(cfg, tmp_path, "a spool rebuild of", "has not finished",
             "Run 'dicom-forwarder spool rebuild -c CONFIG' again with the service stopped")
    assert main(["status", "-c", str(cfg)]) == 78
    assert "has not finished" in capsys.readouterr().err
    assert len(list((tmp_path / "spool" / "objects").iterdir())) == COUNT
    assert not list((tmp_path / "spool" / "quarantine").iterdir())
    _rebuild_and_deliver(cfg, tmp_path, make_scp, port, files, capsys)
    assert not (tmp_path / "spool" / "rebuild.unfinished").exists()


def test_rebuilds_in_one_second_keep_every_index_they_moved_aside(tmp_path: Path) -> None:
    from forwarder import config
    from forwarder.spool import rebuild

    cfg, _files = _spool_with_jobs(tmp_path, free_port())
    spool = tmp_path / "spool"
    first = (spool / "index.sqlite").read_bytes()
    now = time.time()
    assert rebuild.rebuild(config.load(str(cfg)), force=True, now=now)["queued"] == COUNT
    assert rebuild.rebuild(config.load(str(cfg)), force=True, now=now)["queued"] == COUNT
    aside = sorted(p.name for p in spool.glob("index.sqlite.damaged-*"))
    assert len(aside) == 2 and aside[1] == f"{aside[0]}-2"
    assert (spool / aside[0]).read_bytes() == first  # the one first moved aside, unchanged


def test_the_daemon_does_not_start_while_a_rebuild_runs(tmp_path: Path, capsys,
                                                         monkeypatch) -> None:
    """The rebuild holds the spool's lock throughout: a daemon started meanwhile exits 78
    naming it, and touches nothing (it would take the objects not yet indexed for
    orphans)."""
    from forwarder.spool import rebuild

    cfg, _files = _spool_with_jobs(tmp_path, free_port())
    (tmp_path / "spool" / "index.sqlite").unlink()
    retake, outputs = rebuild._retake, []

    def with_a_daemon_started(*args: object) -> None:
        if not outputs:
            d = DaemonProcess(cfg, tmp_path)
            assert d.wait(60) == 78, d.output()
            outputs.append(d.output())
        retake(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(rebuild, "_retake", with_a_daemon_started)
    assert main(["spool", "rebuild", "-c", str(cfg)]) == 0
    assert f"{COUNT} object(s) queued again" in capsys.readouterr().out
    assert "(spool rebuild, pid" in outputs[0] and "is running on the spool" in outputs[0]
    with Spool(tmp_path / "spool") as spool:
        assert spool.counts() == {"pending": COUNT} and spool.quarantined() == []


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_missing_or_empty_index_is_refused_then_rebuilt(how: str, tmp_path: Path, make_scp,
                                                        capsys) -> None:
    port = free_port()
    cfg, files = _spool_with_jobs(tmp_path, port)
    index = tmp_path / "spool" / "index.sqlite"
    for extra in ("-wal", "-shm"):
        Path(f"{index}{extra}").unlink(missing_ok=True)
    if how == "deleted":
        index.unlink()
    else:
        index.write_bytes(b"")
    state = "missing" if how == "deleted" else "empty"
    _refused(cfg, tmp_path, f"the spool index {index} is {state}",
             f"holds {COUNT} object(s)", "dicom-forwarder spool rebuild")
    assert len(list((tmp_path / "spool" / "objects").iterdir())) == COUNT  # nothing touched
    assert not list((tmp_path / "spool" / "quarantine").iterdir())
    assert main(["status", "-c", str(cfg)]) == 78  # the commands refuse it too
    _rebuild_and_deliver(cfg, tmp_path, make_scp, port, files, capsys)


@pytest.mark.parametrize("damage", ["not-a-database", "malformed"])
def test_damaged_index_names_the_file_and_the_way_out(damage: str, tmp_path: Path, make_scp,
                                                      capsys) -> None:
    port = free_port()
    cfg, files = _spool_with_jobs(tmp_path, port)
    index = tmp_path / "spool" / "index.sqlite"
    data = bytearray(index.read_bytes())
    if damage == "not-a-database":
        data[:100] = b"\x5a" * 100
    else:  # the header survives; every page after the schema is overwritten
        page = int.from_bytes(data[16:18], "big")
        for at in range(2 * page, len(data), page):
            data[at:at + 64] = b"\xff" * 64
    index.write_bytes(bytes(data))
    _refused(cfg, tmp_path, f"the spool index {index} is damaged",
             "dicom-forwarder spool rebuild")
    _rebuild_and_deliver(cfg, tmp_path, make_scp, port, files, capsys)
    assert list((tmp_path / "spool").glob("index.sqlite.damaged-*"))  # kept for a look


def test_rebuild_quarantines_what_it_cannot_route_and_keeps_quarantine(tmp_path: Path,
                                                                      capsys) -> None:
    cfg, files = _spool_with_jobs(tmp_path, free_port())
    root = tmp_path / "spool"
    earlier = tmp_path / "earlier.bin"
    earlier.write_bytes(b"earlier")
    with Spool(root) as spool:
        spool.quarantine(None, "/in/earlier.bin", "not DICOM: earlier", move=earlier)
        before = spool.quarantined()
    (root / "objects" / "stray").write_bytes(b"not a DICOM object")
    shutil.move(root / "index.sqlite", tmp_path / "lost.sqlite")
    for extra in ("-wal", "-shm"):
        Path(f"{root / 'index.sqlite'}{extra}").unlink(missing_ok=True)
    cfg.write_text(cfg.read_text() + "    match: {Modality: MR}\n")  # CT matches no route now
    assert main(["spool", "rebuild", "-c", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["quarantine", "-c", str(cfg), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["source"] == "/in/earlier.bin" and rows[0] == before[0]
    reasons = [r["reason"] for r in rows[1:]]
    assert len(rows) == COUNT + 2
    assert sum("no route matches it now" in r for r in reasons) == COUNT
    assert sum("spool rebuild" in r and "DICOM" in r for r in reasons) == 1, reasons
    assert all(Path(r["file"]).exists() for r in rows)
    assert not list((root / "objects").iterdir())


def test_rebuild_refuses_a_readable_index(tmp_path: Path, capsys) -> None:
    cfg, _files = _spool_with_jobs(tmp_path, free_port())
    assert main(["spool", "rebuild", "-c", str(cfg)]) == 2
    assert "is readable and holds 12 job(s)" in capsys.readouterr().err
    with Spool(tmp_path / "spool") as spool:
        assert spool.counts() == {"pending": COUNT}


@pytest.mark.parametrize("holding", ["delivered", "kept", "quarantined"])
def test_rebuild_refuses_a_readable_index_without_jobs_but_with_a_past(
        holding: str, tmp_path: Path, capsys) -> None:
    """Delivered jobs are deleted: an index with none left still counts the deliveries,
    remembers the sources left in place (else sent again) and lists the quarantine."""
    cfg = write_config(tmp_path, free_port())
    source = unique_copies(tmp_path / "corpus", 1)
    path = next(iter(source.values()))
    with Spool(tmp_path / "spool") as spool:
        if holding == "quarantined":
            spool.quarantine(None, str(path), "not DICOM: a test", move=path)
        else:
            enqueue(spool, [path])
            spool.done([job.id for job in spool.claim("pacs", 10)])
        if holding == "kept":
            spool.remember(str(path), path.stat())
        assert spool.counts() == {}
    assert main(["spool", "rebuild", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    want = {"delivered": "holds 1 delivered file(s) counted;",
            "kept": "holds 1 source(s) left in place and remembered, 1 delivered file(s) "
                    "counted;",
            "quarantined": "holds 1 quarantine record(s);"}[holding]
    assert f"the spool index {tmp_path / 'spool' / 'index.sqlite'} is readable and " \
           f"{want}" in err, err
    assert "--force to rebuild anyway" in err, err
    assert not list((tmp_path / "spool").glob("index.sqlite.damaged-*"))
    assert main(["status", "-c", str(cfg), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["destinations"]["pacs"]["done"] == (holding != "quarantined")
    assert status["quarantined"] == (holding == "quarantined")
    if holding == "kept":
        with Spool(tmp_path / "spool") as spool:
            assert spool.left_unchanged(str(path), path.stat())  # not taken again
    assert main(["spool", "rebuild", "-c", str(cfg), "--force"]) == 0
    assert "old index file(s) moved aside" in capsys.readouterr().out


def test_rebuild_takes_a_readable_index_with_nothing_in_it(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, free_port())
    Spool(tmp_path / "spool").close()
    assert main(["spool", "rebuild", "-c", str(cfg)]) == 0
    assert "0 object(s) queued again" in capsys.readouterr().out


def test_a_new_spool_and_an_empty_objects_folder_start_as_before(tmp_path: Path) -> None:
    Spool(tmp_path / "new").close()
    (tmp_path / "new" / "index.sqlite").unlink()
    Spool(tmp_path / "new").close()  # no objects: nothing to lose, a new index is made
    with pytest.raises(SpoolIndexError):
        (tmp_path / "new" / "index.sqlite").unlink()
        (tmp_path / "new" / "objects" / "x").write_bytes(b"x")
        Spool(tmp_path / "new")


def test_commands_on_a_damaged_index_say_so_without_a_traceback(tmp_path: Path,
                                                                 capsys) -> None:
    cfg, _files = _spool_with_jobs(tmp_path, free_port())
    index = tmp_path / "spool" / "index.sqlite"
    data = bytearray(index.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for at in range(2 * page, len(data), page):
        data[at:at + 64] = b"\xff" * 64
    index.write_bytes(bytes(data))
    for command in ("status", "failed", "quarantine"):
        assert main([command, "-c", str(cfg)]) == 78, command
        err = capsys.readouterr().err
        assert "damaged" in err and "spool rebuild" in err, err


def test_rebuild_quarantines_a_file_a_route_regex_cannot_decide_and_takes_the_rest(
        tmp_path: Path, capsys) -> None:
    """A route whose regex backtracks without end on one object's value: that object is
    quarantined with the route named, the rebuild finishes and the others are queued."""
    cfg, files = _spool_with_jobs(tmp_path, free_port())
    root = tmp_path / "spool"
    with Spool(root) as spool:
        [job] = [j for j in spool.claim("pacs", COUNT)
                 if j.probe.sop_instance_uid == sorted(files)[0]]
        bad = job.path
    from pydicom import dcmread
    ds = dcmread(bad)
    ds.StudyDescription = "a" * 80 + "!"
    ds.save_as(bad)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (root / name).unlink(missing_ok=True)
    cfg.write_text(cfg.read_text() + "    match: {StudyDescription: {regex: '^(a|aa)+$|'}}\n")
    assert main(["spool", "rebuild", "-c", str(cfg)]) == 0
    assert f"{COUNT - 1} object(s) queued again" in capsys.readouterr().out
    assert not (root / "rebuild.unfinished").exists()
    with Spool(root) as spool:
        [q] = spool.quarantined()
        assert q["reason"].startswith("spool rebuild: route #0: its condition "
                                      "StudyDescription: {regex: '^(a|aa)+$|'} searched")
        assert spool.counts() == {"pending": COUNT - 1}
