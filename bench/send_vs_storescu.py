"""`dicom-forwarder send` against DCMTK storescu, same corpus, same run, two storescp flavours.

Prints files/s, MB/s and the ratio to storescu, for storescp as Debian ships it (storescu
stock too) and with TCP_NODELAY=1 in the environment of both storescp and storescu.
`--scale 0.1` for a quick run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.corpus import make_corpus  # noqa: E402
from tests.peers import StoreSCPProcess  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, **env})
    return time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full corpus")
    args = ap.parse_args()
    os.environ.pop("TCP_NODELAY", None)  # set per row for both DCMTK tools, never inherited
    work = Path(tempfile.mkdtemp(prefix="fwd-bench-"))
    try:
        corpora = {
            "CT 0.5 MB": make_corpus(work / "ct", max(1, int(500 * args.scale)), 512),
            "small 10 KB": make_corpus(work / "small", max(1, int(2000 * args.scale)), 64),
        }
        senders = {
            "storescu": ["storescu", "-R"],
            "dicom-forwarder send": [sys.executable, "-m", "forwarder", "send", "-R"],
        }
        rows = []
        for peer_name, env in (("stock storescp and storescu", {}),
                               ("storescp and storescu TCP_NODELAY=1", {"TCP_NODELAY": "1"})):
            for corpus_name, files in corpora.items():
                mb = sum(f.stat().st_size for f in files) / 1e6
                results = {}
                for sender, argv in senders.items():
                    peer = StoreSCPProcess(work / "out", ("--ignore",), env)
                    try:
                        secs = timed([*argv, "127.0.0.1", str(peer.port), *map(str, files)], env)
                    finally:
                        peer.stop()
                    results[sender] = secs
                base = len(files) / results["storescu"]
                for sender, secs in results.items():
                    rate = len(files) / secs
                    rows.append((peer_name, corpus_name, sender, f"{rate:.0f}",
                                 f"{mb / secs:.1f}", f"{rate / base:.2f}x"))
        head = ("peer", "corpus", "sender", "files/s", "MB/s", "vs storescu")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        report = "\n".join(lines)
        print(report)
        stamp = time.strftime("%Y-%m-%d")
        Path(__file__).with_name("results").mkdir(exist_ok=True)
        Path(__file__).with_name("results").joinpath("send.md").write_text(
            f"# send vs storescu, {stamp}, {os.cpu_count()} cores, scale {args.scale}\n\n"
            f"{report}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
