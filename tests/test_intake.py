"""Watch folders and intake with the real observer on real folders (no sleeps: deadlines)."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from forwarder import config
from forwarder.candidate import Candidate
from forwarder.config import Watch
from forwarder.intake import Intake
from forwarder.spool import Spool
from forwarder.watcher import Watcher
from tests.corpus import data_file, unique_copies, with_open_sequences
from tests.peers import wait_for
from tests.pipeline import Pipeline, make_config

CT = data_file("CT_small.dcm")
CT_UID = str(dcmread(CT, stop_before_pixels=True).SOPInstanceUID)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quarantine_reasons(p: Pipeline) -> dict[str, str]:
    return {Path(q["source"]).name: q["reason"] for q in p.spool.quarantined()}


def test_slow_writer_is_taken_once_and_complete(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, watch="min_age: 1s")
    data = CT.read_bytes()
    target = tmp_path / "in" / "slow.dcm"
    chunks = [data[i:i + len(data) // 17 + 1] for i in range(0, len(data), len(data) // 17 + 1)]
    done = threading.Event()

    def writer() -> None:  # appends for about 5 s, flushing each piece
        with open(target, "wb") as fp:
            for chunk in chunks:
                fp.write(chunk)
                fp.flush()
                done.wait(0.3)
        done.set()

    with Pipeline(cfg) as p:
        t = threading.Thread(target=writer)
        t.start()
        t.join(30)
        wait_for(lambda: p.objects(), 10, "the file in the spool")
        wait_for(lambda: not target.exists(), 5, "the source to be removed")
        [obj] = p.objects()
        assert obj["sha256"] == sha(data) and obj["sop_instance"] == CT_UID
        assert p.spool.quarantined() == [] and p.jobs() == [("pacs", "pending", CT_UID)]


def test_write_then_rename_takes_the_final_name_only(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    with Pipeline(cfg) as p:
        tmp = tmp_path / "in" / "x.tmp"
        tmp.write_bytes(CT.read_bytes())
        os.rename(tmp, tmp_path / "in" / "x.dcm")
        wait_for(lambda: p.objects(), 10, "x.dcm in the spool")
        [obj] = p.objects()
        assert obj["source"].endswith("/x.dcm") and p.spool.quarantined() == []


def test_nested_folders_created_with_files_inside(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    with Pipeline(cfg) as p:
        staging = tmp_path / "staging"
        uids = unique_copies(staging / "a" / "b" / "c", 20)
        shutil.copytree(staging / "a", tmp_path / "in" / "a")  # mkdir -p + copy at once
        wait_for(lambda: len(p.objects()) == 20, 15, "20 files from a/b/c")
        assert {o["sop_instance"] for o in p.objects()} == set(uids)
        wait_for(lambda: not any((tmp_path / "in" / "a" / "b" / "c").iterdir()), 10,
                 "every source removed")


def test_backlog_of_10000_files_at_start_is_all_taken(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    uids = unique_copies(tmp_path / "in", 10_000)
    with Pipeline(cfg) as p:
        wait_for(lambda: len(p.objects()) == 10_000, 120, "10,000 files in the spool",
                 interval=0.5)
        assert {o["sop_instance"] for o in p.objects()} == set(uids)
        wait_for(lambda: not any((tmp_path / "in").iterdir()), 10, "every source removed")
        assert p.spool.counts() == {"pending": 10_000}


def test_rescan_alone_finds_files_when_events_are_lost(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, watch="rescan: 500ms")
    with Pipeline(cfg, events=False) as p:
        w = p.watchers[0]
        wait_for(lambda: w.scans >= 1, 5, "the first scan")
        uids = unique_copies(tmp_path / "in", 5)
        wait_for(lambda: len(p.objects()) == 5, 10, "files found by the rescan")
        assert {o["sop_instance"] for o in p.objects()} == set(uids)


def test_polling_mode(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, watch="polling: true\nrescan: 1h")
    with Pipeline(cfg) as p:
        assert p.watchers[0].polling
        wait_for(lambda: p.watchers[0].scans >= 1, 5, "the first scan")
        uids = unique_copies(tmp_path / "in", 3)
        wait_for(lambda: len(p.objects()) == 3, 15, "files seen by the polling observer")
        assert {o["sop_instance"] for o in p.objects()} == set(uids)


def test_inotify_limit_falls_back_to_polling_with_a_clear_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Exhausted:
        """An observer whose schedule() meets the kernel's watch limit, as watchdog reports it."""

        daemon = True

        def start(self) -> None: ...
        def stop(self) -> None: ...
        def join(self, timeout: float | None = None) -> None: ...

        def schedule(self, *a: object, **kw: object) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    cfg = make_config(tmp_path, watch="rescan: 1h")
    with Pipeline(cfg, observer_factory=Exhausted) as p:
        assert p.watchers[0].polling
        unique_copies(tmp_path / "in", 2)
        wait_for(lambda: len(p.objects()) == 2, 15, "files seen by the fallback poller")
    assert "inotify watch limit reached" in caplog.text and "max_user_watches" in caplog.text


def test_symlinks_are_left_alone_and_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    uids = unique_copies(outside, 3)
    target = next(iter(uids.values()))
    cfg = make_config(tmp_path, watch="rescan: 300ms")
    (tmp_path / "in" / "link.dcm").symlink_to(target)
    (tmp_path / "in" / "dirlink").symlink_to(outside, target_is_directory=True)
    with Pipeline(cfg) as p:
        wait_for(lambda: p.watchers[0].scans >= 3, 10, "three scans")
        unique_copies(tmp_path / "in", 1, prefix="real")
        wait_for(lambda: len(p.objects()) == 1, 10, "the regular file")
        assert p.spool.quarantined() == []
    assert (tmp_path / "in" / "link.dcm").is_symlink() and target.exists()
    assert sorted(f.name for f in outside.iterdir()) == sorted(f.name for f in uids.values())


