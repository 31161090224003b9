"""The durable spool: accept, claim, outcomes, recovery, faults."""

from __future__ import annotations

import gc
import json
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from forwarder import retry
from forwarder.cli import main
from forwarder.errors import SpoolError, SpoolFull
from forwarder.spool import Incoming, Spool, filesystem_type
from tests.spoolutil import accept_file, fake_probe

POLICY = retry.Backoff(initial=10, max=100, multiplier=2, jitter=0.2)


def make_input(folder: Path, n: int, size: int = 1000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"in{n}.dcm"
    p.write_bytes(os.urandom(size))
    return p


def test_accept_claim_done_deletes_object_after_every_destination(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    src = make_input(tmp_path / "in", 1)
    oid = accept_file(spool, src, ("pacs", "ai"), now=100.0)
    [obj] = list(spool.objects.iterdir())
    assert obj.read_bytes() == src.read_bytes() and oid > 0
    [job] = spool.claim("pacs", 10, now=100.0)
    assert job.path == obj and spool.claim("pacs", 10, now=100.0) == []  # claimed once only
    spool.done([job.id], now=101.0)
    assert obj.exists()  # the ai job is still pending
    [job2] = spool.claim("ai", 10, now=101.0)
    spool.done([job2.id], now=102.0)
    assert not obj.exists() and spool.counts() == {}  # rows go with the object
    st = spool.status(["pacs", "ai"], now=103.0)
    assert st["destinations"]["pacs"]["done"] == 1 and st["destinations"]["ai"]["pending"] == 0


def test_identical_content_pending_is_not_queued_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    a = make_input(tmp_path / "in", 1)
    b = tmp_path / "in" / "copy.dcm"
    shutil.copy(a, b)
    assert accept_file(spool, a, ("pacs",)) > 0
    assert accept_file(spool, b, ("pacs",)) == 0
    assert spool.counts() == {"pending": 1} and len(list(spool.objects.iterdir())) == 1
    assert accept_file(spool, b, ("pacs", "ai")) > 0  # ai had no copy yet
    assert spool.counts() == {"pending": 2}


def test_retry_fail_requeue_expire(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", rand=random.Random(1))
    for n in range(3):
        accept_file(spool, make_input(tmp_path / "in", n), ("pacs",), n, now=0.0)
    a, b, c = spool.claim("pacs", 10, now=0.0)
    due = spool.retry(a.id, "A700 out of resources", POLICY, now=0.0)
    assert 8 <= due <= 12 and spool.claim("pacs", 10, now=5.0) == []
    spool.fail(b.id, "A900 dataset does not match SOP class", now=0.0)
    spool.release([c.id], now=0.0)
    [again_c] = spool.claim("pacs", 10, now=1.0)
    assert again_c.id == c.id and again_c.attempts == 0
    [again_a] = spool.claim("pacs", 10, now=due)
    assert again_a.attempts == 1
    assert [f["reason"] for f in spool.failed_jobs()] == ["A900 dataset does not match SOP class"]
    assert b.path.exists()  # failed: the object is kept
    assert spool.requeue_failed(["pacs"], now=50.0) == 1
    # requeued by an operator, b has its max_age again, counted from the requeue
    assert spool.expire("pacs", max_age=10.0, now=55.0) == 0
    assert spool.expire("pacs", max_age=10.0, now=61.0) == 1
    assert spool.failed_jobs()[0]["reason"] == "expired" and b.path.exists()
    assert spool.requeue_failed(["pacs"], now=70.0) == 1  # and again after it expired
    assert spool.expire("pacs", max_age=10.0, now=75.0) == 0
    assert [j.id for j in spool.claim("pacs", 10, now=75.0)] == [b.id]


def test_a_spool_too_full_to_take_a_file_is_seen_from_its_free_space(tmp_path: Path) -> None:
    """For ``status`` when the daemon could not even write that intake paused."""
    from forwarder import watchstate

    vfs = os.statvfs(tmp_path)
    assert watchstate.full(tmp_path, 0) is None
    why = watchstate.full(tmp_path, vfs.f_bavail * vfs.f_frsize + (1 << 30))
    assert why is not None and why.startswith("spool full: ") and "in reserve" in why


def test_oldest_pending_counts_jobs_being_sent(tmp_path: Path) -> None:
    """A peer that takes associations and never answers keeps every job claimed: the age
    of what is not delivered yet must still grow for monitoring to see it."""
    spool = Spool(tmp_path / "spool")
    accept_file(spool, make_input(tmp_path / "in", 1), ("pacs",), 1, now=0.0)
    assert len(spool.claim("pacs", 10, now=1.0)) == 1
    pacs = spool.status(["pacs"], now=30.0)["destinations"]["pacs"]
    assert (pacs["pending"], pacs["sending"], pacs["oldest_pending_s"]) == (0, 1, 30.0)


def test_backoff_schedule_is_capped_jittered_and_clock_safe() -> None:
    assert retry.delay(1, POLICY, 0.5) == 10 and retry.delay(3, POLICY, 0.5) == 40
    assert retry.delay(20, POLICY, 0.5) == 100
    assert retry.delay(1, POLICY, 0.0) == pytest.approx(8) and retry.delay(1, POLICY, 0.999) < 12
    # the clock stepped back a year: the job is never further away than the cap
    assert retry.clamp_future(1e9, 1e9 - 3e7, POLICY) == pytest.approx(1e9 - 3e7 + 120)


def test_recover_requeues_claims_and_reports_orphans(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for n in range(3):
        accept_file(spool, make_input(tmp_path / "in", n), ("pacs",), n, now=0.0)
    jobs = spool.claim("pacs", 2, now=0.0)
    (spool.tmp / "half-written").write_bytes(b"x")
    (spool.objects / "stray").write_bytes(b"no row for me")
    source = make_input(tmp_path / "still-there", 9)
    os.link(source, spool.objects / "linked")  # killed between link and commit
    missing = jobs[0].path
    missing.unlink()
    spool.close()
    spool = Spool(tmp_path / "spool")
    report = spool.recover(POLICY, now=1.0)
    assert report["requeued"] == 2 and report["tmp_removed"] == 1
    assert report["orphan_objects"] == 1 and report["missing_objects"] == 1
    assert report["orphan_links_removed"] == 1 and not (spool.objects / "linked").exists()
    assert source.exists() and source.stat().st_nlink == 1  # the source is taken again
    assert spool.counts() == {"pending": 2, "failed": 1}
    q = spool.quarantined()
    assert len(q) == 1 and "orphan object" in q[0]["reason"]
    assert Path(q[0]["file"]).read_bytes() == b"no row for me"
    assert "object file missing" in spool.failed_jobs()[0]["reason"]


def test_spool_on_network_filesystem_is_refused(tmp_path: Path, monkeypatch) -> None:
    assert filesystem_type(tmp_path) not in ("", "nfs")
    monkeypatch.setattr("forwarder.spool.filesystem_type", lambda p: "nfs4")
    with pytest.raises(SpoolError, match="is on nfs4: SQLite's WAL needs a local disk") as err:
        Spool(tmp_path / "spool")
    assert err.value.exit_code == 78  # no restart fixes it


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root (CI runs as root)")
def test_the_file_system_seen_at_a_path_is_the_last_mounted_there(tmp_path: Path) -> None:
    """Two mounts on one path (an automount over its autofs trigger, a mount over
    another), or one over a parent of another: the file system asked about is the one a
    file made at the path would be on."""
    import subprocess

    under = tmp_path / "mnt"
    under.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(under)], check=True)
    try:
        subprocess.run(["mount", "-t", "ramfs", "ramfs", str(under)], check=True)
        try:
            assert filesystem_type(under / "spool") == "ramfs"
        finally:
            subprocess.run(["umount", str(under)], check=True)
        assert filesystem_type(under / "spool") == "tmpfs"
        # a mount over a parent hides one below it: its longer mount point is not where
        # the spool would be made
        (under / "inner").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(under / "inner")],
                       check=True)
        subprocess.run(["mount", "-t", "ramfs", "ramfs", str(under)], check=True)
        assert filesystem_type(under / "inner" / "spool") == "ramfs"
    finally:
        for _ in range(3):
            subprocess.run(["umount", "-l", str(under)], check=False, capture_output=True)


