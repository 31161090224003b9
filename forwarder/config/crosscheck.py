"""Checks across configuration values that each parse well alone.

A retry ceiling below its first delay, or a spool that lives inside a watch folder (the
daemon would take its own index and objects as input), or a watch folder inside the
spool: each is refused with the key path and line of the value to change.
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
    for i, w in enumerate(watches):
        where: Any = ("watch", i, "path")
        watch_real = _real(w.path)
        if _inside(spool_real, watch_real):
            ctx.error(where, f"the spool {spool} is inside this watch folder: the daemon "
                      "would take its own index and objects as input; move one of them")
        elif _inside(watch_real, spool_real):
            ctx.error(where, f"this watch folder is inside the spool {spool}; put incoming "
                      "files outside the spool")