def test_hard_linked_file_is_copied_and_its_other_link_untouched(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    other = tmp_path / "other.dcm"
    shutil.copy(CT, other)
    with Pipeline(cfg) as p:
        os.link(other, tmp_path / "in" / "ct.dcm")
        wait_for(lambda: p.objects(), 10, "the hard-linked file in the spool")
        [obj] = p.objects()
        stored = p.spool.objects / obj["name"]
        assert stored.stat().st_ino != other.stat().st_ino
        assert other.read_bytes() == CT.read_bytes() and other.stat().st_nlink == 1


def test_bad_inputs_are_quarantined_with_reasons(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, watch="truncated_after: 1s\nrescan: 300ms")
    data = CT.read_bytes()
    with Pipeline(cfg) as p:
        inbox = tmp_path / "in"
        (inbox / "empty.dcm").write_bytes(b"")
        (inbox / "head.dcm").write_bytes(data[:300])
        (inbox / "pixels.dcm").write_bytes(data[:-1000])
        (inbox / "report.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
        wait_for(lambda: len(p.spool.quarantined()) == 4, 10, "four quarantined inputs")
        reasons = quarantine_reasons(p)
        assert "0 bytes" in reasons["empty.dcm"]
        assert "truncated" in reasons["head.dcm"]
        assert "truncated" in reasons["pixels.dcm"]
        assert "not DICOM" in reasons["report.pdf"] and "%PDF" in reasons["report.pdf"]
        assert p.objects() == []
        assert "unchanged for at least 1s" in reasons["head.dcm"] and "0 bytes" in reasons["empty.dcm"]
        wait_for(lambda: not (inbox / "report.pdf").exists(), 10, "the PDF moved out")
        # what may still be written is quarantined by copy and stays where its writer is
        assert sorted(f.name for f in inbox.iterdir()) == ["empty.dcm", "head.dcm", "pixels.dcm"]
        for q in p.spool.quarantined():  # each kept with its reason beside it
            saved = json.loads(Path(q["file"] + ".json").read_text())
            assert saved["reason"] == q["reason"] and Path(q["file"]).exists()
        assert Path(next(q["file"] for q in p.spool.quarantined()
                         if q["source"].endswith("pixels.dcm"))).read_bytes() == data[:-1000]


def test_a_cut_file_unchanged_since_before_a_restart_keeps_its_clock(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """truncated_after counts from the file's last change (its ctime, on a local disk),
    not from when a daemon first saw it: a daemon restarted more often than that would
    otherwise never quarantine the file, nor say where it is."""
    import time

    cfg = make_config(tmp_path, watch="truncated_after: 2s\nrescan: 300ms")
    cut = tmp_path / "in" / "cut.dcm"
    cut.write_bytes(CT.read_bytes()[:-1000])
    wait_for(lambda: time.time() - cut.stat().st_ctime > 2.5, 10, "the file 2.5 s untouched")
    caplog.set_level(logging.INFO)
    with Pipeline(cfg) as p:
        wait_for(lambda: p.spool.quarantined(), 10, "the cut file quarantined")
        [q] = p.spool.quarantined()
        assert q["reason"].startswith("truncated") and "unchanged for at least 2s" in q["reason"]
    assert "looked at again when it changes" not in caplog.text  # no wait from the start
    assert cut.exists()  # by copy: a writer may still come back to it


def test_an_image_closed_before_its_pixel_data_waits_for_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A writer that closes the file after the header and comes back for the pixels
    leaves a file complete in every element it holds: an image without Pixel Data is left
    in place as incomplete and taken whole once the pixels are written. An object that
    has no pixels (an SR) is taken at once; a header alone that stays so is quarantined
    after truncated_after, by copy."""
    import time

    cfg = make_config(tmp_path, watch="min_age: 300ms\ntruncated_after: 3s\nrescan: 300ms")
    data = CT.read_bytes()
    at = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010), explicit VR little endian
    head = tmp_path / "in" / "ct.dcm"
    alone = tmp_path / "in" / "header-only.dcm"
    caplog.set_level(logging.INFO)
    with Pipeline(cfg) as p:
        head.write_bytes(data[:at])
        alone.write_bytes(data[:at].replace(CT_UID.encode(), CT_UID[:-1].encode() + b"9"))
        shutil.copy(data_file("test-SR.dcm"), tmp_path / "in" / "report.dcm")
        wait_for(lambda: caplog.text.count("CT Image Storage without Pixel Data") >= 2, 10,
                 "both headers judged incomplete")
        wait_for(lambda: len(p.objects()) == 1, 10, "the report taken")
        assert p.objects()[0]["source"].endswith("/report.dcm")
        with open(head, "ab") as fp:  # the writer comes back for the pixels
            fp.write(data[at:])
        wait_for(lambda: len(p.objects()) == 2, 10, "the completed image taken")
        [image] = [o for o in p.objects() if o["source"].endswith("/ct.dcm")]
        assert image["sha256"] == sha(data) and image["sop_instance"] == CT_UID
        wait_for(lambda: p.spool.quarantined(), 10, "the header alone quarantined")
        [q] = p.spool.quarantined()
        assert q["source"].endswith("/header-only.dcm")
        assert q["reason"].startswith("truncated: CT Image Storage without Pixel Data")
        assert "unchanged for at least 3s" in q["reason"]
        assert alone.exists() and not head.exists()
        assert time.time() - alone.stat().st_ctime >= 3


def test_incomplete_files_clock_starts_when_they_last_changed() -> None:
    from forwarder.incomplete import Incomplete

    seen = Incomplete(limit=1)
    assert seen.wait_left("a", 1, now=100.0, patience=10.0, untouched=4.0) == (6.0, True)
    assert seen.wait_left("a", 1, now=101.0, patience=10.0, untouched=5.0) == (5.0, False)
    assert seen.wait_left("b", 1, now=101.0, patience=10.0, untouched=99.0) == (0.0, True)
    # forgotten beyond the limit, "a" is seen again: its clock still runs from its change
    assert seen.wait_left("a", 1, now=102.0, patience=10.0, untouched=6.0) == (4.0, True)
    assert seen.wait_left("c", 2, now=0.0, patience=10.0, untouched=-3.0) == (10.0, True)


def test_a_deflated_label_that_does_not_hold_is_named_not_called_an_internal_error(
        tmp_path: Path) -> None:
    """A plain data set under the deflated syntax's label is mislabelled; a deflated one
    cut short may still be written, and waits as any truncated file does."""
    from tests.test_send import relabelled

    cfg = make_config(tmp_path, watch="truncated_after: 1s\nrescan: 300ms")
    deflated = Path(get_testdata_file("image_dfl.dcm")).read_bytes()
    staged = relabelled(str(CT), tmp_path / "plain.dcm", "1.2.840.10008.1.2.1.99")
    with Pipeline(cfg) as p:
        (tmp_path / "in" / "cut.dcm").write_bytes(deflated[:len(deflated) // 2])
        shutil.move(staged, tmp_path / "in" / "plain.dcm")
        wait_for(lambda: len(p.spool.quarantined()) == 2, 15, "both quarantined")
        reasons = quarantine_reasons(p)
        assert reasons["plain.dcm"].startswith("mislabelled: the file meta names the deflated")
        assert reasons["cut.dcm"].startswith("truncated: the deflated data set stops")
        assert "unchanged for at least 1s" in reasons["cut.dcm"] and p.objects() == []


def test_a_file_cut_inside_a_sequence_waits_in_place_and_is_taken_whole_when_completed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A writer that pauses inside encapsulated pixel data, or inside a sequence of
    undefined length: the file is left where it is (not moved out as unreadable, which
    would leave its rest as a second, headless file), and taken whole once written on."""
    cfg = make_config(tmp_path, watch="truncated_after: 60s\nrescan: 300ms")
    j2k = data_file("JPEG2000.dcm").read_bytes()
    ct = with_open_sequences()
    nested_end = ct.index(b"\xfe\xff\xdd\xe0", ct.index(b"\x40\x00\x70\xa1SQ"))
    pieces = {"j2k.dcm": (j2k, j2k.rindex(b"\xfe\xff\xdd\xe0")),  # before its delimiter
              # right after the first item of Referenced Image Sequence (undefined length)
              "ct.dcm": (ct, ct.index(b"\xfe\xff\x0d\xe0\0\0\0\0", nested_end) + 8)}
    caplog.set_level(logging.WARNING)
    inbox = tmp_path / "in"
    with Pipeline(cfg) as p:
        for name, (data, cut) in pieces.items():
            (inbox / name).write_bytes(data[:cut])
        for name, (_, cut) in pieces.items():
            wait_for(lambda name=name, cut=cut: f"{name}: truncated: the file ends at byte {cut} "
                     in caplog.text, 10, f"{name} judged cut short")
        assert "j2k.dcm: truncated: the file ends at byte 3300 inside the encapsulated pixel " \
               "data (7FE0,0010)" in caplog.text
        assert "left in place and looked at again when it changes" in caplog.text
        assert sorted(f.name for f in inbox.iterdir()) == ["ct.dcm", "j2k.dcm"]
        assert p.spool.quarantined() == [] and p.objects() == []
        for name, (data, cut) in pieces.items():
            with open(inbox / name, "ab") as fp:  # the writer resumes
                fp.write(data[cut:])
        wait_for(lambda: len(p.objects()) == 2, 10, "both files in the spool")
        assert sorted(o["sha256"] for o in p.objects()) == sorted([sha(j2k), sha(ct)])
        wait_for(lambda: not any(inbox.iterdir()), 5, "the sources removed")
        assert p.spool.quarantined() == []


def test_dicomdir_set_images_taken_dicomdir_quarantined(tmp_path: Path) -> None:
    src = Path(get_testdata_file("DICOMDIR", download=False))
    ddir = dcmread(src)
    refs = [r for r in ddir.DirectoryRecordSequence if "ReferencedFileID" in r]
    staging = tmp_path / "cd"
    for r in refs:
        rel = Path(*r.ReferencedFileID)
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src.parent / rel, staging / rel)
    shutil.copy(src, staging / "DICOMDIR")
    cfg = make_config(tmp_path)
    with Pipeline(cfg) as p:
        shutil.copytree(staging, tmp_path / "in" / "cd")
        wait_for(lambda: len(p.objects()) == len(refs) and p.spool.quarantined(), 20,
                 "the set's images and the DICOMDIR")
        assert {o["sop_instance"] for o in p.objects()} == \
            {r.ReferencedSOPInstanceUIDInFile for r in refs}
        [q] = p.spool.quarantined()
        assert q["source"].endswith("/DICOMDIR") and "DICOMDIR" in q["reason"]


def test_malformed_sop_instance_uids_are_quarantined_with_reasons(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    bad = {"evil.dcm": "../../x", "long.dcm": "1." + "2" * 199, "dots.dcm": "1..2.3",
           "letters.dcm": "1.2.abc"}
    with Pipeline(cfg) as p:
        for name, uid in bad.items():
            ds = dcmread(CT)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.save_as(tmp_path / "in" / name)
        ds = dcmread(CT)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.03.4"
        ds.save_as(tmp_path / "in" / "zeros.dcm")  # tolerated, as older devices write it
        wait_for(lambda: len(p.spool.quarantined()) == 4 and p.objects(), 10, "all five")
        reasons = quarantine_reasons(p)
        assert [o["sop_instance"] for o in p.objects()] == ["1.2.03.4"]
    assert "'../../x' is not a UID" in reasons["evil.dcm"]
    assert "201 characters long, more than the 64 allowed" in reasons["long.dcm"]
    assert "'1..2.3' is not a UID" in reasons["dots.dcm"]
    assert "not a UID" in reasons["letters.dcm"]
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_keep_source_takes_nothing_twice_across_a_restart(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, watch="keep_source: true\nrescan: 300ms")
    uids = unique_copies(tmp_path / "in", 10)
    with Pipeline(cfg) as p:
        wait_for(lambda: len(p.objects()) == 10, 15, "10 files in the spool")
        wait_for(lambda: p.watchers[0].scans >= 3, 10, "more scans")
        assert len(p.jobs()) == 10
    assert sorted(f.name for f in (tmp_path / "in").iterdir()) == \
        sorted(f.name for f in uids.values())
    with Pipeline(cfg) as p:  # a restart: a new process would see the same spool
        wait_for(lambda: p.watchers[0].scans >= 3, 10, "scans after the restart")
        assert len(p.jobs()) == 10 and len(p.objects()) == 10
        next(iter(uids.values())).write_bytes(CT.read_bytes())  # rewritten: new content
        wait_for(lambda: len(p.jobs()) == 11, 10, "the rewritten file taken again")


def test_keep_source_knows_its_files_when_the_folder_is_named_another_way(
        tmp_path: Path) -> None:
    """Kept files taken and delivered; the watch folder then named through a symlink to
    it, and through a symlink to its parent (a restart, or a reload, with the
    configuration respelt): its files are the ones taken already, none is taken twice;
    a new file is taken."""
    cfg = make_config(tmp_path, watch="keep_source: true\nrescan: 300ms")
    uids = unique_copies(tmp_path / "in", 5)
    with Pipeline(cfg) as p:
        wait_for(lambda: len(p.objects()) == 5, 15, "5 files in the spool")
        jobs = p.spool.claim("pacs", 10, owner="1@t")
        p.spool.done([j.id for j in jobs], owner="1@t")  # delivered: nothing left to match
        assert p.jobs() == [] and p.objects() == []
    (tmp_path / "link").symlink_to(tmp_path / "in", target_is_directory=True)
    (tmp_path / "up").symlink_to(tmp_path, target_is_directory=True)
    for spelt in (tmp_path / "link", tmp_path / "up" / "in"):
        respelt = dataclasses.replace(
            cfg, watch=(dataclasses.replace(cfg.watch[0], path=str(spelt)),))
        with Pipeline(respelt) as p:
            # scanned, and no file settling, or offered and not judged yet
            wait_for(lambda w=p.watchers[0]: w.scans >= 3 and not w.pending and not w.offered,
                     10, f"scans of {spelt}, every file judged")
            assert p.jobs() == []
    new = unique_copies(tmp_path / "new", 1, "MR_small.dcm")
    shutil.copy(next(iter(new.values())), tmp_path / "in" / "new.dcm")
    with Pipeline(respelt) as p:
        wait_for(lambda: p.jobs(), 10, "the new file taken")
        assert p.jobs() == [("pacs", "pending", next(iter(new)))]
    assert sorted(f.name for f in (tmp_path / "in").iterdir()) == \
        sorted([*(f.name for f in uids.values()), "new.dcm"])


def test_a_kept_folder_larger_than_the_watchers_memory_is_taken_whole(
        tmp_path: Path) -> None:
    """keep_source on a folder of more files than the watcher remembers as left in place
    and than intake and the watcher's line hold together (here 10 each, for 40 files):
    the files it has forgotten are passed over by their index row at each scan, so they
    do not take the room of those not yet taken, and every file is taken, once."""
    cfg = make_config(tmp_path, watch="keep_source: true\nmin_age: 100ms\nrescan: 300ms")
    uids = unique_copies(tmp_path / "in", 40)  # there before the start: found by scans
    p = Pipeline(cfg, intake_kw={"capacity": 10, "batch": 5})
    p.watchers[0].limit = 10
    with p:
        wait_for(lambda: len(p.objects()) == 40, 20, "every kept file in the spool")
        scans = p.watchers[0].scans
        wait_for(lambda: p.watchers[0].scans >= scans + 3, 10, "three more scans")
        assert sorted(o["sop_instance"] for o in p.objects()) == sorted(uids)
        assert len(p.jobs()) == 40
    assert sorted(f.name for f in (tmp_path / "in").iterdir()) == \
        sorted(f.name for f in uids.values())


def test_routing_fans_out_by_attributes_and_path(tmp_path: Path) -> None:
    routes = """\
      - name: ct-to-ai
        match: {Modality: CT, StudyDescription: {regex: '(?i)^E\\+1$'}}
        to: [ai]
      - name: mr-folder
        match: {path: "mr/*"}
        to: [archive]
        final: true
      - to: [pacs]
    """
    cfg = make_config(tmp_path, routes=routes, dests=("pacs", "ai", "archive"))
    with Pipeline(cfg) as p:
        shutil.copy(CT, tmp_path / "in" / "ct.dcm")
        (tmp_path / "in" / "mr").mkdir()
        shutil.copy(data_file("MR_small.dcm"), tmp_path / "in" / "mr" / "mr.dcm")
        wait_for(lambda: len(p.jobs()) == 3, 10, "three jobs")
        mr_uid = str(dcmread(data_file("MR_small.dcm")).SOPInstanceUID)
        assert sorted(p.jobs()) == sorted([("ai", "pending", CT_UID), ("pacs", "pending", CT_UID),
                                           ("archive", "pending", mr_uid)])


def test_routes_match_what_the_user_wrote_so_no_file_is_deleted_as_unrouted(
        tmp_path: Path) -> None:
    """Unquoted in YAML, NO is false and 012345 an octal number; IS and DS values are
    numbers written many ways; TransferSyntaxUID is in the file meta. Each route holds
    for the file that has what it says, and under ``unrouted: delete`` none of them is
    deleted for a value the user wrote right."""
    from pydicom.valuerep import IS, DSfloat

    ds = dcmread(CT)
    ds.BurnedInAnnotation, ds.PatientID = "NO", "012345"
    ds.SeriesNumber, ds.SliceThickness = IS("007"), DSfloat("5.000", auto_format=False)
    ds.save_as(tmp_path / "ct.dcm")
    routes = """\
      - name: clean
        match: {BurnedInAnnotation: NO, PatientID: 012345}
        to: [pacs]
      - name: thin
        match: {SeriesNumber: 7, SliceThickness: 5.0}
        to: [ai]
      - name: explicit
        match: {TransferSyntaxUID: 1.2.840.10008.1.2.1}
        to: [archive]
    """
    cfg = make_config(tmp_path, routes=routes, dests=("pacs", "ai", "archive"),
                      extra="unrouted: delete\n")
    with Pipeline(cfg) as p:
        shutil.move(tmp_path / "ct.dcm", tmp_path / "in" / "ct.dcm")
        wait_for(lambda: len(p.jobs()) == 3, 10, "three jobs")
        assert sorted(p.jobs()) == sorted([("pacs", "pending", CT_UID), ("ai", "pending", CT_UID),
                                           ("archive", "pending", CT_UID)])


def test_routes_match_padded_parts_binary_numbers_and_empty_values_as_the_file_holds_them(
        tmp_path: Path) -> None:
    """Each part of a multi-value loses its padding, as a single value does; binary
    numbers (FD, FL) compare as numbers, FL in single precision (0.1, not the double
    0.10000000149011612) and written as Python writes floats for a regex (30.0, FLT_MAX);
    a number present but empty matches '', and no number that is none (FLT_MAX is one).
    A route written for each of them holds, and only those."""
    ds = dcmread(CT)
    ds.ImageType = ["ORIGINAL ", " PRIMARY"]
    ds.DiffusionBValue = 1000.0
    ds.ExaminedBodyThickness = 0.1
    ds.AcquisitionNumber = None  # present, empty
    ds.RecommendedDisplayFrameRateInFloat = 3.4028234663852886e+38  # FLT_MAX: "undefined"
    ds.CalciumScoringMassFactorPatient = 30.0
    ds.save_as(tmp_path / "ct.dcm")
    routes = """\
      - {match: {ImageType: [ORIGINAL], Modality: CT}, to: [pacs]}
      - {match: {DiffusionBValue: 1000}, to: [ai]}
      - {match: {ExaminedBodyThickness: 0.1}, to: [archive]}
      - {match: {AcquisitionNumber: ''}, to: [research]}
      - {match: {RecommendedDisplayFrameRateInFloat: {regex: '^3[.]4028235e[+]38$'},
                 CalciumScoringMassFactorPatient: {regex: '^30[.]0$'}}, to: [cine]}
      - {match: {RecommendedDisplayFrameRateInFloat: ''}, to: [nowhere]}
    """
    dests = ("pacs", "ai", "archive", "research", "cine")
    cfg = make_config(tmp_path, routes=routes, dests=(*dests, "nowhere"))
    with Pipeline(cfg) as p:
        shutil.move(tmp_path / "ct.dcm", tmp_path / "in" / "ct.dcm")
        wait_for(lambda: p.jobs() or p.spool.quarantined(), 10, "the CT's verdict")
        wait_for(lambda: len(p.jobs()) == 5, 5, "five jobs")
        assert sorted(p.jobs()) == sorted((d, "pending", CT_UID) for d in dests)


def test_a_route_regex_that_backtracks_quarantines_that_file_and_the_others_go_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One file whose value sends a route's regex into endless backtracking is
    quarantined with the route and the pattern named; the files after it are routed.
    (Searched with the interpreter lock held and no limit, it stopped intake and every
    signal handler for good.)"""
    routes = """\
      - {name: ai, match: {StudyDescription: {regex: '^(a|aa)+$'}}, to: [ai]}
      - {to: [pacs]}
    """
    cfg = make_config(tmp_path, routes=routes, dests=("pacs", "ai"))
    uids = unique_copies(tmp_path / "c", 3)
    bad = dcmread(CT)
    bad.StudyDescription = "a" * 80 + "!"
    bad.save_as(tmp_path / "c" / "bad.dcm")
    with Pipeline(cfg) as p:
        shutil.move(tmp_path / "c" / "bad.dcm", tmp_path / "in" / "bad.dcm")
        for path in uids.values():
            shutil.move(path, tmp_path / "in" / path.name)
        wait_for(lambda: p.spool.quarantined() and len(p.jobs()) == 3, 20,
                 "one file quarantined, three routed")
        [q] = p.spool.quarantined()
        assert q["reason"].startswith("route ai: its condition StudyDescription: "
                                      "{regex: '^(a|aa)+$'} searched")
        assert sorted(u for _d, _s, u in p.jobs()) == sorted(uids)
    [said] = [r for r in caplog.records if getattr(r, "FORWARDER_EVENT", "") == "quarantined"]
    assert said.WATCH == "modality" and said.REASON == q["reason"]  # type: ignore[attr-defined]


def test_unrouted_delete_and_quarantine(tmp_path: Path) -> None:
    routes = "  - match: {Modality: MR}\n    to: [pacs]\n"
    cfg = make_config(tmp_path, routes=routes, extra="unrouted: delete\n")
    with Pipeline(cfg) as p:
        shutil.copy(CT, tmp_path / "in" / "ct.dcm")
        wait_for(lambda: not (tmp_path / "in" / "ct.dcm").exists(), 10, "the CT deleted")
        assert p.objects() == [] and p.spool.quarantined() == []
    cfg = make_config(tmp_path, routes=routes)
    with Pipeline(cfg) as p:
        shutil.copy(CT, tmp_path / "in" / "ct.dcm")
        wait_for(lambda: p.spool.quarantined(), 10, "the CT quarantined")
        assert "no route matched" in p.spool.quarantined()[0]["reason"]


def _an_unrouted_ct_left_in_place(tmp_path: Path, watch: str,
                                  caplog: pytest.LogCaptureFixture) -> Path:
    """Drop a CT no route takes under ``unrouted: delete`` into a folder with ``watch``'s
    settings and let three scans pass after its verdict: it is neither taken nor
    quarantined, and it is remembered as left in place. The file."""
    routes = "  - match: {Modality: MR}\n    to: [pacs]\n"
    cfg = make_config(tmp_path, watch=f"{watch}rescan: 300ms", routes=routes,
                      extra="unrouted: delete\n")
    ct = tmp_path / "in" / "ct.dcm"
    with Pipeline(cfg) as p:
        shutil.copy(CT, ct)
        wait_for(lambda: "ct.dcm: no route matched" in caplog.text, 10, "the CT's verdict")
        scans = p.watchers[0].scans
        wait_for(lambda: p.watchers[0].scans >= scans + 3, 10, "three more scans")
        assert p.objects() == [] and p.spool.quarantined() == []
        assert p.spool.left_unchanged(str(ct), ct.stat())
    return ct


def test_unrouted_delete_in_a_kept_folder_leaves_the_file_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder that keeps its sources keeps one no route takes too: the log says it is
    left in place, not deleted, and it is remembered, so the scans pass over it."""
    caplog.set_level(logging.INFO, logger="forwarder.intake")
    ct = _an_unrouted_ct_left_in_place(tmp_path, "keep_source: true\n", caplog)
    said = [r.getMessage() for r in caplog.records if "no route matched" in r.getMessage()]
    assert said == [f"{ct}: no route matched, not taken (unrouted: delete): left in place, "
                    "as its folder keeps its sources, and not looked at again while "
                    "unchanged"]
    assert ct.read_bytes() == CT.read_bytes()


def test_a_copy_already_queued_for_one_destination_is_said_accepted_for_the_others_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same content dropped again, now routed to pacs and ai, while its first copy
    still waits for pacs: only ai gets a job, and the log says that, not "accepted for
    pacs, ai"; a third copy, queued everywhere already, is a duplicate."""
    routes = """\
      - match: {path: "one/*"}
        to: [pacs]
      - match: {path: "two/*"}
        to: [pacs, ai]
    """
    cfg = make_config(tmp_path, routes=routes, dests=("pacs", "ai"))
    caplog.set_level(logging.INFO, logger="forwarder.intake")
    with Pipeline(cfg) as p:
        for n, folder in enumerate(("one", "two", "two")):
            (tmp_path / "stage" / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(CT, tmp_path / "stage" / folder / f"ct{n}.dcm")
            (tmp_path / "in" / folder).mkdir(exist_ok=True)
            os.rename(tmp_path / "stage" / folder / f"ct{n}.dcm",
                      tmp_path / "in" / folder / f"ct{n}.dcm")
            wait_for(lambda n=n: f"ct{n}.dcm: " in caplog.text, 10, f"copy {n} taken")
        assert sorted(p.jobs()) == [("ai", "pending", CT_UID), ("pacs", "pending", CT_UID)]
    said = [r.getMessage().split(": ", 1)[1] for r in caplog.records
            if ".dcm: " in r.getMessage()]
    assert said == ["accepted for pacs",
                    "accepted for ai (identical content already queued for pacs)",
                    "identical content already queued for pacs, ai"], said


def test_an_unrouted_file_that_cannot_be_deleted_is_said_to_be_left_not_deleted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``unrouted: delete``, a file whose folder does not let the daemon remove it
    (another account's subfolder) is left in place: one warning says so, none says it was
    deleted or taken, and it is remembered, so the scans pass over it."""
    ct = tmp_path / "in" / "ct.dcm"
    real_unlink = os.unlink

    # root may remove anything: refuse as another account's folder would
    def unlink(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(path) == str(ct):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr("forwarder.sources.os.unlink", unlink)
    caplog.set_level(logging.INFO)
    assert _an_unrouted_ct_left_in_place(tmp_path, "", caplog) == ct
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "ct.dcm" in r.getMessage()]
    assert said == [("WARNING", f"{ct}: no route matched (unrouted: delete), but the source "
                     "cannot be removed (Permission denied); it is left in place and will "
                     "not be looked at again while unchanged")], said
    assert ct.read_bytes() == CT.read_bytes()


@pytest.mark.parametrize("meanwhile", ["replaced", "removed"])
def test_an_unrouted_file_replaced_or_removed_before_its_deletion_is_not_said_deleted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        meanwhile: str) -> None:
    """Under ``unrouted: delete``, a file no route takes is replaced by a new file of the
    same name, or removed by another program, after intake read it and before it is
    deleted. The new file is not deleted: it is taken as new work. The log says what
    happened, not "deleted"."""
    from forwarder import sources

    routes = "  - match: {Modality: MR}\n    to: [pacs]\n"
    cfg = make_config(tmp_path, routes=routes, extra="unrouted: delete\n")
    ct = tmp_path / "in" / "ct.dcm"
    mr = Path(get_testdata_file("MR_small.dcm"))
    mr_uid = str(dcmread(mr, stop_before_pixels=True).SOPInstanceUID)
    real_same_file = sources.same_file
    happened: list[str] = []

    def same_file(path: str, st: os.stat_result) -> bool:
        if path == str(ct) and not happened:  # between intake's read and the deletion
            happened.append(meanwhile)
            if meanwhile == "replaced":
                shutil.copy(mr, tmp_path / "mr.tmp")
                os.replace(tmp_path / "mr.tmp", ct)
            else:
                os.unlink(ct)
        return real_same_file(path, st)

    monkeypatch.setattr("forwarder.sources.same_file", same_file)
    caplog.set_level(logging.INFO, logger="forwarder.intake")
    with Pipeline(cfg) as p:
        shutil.copy(CT, tmp_path / "ct.tmp")
        os.rename(tmp_path / "ct.tmp", ct)
        wait_for(lambda: "ct.dcm: no route matched" in caplog.text, 10, "the CT's verdict")
        if meanwhile == "replaced":
            wait_for(lambda: p.jobs() == [("pacs", "pending", mr_uid)], 10, "the MR taken")
            assert not ct.exists()  # taken into the spool, then removed as any source
        else:
            assert p.jobs() == [] and not ct.exists()
    assert happened == [meanwhile]
    said = [r.getMessage() for r in caplog.records if "no route matched" in r.getMessage()]
    assert said == [f"{ct}: no route matched, not deleted (unrouted: delete): " + (
        "a new file of the same name replaced it, and is looked at as new work"
        if meanwhile == "replaced" else "another program removed it first")], said


def _reloaded(tmp_path: Path, name: str, match: str, unrouted: str,
              folder: str = "in") -> config.Config:
    """The configuration a reload brings: the watch folder ``folder`` named ``name``, one
    route (``match``) to pacs."""
    (tmp_path / folder).mkdir(exist_ok=True)
    return config.parse(
        f"spool: {tmp_path / 'spool'}\nunrouted: {unrouted}\n"
        f"watch:\n  - {{name: {name}, path: {tmp_path / folder}, min_age: 300ms}}\n"
        "destinations:\n  pacs: {host: 127.0.0.1, port: 1}\n"
        f"routes:\n  - match: {match}\n    to: [pacs]\n", "reloaded.yaml")


def _found(cfg: config.Config, tmp_path: Path) -> Candidate:
    """A CT in ``in``, as the watcher of ``cfg``'s folder offers it, settled."""
    from forwarder import writers
    from forwarder.settle import Signature

    writers.ignore_lease_breaks()  # as the daemon does: intake may ask for leases
    ct = tmp_path / "in" / "ct.dcm"
    shutil.copy(CT, ct)
    os.utime(ct, (ct.stat().st_mtime - 60, ct.stat().st_mtime - 60))
    return Candidate(cfg.watch[0], str(ct), "ct.dcm", Signature.of(ct.stat()), True)


@pytest.mark.parametrize("unrouted", ["delete", "quarantine"])
def test_a_file_found_before_a_reload_renamed_its_folder_is_taken_by_the_new_watcher(
        tmp_path: Path, unrouted: str) -> None:
    """A reload renames the watch folder, its route following the new name, while a
    file the old watcher found waits in intake's queue. It was routed by the old name
    against the new routes: quarantined, or deleted under ``unrouted: delete``. It is
    left in place for the folder's new watcher, which takes it under the new name."""
    import queue

    from forwarder.candidate import Finished

    old = _reloaded(tmp_path, "modality", "{watch: modality}", unrouted)
    found = _found(old, tmp_path)
    outbox: queue.SimpleQueue[Finished] = queue.SimpleQueue()
    cand = dataclasses.replace(found, outbox=outbox)
    new = _reloaded(tmp_path, "ct-room", "{watch: ct-room}", unrouted)
    with Spool(new.spool) as spool:
        assert Intake(new, spool).process([cand]) == 0
        assert spool.counts() == {} and spool.quarantined() == []
    assert Path(cand.path).read_bytes() == CT.read_bytes()
    verdict = outbox.get_nowait()  # to the old watcher, stopped: not offered again by it
    assert (verdict.cand, verdict.left_in_place) == (cand, True)
    with Pipeline(new) as p:
        wait_for(lambda: p.jobs() == [("pacs", "pending", CT_UID)], 10, "the CT taken")
        assert [o["source"] for o in p.objects()] == [cand.path]
        assert p.spool.db.execute("SELECT watch FROM objects").fetchall() == [("ct-room",)]
    assert not Path(cand.path).exists()


def test_a_file_found_before_a_reload_that_removed_its_folder_stays_in_place(
        tmp_path: Path) -> None:
    """A reload removes the watch folder while a file its watcher found waits: the file
    is not taken (its folder is no longer watched) and stays as it is."""
    old = _reloaded(tmp_path, "modality", "{watch: modality}", "delete")
    cand = _found(old, tmp_path)
    new = _reloaded(tmp_path, "other", "{watch: other}", "delete", folder="other")
    with Spool(new.spool) as spool:
        assert Intake(new, spool).process([cand]) == 0
        assert spool.counts() == {} and spool.quarantined() == []
    assert Path(cand.path).read_bytes() == CT.read_bytes()


def test_a_file_left_to_the_new_watchers_no_longer_holds_a_full_spools_pause(
        tmp_path: Path) -> None:
    """The spool was full and put the file back to wait for room; then a reload removed
    its folder. Intake leaves the file to the new watchers, and it no longer counts as
    waiting for room: else intake's pause, which ends once no file waits, never ended."""
    old = _reloaded(tmp_path, "modality", "{watch: modality}", "delete")
    cand = _found(old, tmp_path)
    new = _reloaded(tmp_path, "other", "{watch: other}", "quarantine", folder="other")
    with Spool(new.spool) as spool:
        intake = Intake(new, spool)
        intake._no_room.add(cand.path)  # as the full spool's refusal of its batch left it
        assert intake.process([cand]) == 0
        assert intake._no_room == set()


def test_a_reload_while_a_file_is_probed_routes_it_by_one_configuration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload lands between a file's probe and its routing: the old routes match on
    Modality, the new ones on Manufacturer, and both send the CT to pacs. The probe read
    what the old routes need, the new routes were asked about what it had not read: no
    route matched and the file was deleted. The whole batch is now taken under one."""
    from forwarder import intake as intake_module

    old = _reloaded(tmp_path, "modality", "{Modality: CT}", "delete")
    new = _reloaded(tmp_path, "modality", "{Manufacturer: GE MEDICAL SYSTEMS}", "delete")
    cand = _found(old, tmp_path)
    real_probe = intake_module.probe
    with Spool(old.spool) as spool:
        intake = Intake(old, spool)

        def probe(fp, keywords):  # noqa: ANN001, ANN202
            found = real_probe(fp, keywords)
            intake.set_config(new)  # SIGHUP, on the daemon's main thread
            return found

        monkeypatch.setattr(intake_module, "probe", probe)
        assert intake.process([cand]) == 1
        assert [j[:2] for j in spool.db.execute(
            "SELECT destination, state FROM jobs").fetchall()] == [("pacs", "pending")]
        assert intake.cfg is new  # the next batch takes the new routes


def test_watch_folder_missing_is_reported_and_taken_when_it_appears(tmp_path: Path) -> None:
    w = Watch(name="gone", path=str(tmp_path / "nope"), min_age=0.1, rescan=0.5)
    taken: list[str] = []
    with Watcher(w, lambda c: taken.append(c.relpath) is None) as watcher:
        wait_for(lambda: watcher.unavailable is not None, 10, "the folder reported unavailable")
        assert "does not exist" in watcher.unavailable
        (tmp_path / "nope").mkdir()
        shutil.copy(CT, tmp_path / "nope" / "ct.dcm")
        wait_for(lambda: taken == ["ct.dcm"], 10, "the file taken once the folder exists")
        assert watcher.unavailable is None


def test_a_batch_of_large_files_is_bounded_by_bytes(tmp_path: Path) -> None:
    """A burst of large files is committed a few at a time, so the first of them is sent
    without waiting for a hundred others to be made durable; a batch never passes the
    bound, except a file larger than it, which is a batch alone; small files still go a hundred at a time; event-found files
    go before scan-found ones."""
    import threading

    from forwarder.batches import Batches
    from forwarder.candidate import Candidate
    from forwarder.settle import Signature

    cfg = make_config(tmp_path)
    queue = Batches(batch_bytes=1_000_000, gather=0)
    stop = threading.Event()

    def offer(n: int, size: int, fresh: bool = True) -> None:
        for i in range(n):
            sig = Signature(size, 0, 0, i)
            assert queue.offer(Candidate(cfg.watch[0], f"/x/{size}-{i}", "x", sig, fresh))

    offer(7, 300_000)
    # a fresh queue starts at one file and doubles; then the bytes bound: 0.9 MB, the rest
    assert [len(queue.take(stop)) for _ in range(4)] == [1, 2, 3, 1]
    offer(1, 5_000_000)
    offer(2, 300_000)
    assert [len(queue.take(stop)) for _ in range(2)] == [1, 2]
    offer(1, 300_000)
    offer(1, 5_000_000)  # the small file ahead is not held back by the large one's flush
    assert [[c.sig.size for c in queue.take(stop)] for _ in range(2)] == [[300_000],
                                                                          [5_000_000]]
    offer(250, 1_000)
    assert [len(queue.take(stop)) for _ in range(3)] == [100, 100, 50]
    offer(2, 1_000, fresh=False)
    offer(1, 2_000)
    assert [c.sig.size for c in queue.take(stop)] == [2_000, 1_000, 1_000]
    assert len(queue) == 0
    stop.set()
    assert queue.take(stop) == []


def test_a_burst_starts_with_one_file_and_batches_double(tmp_path: Path) -> None:
    """The first file of a burst is committed alone, without waiting for the rest of the
    burst to gather or to be made durable; the batches after it double up to the bound;
    once the queue has run dry, the next burst starts at one file again."""
    import threading

    from forwarder.batches import Batches
    from forwarder.candidate import Candidate
    from forwarder.settle import Signature

    cfg = make_config(tmp_path)
    queue = Batches(batch=20, gather=120.0)  # a gathering take would outlast every deadline
    stop = threading.Event()
    names = iter(range(1000))

    def offer(n: int) -> None:
        for _ in range(n):
            i = next(names)
            assert queue.offer(Candidate(cfg.watch[0], f"/x/{i}", str(i),
                                         Signature(1, 0, 0, i), True))

    def take_within(seconds: float) -> list[Candidate]:
        got: list[list[Candidate]] = []
        t = threading.Thread(target=lambda: got.append(queue.take(stop)), daemon=True)
        t.start()
        t.join(seconds)
        if t.is_alive():
            stop.set()
            t.join(10)
            stop.clear()
            raise AssertionError(f"take() still gathering after {seconds}s")
        return got[0]

    offer(1)
    assert [c.relpath for c in take_within(10)] == ["0"]
    offer(2 + 4 + 8 + 16 + 20)
    assert [len(take_within(10)) for _ in range(5)] == [2, 4, 8, 16, 20]
    stop.set()
    assert queue.take(stop) == []  # dry: the next burst starts over
    stop.clear()
    offer(3)
    assert [c.relpath for c in take_within(10)] == ["51"]
    assert [c.relpath for c in take_within(10)] == ["52", "53"]


@contextlib.contextmanager
def a_refusing_spool(tmp_path: Path, count: int) -> Iterator[FullSpool]:
    """A running pipeline whose spool refuses every batch while ``full`` is set (intake
    tries again every 0.1 s), each file's offers from its watcher counted, and ``count``
    new files renamed into its watch folder."""
    from forwarder.errors import SpoolFull

    cfg = make_config(tmp_path, watch="min_age: 100ms")
    p = Pipeline(cfg)
    p.intake.full_pause = 0.1
    spool = FullSpool(p, collections.Counter(), threading.Event(), [], {})

    def deliver(cand):  # noqa: ANN001, ANN202 - the watchers' deliver, counted
        taken = p.intake.offer(cand)
        if taken:
            spool.offers[cand.relpath] += 1
        return taken

    for w in p.watchers:
        w.deliver = deliver
    spool.full.set()
    accept = p.spool.accept

    def full_spool(incoming):  # noqa: ANN001, ANN202
        if spool.full.is_set():
            spool.refused.append(len(incoming))
            raise SpoolFull(f"no room (test, try {len(spool.refused)})")
        return accept(incoming)

    p.spool.accept = full_spool  # type: ignore[method-assign]
    files = unique_copies(tmp_path / "src", count)
    with p:
        for uid, path in files.items():
            os.rename(path, tmp_path / "in" / path.name)
            spool.files[uid] = tmp_path / "in" / path.name
        yield spool


@dataclasses.dataclass
class FullSpool:
    p: Pipeline
    offers: collections.Counter[str]
    full: threading.Event
    refused: list[int]
    files: dict[str, Path]  # SOP Instance UID: the file in the watch folder


def test_a_full_spool_keeps_its_batch_and_the_watcher_offers_each_file_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Intake keeps in its own queue the batch the full spool refused, so the watcher
    does not offer those files a second time while intake is paused; once there is room
    every file is taken, once. With nothing queued to send, the pause says that sending
    will not make room."""
    with caplog.at_level(logging.INFO, logger="forwarder.intake"), \
            a_refusing_spool(tmp_path, 3) as s:
        wait_for(lambda: len(s.refused) >= 8, 20, "intake paused, trying again")
        assert "intake paused, files stay in the watch folders; nothing is queued to send, " \
            "so sending frees no space" in caplog.text
        # said once, at the first try; what status shows is the latest try's reason
        assert caplog.text.count("intake paused") == 1 and "(test, try 1)" in caplog.text
        def latest() -> int:  # the try the pause reason comes from
            now = re.search(r"\(test, try (\d+)\)", s.p.intake.paused_full or "")
            return int(now.group(1)) if now else 0
        wait_for(lambda: latest() >= 8, 20, "the reason of a later try")
        s.full.clear()
        wait_for(lambda: len(s.p.objects()) == 3, 20, "every file taken once there is room")
        assert sorted(o["sop_instance"] for o in s.p.objects()) == sorted(s.files)
    assert s.offers == {path.name: 1 for path in s.files.values()}


def test_a_file_touched_while_the_spool_is_full_is_offered_once_more_not_at_every_try(
        tmp_path: Path) -> None:
    """A file changed while its batch waits for room gets its verdict (changed: settle
    again) once; only the changed file is offered again, so the refused tries that
    follow do not add offers of it to intake's queue; once there is room each file is
    taken once."""
    with a_refusing_spool(tmp_path, 3) as s:
        wait_for(lambda: len(s.refused) >= 2, 20, "intake paused, trying again")
        touched = sorted(s.files.values())[0]
        later = touched.stat().st_mtime_ns + 5_000_000_000
        os.utime(touched, ns=(later, later))
        wait_for(lambda: s.offers[touched.name] == 2, 20, "the changed file offered again")
        tries = len(s.refused)
        wait_for(lambda: len(s.refused) >= tries + 8, 20, "intake still paused, trying again")
        s.full.clear()
        wait_for(lambda: len(s.p.objects()) == 3, 20, "every file taken once there is room")
        assert sorted(o["sop_instance"] for o in s.p.objects()) == sorted(s.files)
    assert s.offers == {path.name: 2 if path == touched else 1 for path in s.files.values()}


def test_a_file_whose_quarantine_meets_a_full_spool_waits_with_its_batch(
        tmp_path: Path) -> None:
    """In a batch the spool refused for one file's sake (an error of that file), the
    file is taken alone and quarantined; when the quarantine itself finds the spool
    full, that file waits in intake's queue like the rest of a refused batch: intake
    goes on, every descriptor is closed once, and once there is room the file is
    quarantined and the others taken, each once."""
    from forwarder.errors import SpoolFull

    with a_refusing_spool(tmp_path, 4) as s:
        bad = sorted(s.files.values())[0]
        accept, quarantine = s.p.spool.accept, s.p.spool.quarantine
        quarantine_full = threading.Event()
        quarantine_full.set()
        tries: list[str] = []

        def accept_but_the_bad_one(incoming):  # noqa: ANN001, ANN202
            if any(i.source == str(bad) for i in incoming):
                raise RuntimeError("a bug about this one file (test)")
            return accept(incoming)

        def quarantine_when_room(fd, source, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if quarantine_full.is_set():
                tries.append(source)
                raise SpoolFull("no room for the quarantine (test)")
            return quarantine(fd, source, *args, **kwargs)

        s.p.spool.accept = accept_but_the_bad_one  # type: ignore[method-assign]
        s.p.spool.quarantine = quarantine_when_room  # type: ignore[method-assign]
        s.full.clear()  # the spool takes batches now, all but the bad file's
        wait_for(lambda: len(tries) >= 3, 20, "the quarantine refused, tried again")
        quarantine_full.clear()
        wait_for(lambda: len(s.p.objects()) == 3 and s.p.intake.quarantined == 1, 20,
                 "the others taken and the bad one quarantined")
        assert sorted(o["sop_instance"] for o in s.p.objects()) == \
            sorted(uid for uid, path in s.files.items() if path != bad)
        assert s.p.intake.alive and not s.p.fatal
    assert s.offers == {path.name: 1 for path in s.files.values()}


def test_a_requeued_batch_is_taken_first_and_a_closed_queue_hands_back_the_rest(
        tmp_path: Path) -> None:
    """What the spool could not hold goes back to the front (halving) or to the back
    (paused): nothing is dropped, and at stop every waiting file is handed back to its
    watcher, further offers are refused, and what intake gives back later is handed back
    to its watcher at once."""
    import threading

    from forwarder.batches import Batches
    from forwarder.candidate import Candidate
    from forwarder.settle import Signature

    cfg = make_config(tmp_path)
    queue = Batches(batch=3, gather=0)
    stop = threading.Event()

    def cand(name: str, fresh: bool = True) -> Candidate:
        return Candidate(cfg.watch[0], f"/x/{name}", name, Signature(1, 0, 0, 0), fresh)

    for name in "abcdef":
        assert queue.offer(cand(name))
    assert [c.relpath for c in queue.take(stop)] == ["a"]  # a burst starts at one file
    second = queue.take(stop)
    assert [c.relpath for c in second] == ["b", "c"]
    queue.requeue(second[1:])
    assert [c.relpath for c in queue.take(stop)] == ["c", "d", "e"]
    queue.defer([cand("z", fresh=False)])
    assert queue.offer(cand("y", fresh=False))
    assert [c.relpath for c in queue.close()] == ["f", "z", "y"]
    assert not queue.offer(cand("late"))
    # a batch still in intake's hands at close (stop's join ran out) is handed back too
    import queue as queue_mod

    from forwarder.candidate import Finished

    outbox: queue_mod.SimpleQueue[Finished] = queue_mod.SimpleQueue()
    late = [Candidate(cfg.watch[0], f"/x/{n}", n, Signature(1, 0, 0, 0), True, outbox)
            for n in ("p", "q", "r")]
    queue.requeue(late[:2])
    queue.defer(late[2:])
    verdicts = [outbox.get(timeout=10) for _ in late]
    assert [(v.cand.relpath, v.left_in_place) for v in verdicts] == [
        ("p", False), ("q", False), ("r", False)]
    assert len(queue) == 0