def test_status_retry_and_failed_commands(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "f.yaml"
    cfg.write_text(f"spool: {tmp_path / 'spool'}\ndestinations:\n  pacs: {{host: h, port: 1}}\n"
                   "routes:\n  - to: [pacs]\n")
    spool = Spool(tmp_path / "spool")
    for n in range(2):
        accept_file(spool, make_input(tmp_path / "in", n), ("pacs",), n)
    job = spool.claim("pacs", 1)[0]
    long = "0122 SOP class not supported" + " by this peer, which says so at length" * 3
    spool.fail(job.id, long)
    spool.quarantine(None, "/in/x.pdf", "not DICOM")
    spool.close()
    assert main(["status", "-c", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    pacs = report["destinations"]["pacs"]
    assert (pacs["pending"], pacs["sending"], pacs["done"], pacs["failed"]) == (1, 0, 0, 1)
    assert pacs["state"] == "ok" and pacs["last_error"] == long
    assert isinstance(pacs["oldest_pending_s"], float) and report["quarantined"] == 1
    assert main(["status", "-c", str(cfg)]) == 0
    table = capsys.readouterr().out
    assert "pacs" in table and "quarantined: 1" in table
    assert f" {long[:57]}...\n" in table  # cut, and said to be: whole in --json and failed
    assert main(["failed", "-c", str(cfg)]) == 0
    assert long in capsys.readouterr().out
    assert main(["quarantine", "-c", str(cfg)]) == 0
    assert "/in/x.pdf: not DICOM" in capsys.readouterr().out
    assert main(["retry", "-c", str(cfg)]) == 2
    assert main(["retry", "-c", str(cfg), "--all-failed"]) == 0
    assert "requeued 1" in capsys.readouterr().out
    with Spool(tmp_path / "spool") as s:
        assert s.counts() == {"pending": 2}


def test_retry_all_failed_leaves_a_removed_destinations_jobs_and_says_how_to_drop_them(
        tmp_path: Path, capsys) -> None:
    """``retry --all-failed`` requeued the failed jobs of a destination the file no
    longer has: nothing would send them, and ``status`` showed them pending, ever older.
    It requeues the configured destinations' jobs and names the others with the purge
    that deletes them."""
    cfg = tmp_path / "f.yaml"
    cfg.write_text(f"spool: {tmp_path / 'spool'}\ndestinations:\n  pacs: {{host: h, port: 1}}\n"
                   "routes:\n  - to: [pacs]\n")
    with Spool(tmp_path / "spool") as spool:
        for n in range(3):
            accept_file(spool, make_input(tmp_path / "in", n), ("pacs", "old"), n)
        for dest, k in (("pacs", 1), ("old", 2)):
            for job in spool.claim(dest, k):
                spool.fail(job.id, "0122 SOP class not supported")
    assert main(["retry", "-c", str(cfg), "--all-failed"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "requeued 1 failed job(s)",
        "left 2 failed job(s) of old, a destination the configuration no longer has: "
        "'dicom-forwarder purge --removed-destination old' deletes them"]
    with Spool(tmp_path / "spool") as spool:
        assert spool.status(())["destinations"]["old"]["failed"] == 2
        assert spool.status(())["destinations"]["pacs"]["pending"] == 3


def test_a_configuration_with_errors_still_shows_the_spool_it_names(tmp_path: Path,
                                                                    capsys) -> None:
    spool = Spool(tmp_path / "spool")
    for n in range(3):
        accept_file(spool, make_input(tmp_path / "in", n), ("pacs",), n)
    spool.fail(spool.claim("pacs", 1)[0].id, "0122 SOP class not supported")
    spool.quarantine(None, "/in/x.pdf", "not DICOM")
    spool.close()
    cfg = tmp_path / "f.yaml"  # being mended: a misspelt key on line 4
    cfg.write_text(f"spool: {tmp_path / 'spool'}\ndestinations:\n  pacs:\n    hots: h\n"
                   "    port: 1\nroutes:\n  - to: [pacs]\n")
    assert main(["status", "-c", str(cfg), "--json"]) == 78
    out, err = capsys.readouterr()
    pacs = json.loads(out)["destinations"]["pacs"]
    assert (pacs["pending"], pacs["failed"]) == (2, 1)
    assert f"{cfg}:4: destinations.pacs.hots" in err
    assert f"shown is the spool it names, {tmp_path / 'spool'}" in err
    assert main(["status", "-c", str(cfg)]) == 78
    out, err = capsys.readouterr()
    assert re.search(r"^pacs +ok +2 +0 +0 +1 ", out, re.M) and "quarantined: 1" in out
    assert f"{cfg}:4:" in err
    assert main(["failed", "-c", str(cfg)]) == 78
    assert "0122 SOP class not supported" in capsys.readouterr().out
    assert main(["quarantine", "-c", str(cfg), "--json"]) == 78
    assert json.loads(capsys.readouterr().out)[0]["source"] == "/in/x.pdf"
    assert main(["retry", "-c", str(cfg), "--all-failed"]) == 78  # changes nothing
    assert "requeued" not in capsys.readouterr().out
    # where the file does not say which spool, nothing is guessed: not the default where
    # the key is misspelt, not one of two
    good = f"spool: {tmp_path / 'spool'}\n"
    for text in (good + "destinations: [\n", "spool: [a, b]\n", "spoool: /x\n",
                 good + good, f"spool: {tmp_path / 'typo'}\nroutes: 1\n"):  # no spool there
        cfg.write_text(text)
        assert main(["status", "-c", str(cfg), "--json"]) == 78
        out, err = capsys.readouterr()
        assert out == "" and f"{cfg}:" in err and "shown is" not in err, text
    # a damaged index beside a file with errors: both are said
    (tmp_path / "spool" / "index.sqlite").write_bytes(os.urandom(8192))
    cfg.write_text(good + "routes: 1\n")
    assert main(["status", "-c", str(cfg)]) == 78
    out, err = capsys.readouterr()
    assert out == "" and f"{cfg}:2: routes:" in err and "is damaged" in err, err


def test_enospc_leaves_source_untouched_and_nothing_half_written(tmp_path: Path,
                                                                 monkeypatch) -> None:
    big = make_input(tmp_path / "in", 1, size=3 * 1024 * 1024)
    before = big.read_bytes()
    root = tmp_path / "small"
    root.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)],
                                 capture_output=True).returncode == 0
    try:
        if not mounted:  # no root: inject the error the kernel would give
            real_write = os.write

            def full_write(fd: int, data) -> int:
                if len(data) > 1024 * 1024:
                    raise OSError(28, "No space left on device")
                return real_write(fd, data)
            monkeypatch.setattr(os, "write", full_write)
        spool = Spool(root / "spool")
        fd = os.open(big, os.O_RDONLY)
        try:
            with pytest.raises(SpoolFull, match="spool full"):
                spool.accept([Incoming(fd, str(big), fake_probe(1), ("pacs",), link_ok=False)])
        finally:
            os.close(fd)
        assert big.read_bytes() == before
        assert list(spool.objects.iterdir()) == [] and list(spool.tmp.iterdir()) == []
        assert spool.counts() == {}
        # once space is back, the same input is taken
        small = make_input(tmp_path / "in", 2, size=1000)
        assert accept_file(spool, small, ("pacs",)) > 0
        spool.close()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=True)


