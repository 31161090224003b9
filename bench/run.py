"""`make bench`: one report of dicom-forwarder against DCMTK storescu, same corpus, same run.

Generates its corpus (500 CT files of about 0.5 MB and 2,000 small ones at --scale 1),
starts DCMTK storescp (as Debian ships it, and with TCP_NODELAY=1 in its environment;
with --fork for parallel associations) and Orthanc, and runs DCMTK storescu, pynetdicom's
own storescu app, `dicom-forwarder send`, and the daemon end to end (the same files,
written before the run, renamed into its watch folder until the last is stored at the
peer) with 1 and 4 associations.

Each peer's rows are anchored on a storescu configured like that peer: against stock
storescp, both DCMTK tools stock (Nagle on, no TCP_NODELAY anywhere in their
environment); against tuned storescp, TCP_NODELAY=1 in the environment of storescu and of
storescp; against Orthanc, storescu with TCP_NODELAY=1. Every row names its anchor.

The senders of one peer and corpus run interleaved, each on a fresh peer: round 1 is
storescu, pynetdicom's storescu, `send`, the daemon with 1 association and with 4; round 2
the same order again; --repeat rounds in all (default 3). A sender whose first run took
longer than bench.rounds.SLOW_RUN_S (20 s: the Nagle-bound and Orthanc-bound runs at tens
of files per second) is not repeated and its row says "1 run". Every figure in a row is
the median of that sender's runs, the ratio to the anchor is taken from the median walls,
and the range of its files/s is printed beside the median.

Prints files/s, its range, MB/s, CPU milliseconds per file, peak RSS and proportional set
size (PSS) for every sender, and the ratio to the anchor; then the watch-to-stored latency
at a steady 20 files/s and the daemon's idle CPU; and writes it all to
bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.corpus import make_corpus  # noqa: E402
from bench.rounds import SLOW_RUN_S, Result, interleave, row, settled  # noqa: E402
from tests.daemonutil import DaemonProcess, process_tree  # noqa: E402
from tests.peers import OrthancProcess, StoreSCP, StoreSCPProcess  # noqa: E402

PY = sys.executable
# DCMTK reads TCP_NODELAY from its environment: the bench sets it per row, never inherits it
os.environ.pop("TCP_NODELAY", None)
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
NODELAY = {"TCP_NODELAY": "1"}
MIN_AGE = 0.2  # seconds: the throughput daemons' watch folder settle time


def run(argv: list[str], env: dict[str, str] | None = None) -> Result:
    """Run a sender to completion with ``env`` added to its environment; its own CPU time
    (wait4, not the group), peak RSS and peak PSS."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env={**ENV, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    peak = HighWater(proc.pid)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exited {proc.returncode}")
    rss, pss = peak.stop()
    return Result(wall, usage.ru_utime + usage.ru_stime, rss, pss)


class HighWater:
    """Peak RSS (VmHWM) and peak PSS (smaps_rollup, sampled every 20 ms) of a running
    process, read until it exits: ru_maxrss of a child counts the memory of the forked
    copy of this process before exec."""

    def __init__(self, pid: int):
        self.proc = Path(f"/proc/{pid}")
        self.kib = 0
        self.pss_kib = 0
        self._done = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            try:
                status = (self.proc / "status").read_text()
                rollup = (self.proc / "smaps_rollup").read_text()
            except OSError:
                return
            self.kib = max(self.kib, _kib(status, "VmHWM:"))
            self.pss_kib = max(self.pss_kib, _kib(rollup, "Pss:"))
            self._done.wait(0.02)

    def stop(self) -> tuple[float, float]:
        self._done.set()
        self._t.join(2)
        return self.kib / 1024, self.pss_kib / 1024


def _kib(text: str, key: str) -> int:
    """The sum of ``key``'s values (kB) in a /proc status or smaps_rollup text."""
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith(key))


