"""Which watch folders the running daemon cannot watch now, for ``status``.

The daemon writes ``SPOOL/watch-state.json`` when a folder becomes unavailable or
available again, and removes it when it stops; ``status`` reads it (a missing file: no
daemon, or every folder fine). Replaced atomically, never fsynced: it is a view of the
running daemon, not data.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

NAME = "watch-state.json"


def write(spool: str | os.PathLike[str], unavailable: dict[str, str],
          since: dict[str, float]) -> None:
    """Record ``{watch name: reason}`` for the folders that are unavailable now."""
    root = Path(spool)
    data = {name: {"state": "unavailable", "reason": why, "since": since.get(name, time.time())}
            for name, why in sorted(unavailable.items())}
    tmp = root / f".{NAME}.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.chmod(0o640)
        os.replace(tmp, root / NAME)
    except OSError:
        tmp.unlink(missing_ok=True)


def read(spool: str | os.PathLike[str]) -> dict[str, dict]:
    try:
        data = json.loads((Path(spool) / NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def clear(spool: str | os.PathLike[str]) -> None:
    try:
        (Path(spool) / NAME).unlink(missing_ok=True)
    except OSError:
        pass
