"""Watch folder to spool: latency from a file's close to its job being pending, at a steady
20 files/s, and the rate of taking a backlog found at start (issue targets: p50 below
min_age + 100 ms; backlog above 500 files/s)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.corpus import unique_copies  # noqa: E402
from tests.pipeline import Pipeline, make_config  # noqa: E402


def latency(work: Path, count: int, rate: float, min_age: str) -> list[float]:
    """Drop ``count`` files at ``rate``/s (write to .tmp, rename into place); seconds from
    each rename to its object being committed."""
    cfg = make_config(work, watch=f"min_age: {min_age}")
    staging = work / "staging"
    files = list(unique_copies(staging, count).values())
    dropped: dict[str, float] = {}
    with Pipeline(cfg) as p:
        stop = threading.Event()
        start = time.time()
        for i, f in enumerate(files):
            tmp = work / "in" / f"{f.name}.tmp"
            shutil.copy(f, tmp)
            os.rename(tmp, work / "in" / f.name)
            dropped[str(work / "in" / f.name)] = time.time()
            stop.wait(max(0.0, (i + 1) / rate - (time.time() - start)))
        deadline = time.monotonic() + 60
        while p.intake.accepted < count and time.monotonic() < deadline:
            stop.wait(0.05)
        with p.spool._lock:
            rows = p.spool.db.execute("SELECT source, accepted_at FROM objects").fetchall()
    return sorted(at - dropped[src] for src, at in rows)


def backlog(work: Path, count: int) -> float:
    cfg = make_config(work)
    unique_copies(work / "in", count)
    start = time.monotonic()
    with Pipeline(cfg) as p:
        while p.intake.accepted < count:
            threading.Event().wait(0.05)
        return count / (time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full corpus")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        lat = latency(Path(tmp) / "lat", max(20, int(200 * args.scale)), 20.0, "500ms")
        rate = backlog(Path(tmp) / "backlog", max(500, int(10_000 * args.scale)))
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print("| measure | value | target |")
    print("| --- | --- | --- |")
    print(f"| close -> pending p50 (min_age 500 ms) | {p50 * 1000:.0f} ms | < 600 ms |")
    print(f"| close -> pending p99 | {p99 * 1000:.0f} ms | |")
    print(f"| backlog at start | {rate:.0f} files/s ({os.cpu_count()} cores) | > 500 files/s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
