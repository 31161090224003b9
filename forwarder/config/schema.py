"""This project's configuration schema: the YAML keys as frozen dataclasses, each field
with its parser and default (docs/configuration.md describes them for users)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

from regex import Pattern

from forwarder.config.engine import opt, p_list, p_opt, p_section
from forwarder.config.values import (
    p_ae,
    p_bool,
    p_duration,
    p_enum,
    p_float,
    p_int,
    p_period,
    p_size,
    p_str,
)
from forwarder.negotiation import PROPOSE_MODES, Context


@dataclass(frozen=True)
class LogConfig:
    level: str = opt(p_enum("fatal", "error", "warn", "info", "debug", "trace"), "info")
    target: str = opt(p_enum("auto", "journal", "stderr"), "auto")
    phi: bool = opt(p_bool, False)
    paths: str = opt(p_enum("keep", "redact"), "keep")


@dataclass(frozen=True)
class Watch:
    name: str = opt(p_str, None)
    path: str = opt(p_str, None)
    patterns: tuple[str, ...] = opt(p_list(p_str), ("*",))
    ignore: tuple[str, ...] = opt(p_list(p_str), (".*", "*.tmp", "*.part", "*.partial"))
    recursive: bool = opt(p_bool, True)
    min_age: float = opt(p_duration, 2.0)
    rescan: float = opt(p_period(0.1), 60.0)
    polling: bool = opt(p_bool, False)
    keep_source: bool = opt(p_bool, False)
    truncated_after: float = opt(p_period(1.0, "each time a file held open or cut short "
                                          "changes, it waits this long again"), 600.0)

    REQUIRED = ("name", "path")


# 0 would make the socket non-blocking: every connect and read fails at once (storescu
# refuses timeouts below 1 s); null is the way to say none
_TIMEOUT = p_period(0.1, "null for no limit")


@dataclass(frozen=True)
class Timeouts:
    connect: float | None = opt(p_opt(_TIMEOUT), 10.0)
    acse: float | None = opt(p_opt(_TIMEOUT), 30.0)
    dimse: float | None = opt(p_opt(_TIMEOUT), 60.0)
    network: float | None = opt(p_opt(_TIMEOUT), 60.0)


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = opt(p_period(0.1), 10.0)
    max: float = opt(p_duration, 600.0)
    multiplier: float = opt(p_float(1.0, 100.0), 2.0)
    jitter: float = opt(p_float(0.0, 1.0), 0.2)
    max_age: float = opt(p_period(60.0, "a shorter one fails jobs a peer away for a minute "
                                   "would still have taken"), 7 * 86400.0)


@dataclass(frozen=True)
class TLSConfig:
    enabled: bool = opt(p_bool, False)
    cert: str | None = opt(p_opt(p_str))
    key: str | None = opt(p_opt(p_str))
    key_password_file: str | None = opt(p_opt(p_str))
    ca: tuple[str, ...] = opt(p_list(p_str), ())
    ca_dir: str | None = opt(p_opt(p_str))
    verify_peer: bool = opt(p_bool, True)
    profile: str = opt(p_enum("bcp195", "bcp195-nd", "bcp195-ex", "basic", "aes", "null"),
                       "bcp195")
    ciphers: tuple[str, ...] = opt(p_list(p_str), ())
    server_name: str | None = opt(p_opt(p_str))
    der: bool = opt(p_bool, False)
    anonymous: bool = opt(p_bool, False)


@dataclass(frozen=True)
class Identity:
    user: str | None = opt(p_opt(p_str))
    password_file: str | None = opt(p_opt(p_str))
    kerberos_file: str | None = opt(p_opt(p_str))
    saml_file: str | None = opt(p_opt(p_str))
    jwt_file: str | None = opt(p_opt(p_str))
    positive_response: bool = opt(p_bool, False)


@dataclass(frozen=True)
class NegotiationProfile:
    """A DCMTK association negotiation profile (storescu ``-xf FILE PROFILE``)."""

    file: str = opt(p_str, None)
    profile: str = opt(p_str, None)

    REQUIRED = ("file", "profile")


@dataclass(frozen=True)
class Destination:
    name: str = ""
    host: str = opt(p_str, None)
    port: int = opt(p_int(1, 65535), None)
    called_ae_title: str = opt(p_ae, "ANY-SCP")
    calling_ae_title: str | None = opt(p_opt(p_ae))
    propose: str = opt(p_enum(*PROPOSE_MODES), "uncompressed")
    combine: bool = opt(p_bool, False)
    decompress: str = opt(p_enum("never", "lossless", "always"), "lossless")
    max_pdu: int = opt(p_size(0, 2**32 - 1), 16384)
    max_send_pdu: int | None = opt(p_opt(p_size(4096, 2**32 - 1)))
    compression_level: int | None = opt(p_opt(p_int(0, 9)))
    new_vrs: bool = opt(p_bool, True)
    strip_uid_padding: bool = opt(p_bool, False)
    negotiation_profile: NegotiationProfile | None = opt(p_opt(p_section(NegotiationProfile)))
    # not keys: the profile as read from its file when the configuration was checked
    # (start, reload), so that a reload notices an edited profile and every worker of a
    # destination proposes the same
    proposal: tuple[Context, ...] = ()
    roles: tuple[tuple[str, bool, bool], ...] = ()
    timeouts: Timeouts = opt(p_section(Timeouts), Timeouts())
    associations: int = opt(p_int(1, 64), 1)
    batch: int = opt(p_int(1, 10000), 100)
    idle_release: float = opt(p_duration, 5.0)
    max_association_age: float = opt(p_period(1.0), 300.0)
    warning_is_success: bool = opt(p_bool, True)
    retry: RetryPolicy = opt(p_section(RetryPolicy), RetryPolicy())
    tls: TLSConfig = opt(p_section(TLSConfig), TLSConfig())
    identity: Identity = opt(p_section(Identity), Identity())

    REQUIRED = ("host", "port")

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Condition:
    """One ``match`` entry: a watch name, a path glob, or a DICOM attribute by keyword."""

    key: str
    values: tuple[str, ...] = ()
    regex: Pattern[str] | None = None  # the regex package's: searched with a time limit
    numeric: bool = False  # IS, DS, binary integers and floats: compared as numbers


@dataclass(frozen=True)
class Route:
    name: str = opt(p_opt(p_str))
    match: tuple[Condition, ...] = ()
    to: tuple[str, ...] = opt(p_list(p_str), ())
    final: bool = opt(p_bool, False)

    REQUIRED = ("to",)


@dataclass(frozen=True)
class Retention:
    failed: float | None = opt(p_opt(p_duration))  # None: kept until an operator acts
    quarantine: float | None = opt(p_opt(p_duration))
    every: float = opt(p_period(60.0), 3600.0)


@dataclass(frozen=True)
class Config:
    source: str = ""
    ae_title: str = opt(p_ae, "FORWARDER")
    spool: str = opt(p_str, "/var/lib/dicom-forwarder")
    log: LogConfig = opt(p_section(LogConfig), LogConfig())
    retention: Retention = opt(p_section(Retention), Retention())
    watch: tuple[Watch, ...] = ()
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    unrouted: str = opt(p_enum("quarantine", "delete"), "quarantine")

    def calling_ae(self, dest: Destination) -> str:
        return dest.calling_ae_title or self.ae_title

    @functools.cached_property
    def attribute_keywords(self) -> frozenset[str]:
        """The DICOM keywords the routes match on: what the probe must read (asked for
        every file intake takes, so computed once per configuration)."""
        return frozenset(c.key for r in self.routes for c in r.match
                         if c.key not in ("watch", "path"))
