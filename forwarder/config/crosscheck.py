"""Checks across configuration values that each parse well alone.

A retry ceiling below its first delay, a spool that lives inside a watch folder (the
daemon would take its own index and objects as input), a watch folder inside the spool,
or two watch folders of which one holds the other (a file would be taken twice): each is
refused with the key path and line of the value to change. Paths are compared with
symlinks resolved as far as they exist.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forwarder.config.engine import Ctx
    from forwarder.config.schema import Destination, Watch


def _real(path: str) -> str:
    """The absolute path with symlinks resolved as far as they exist (relative paths are
    taken from the working directory, as the daemon takes them)."""
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _inside(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def cross_check(ctx: Ctx, spool: str, watches: list[Watch],
                dests: Mapping[str, Destination]) -> None:
    for name, d in dests.items():
        if d.retry.max < d.retry.initial:
            ctx.error(("destinations", name, "retry", "max"),
                      f"the longest delay ({d.retry.max:g}s) is below the first "
                      f"(initial: {d.retry.initial:g}s); raise max or lower initial")
    spool_real = _real(spool)
    seen: list[tuple[int, str]] = []
    for i, w in enumerate(watches):
        where: Any = ("watch", i, "path")
        watch_real = _real(w.path)
        if _inside(spool_real, watch_real):
            ctx.error(where, f"the spool {spool} is inside this watch folder: the daemon "
                      "would take its own index and objects as input; move one of them")
        elif _inside(watch_real, spool_real):
            ctx.error(where, f"this watch folder is inside the spool {spool}; put incoming "
                      "files outside the spool")
        for j, other in seen:
            if _inside(watch_real, other) or _inside(other, watch_real):
                ctx.error(where, f"{w.path} overlaps watch[{j}] ({watches[j].path}): a file "
                          "would be taken twice; keep watch folders apart")
        seen.append((i, watch_real))
