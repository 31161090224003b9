"""Pure: routing rules x one file's attributes -> destination names.

Every route whose conditions all hold adds its destinations, in order and without
repeats; a matching route with ``final: true`` stops the walk. A condition names the
watch folder, a glob on the path relative to it, or a DICOM keyword with an exact
value, a list of values, or ``{regex: ...}`` (searched, not anchored, in the whole value:
a multi-value's parts joined by a backslash, as the file holds them). A multi-valued
attribute such as ImageType (``ORIGINAL\\PRIMARY``) matches a value when the whole
value or any one of its parts equals it; a number (IS, DS, binary) when it is the same
number; an attribute the file lacks never matches. A regex is searched for at most
:data:`SEARCH_LIMIT` seconds, with the interpreter lock released: a pattern that
backtracks without end on one file's value makes that file a :class:`RouteError`
(quarantined with the reason), never a daemon that stops taking files or signals.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from forwarder.config import Condition, Route
from forwarder.config.values import dicom_number

SEARCH_LIMIT = 0.25  # seconds a regex may search one value; microseconds are usual


class RouteError(Exception):
    """A route could not be decided for this file (its regex searched too long)."""


@dataclass(frozen=True)
class Decision:
    destinations: tuple[str, ...]
    routes: tuple[str, ...]  # names (or #index) of the routes that matched, for the log


def _holds(cond: Condition, watch: str, relpath: str, attrs: Mapping[str, str]) -> bool:
    if cond.key == "watch":
        value: str | None = watch
    elif cond.key == "path":
        if cond.regex is not None:
            return _search(cond, relpath)
        return any(fnmatch.fnmatchcase(relpath, g) for g in cond.values)
    else:
        value = attrs.get(cond.key)
    if value is None:
        return False
    if cond.regex is not None:
        return _search(cond, value)
    parts = value.split("\\")
    if cond.numeric:  # 007 is 7, 5.000 is 5.0, a whole multi-value part by part
        numbers = [dicom_number(p) for p in parts]
        return any(_same_number(v, value, numbers) for v in cond.values)
    return any(v == value or v in parts for v in cond.values)


def _same_number(wanted: str, value: str, numbers: list[Decimal | None]) -> bool:
    if wanted == "":  # an empty value or part, as for text; never NaN or inf
        return value == "" or "" in value.split("\\")
    if "\\" in wanted:
        return numbers == [dicom_number(p) for p in wanted.split("\\")]
    return dicom_number(wanted) in numbers


def _search(cond: Condition, text: str) -> bool:
    assert cond.regex is not None
    try:
        return cond.regex.search(text, timeout=SEARCH_LIMIT, concurrent=True) is not None
    except TimeoutError:
        raise RouteError(
            f"its condition {cond.key}: {{regex: {cond.regex.pattern!r}}} searched "
            f"this file's value ({len(text)} characters) for more than {SEARCH_LIMIT:g}s "
            "and was stopped: the pattern backtracks; simplify it (nested repeats such as "
            "(a+)+ or (\\w+\\s?)*)") from None


def route(routes: Sequence[Route], watch: str, relpath: str,
          attrs: Mapping[str, str]) -> Decision:
    """The destinations for one file; empty when no route matched (see ``unrouted``)."""
    dests: list[str] = []
    names: list[str] = []
    for i, r in enumerate(routes):
        try:
            holds = all(_holds(c, watch, relpath, attrs) for c in r.match)
        except RouteError as exc:
            raise RouteError(f"route {r.name or f'#{i}'}: {exc}") from None
        if holds:
            names.append(r.name or f"#{i}")
            dests.extend(d for d in r.to if d not in dests)
            if r.final:
                break
    return Decision(tuple(dests), tuple(names))
