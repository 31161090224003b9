"""Where the daemon's memory goes: PSS, RSS and private dirty memory of each process of
its tree (daemon, fork server, resource tracker, workers) after it has sent N files to
DCMTK storescp (--ignore), measured as `make bench` measures its PSS (after the last
file is stored, association still open), and their sum, where a shared page counts once.

    .venv/bin/python bench/daemon_memory.py [--files 2000] [--side 64] [--associations 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.corpus import make_corpus  # noqa: E402
from bench.run import Daemon  # noqa: E402
from tests.daemonutil import process_tree  # noqa: E402
from tests.peers import StoreSCPProcess  # noqa: E402

KEYS = ("Pss", "Rss", "Private_Dirty", "Anonymous")


def rollup(pid: int) -> dict[str, float]:
    """MiB per key of /proc/PID/smaps_rollup."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        if key in KEYS:
            out[key] = int(value.split()[0]) / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--side", type=int, default=64, help="pixels per side (512: 0.5 MB CT)")
    ap.add_argument("--associations", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fwd-mem-"))
    try:
        files = make_corpus(work / "corpus", args.files, args.side)
        scp = StoreSCPProcess(work / "out", ("--ignore",))
        try:
            d = Daemon(work / "d", scp.port, args.associations)
            stage = work / "d" / "stage"
            stage.mkdir()
            for f in files:
                shutil.copy(f, stage / f.name)
            for f in files:
                os.rename(stage / f.name, d.inbox / f.name)
            deadline = time.monotonic() + 600
            while d.done() < len(files):
                if d.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"daemon exited or stalled: {d.output()[-500:]}")
                threading.Event().wait(0.05)
            total = 0.0
            print(f"{'pid':>7} {'process':<16} " + " ".join(f"{k:>13}" for k in KEYS))
            for pid in process_tree(d.proc.pid):
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    r = rollup(pid)
                except OSError:
                    continue
                name = "daemon" if pid == d.proc.pid else comm
                total += r["Pss"]
                print(f"{pid:>7} {name:<16} " + " ".join(f"{r[k]:>13.1f}" for k in KEYS))
            print(f"PSS over the tree: {total:.1f} MiB")
            d.stop()
        finally:
            scp.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