def test_a_newer_version_of_an_instance_waits_until_the_earlier_one_is_done(
        tmp_path: Path) -> None:
    """A corrected file (same SOP Instance UID, new content) dropped while the first is
    still queued reaches each destination after it, however the claims fall: a peer
    that overwrites keeps the correction. The other destination's order is its own."""
    spool = Spool(tmp_path / "spool")
    first = accept_file(spool, make_input(tmp_path / "in", 1), ("pacs", "ai"), n=7, now=100.0)
    other = accept_file(spool, make_input(tmp_path / "in", 2), ("pacs",), n=8, now=100.0)
    fixed = accept_file(spool, make_input(tmp_path / "in", 3), ("pacs",), n=7, now=101.0)
    jobs = spool.claim("pacs", 10, now=200.0)
    assert [j.object_id for j in jobs] == [first, other]
    assert spool.claim("pacs", 10, now=200.0) == []  # the correction waits for the first
    due = spool.retry(jobs[0].id, "peer out of resources", POLICY, now=200.0)
    assert spool.claim("pacs", 10, now=200.0) == []  # ... while the first waits its turn
    assert due is not None and due > 200.0
    assert spool.next_due("pacs") == due  # a worker waits for the first, not spins
    [again] = spool.claim("pacs", 10, now=1000.0)
    assert again.object_id == first
    spool.done([again.id], now=1000.0)
    [last] = spool.claim("pacs", 10, now=1000.0)
    assert last.object_id == fixed
    [ai] = spool.claim("ai", 10, now=1000.0)
    assert ai.object_id == first