class Daemon(DaemonProcess):
    """`dicom-forwarder run` on a fresh spool and watch folder, READY awaited."""

    def __init__(self, work: Path, port: int, associations: int,
                 min_age: str = f"{MIN_AGE * 1000:.0f}ms",
                 idle_release: str = "5s", called: str = "ANY-SCP"):
        work.mkdir(parents=True)
        self.inbox = work / "in"
        self.inbox.mkdir()
        cfg = work / "forwarder.yaml"
        cfg.write_text(
            f"spool: {work / 'spool'}\nlog: {{level: info, target: stderr}}\n"
            f"watch:\n  - {{name: bench, path: {self.inbox}, min_age: {min_age}}}\n"
            f"destinations:\n  peer:\n    host: 127.0.0.1\n    port: {port}\n"
            f"    called_ae_title: {called}\n    associations: {associations}\n"
            f"    idle_release: {idle_release}\n    timeouts: {{dimse: 30s}}\n"
            "routes:\n  - to: [peer]\n")
        self._db: sqlite3.Connection | None = None
        super().__init__(cfg, work)
        self.wait_ready(60)

    def done(self) -> int:
        """Files stored at the peer so far, from the spool's index (one read-only
        connection, kept: polling every few ms costs the machine little)."""
        if self._db is None:
            self._db = sqlite3.connect(f"file:{self.work / 'spool' / 'index.sqlite'}?mode=ro",
                                       uri=True, timeout=5)
        try:
            row = self._db.execute("SELECT done FROM destinations WHERE name='peer'").fetchone()
        except sqlite3.OperationalError:
            row = None
        return row[0] if row else 0

    def stop(self, timeout: float = 60.0) -> int:
        if self._db is not None:
            self._db.close()
            self._db = None
        return super().stop(timeout)

    def cpu(self) -> float:
        """CPU seconds of the daemon and its worker processes so far."""
        total = 0
        for pid in process_tree(self.proc.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def pss_mib(self) -> float:
        """Proportional set size over the daemon's processes now: shared pages counted once."""
        return self._kib_over_tree("smaps_rollup", "Pss:") / 1024

    def peak_rss_mib(self) -> float:
        """The sum of the peak RSS of the daemon and its worker processes: an upper bound,
        since workers forked from one server share their code pages."""
        return self._kib_over_tree("status", "VmHWM:") / 1024

    def _kib_over_tree(self, name: str, key: str) -> int:
        """The sum of ``key``'s value (kB) in /proc/PID/``name`` over the daemon's processes."""
        kib = 0
        for pid in process_tree(self.proc.pid):
            try:
                text = Path(f"/proc/{pid}/{name}").read_text()
            except OSError:
                continue
            kib += _kib(text, key)
        return kib


def daemon_throughput(work: Path, files: list[Path], port: int, associations: int,
                      called: str = "ANY-SCP") -> Result:
    d = Daemon(work, port, associations, called=called)
    stage = work / "stage"
    stage.mkdir()
    staged = []
    for f in files:  # same file system as the watch folder: a rename is a drop
        shutil.copy2(f, stage / f.name)  # the corpus's mtime: written before the run
        staged.append(stage / f.name)
    # as for storescu and send, every file was complete before the run: written at least
    # min_age before its drop (a corpus made a moment ago waits out the rest of it here)
    written = max(f.stat().st_mtime for f in staged)
    threading.Event().wait(max(0.0, written + MIN_AGE - time.time()))
    cpu0 = d.cpu()
    start = time.monotonic()
    for f in staged:
        os.rename(f, d.inbox / f.name)
    first = None
    while (done := d.done()) < len(files):
        if d.proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {d.output()[-500:]}")
        if first is None and done:
            first = time.monotonic() - start
        threading.Event().wait(0.005)
    wall = time.monotonic() - start
    if first is None:  # all of them stored between two looks
        first = wall
    cpu = d.cpu() - cpu0
    rss = d.peak_rss_mib()
    pss = d.pss_mib()
    d.stop()
    return Result(wall, cpu, rss, pss, first)


def latency(work: Path, files: list[Path], rate: float) -> tuple[list[float], float, float]:
    """Write a file into the watch folder at ``rate``/s, as a modality does (the file's
    last write is its drop, so each waits ``min_age``); seconds from each drop to its
    arrival at a pynetdicom SCP that timestamps every C-STORE; then the daemon's CPU
    while idle with an association open and with none."""
    arrived: dict[str, float] = {}
    peer = StoreSCP(status=lambda e: arrived.setdefault(
        str(e.request.AffectedSOPInstanceUID), time.monotonic()) and 0).start()
    try:
        d = Daemon(work, peer.port, 1, min_age="500ms", idle_release="8s")
        from pydicom import dcmread

        uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
        dropped = {}
        start = time.monotonic()
        for i, (f, uid) in enumerate(zip(files, uids, strict=True)):
            threading.Event().wait(max(0.0, start + i / rate - time.monotonic()))
            shutil.copyfile(f, d.inbox / f.name)  # written in the folder, then closed
            dropped[uid] = time.monotonic()
        deadline = time.monotonic() + 60
        while len(arrived) < len(uids) and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        lat = sorted(arrived[u] - dropped[u] for u in uids if u in arrived)
        c0 = d.cpu()
        threading.Event().wait(4)  # association still open (idle_release 8s)
        idle_open = (d.cpu() - c0) / 4
        threading.Event().wait(5)  # released by now
        c0 = d.cpu()
        threading.Event().wait(4)
        idle_none = (d.cpu() - c0) / 4
        d.stop()
        return lat, idle_open, idle_none
    finally:
        peer.stop()


def sender_jobs(work: Path, counter: itertools.count, env: dict[str, str] | None,
                scu_env: dict[str, str], anchor: str,
                files: list[Path]) -> dict[str, Callable[[], Result]]:
    """One run of each sender, in the order of a round, each on a peer of its own started
    for it: storescp with ``env`` in its environment (with --fork for the daemon's parallel
    associations), or Orthanc where ``env`` is None."""

    def on_peer(fork: bool, send: Callable[[str, int, int], Result]) -> Callable[[], Result]:
        def job() -> Result:
            n = next(counter)
            p: OrthancProcess | StoreSCPProcess
            if env is None:
                p = OrthancProcess(work / f"orthanc{n}")
            else:
                p = StoreSCPProcess(work / "out", ("--ignore", *(("--fork",) if fork else ())),
                                    env)
            try:
                return send(getattr(p, "aet", "ANY-SCP"), p.port, n)
            finally:
                p.stop()
        return job

    paths = [str(f) for f in files]
    return {
        f"DCMTK {anchor}": on_peer(False, lambda aet, port, _n: run(
            ["storescu", "-R", "-aec", aet, "127.0.0.1", str(port), *paths], scu_env)),
        "pynetdicom storescu": on_peer(False, lambda aet, port, _n: run(
            [PY, "-m", "pynetdicom", "storescu", "-aec", aet, "127.0.0.1", str(port),
             str(files[0].parent)])),
        "dicom-forwarder send": on_peer(False, lambda aet, port, _n: run(
            [PY, "-m", "forwarder", "send", "-R", "-aec", aet, "127.0.0.1", str(port),
             *paths])),
        "daemon, 1 association": on_peer(False, lambda aet, port, n: daemon_throughput(
            work / f"d{n}", files, port, 1, aet)),
        "daemon, 4 associations": on_peer(True, lambda aet, port, n: daemon_throughput(
            work / f"d{n}", files, port, 4, aet)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full corpus")
    ap.add_argument("--no-orthanc", action="store_true", help="skip the Orthanc rows")
    ap.add_argument("--only", choices=("stock", "nodelay", "orthanc"), action="append",
                    help="only these peers (repeatable); the report is printed, not written")
    ap.add_argument("--repeat", type=int, default=3, metavar="N",
                    help="interleaved rounds per peer and corpus; every figure is the median "
                    f"(default 3; a sender whose first run took over {SLOW_RUN_S:.0f} s runs "
                    "once)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="fwd-bench-"))
    rows: list[tuple[str, ...]] = []
    flowing: list[tuple[str, ...]] = []
    try:
        corpora = {
            "CT 0.5 MB": make_corpus(work / "ct", max(4, int(500 * args.scale)), 512),
            "small 10 KB": make_corpus(work / "small", max(4, int(2000 * args.scale)), 64),
        }
        # key, peer, storescp's environment (None: Orthanc), storescu's environment, anchor
        flavours: list[tuple[str, str, dict[str, str] | None, dict[str, str], str]] = [
            ("stock", "storescp (stock)", {}, {}, "storescu (stock)"),
            ("nodelay", "storescp TCP_NODELAY=1", NODELAY, NODELAY, "storescu TCP_NODELAY=1")]
        if not args.no_orthanc:
            flavours.append(("orthanc", "Orthanc", None, NODELAY, "storescu TCP_NODELAY=1"))
        peers = [f[1:] for f in flavours if not args.only or f[0] in args.only]
        counter = itertools.count(1)
        for peer_name, env, scu_env, anchor in peers:
            for corpus_name, files in corpora.items():
                mb = sum(f.stat().st_size for f in files) / 1e6
                jobs = sender_jobs(work, counter, env, scu_env, anchor, files)

                def progress(rnd: int, name: str, r: Result, files=files,  # noqa: ANN001
                             where=f"{peer_name}, {corpus_name}") -> None:
                    print(f"  {where}, round {rnd}: {name}: {r.wall:.2f} s, "
                          f"{len(files) / r.wall:.0f} files/s", file=sys.stderr)

                began = time.monotonic()
                summaries = interleave(jobs, args.repeat, report=progress)
                base = summaries[f"DCMTK {anchor}"]
                rows += [(peer_name, corpus_name, name,
                          *row(summary, base, len(files), mb, anchor))
                         for name, summary in summaries.items()]
                flowing += [(peer_name, corpus_name, name, *settled(summary, base, len(files)))
                            for name, summary in summaries.items() if summary.first is not None]
                print(f"done: {peer_name}, {corpus_name} in {time.monotonic() - began:.0f} s",
                      file=sys.stderr)
        lat, idle_open, idle_none = latency(work / "latency", make_corpus(
            work / "lat", max(20, int(400 * args.scale)), 64), 20.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    head = ("peer", "corpus", "sender", "files/s", "files/s min–max", "MB/s", "CPU ms per file",
            "CPU vs anchor", "peak RSS MiB", "PSS MiB", "files/s vs anchor")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if flowing:
        cols = ("peer", "corpus", "sender", "first file stored after", "files/s after it",
                "files/s after it vs the anchor's whole run")
        lines += ["", "Daemon rows, from the drop: as storescu and send are given files "
                  "written before the run, the daemon is given the same files renamed into its "
                  "watch folder, each written (its mtime) at least the folder's min_age "
                  f"({MIN_AGE * 1000:.0f} ms here) before the drop, so it takes them without a "
                  "second wait; a file written in the folder waits min_age after its last "
                  "write (the latency below). Medians of the same runs:",
                  "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r) + " |" for r in flowing]
    p50 = statistics.median(lat) if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
    lines += ["", f"Medians of up to {args.repeat} interleaved rounds: per peer and corpus, "
              "every sender runs once per round in the order of the table, each run on a "
              "fresh peer. Every figure in a row is the median of that sender's runs; "
              "files/s vs anchor and CPU vs anchor divide medians; files/s min–max is the "
              f"slowest and fastest run. A sender whose first run took longer than "
              f"{SLOW_RUN_S:.0f} s (Nagle-bound or peer-bound, tens of files per second) is "
              "not repeated: its row says \"1 run\".",
              "", "Anchors: against stock storescp, storescu stock too (neither DCMTK tool has "
              "TCP_NODELAY in its environment, so both keep Nagle on); against storescp "
              "TCP_NODELAY=1, storescu with TCP_NODELAY=1 as well; against Orthanc, storescu "
              "with TCP_NODELAY=1. CPU is user plus system time of the sender's own process.",
              "", "PSS: a single sender's peak proportional set size, sampled every 20 ms. "
              "Daemon rows: CPU and peak RSS summed over all its processes (daemon, fork "
              "server, resource tracker, one worker per association); the workers share code "
              "pages with the fork server, so its PSS is taken over all of them after the "
              "run, where a shared page counts once.",
              "", f"Watch-to-stored latency at a steady 20 files/s, each file written in "
              f"the watch folder (min_age 500 ms, from the file's close to its arrival at a "
              f"pynetdicom SCP timestamping them, {len(lat)} files): p50 {p50 * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms.",
              f"Daemon idle CPU: {idle_open * 100:.2f}% of a core with an idle association "
              f"open, {idle_none * 100:.2f}% with none."]
    stamp = time.strftime("%Y-%m-%d")
    report = (f"# dicom-forwarder benchmark, {stamp}, {os.cpu_count()} cores, "
              f"scale {args.scale}, repeat {args.repeat}\n\n" + "\n".join(lines) + "\n")
    print(report)
    if not args.only:
        out = REPO / "bench" / "results" / "latest.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
