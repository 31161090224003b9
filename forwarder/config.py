"""The YAML contract: strict parsing into frozen dataclasses with defaults.

Every problem (unknown key, wrong type, bad duration, a route naming an undefined
destination, ...) becomes a :class:`~forwarder.errors.ConfigIssue` that names the
file, the line and the key path; :func:`load` raises one :class:`ConfigError` with all
of them, so ``check-config`` can print the whole list at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forwarder import cfgcheck
from forwarder.errors import ConfigError, ConfigIssue
from forwarder.negotiation import PROPOSE_MODES
from forwarder.yamlsrc import YamlProblem, load_with_lines, read_bounded

KeyPath = tuple[str | int, ...]
Parser = Callable[["_Ctx", Any, KeyPath], Any]


class _Bad(Exception):
    """A value failed its parser; the message says what was expected."""


# --- value parsers -----------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNIT = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 2**20,
              "GB": 10**9, "GiB": 2**30}


def parse_duration(value: Any) -> float:
    """``500ms``, ``10s``, ``5m``, ``2h``, ``7d`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise _Bad(f"expected a duration such as 10s, 5m or 2h, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise _Bad(f"a duration cannot be negative, got {value!r}")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise _Bad(f"expected a duration such as 500ms, 10s, 5m, 2h or 7d, got {value!r}")
    return float(m.group(1)) * _DURATION_UNIT[m.group(2)]


def parse_size(value: Any) -> int:
    """``16KiB``, ``10MB`` or a number of bytes -> bytes."""
    if isinstance(value, bool) or isinstance(value, float):
        raise _Bad(f"expected a size such as 16KiB or 10MB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise _Bad(f"a size cannot be negative, got {value!r}")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise _Bad(f"expected a size such as 16KiB, 10MB or a number of bytes, got {value!r}")
    return int(m.group(1)) * _SIZE_UNIT[m.group(2)]


def _p_str(ctx: _Ctx, v: Any, path: KeyPath) -> str:
    if not isinstance(v, str) or v == "":
        raise _Bad(f"expected a non-empty string, got {v!r}")
    return v


def _p_bool(ctx: _Ctx, v: Any, path: KeyPath) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"expected true or false, got {v!r}")
    return v


def _p_int(lo: int | None = None, hi: int | None = None) -> Parser:
    def parse(ctx: _Ctx, v: Any, path: KeyPath) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(f"expected an integer, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Bad(f"expected an integer from {lo} to {hi}, got {v}")
        return v
    return parse


def _p_float(lo: float, hi: float) -> Parser:
    def parse(ctx: _Ctx, v: Any, path: KeyPath) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Bad(f"expected a number, got {v!r}")
        if not lo <= v <= hi:
            raise _Bad(f"expected a number from {lo} to {hi}, got {v}")
        return float(v)
    return parse


def _p_duration(ctx: _Ctx, v: Any, path: KeyPath) -> float:
    return parse_duration(v)


def _p_period(lo: float) -> Parser:
    """A duration of at least ``lo`` seconds: shorter would make a loop spin."""
    def parse(ctx: _Ctx, v: Any, path: KeyPath) -> float:
        n = parse_duration(v)
        if n < lo:
            least = f"{lo:g}s" if lo >= 1 else f"{lo * 1000:g}ms"
            raise _Bad(f"must be at least {least} (shorter makes the daemon spin), got {v!r}")
        return n
    return parse


def _p_size(lo: int, hi: int) -> Parser:
    def parse(ctx: _Ctx, v: Any, path: KeyPath) -> int:
        n = parse_size(v)
        if not lo <= n <= hi:
            raise _Bad(f"expected a size from {lo} to {hi} bytes, got {n}")
        return n
    return parse


def _p_opt(inner: Parser) -> Parser:
    def parse(ctx: _Ctx, v: Any, path: KeyPath) -> Any:
        return None if v is None else inner(ctx, v, path)
    return parse


def _p_enum(*choices: str) -> Parser:
    def parse(ctx: _Ctx, v: Any, path: KeyPath) -> str:
        if v not in choices:
            raise _Bad(f"expected one of {', '.join(choices)}, got {v!r}")
        return str(v)
    return parse


def _p_list(inner: Parser) -> Parser:
    def parse(ctx: _Ctx, v: Any, path: KeyPath) -> tuple[Any, ...]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            raise _Bad(f"expected a list, got {v!r}")
        out = []
        for i, item in enumerate(v):
            try:
                out.append(inner(ctx, item, (*path, i)))
            except _Bad as exc:
                ctx.error((*path, i), str(exc))
        return tuple(out)
    return parse


def _p_ae(ctx: _Ctx, v: Any, path: KeyPath) -> str:
    s = _p_str(ctx, v, path)
    if len(s) > 16 or "\\" in s or not s.strip() or not s.isprintable() or not s.isascii():
        raise _Bad("an AE title is 1 to 16 printable ASCII characters without backslash, "
                   f"got {s!r}")
    return s


def _p_section(cls: type) -> Parser:
    def parse(ctx: _Ctx, v: Any, path: KeyPath) -> Any:
        return ctx.build(cls, v, path)
    return parse


def opt(parse: Parser, default: Any = None, **kw: Any) -> Any:
    """A dataclass field read from YAML with ``parse`` and defaulting to ``default``."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use an immutable default")
    return field(default=default, metadata={"parse": parse}, **kw)


# --- the schema ------------------------------------------------------------------


@dataclass(frozen=True)
class LogConfig:
    level: str = opt(_p_enum("fatal", "error", "warn", "info", "debug", "trace"), "info")
    target: str = opt(_p_enum("auto", "journal", "stderr"), "auto")
    phi: bool = opt(_p_bool, False)
    paths: str = opt(_p_enum("keep", "redact"), "keep")


@dataclass(frozen=True)
class Watch:
    name: str = opt(_p_str, None)
    path: str = opt(_p_str, None)
    patterns: tuple[str, ...] = opt(_p_list(_p_str), ("*",))
    ignore: tuple[str, ...] = opt(_p_list(_p_str), (".*", "*.tmp", "*.part", "*.partial"))
    recursive: bool = opt(_p_bool, True)
    min_age: float = opt(_p_duration, 2.0)
    rescan: float = opt(_p_period(0.1), 60.0)
    polling: bool = opt(_p_bool, False)
    keep_source: bool = opt(_p_bool, False)
    truncated_after: float = opt(_p_duration, 600.0)

    REQUIRED = ("name", "path")


@dataclass(frozen=True)
class Timeouts:
    connect: float | None = opt(_p_opt(_p_duration), 10.0)
    acse: float | None = opt(_p_opt(_p_duration), 30.0)
    dimse: float | None = opt(_p_opt(_p_duration), 60.0)
    network: float | None = opt(_p_opt(_p_duration), 60.0)


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = opt(_p_period(0.1), 10.0)
    max: float = opt(_p_duration, 600.0)
    multiplier: float = opt(_p_float(1.0, 100.0), 2.0)
    jitter: float = opt(_p_float(0.0, 1.0), 0.2)
    max_age: float = opt(_p_duration, 7 * 86400.0)


@dataclass(frozen=True)
class TLSConfig:
    enabled: bool = opt(_p_bool, False)
    cert: str | None = opt(_p_opt(_p_str))
    key: str | None = opt(_p_opt(_p_str))
    key_password_file: str | None = opt(_p_opt(_p_str))
    ca: tuple[str, ...] = opt(_p_list(_p_str), ())
    ca_dir: str | None = opt(_p_opt(_p_str))
    verify_peer: bool = opt(_p_bool, True)
    profile: str = opt(_p_enum("bcp195", "bcp195-nd", "bcp195-ex", "basic", "aes", "null"),
                       "bcp195")
    ciphers: tuple[str, ...] = opt(_p_list(_p_str), ())
    server_name: str | None = opt(_p_opt(_p_str))
    der: bool = opt(_p_bool, False)
    anonymous: bool = opt(_p_bool, False)


@dataclass(frozen=True)
class Identity:
    user: str | None = opt(_p_opt(_p_str))
    password_file: str | None = opt(_p_opt(_p_str))
    kerberos_file: str | None = opt(_p_opt(_p_str))
    saml_file: str | None = opt(_p_opt(_p_str))
    jwt_file: str | None = opt(_p_opt(_p_str))
    positive_response: bool = opt(_p_bool, False)


@dataclass(frozen=True)
class Destination:
    name: str = ""
    host: str = opt(_p_str, None)
    port: int = opt(_p_int(1, 65535), None)
    called_ae_title: str = opt(_p_ae, "ANY-SCP")
    calling_ae_title: str | None = opt(_p_opt(_p_ae))
    propose: str = opt(_p_enum(*PROPOSE_MODES), "uncompressed")
    combine: bool = opt(_p_bool, False)
    decompress: str = opt(_p_enum("never", "lossless", "always"), "lossless")
    max_pdu: int = opt(_p_size(0, 2**32 - 1), 16384)
    max_send_pdu: int | None = opt(_p_opt(_p_size(4096, 2**32 - 1)))
    timeouts: Timeouts = opt(_p_section(Timeouts), Timeouts())
    associations: int = opt(_p_int(1, 64), 1)
    batch: int = opt(_p_int(1, 10000), 100)
    idle_release: float = opt(_p_duration, 5.0)
    max_association_age: float = opt(_p_period(1.0), 300.0)
    warning_is_success: bool = opt(_p_bool, True)
    retry: RetryPolicy = opt(_p_section(RetryPolicy), RetryPolicy())
    tls: TLSConfig = opt(_p_section(TLSConfig), TLSConfig())
    identity: Identity = opt(_p_section(Identity), Identity())

    REQUIRED = ("host", "port")

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Condition:
    """One ``match`` entry: a watch name, a path glob, or a DICOM attribute by keyword."""

    key: str
    values: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = None


@dataclass(frozen=True)
class Route:
    name: str = opt(_p_opt(_p_str))
    match: tuple[Condition, ...] = ()
    to: tuple[str, ...] = opt(_p_list(_p_str), ())
    final: bool = opt(_p_bool, False)

    REQUIRED = ("to",)


@dataclass(frozen=True)
class Retention:
    failed: float | None = opt(_p_opt(_p_duration))  # None: kept until an operator acts
    quarantine: float | None = opt(_p_opt(_p_duration))
    every: float = opt(_p_period(60.0), 3600.0)


@dataclass(frozen=True)
class Config:
    source: str = ""
    ae_title: str = opt(_p_ae, "FORWARDER")
    spool: str = opt(_p_str, "/var/lib/dicom-forwarder")
    log: LogConfig = opt(_p_section(LogConfig), LogConfig())
    retention: Retention = opt(_p_section(Retention), Retention())
    watch: tuple[Watch, ...] = ()
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    unrouted: str = opt(_p_enum("quarantine", "delete"), "quarantine")

    def calling_ae(self, dest: Destination) -> str:
        return dest.calling_ae_title or self.ae_title

    @functools.cached_property
    def attribute_keywords(self) -> frozenset[str]:
        """The DICOM keywords the routes match on: what the probe must read (asked for
        every file intake takes, so computed once per configuration)."""
        return frozenset(c.key for r in self.routes for c in r.match
                         if c.key not in ("watch", "path"))


# --- the loader ------------------------------------------------------------------


class _Ctx:
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

    def error(self, path: KeyPath, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, self.line(path), self.dotted(path), message))

    def build(self, cls: type, value: Any, path: KeyPath, extra: Mapping[str, Any] = {}) -> Any:
        """Build dataclass ``cls`` from mapping ``value``, reporting every bad key."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping of keys, got {value!r}")
            return cls(**extra) if not getattr(cls, "REQUIRED", ()) else None
        known = {f.name: f for f in dataclasses.fields(cls) if "parse" in f.metadata}
        kwargs: dict[str, Any] = dict(extra)
        for key, v in value.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else \
                    f" (known keys: {', '.join(sorted(known))})"
                self.error((*path, key), f"unknown key{hint}")
                continue
            try:
                kwargs[key] = known[key].metadata["parse"](self, v, (*path, key))
            except _Bad as exc:
                self.error((*path, key), str(exc))
        missing = [k for k in getattr(cls, "REQUIRED", ()) if value.get(k) is None]
        for k in missing:
            self.error(path, f"missing required key '{k}'")
        if missing or any(k not in kwargs for k in getattr(cls, "REQUIRED", ()) if k in value):
            return None
        return cls(**kwargs)


def _parse_match(ctx: _Ctx, value: Any, path: KeyPath) -> tuple[Condition, ...]:
    from pydicom.datadict import dictionary_VR, keyword_dict

    if value is None:
        return ()
    if not isinstance(value, dict):
        ctx.error(path, f"expected a mapping of conditions, got {value!r}")
        return ()
    out = []
    for key, v in value.items():
        kp = (*path, key)
        if key not in ("watch", "path"):
            if key not in keyword_dict:
                close = difflib.get_close_matches(key, keyword_dict, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                ctx.error(kp, f"unknown DICOM keyword{hint}; conditions are watch, path "
                              "or a DICOM keyword such as Modality")
                continue
            if dictionary_VR(keyword_dict[key]) == "SQ":
                ctx.error(kp, "a sequence attribute cannot be matched")
                continue
        if isinstance(v, dict):
            if set(v) != {"regex"} or not isinstance(v["regex"], str):
                ctx.error(kp, "expected a value, a list of values, or {regex: PATTERN}")
                continue
            try:
                out.append(Condition(key, regex=re.compile(v["regex"])))
            except re.error as exc:
                ctx.error((*kp, "regex"), f"bad regular expression: {exc}")
            continue
        items = v if isinstance(v, list) else [v]
        if not items or any(isinstance(i, (dict, list)) or i is None for i in items):
            ctx.error(kp, "expected a value, a list of values, or {regex: PATTERN}")
            continue
        out.append(Condition(key, values=tuple(str(i) for i in items)))
    return tuple(out)


def _check_name(ctx: _Ctx, name: Any, path: KeyPath) -> bool:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        ctx.error(path, f"a name uses letters, digits, '_', '.' and '-', got {name!r}")
        return False
    return True


def parse(text: str, file: str = "<config>") -> Config:
    """Parse configuration text; raise :class:`ConfigError` listing every problem."""
    try:
        data, lines, dups = load_with_lines(text)
    except YamlProblem as exc:
        hint = " (check indentation and quoting near this line)" \
            if exc.message.startswith("YAML") else ""
        raise ConfigError([ConfigIssue(file, exc.line, _Ctx.dotted(exc.path),
                                       exc.message + hint)]) from exc
    ctx = _Ctx(file, lines)
    for d in dups:
        ctx.error(d.path, d.message)
    if data is None:
        ctx.error((), "the file is empty; it needs at least 'spool', 'destinations' and "
                      "'routes' (see etc/forwarder.yaml)")
        raise ConfigError(ctx.issues)
    if not isinstance(data, dict):
        ctx.error((), f"expected a mapping of top-level keys, got {type(data).__name__}")
        raise ConfigError(ctx.issues)

    sections = {"watch", "destinations", "routes"}
    top = ctx.build(Config, {k: v for k, v in data.items() if k not in sections}, ())

    watches: list[Watch] = []
    raw_watch = data.get("watch") or []
    if not isinstance(raw_watch, list):
        ctx.error(("watch",), "expected a list of watch folders")
        raw_watch = []
    for i, w in enumerate(raw_watch):
        built = ctx.build(Watch, w, ("watch", i))
        if built is None:
            continue
        if not _check_name(ctx, built.name, ("watch", i, "name")):
            continue
        if any(x.name == built.name for x in watches):
            ctx.error(("watch", i, "name"), f"duplicate watch name '{built.name}'")
        watches.append(built)

    dests: dict[str, Destination] = {}
    raw_dests = data.get("destinations") or {}
    if not isinstance(raw_dests, dict):
        ctx.error(("destinations",), "expected a mapping of destination names to settings")
        raw_dests = {}
    for name, d in raw_dests.items():
        if not _check_name(ctx, name, ("destinations", name)):
            continue
        built = ctx.build(Destination, d, ("destinations", name), {"name": name})
        if built is None:
            continue
        tls = built.tls
        if tls.enabled and not tls.anonymous and bool(tls.cert) != bool(tls.key):
            ctx.error(("destinations", name, "tls"), "cert and key go together")
        ident = built.identity
        if ident.password_file and not ident.user:
            ctx.error(("destinations", name, "identity", "password_file"),
                      "a password needs 'user'")
        dests[name] = built

    routes: list[Route] = []
    raw_routes = data.get("routes") or []
    if not isinstance(raw_routes, list):
        ctx.error(("routes",), "expected a list of routes")
        raw_routes = []
    for i, r in enumerate(raw_routes):
        base = ("routes", i)
        if isinstance(r, dict):
            match = _parse_match(ctx, r.get("match"), (*base, "match"))
            built = ctx.build(Route, {k: v for k, v in r.items() if k != "match"}, base,
                              {"match": match})
        else:
            built = ctx.build(Route, r, base)
        if built is None:
            continue
        if not built.to:
            ctx.error((*base, "to"), "a route needs at least one destination")
        for j, dest in enumerate(built.to):
            if dest not in raw_dests:
                known = "defined: " + ", ".join(sorted(map(str, raw_dests))) if raw_dests else "none defined"
                ctx.error((*base, "to", j), f"undefined destination '{dest}' ({known})")
        for c in built.match:
            if c.key == "watch" and c.values:
                for v in c.values:
                    if not any(w.name == v for w in watches):
                        ctx.error((*base, "match", "watch"), f"no watch folder is named '{v}'")
        if built.name and any(x.name == built.name for x in routes):
            ctx.error((*base, "name"), f"duplicate route name '{built.name}'")
        routes.append(built)

    if top is not None:
        cfgcheck.cross_check(ctx, top.spool, watches, dests)
    if ctx.issues or top is None:
        raise ConfigError(ctx.issues)
    return dataclasses.replace(top, source=file, watch=tuple(watches), destinations=dests,
                               routes=tuple(routes))


def load(path: str | Path) -> Config:
    """Read and parse a configuration file; relative paths in it stay as written."""
    p = Path(path)
    try:
        text = read_bounded(p)
    except YamlProblem as exc:
        raise ConfigError([ConfigIssue(str(p), None, "", exc.message)]) from exc
    return parse(text, str(p))