def test_a_claim_takes_the_oldest_half_and_the_newest_half_each_in_order(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    ids = [accept_file(spool, make_input(tmp_path / "in", i), ("pacs",), n=i, now=100.0 + i)
           for i in range(8)]
    jobs = spool.claim("pacs", 4, now=200.0)
    assert [j.object_id for j in jobs] == [ids[0], ids[1], ids[6], ids[7]]


@pytest.mark.slow
def test_claim_uses_the_index_and_memory_does_not_grow_with_queue(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    n = 100_000
    with spool._tx() as db:
        db.executemany("INSERT INTO objects (id, name, sha256, sop_class, sop_instance, "
                       "transfer_syntax, meta_consistent) VALUES (?, ?, ?, '1.2', ?, '1.2.840.10008.1.2', 1)",
                       ((i, f"o{i}", f"h{i}", f"1.2.{i}") for i in range(1, n + 1)))
        db.executemany("INSERT INTO jobs (object_id, destination, state, next_attempt_at, "
                       "created_at) VALUES (?, 'pacs', 'pending', ?, 0)",
                       ((i, float(i)) for i in range(1, n + 1)))
    plan = " ".join(r[3] for r in spool.db.execute(
        "EXPLAIN QUERY PLAN SELECT j.id FROM jobs j JOIN objects o ON o.id = j.object_id "
        "WHERE j.destination = 'pacs' AND j.state = 'pending' AND j.next_attempt_at <= 5 "
        "ORDER BY j.next_attempt_at, j.id LIMIT 100"))
    assert "jobs_due" in plan and "SCAN j" not in plan
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    claimed = 0
    for _ in range(50):
        jobs = spool.claim("pacs", 100, now=float(n))
        claimed += len(jobs)
        spool.release([j.id for j in jobs])
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert claimed == 5000 and grown_kib < 20_000


class SpoolMachine(RuleBasedStateMachine):
    """Random accept/claim/done/retry/fail/recover: no job lost or duplicated, counts add up."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile
        self.dir = Path(tempfile.mkdtemp(prefix="spool-sm-"))
        self.spool = Spool(self.dir / "spool", rand=random.Random(0))
        self.n = 0
        self.now = 0.0
        self.model: dict[tuple[str, str], str] = {}  # (uid, dest) -> pending|sending|done|failed
        self.claimed: dict[int, tuple[str, str]] = {}

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(dests=st.sets(st.sampled_from(["a", "b"]), min_size=1))
    def accept(self, dests: set[str]) -> None:
        self.n += 1
        path = make_input(self.dir / "in", self.n, size=64)
        fd = os.open(path, os.O_RDONLY)
        try:
            self.spool.accept([Incoming(fd, str(path), fake_probe(self.n), tuple(sorted(dests)))],
                              now=self.now)
        finally:
            os.close(fd)
        for d in dests:
            self.model[(f"1.2.3.{self.n}", d)] = "pending"

    @rule(dest=st.sampled_from(["a", "b"]), limit=st.integers(1, 5))
    def claim(self, dest: str, limit: int) -> None:
        for job in self.spool.claim(dest, limit, now=self.now):
            key = (job.probe.sop_instance_uid, dest)
            assert self.model[key] == "pending", "a job was claimed twice or resurrected"
            self.model[key] = "sending"
            self.claimed[job.id] = key

    @precondition(lambda self: self.claimed)
    @rule(outcome=st.sampled_from(["done", "retry", "fail", "release"]), data=st.data())
    def finish(self, outcome: str, data) -> None:
        jid = data.draw(st.sampled_from(sorted(self.claimed)))
        key = self.claimed.pop(jid)
        if outcome == "done":
            self.spool.done([jid], now=self.now)
            self.model[key] = "done"
        elif outcome == "retry":
            self.spool.retry(jid, "A700", POLICY, now=self.now)
            self.model[key] = "pending"
        elif outcome == "fail":
            self.spool.fail(jid, "A900", now=self.now)
            self.model[key] = "failed"
        else:
            self.spool.release([jid], now=self.now)
            self.model[key] = "pending"

    @rule(seconds=st.floats(0, 200))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def crash_and_recover(self) -> None:
        self.spool.close()
        self.spool = Spool(self.dir / "spool", rand=random.Random(0))
        self.spool.recover(POLICY, now=self.now)
        for _jid, key in self.claimed.items():
            self.model[key] = "pending"
        self.claimed.clear()

    @invariant()
    def counts_add_up(self) -> None:
        expected: dict[str, int] = {}
        for state in self.model.values():
            if state != "done":
                expected[state] = expected.get(state, 0) + 1
        # done jobs stay as rows until every job of their object is done
        assert {k: v for k, v in self.spool.counts().items() if k != "done"} == expected
        done = {d: sum(1 for (u, dd), s in self.model.items() if dd == d and s == "done")
                for d in ("a", "b")}
        status = self.spool.status(["a", "b"], now=self.now)["destinations"]
        assert {d: status[d]["done"] for d in ("a", "b")} == done
        live = {u for (u, d), s in self.model.items() if s != "done"}
        assert len(list(self.spool.objects.iterdir())) == len(live)


TestSpoolMachine = SpoolMachine.TestCase
TestSpoolMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from forwarder.spool import Incoming, Spool
    from tests.spoolutil import fake_probe
    src, root, log = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    spool = Spool(root)
    spool.recover()
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for path in sorted(src.iterdir()):
        n = int(path.stem[2:])
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        spool.accept([Incoming(fd, str(path), fake_probe(n), ("pacs",))])
        os.close(fd)
        path.unlink()                       # only after the commit
        for job in spool.claim("pacs", 2):
            os.write(out, (job.probe.sop_instance_uid + "\\n").encode())
            os.fsync(out)                   # "delivered" before it is marked done
            spool.done([job.id])
    while jobs := spool.claim("pacs", 5):
        for job in jobs:
            os.write(out, (job.probe.sop_instance_uid + "\\n").encode())
            os.fsync(out)
        spool.done([j.id for j in jobs])
""")


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    rounds = int(os.environ.get("FWD_CRASH_ROUNDS", "50"))
    rng = random.Random(7)
    src, root, log = tmp_path / "src", tmp_path / "spool", tmp_path / "delivered.log"
    total = 40
    for n in range(total):
        make_input(src, n, size=2048)
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    for _ in range(rounds):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(root), str(log)],
                                env=env, cwd=repo)
        try:
            proc.wait(timeout=rng.uniform(0.15, 0.6))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        if not root.exists():  # killed before the spool was made: nothing taken yet
            assert len(list(src.iterdir())) == total
            continue
        db = sqlite3.connect(root / "index.sqlite")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        has_schema = db.execute("SELECT count(*) FROM sqlite_master WHERE name IN "
                                "('objects', 'jobs')").fetchone()[0] == 2
        in_spool = {r[0] for r in db.execute(  # killed before the schema existed: nothing
            "SELECT o.sop_instance FROM objects o JOIN jobs j ON j.object_id = o.id "
            "WHERE j.state != 'done'")} if has_schema else set()
        db.close()
        at_source = {f"1.2.3.{int(p.stem[2:])}" for p in src.iterdir()}
        delivered = set(log.read_text().split()) if log.exists() else set()
        for n in range(total):
            uid = f"1.2.3.{n}"
            assert uid in at_source | in_spool | delivered, f"{uid} was lost"
    # a last run without a kill finishes the work: everything delivered, spool empty
    subprocess.run([sys.executable, "-c", CHILD, str(src), str(root), str(log)], env=env,
                   cwd=repo, check=True, timeout=120)
    assert set(log.read_text().split()) == {f"1.2.3.{n}" for n in range(total)}
    with Spool(root) as spool:
        assert spool.counts() == {} and list(spool.objects.iterdir()) == []
    assert list(src.iterdir()) == []


