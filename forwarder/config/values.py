"""The value parsers of the configuration: durations, sizes, numbers in a range, choices,
AE titles. Each returns the value or raises :class:`~forwarder.config.engine.Bad` saying
what was expected."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from forwarder.config.engine import Bad, Ctx, KeyPath, Parser
from forwarder.negotiation import ae_title_ok

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
MAX_DURATION = 3650 * 86400.0
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNIT = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 2**20,
              "GB": 10**9, "GiB": 2**30}


def parse_duration(value: Any) -> float:
    """``500ms``, ``10s``, ``5m``, ``2h``, ``7d`` or a number of seconds -> seconds, at
    most :data:`MAX_DURATION` (a timer set further ahead overflows the platform's time;
    YAML's ``.nan`` and ``.inf`` are not durations)."""
    if isinstance(value, bool):
        raise Bad(f"expected a duration such as 10s, 5m or 2h, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise Bad(f"expected a duration such as 500ms, 10s, 5m, 2h or 7d, got {value!r}")
        if value < 0:
            raise Bad(f"a duration cannot be negative, got {value!r}")
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise Bad(f"expected a duration such as 500ms, 10s, 5m, 2h or 7d, got {value!r}")
        seconds = float(m.group(1)) * _DURATION_UNIT[m.group(2)]
    if seconds > MAX_DURATION:
        raise Bad(f"a duration is at most 3650d (ten years), got {value!r}")
    return seconds


def dicom_number(text: str) -> Decimal | None:
    """An IS or DS value as a number (``007`` and ``7``, ``5.0`` and ``5.000`` are each
    one number); None when it is not a finite one."""
    try:
        n = Decimal(text.strip())
    except InvalidOperation:
        return None
    return n if n.is_finite() else None


def parse_size(value: Any) -> int:
    """``16KiB``, ``10MB`` or a number of bytes -> bytes."""
    if isinstance(value, bool) or isinstance(value, float):
        raise Bad(f"expected a size such as 16KiB or 10MB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise Bad(f"a size cannot be negative, got {value!r}")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise Bad(f"expected a size such as 16KiB, 10MB or a number of bytes, got {value!r}")
    return int(m.group(1)) * _SIZE_UNIT[m.group(2)]


def p_str(ctx: Ctx, v: Any, path: KeyPath) -> str:
    if not isinstance(v, str) or v == "":
        raise Bad(f"expected a non-empty string, got {v!r}")
    return v


def p_bool(ctx: Ctx, v: Any, path: KeyPath) -> bool:
    if not isinstance(v, bool):
        raise Bad(f"expected true or false, got {v!r}")
    return v


def p_int(lo: int | None = None, hi: int | None = None) -> Parser:
    def parse(ctx: Ctx, v: Any, path: KeyPath) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise Bad(f"expected an integer, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise Bad(f"expected an integer from {lo} to {hi}, got {v}")
        return v
    return parse


def p_float(lo: float, hi: float) -> Parser:
    def parse(ctx: Ctx, v: Any, path: KeyPath) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Bad(f"expected a number, got {v!r}")
        if not lo <= v <= hi:
            raise Bad(f"expected a number from {lo} to {hi}, got {v}")
        return float(v)
    return parse


def p_duration(ctx: Ctx, v: Any, path: KeyPath) -> float:
    return parse_duration(v)


def p_period(lo: float, why: str = "shorter makes the daemon spin") -> Parser:
    """A duration of at least ``lo`` seconds: shorter would make a loop spin (or what
    ``why`` says)."""
    def parse(ctx: Ctx, v: Any, path: KeyPath) -> float:
        n = parse_duration(v)
        if n < lo:
            least = f"{lo:g}s" if lo >= 1 else f"{lo * 1000:g}ms"
            raise Bad(f"must be at least {least} ({why}), got {v!r}")
        return n
    return parse


def p_size(lo: int, hi: int) -> Parser:
    def parse(ctx: Ctx, v: Any, path: KeyPath) -> int:
        n = parse_size(v)
        if not lo <= n <= hi:
            raise Bad(f"expected a size from {lo} to {hi} bytes, got {n}")
        return n
    return parse


def p_enum(*choices: str) -> Parser:
    def parse(ctx: Ctx, v: Any, path: KeyPath) -> str:
        if v is None:  # YAML reads an empty value and an unquoted null or ~ alike
            hint = " (for the choice null write it in quotes, \"null\": unquoted, YAML " \
                "reads it as no value)" if "null" in choices else ""
            raise Bad(f"expected one of {', '.join(choices)}, got no value{hint}")
        if v not in choices:
            raise Bad(f"expected one of {', '.join(choices)}, got {v!r}")
        return str(v)
    return parse


def p_ae(ctx: Ctx, v: Any, path: KeyPath) -> str:
    s = p_str(ctx, v, path)
    if not ae_title_ok(s):
        raise Bad("an AE title is 1 to 16 printable ASCII characters without backslash, "
                  f"got {s!r}")
    return s
