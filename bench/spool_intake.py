"""Spool throughput: durable accepts per second (batches of 1 and 100), claim+done rate,
and resident memory with 100,000 queued jobs."""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from forwarder.spool import Incoming, Spool  # noqa: E402
from tests.spoolutil import fake_probe  # noqa: E402


def accept_rate(work: Path, files: list[Path], batch: int) -> float:
    spool = Spool(work / f"spool-{batch}")
    start = time.monotonic()
    for i in range(0, len(files), batch):
        fds = [os.open(p, os.O_RDONLY) for p in files[i:i + batch]]
        spool.accept([Incoming(fd, str(p), fake_probe(i + k), ("pacs",))
                      for k, (fd, p) in enumerate(zip(fds, files[i:i + batch], strict=False))])
        for fd in fds:
            os.close(fd)
    rate = len(files) / (time.monotonic() - start)
    start = time.monotonic()
    n = 0
    while jobs := spool.claim("pacs", 100):
        spool.done([j.id for j in jobs])
        n += len(jobs)
    claim_rate = n / (time.monotonic() - start)
    spool.close()
    return rate, claim_rate


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    work = Path(tempfile.mkdtemp(prefix="fwd-spool-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        src = work / "src"
        src.mkdir()
        files = []
        for i in range(count):
            p = src / f"{i}.dcm"
            p.write_bytes(os.urandom(2048))
            files.append(p)
        for batch in (1, 100):
            rate, claim_rate = accept_rate(work, files, batch)
            print(f"accept, batch {batch:>3}: {rate:8.0f} files/s durable;  "
                  f"claim+done: {claim_rate:8.0f} jobs/s")
        spool = Spool(work / "spool-big")
        with spool._tx() as db:
            db.executemany("INSERT INTO objects (id, name, sha256) VALUES (?, ?, ?)",
                           ((i, f"o{i}", f"h{i}") for i in range(1, 100_001)))
            db.executemany("INSERT INTO jobs (object_id, destination, state, next_attempt_at, "
                           "created_at) VALUES (?, 'pacs', 'pending', 0, 0)",
                           ((i,) for i in range(1, 100_001)))
        spool.claim("pacs", 100)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS with 100,000 queued jobs after a claim: {rss:.0f} MiB")
        spool.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