def test_a_batch_costs_one_commit_and_every_file_lands(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    paths = [make_input(tmp_path / "in", n) for n in range(5)]
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:
        ids = spool.accept([Incoming(fd, str(p), fake_probe(n), ("pacs",))
                            for n, (fd, p) in enumerate(zip(fds, paths, strict=False))])
    finally:
        for fd in fds:
            os.close(fd)
    assert len({a.object_id for a in ids}) == 5 and spool.counts() == {"pending": 5}
    stored = sorted(p.read_bytes() for p in spool.objects.iterdir())
    assert stored == sorted(p.read_bytes() for p in paths)


def _accept_batch(spool: Spool, paths: list[Path]) -> list[int]:
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:
        done = spool.accept([Incoming(fd, str(p), fake_probe(n), ("pacs",))
                             for n, (fd, p) in enumerate(zip(fds, paths, strict=True))])
        return [a.object_id for a in done]
    finally:
        for fd in fds:
            os.close(fd)


def test_a_batch_flushes_each_of_its_objects_and_nothing_else(tmp_path: Path,
                                                              monkeypatch) -> None:
    """Every object of a batch is fdatasynced before the commit; a file of the same
    filesystem that is not in the batch is not (syncfs would have waited for it)."""
    spool = Spool(tmp_path / "spool")
    paths = [make_input(tmp_path / "in", n, size=20000) for n in range(4)]
    other = make_input(tmp_path / "elsewhere", 9)
    flushed: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (flushed.append(os.fstat(fd).st_ino),
                                                     real(fd))[1])
    ids = _accept_batch(spool, paths)
    assert len(set(ids)) == 4 and spool.counts() == {"pending": 4}
    objects = sorted(o.stat().st_ino for o in spool.objects.iterdir())
    assert sorted(flushed) == objects
    assert other.stat().st_ino not in flushed


