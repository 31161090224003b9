"""A strict YAML-to-dataclass engine, knowing nothing of this project's keys.

A schema is a set of frozen dataclasses whose fields are made with :func:`opt`: each
names the parser that turns the YAML value into the field's value. :meth:`Ctx.build`
builds one dataclass from a mapping and records every problem (unknown key, with the
closest known one; wrong value; missing required key) as a
:class:`~forwarder.errors.ConfigIssue` naming the file, the line and the key path,
instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

from forwarder.errors import ConfigIssue

KeyPath = tuple[str | int, ...]
Parser = Callable[["Ctx", Any, KeyPath], Any]


class Bad(Exception):
    """A value failed its parser; the message says what was expected."""


def opt(parse: Parser, default: Any = None, **kw: Any) -> Any:
    """A dataclass field read from YAML with ``parse`` and defaulting to ``default``."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use an immutable default")
    return field(default=default, metadata={"parse": parse}, **kw)


def p_opt(inner: Parser) -> Parser:
    """``inner``, or None for a null value."""
    def parse(ctx: Ctx, v: Any, path: KeyPath) -> Any:
        return None if v is None else inner(ctx, v, path)
    return parse


def p_list(inner: Parser) -> Parser:
    """A list (or one value standing for a list of one), each item read by ``inner``."""
    def parse(ctx: Ctx, v: Any, path: KeyPath) -> tuple[Any, ...]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            raise Bad(f"expected a list, got {v!r}")
        out = []
        for i, item in enumerate(v):
            try:
                out.append(inner(ctx, item, (*path, i)))
            except Bad as exc:
                ctx.error((*path, i), str(exc))
        return tuple(out)
    return parse


def p_section(cls: type) -> Parser:
    """A nested mapping built into dataclass ``cls``."""
    def parse(ctx: Ctx, v: Any, path: KeyPath) -> Any:
        return ctx.build(cls, v, path)
    return parse


class Ctx:
    """One file being read: its key lines and the issues found so far."""

    def __init__(self, file: str, lines: dict[KeyPath, int]):
        self.file = file
        self.lines = lines
        self.issues: list[ConfigIssue] = []

    def line(self, path: KeyPath) -> int | None:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None

    @staticmethod
    def dotted(path: KeyPath) -> str:
        return ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in path) \
            .replace(".[", "[")

    def issue(self, path: KeyPath, message: str) -> ConfigIssue:
        return ConfigIssue(self.file, self.line(path), self.dotted(path), message)

    def error(self, path: KeyPath, message: str) -> None:
        self.issues.append(self.issue(path, message))

    def build(self, cls: type, value: Any, path: KeyPath, extra: Mapping[str, Any] = {},
              also: tuple[str, ...] = ()) -> Any:
        """Build dataclass ``cls`` from mapping ``value``, reporting every bad key;
        ``also``: keys the caller reads itself (named when a key is misspelt)."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping of keys, got {value!r}")
            return cls(**extra) if not getattr(cls, "REQUIRED", ()) else None
        known = {f.name: f for f in dataclasses.fields(cls) if "parse" in f.metadata}
        kwargs: dict[str, Any] = dict(extra)
        for key, v in value.items():
            if key not in known:
                keys = [*known, *also]
                close = difflib.get_close_matches(key, keys, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else \
                    f" (known keys: {', '.join(sorted(keys))})"
                self.error((*path, key), f"unknown key{hint}")
                continue
            try:
                kwargs[key] = known[key].metadata["parse"](self, v, (*path, key))
            except Bad as exc:
                self.error((*path, key), str(exc))
        missing = [k for k in getattr(cls, "REQUIRED", ()) if value.get(k) is None]
        for k in missing:
            self.error(path, f"missing required key '{k}'")
        if missing or any(k not in kwargs for k in getattr(cls, "REQUIRED", ()) if k in value):
            return None
        return cls(**kwargs)
