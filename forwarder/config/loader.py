"""Reading a configuration file: YAML with line numbers -> the schema's dataclasses.

Every problem (unknown key, wrong type, bad duration, a route naming an undefined
destination, ...) becomes a :class:`~forwarder.errors.ConfigIssue` that names the
file, the line and the key path; :func:`load` raises one :class:`ConfigError` with all
of them, so ``check-config`` can print the whole list at once.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import re
from pathlib import Path
from typing import Any

import regex

from forwarder.config import keywords
from forwarder.config.crosscheck import cross_check
from forwarder.config.engine import Ctx, KeyPath
from forwarder.config.schema import Condition, Config, Destination, Route, Watch
from forwarder.config.yamlsrc import YamlProblem, load_with_lines, read_bounded
from forwarder.errors import ConfigError, ConfigIssue

# how DICOM writes each kind of value an exact match compares as text or number (PS3.5
# 6.2): a value written otherwise (12:30:00, 2024-01-05, 7.5 for an IS) never matches
_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_FORMS = {
    "IS": (_INTEGER, "an integer (IS), such as 7"),
    "DS": (_DECIMAL, "a decimal number (DS), such as 2.5 or 1e-3"),
    "US": (_INTEGER, "an integer ({vr}), such as 512"),  # every binary integer
    "FL": (_DECIMAL, "a decimal number ({vr}), such as 2.5 or 1e-3"),  # FL and FD
    "DA": (re.compile(r"\d{8}"), "a date, written YYYYMMDD (20240105, not 2024-01-05)"),
    "TM": (re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"),
           "a time, written HHMMSS (123000, not 12:30:00)"),
    "DT": (re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?"
                      r"([+-]\d{4})?"),
           "a date and time, written YYYYMMDDHHMMSS (20240105123000)"),
}

MAX_REPEATS = 100_000
_COUNTED = re.compile(r"\{(\d+)(?:,(\d*))?\}")  # x{3}, x{2,5}, x{2,}; an escaped \{ too
# binary values: never text to compare (and Pixel Data is not read to route a file)
_BINARY = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
# the binary numbers, compared as numbers and checked as their forms: integers as US,
# floating point as FL
_AS_FORM = {"SS": "US", "UL": "US", "SL": "US", "SV": "US", "UV": "US", "US or SS": "US",
            "FD": "FL"}


def _parse_match(ctx: Ctx, value: Any, path: KeyPath,
                 written: dict[KeyPath, str]) -> tuple[Condition, ...]:
    """The conditions of one route; ``written``: the text of unquoted scalars YAML read
    as numbers, booleans or dates, compared as the user wrote them."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        ctx.error(path, f"expected a mapping of conditions, got {value!r}")
        return ()
    out = []
    for key, v in value.items():
        kp = (*path, key)
        vr = None
        if key not in ("watch", "path"):
            keyword_dict = keywords.keyword_tags()
            if key not in keyword_dict:
                close = difflib.get_close_matches(key, keyword_dict, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                ctx.error(kp, f"unknown DICOM keyword{hint}; conditions are watch, path "
                              "or a DICOM keyword such as Modality")
                continue
            vr = keywords.vr(keyword_dict[key])
            if vr == "SQ":
                ctx.error(kp, "a sequence attribute cannot be matched")
                continue
            if set(vr.split(" or ")) & _BINARY:
                ctx.error(kp, f"a binary attribute ({vr}) cannot be matched")
                continue
        if isinstance(v, dict):
            pattern = v.get("regex")
            if isinstance(pattern, (int, float, datetime.date)):  # regex: 2024, unquoted
                pattern = written.get((*kp, "regex"), str(pattern))
            if set(v) != {"regex"} or not isinstance(pattern, str):
                ctx.error(kp, "expected a value, a list of values, or {regex: PATTERN}")
                continue
            compiled = _compile(ctx, (*kp, "regex"), pattern)
            if compiled is not None:
                out.append(Condition(key, regex=compiled))
            continue
        items = v if isinstance(v, list) else [v]
        if not items or any(isinstance(i, (dict, list)) or i is None for i in items):
            ctx.error(kp, "expected a value, a list of values, or {regex: PATTERN}")
            continue
        paths = [(*kp, j) for j in range(len(items))] if isinstance(v, list) else [kp]
        texts = tuple(i if isinstance(i, str) else written.get(p, str(i))
                      for i, p in zip(items, paths, strict=True))
        if vr is not None:  # as the file's values are compared: without padding spaces
            texts = tuple(t.strip(" ") for t in texts)
        form = _FORMS.get(_AS_FORM.get(vr, vr) if vr else "")
        if form is not None:  # an empty value matches an attribute present but empty
            bad = [t for t in texts if t and not all(form[0].fullmatch(part.strip(" "))
                                                     for part in t.split("\\"))]
            if bad:
                ctx.error(kp, f"{key} is {form[1].format(vr=vr)}; '{bad[0]}' is not one (a regex "
                              "matches any text)")
                continue
        numeric = _AS_FORM.get(vr, vr) in ("IS", "DS", "US", "FL") if vr else False
        out.append(Condition(key, values=texts, numeric=numeric))
    return tuple(out)


def _compile(ctx: Ctx, path: KeyPath, pattern: str) -> regex.Pattern[str] | None:
    """A route's pattern compiled, or an error at its line. Counted repeats are bounded:
    compiling one holds a copy per least count, nested ones multiply
    (``(?:a{1000}){1000}`` took 300 MB, ``(?:a{1,1000}){1,1000}`` 12 MB), and a
    configuration must not exhaust the daemon's memory at a reload. The least counts
    of all of them are multiplied, nested or not: a bound, not a measure."""
    product = 1
    for m in _COUNTED.finditer(pattern):
        product *= max(1, int(m.group(1)))
    if product > MAX_REPEATS:
        ctx.error(path, f"counted repeats whose least counts ({{n}}, {{n,m}}) multiply to "
                        f"more than {MAX_REPEATS:,} cannot be compiled safely; use + or * "
                        "instead")
        return None
    try:
        return regex.compile(pattern)
    except (regex.error, RecursionError, OverflowError, MemoryError) as exc:
        ctx.error(path, f"bad regular expression: {exc or type(exc).__name__}")
        return None


def _check_name(ctx: Ctx, name: Any, path: KeyPath) -> bool:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        ctx.error(path, f"a name uses letters, digits, '_', '.' and '-', got {name!r}")
        return False
    return True


def _section(ctx: Ctx, data: dict[Any, Any], key: str, kind: type, what: str) -> Any:
    """Top-level section ``key`` when it is a ``kind`` (absent: empty), else an error and
    an empty one."""
    raw = data.get(key) or kind()
    if not isinstance(raw, kind):
        ctx.error((key,), f"expected {what}")
        return kind()
    return raw


def parse(text: str, file: str = "<config>") -> Config:
    """Parse configuration text; raise :class:`ConfigError` listing every problem."""
    try:
        written: dict[KeyPath, str] = {}
        data, lines, dups = load_with_lines(text, written)
    except YamlProblem as exc:
        hint = " (check indentation and quoting near this line)" \
            if exc.message.startswith("YAML") else ""
        raise ConfigError([ConfigIssue(file, exc.line, Ctx.dotted(exc.path),
                                       exc.message + hint)]) from exc
    ctx = Ctx(file, lines)
    for d in dups:
        ctx.error(d.path, d.message)
    if data is None:
        ctx.error((), "the file is empty; it needs at least 'spool', 'destinations' and "
                      "'routes' (see etc/forwarder.yaml)")
        raise ConfigError(ctx.issues)
    if not isinstance(data, dict):
        ctx.error((), f"expected a mapping of top-level keys, got {type(data).__name__}")
        raise ConfigError(ctx.issues)

    sections = ("watch", "destinations", "routes")
    top = ctx.build(Config, {k: v for k, v in data.items() if k not in sections}, (),
                    also=sections)

    watches: list[Watch] = []
    for i, w in enumerate(_section(ctx, data, "watch", list, "a list of watch folders")):
        built = ctx.build(Watch, w, ("watch", i))
        if built is None:
            continue
        if not _check_name(ctx, built.name, ("watch", i, "name")):
            continue
        if any(x.name == built.name for x in watches):
            ctx.error(("watch", i, "name"), f"duplicate watch name '{built.name}'")
        if built.truncated_after < built.min_age:
            if "truncated_after" in w:
                ctx.error(("watch", i, "truncated_after"),
                          f"must be at least min_age ({built.min_age:g}s): a file is judged "
                          f"cut short only once it has settled, got {built.truncated_after:g}s")
            else:  # the default is shorter than this folder's min_age
                built = dataclasses.replace(built, truncated_after=built.min_age)
        watches.append(built)

    dests: dict[str, Destination] = {}
    raw_dests = _section(ctx, data, "destinations", dict,
                         "a mapping of destination names to settings")
    for name, d in raw_dests.items():
        if not _check_name(ctx, name, ("destinations", name)):
            continue
        built = ctx.build(Destination, d, ("destinations", name), {"name": name})
        if built is None:
            continue
        if built.compression_level is not None and built.propose != "deflated" \
                and built.negotiation_profile is None:
            ctx.error(("destinations", name, "compression_level"),
                      "only with 'propose: deflated' or a negotiation_profile (storescu: "
                      "+cl only with -xd or -xf): the level is zlib's when a data set is "
                      "deflated to be sent")
        if built.negotiation_profile is not None:
            for key, default in (("propose", "uncompressed"), ("combine", False)):
                if getattr(built, key) != default:
                    ctx.error(("destinations", name, key),
                              f"'{key}' and 'negotiation_profile' exclude each other: the "
                              "profile says what is proposed (storescu: -xf with no -x "
                              "option); keep one")
        tls = built.tls
        if tls.enabled and not tls.anonymous and bool(tls.cert) != bool(tls.key):
            ctx.error(("destinations", name, "tls"), "cert and key go together")
        raw_tls = d.get("tls") if isinstance(d, dict) else None
        if isinstance(raw_tls, dict) and raw_tls and "enabled" not in raw_tls:
            ctx.error(("destinations", name, "tls"), "TLS settings without 'enabled': the "
                      "association would be plain TCP. Add 'enabled: true' to use them "
                      "(storescu: +tls or +tla), or 'enabled: false' to keep them unused")
        ident = built.identity
        if ident.password_file and not ident.user:
            ctx.error(("destinations", name, "identity", "password_file"),
                      "a password needs 'user'")
        kinds = [k for k in ("user", "kerberos_file", "saml_file", "jwt_file")
                 if getattr(ident, k)]
        if len(kinds) > 1:  # one identity per association (PS3.7 D.3.3.7)
            ctx.error(("destinations", name, "identity", kinds[1]),
                      f"{' and '.join(kinds)} exclude each other: an association carries "
                      "one user identity; keep one")
        if ident.positive_response and not kinds:
            ctx.error(("destinations", name, "identity", "positive_response"),
                      "a positive response is asked for an identity: set user, "
                      "kerberos_file, saml_file or jwt_file (storescu -rsp needs one too)")
        dests[name] = built

    routes: list[Route] = []
    for i, r in enumerate(_section(ctx, data, "routes", list, "a list of routes")):
        base = ("routes", i)
        if isinstance(r, dict):
            match = _parse_match(ctx, r.get("match"), (*base, "match"), written)
            built = ctx.build(Route, {k: v for k, v in r.items() if k != "match"}, base,
                              {"match": match}, also=("match",))
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
        cross_check(ctx, top.spool, watches, dests)
    if ctx.issues or top is None:
        raise ConfigError(ctx.issues, _spool_named(ctx, data))
    return dataclasses.replace(top, source=file, watch=tuple(watches), destinations=dests,
                               routes=tuple(routes))


def _spool_named(ctx: Ctx, data: dict[Any, Any]) -> str | None:
    """The spool a file with errors names, when it gives that key once and soundly: the
    commands that only look still find the queue while another part of the file is being
    mended. Never the default: the key may be the one misspelt."""
    if "spool" not in data or any(i.path == "spool" for i in ctx.issues):
        return None
    alone = Ctx(ctx.file, ctx.lines)
    built = alone.build(Config, {"spool": data["spool"]}, ())
    return None if built is None or alone.issues else built.spool


def load(path: str | Path) -> Config:
    """Read and parse a configuration file; relative paths in it stay as written."""
    p = Path(path)
    try:
        text = read_bounded(p)
    except YamlProblem as exc:
        raise ConfigError([ConfigIssue(str(p), None, "", exc.message)]) from exc
    return parse(text, str(p))