@pytest.mark.parametrize("linked", [False, True], ids=["copied", "linked"])
def test_a_batch_is_flushed_through_the_descriptors_that_placed_it(tmp_path: Path, monkeypatch,
                                                                   linked: bool) -> None:
    """Each object is fdatasynced on the open file that wrote it (a copy) or was read to
    hash it (a link), never on the object reopened by name: a writeback error is reported
    to the descriptors open when it happened, so a reopened one could miss it once the
    modality's own fsync had seen it. Every descriptor is closed after the batch."""
    spool = Spool(tmp_path / "spool")
    paths = [make_input(tmp_path / "in", n, size=20000) for n in range(3)]
    reopened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: (
        reopened.append(str(path)) if str(path).startswith(f"{spool.objects}/") else None,
        real_open(path, *a, **k))[1])
    flushed: list[int] = []
    real_sync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (flushed.append(os.fstat(fd).st_ino),
                                                     real_sync(fd))[1])
    gc.collect()  # an earlier test's unreachable connection closing now is not this batch
    before = len(os.listdir("/proc/self/fd"))
    fds = [real_open(p, os.O_RDONLY) for p in paths]
    try:
        ids = spool.accept([Incoming(fd, str(p), fake_probe(n), ("pacs",), link_ok=linked,
                                     path=str(p) if linked else None)
                            for n, (fd, p) in enumerate(zip(fds, paths, strict=True))])
    finally:
        for fd in fds:
            os.close(fd)
    assert len({a.object_id for a in ids}) == 3 and spool.counts() == {"pending": 3}
    objects = sorted(o.stat().st_ino for o in spool.objects.iterdir())
    assert sorted(flushed) == objects
    assert (objects == sorted(p.stat().st_ino for p in paths)) is linked
    assert reopened == []
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_failed_flush_stops_the_spool_and_commits_nothing(tmp_path: Path,
                                                           monkeypatch) -> None:
    spool = Spool(tmp_path / "spool")
    paths = [make_input(tmp_path / "in", n) for n in range(3)]

    def eio(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", eio)
    with pytest.raises(SpoolError, match=r"fsync of .*objects/[0-9a-f]+ \(taken from .*/in/"
                       r"[^ ]+\) failed: Input/output error"):
        _accept_batch(spool, paths)
    assert spool.counts() == {} and list(spool.objects.iterdir()) == []
    assert all(p.exists() for p in paths)  # the sources are the caller's, untouched


def test_an_unusable_index_is_a_clear_spool_error(tmp_path: Path) -> None:
    (tmp_path / "spool" / "index.sqlite").mkdir(parents=True)  # not a database file
    with pytest.raises(SpoolError, match="cannot open the spool index .*index.sqlite"):
        Spool(tmp_path / "spool")


def test_the_full_spool_pause_says_what_will_make_room() -> None:
    """Queued jobs free space as they are sent; with none, the operator must act, and
    failed jobs are named as what could be retried or purged."""
    from forwarder.spool.room import what_frees_space

    assert what_frees_space({"pending": 3, "sending": 1, "failed": 2}) == \
        "sending the 4 queued jobs frees space as they are delivered"
    assert what_frees_space({"done": 9}) == ("nothing is queued to send, so sending frees no "
                                            "space: free some on the spool's file system")
    assert what_frees_space({"failed": 2}).endswith(
        "free some on the spool's file system, or retry or purge its 2 failed jobs")


def test_an_error_delivered_past_is_not_shown_as_the_last_one(tmp_path: Path) -> None:
    """The object stays while another destination still needs it, and with it the done
    job's row: its old error must not read as the destination's last error."""
    spool = Spool(tmp_path / "spool", rand=random.Random(1))
    accept_file(spool, make_input(tmp_path / "in", 1), ("pacs", "ai"), 1, now=0.0)
    [job] = spool.claim("pacs", 10, now=0.0)
    due = spool.retry(job.id, "A700 out of resources", POLICY, now=0.0)
    report = spool.status(["pacs", "ai"], now=1.0)["destinations"]
    assert report["pacs"]["last_error"] == "A700 out of resources"
    [job] = spool.claim("pacs", 10, now=due)
    spool.done([job.id], now=due)
    report = spool.status(["pacs", "ai"], now=due)["destinations"]
    assert report["pacs"]["last_error"] is None and report["ai"]["pending"] == 1


def test_a_killed_daemon_s_last_view_of_its_folders_is_not_believed(tmp_path: Path,
                                                                    capsys) -> None:
    """A daemon killed while intake was paused leaves watch-state.json behind; with no
    daemon running, status must not say a folder is paused, nor why."""
    from forwarder import watchstate

    cfg = tmp_path / "f.yaml"
    (tmp_path / "in").mkdir()
    cfg.write_text(f"spool: {tmp_path / 'spool'}\nwatch:\n  - {{name: w, path: {tmp_path / 'in'}}}\n"
                   "destinations:\n  pacs: {host: h, port: 1}\nroutes:\n  - to: [pacs]\n")
    Spool(tmp_path / "spool").close()
    watchstate.write(tmp_path / "spool", {}, {}, ("spool full: ...", 1.0), ["w"])
    assert (tmp_path / "spool" / watchstate.NAME).exists()
    assert main(["status", "-c", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["daemon"] is None and report["watch"]["w"] == {"state": "ok", "reason": None}


def test_the_watch_state_is_written_again_only_when_it_changes(tmp_path: Path) -> None:
    """A folder unavailable, intake paused and resumed: each change written once; the
    free space and job counts of a pause going on change nothing (``status`` says them
    as they are)."""
    from forwarder import watchstate

    state = watchstate.Publisher(tmp_path)
    written = []

    def update(unavailable: dict[str, str], paused: str | None) -> None:
        if state.update(unavailable, paused, ["a", "b"]):
            written.append(watchstate.read(tmp_path))

    update({}, None)
    update({"a": "gone"}, None)
    update({"a": "gone"}, None)
    update({"a": "gone"}, "spool full: 900 KiB free; 3 pending")
    update({"a": "gone"}, "spool full: 640 KiB free; 5 pending")
    update({}, "spool full: 512 KiB free; 7 pending")
    update({}, None)
    assert [{n: w["state"] for n, w in d.items()} for d in written] == [
        {}, {"a": "unavailable"}, {"a": "unavailable", "b": "paused"},
        {"a": "paused", "b": "paused"}, {}]
    assert written[2]["b"]["reason"] == "spool full: 900 KiB free; 3 pending"
    assert written[3]["a"]["since"] == written[2]["b"]["since"]  # paused since the start
