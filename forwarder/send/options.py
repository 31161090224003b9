"""`send`'s command line: DCMTK storescu's options, spellings and defaults, and the
peer settings they describe.

Options may stand anywhere and the rightmost of mutually exclusive ones wins (the
parser is used with ``parse_intermixed_args``).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from forwarder.errors import UsageError
from forwarder.negotiation import OPTION_TO_MODE, PROPOSE_MODES, ae_title_ok

if TYPE_CHECKING:
    from forwarder.association import PeerSettings

PROPOSE_LONG = {"-x=": "--propose-uncompr"}  # the one long name not --propose-MODE
LOG_LEVELS = {"fatal": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING,
              "info": logging.INFO, "debug": logging.DEBUG, "trace": 5}


class _Identity(argparse.Action):
    """``-usr``, ``-kt``, ``--saml`` and ``--jwt`` exclude each other: the rightmost
    wins, as storescu reads them (a ``-pwd`` then needs a ``-usr`` that won)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        for dest in IDENTITY_OPTIONS:
            setattr(namespace, dest, None)
        setattr(namespace, self.dest, values)


IDENTITY_OPTIONS = ("user", "kerberos", "saml", "jwt")


class _Parser(argparse.ArgumentParser):
    # storescu's options that need TLS on (+tls or +tla), and those for the key (+tls)
    need_tls: list[argparse.Action]
    need_key: list[argparse.Action]

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see 'dicom-forwarder send --help')")

    def given(self, argv: Sequence[str]) -> list[tuple[str, bool]]:
        """The options needing TLS that ``argv`` gives (before a ``--``), each as
        "short/long" and whether it is for the key (+tls alone)."""
        names = {o: ("/".join(a.option_strings), a in self.need_key)
                 for a in [*self.need_tls, *self.need_key] for o in a.option_strings}
        return [names[name] for name in (t.split("=", 1)[0] for t in
                                         itertools.takewhile(lambda t: t != "--", argv))
                if name in names]


def build_parser() -> _Parser:
    p = _Parser(prog="dicom-forwarder send", prefix_chars="-+", add_help=False,
                allow_abbrev=False,
                usage="dicom-forwarder send [options] peer port dcmfile-in...",
                description="DICOM storage (C-STORE) SCU with DCMTK storescu's options.")
    a = p.add_argument
    g = p.add_argument_group("general options")
    g.add_argument("-h", "--help", action="store_true", help="print this help text and exit")
    g.add_argument("--version", action="store_true", help="print version information and exit")
    g.add_argument("--arguments", action="store_true", help="print expanded command line arguments")
    g.add_argument("-q", "--quiet", dest="log_level", action="store_const", const="fatal",
                   help="quiet mode, print no warnings and errors")
    g.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="info",
                   help="verbose mode, print processing details")
    g.add_argument("-d", "--debug", dest="log_level", action="store_const", const="debug",
                   help="debug mode, print debug information")
    g.add_argument("-ll", "--log-level", dest="log_level", choices=list(LOG_LEVELS),
                   help="use level l for the logger")
    g.add_argument("-lc", "--log-config", metavar="FILE",
                   help="use config file f for the logger (Python logging.config format)")
    g.add_argument("+v", "--verbose-pc", action="store_true",
                   help="show presentation contexts in verbose mode")
    i = p.add_argument_group("input options")
    i.add_argument("+f", "--read-file", dest="read", action="store_const", const="file",
                   help="read file format or data set (default)")
    i.add_argument("+fo", "--read-file-only", dest="read", action="store_const",
                   const="file-only", help="read file format only")
    i.add_argument("-f", "--read-dataset", dest="read", action="store_const", const="dataset",
                   help="read data set without file meta information")
    i.add_argument("+sd", "--scan-directories", action="store_true",
                   help="scan directories for input files (dcmfile-in)")
    i.add_argument("+sp", "--scan-pattern", metavar="PATTERN",
                   help="pattern for filename matching (wildcards)")
    i.add_argument("-r", "--no-recurse", dest="recurse", action="store_false",
                   help="do not recurse within directories (default)")
    i.add_argument("+r", "--recurse", dest="recurse", action="store_true",
                   help="recurse within specified directories")
    n = p.add_argument_group("network options")
    n.add_argument("-aet", "--aetitle", default="STORESCU", help="set my calling AE title")
    n.add_argument("-aec", "--call", default="ANY-SCP", help="set called AE title of peer")
    n.add_argument("-xf", "--config-file", nargs=2, metavar=("FILE", "PROFILE"),
                   help="use profile p from config file f")
    for opt, mode in OPTION_TO_MODE.items():
        long = PROPOSE_LONG.get(opt, f"--propose-{mode}")
        n.add_argument(opt, long, dest="mode", action="store_const", const=mode,
                       help=f"propose the {mode} transfer syntaxes (storescu {opt})")
    n.add_argument("-R", "--required", action="store_true",
                   help="propose only required presentation contexts")
    n.add_argument("+C", "--combine", action="store_true",
                   help="combine proposed transfer syntaxes")
    n.add_argument("+u", "--enable-new-vr", dest="new_vr", action="store_true", default=True,
                   help="enable support for new VRs (UN/UT) (default)")
    n.add_argument("-u", "--disable-new-vr", dest="new_vr", action="store_false",
                   help="disable support for new VRs, convert to OB")
    n.add_argument("+cl", "--compression-level", type=int, choices=range(10),
                   metavar="[0-9]", help="deflate compression level (default: 6; only with "
                   "-xd or -xf)")
    n.add_argument("-usr", "--user", action=_Identity, help="authenticate using user name u")
    n.add_argument("-pwd", "--password", help="authenticate using password p")
    n.add_argument("-epw", "--empty-password", action="store_true", help="send empty password")
    n.add_argument("-kt", "--kerberos", metavar="FILE", action=_Identity, help="read kerberos ticket from file f")
    n.add_argument("--saml", metavar="FILE", action=_Identity, help="read SAML request from file f")
    n.add_argument("--jwt", metavar="FILE", action=_Identity, help="read JWT data from file f")
    n.add_argument("-rsp", "--pos-response", action="store_true", help="expect positive response")
    n.add_argument("-to", "--timeout", type=int, help="timeout for connection requests")
    n.add_argument("-ts", "--socket-timeout", type=int, default=60,
                   help="timeout for network socket (0 for none)")
    n.add_argument("-ta", "--acse-timeout", type=int, default=30, help="timeout for ACSE messages")
    n.add_argument("-td", "--dimse-timeout", type=int, help="timeout for DIMSE messages")
    n.add_argument("-pdu", "--max-pdu", type=int, default=16384, help="set max receive pdu")
    n.add_argument("--max-send-pdu", type=int, help="restrict max send pdu to n bytes")
    n.add_argument("--repeat", type=int, default=1, help="repeat n times")
    n.add_argument("--abort", action="store_true", help="abort association instead of releasing it")
    n.add_argument("-nh", "--no-halt", action="store_true",
                   help="do not halt if unsuccessful store encountered")
    n.add_argument("-up", "--uid-padding", action="store_true",
                   help="silently correct space-padded UIDs")
    n.add_argument("+II", "--invent-instance", action="store_true",
                   help="invent a new SOP instance UID for every image sent")
    n.add_argument("+IR", "--invent-series", type=int, metavar="N",
                   help="invent a new series UID after n images have been sent (default: 100)")
    n.add_argument("+IS", "--invent-study", type=int, metavar="N",
                   help="invent a new study UID after n series have been sent (default: 50)")
    n.add_argument("+IP", "--invent-patient", type=int, metavar="N",
                   help="invent a new patient ID and name after n studies (default: 25)")
    t = p.add_argument_group("transport layer security (TLS) options")
    p.need_tls, p.need_key = [], []

    def with_tls(*names: str, **kw: Any) -> None:
        p.need_tls.append(t.add_argument(*names, **kw))

    def with_key(*names: str, **kw: Any) -> None:
        p.need_key.append(t.add_argument(*names, **kw))

    t.add_argument("-tls", "--disable-tls", dest="tls", action="store_const", const=None,
                   help="use normal TCP/IP connection (default)")
    t.add_argument("+tls", "--enable-tls", dest="tls", nargs=2, metavar=("KEY", "CERT"),
                   help="use authenticated secure TLS connection")
    t.add_argument("+tla", "--anonymous-tls", dest="tls", action="store_const", const=[],
                   help="use secure TLS connection without certificate")
    with_key("+ps", "--std-passwd", dest="passwd", action="store_const", const=None,
             help="prompt user to type password on stdin (default)")
    with_key("+pw", "--use-passwd", dest="passwd", help="use specified password")
    with_key("-pw", "--null-passwd", dest="passwd", action="store_const", const="",
             help="use empty string as password")
    with_tls("-pem", "--pem-keys", dest="der", action="store_false",
             help="read keys and certificates as PEM file (default)")
    with_tls("-der", "--der-keys", dest="der", action="store_true",
             help="read keys and certificates as DER file")
    with_tls("+cf", "--add-cert-file", action="append", default=[], metavar="FILE",
             help="add certificate file to list of certificates")
    with_tls("+cd", "--add-cert-dir", action="append", default=[], metavar="DIR",
             help="add certificates in d to list of certificates")
    for opt, long, prof in (("+px", "--profile-bcp195", "bcp195"),
                            ("+py", "--profile-bcp195-nd", "bcp195-nd"),
                            ("+pz", "--profile-bcp195-ex", "bcp195-ex"),
                            ("+pb", "--profile-basic", "basic"),
                            ("+pa", "--profile-aes", "aes"),
                            ("+pn", "--profile-null", "null")):
        with_tls(opt, long, dest="profile", action="store_const", const=prof,
                 help=f"{prof} TLS profile")
    t.add_argument("+cc", "--list-ciphers", action="store_true",
                   help="show list of supported TLS ciphersuites and exit")
    with_tls("+cs", "--cipher", action="append", default=[],
             help="add ciphersuite to list of negotiated suites")
    with_tls("+rs", "--seed", metavar="FILE", help="accepted; the TLS library seeds itself")
    with_tls("+ws", "--write-seed", action="store_true", help="accepted; see +rs")
    with_tls("+wf", "--write-seed-file", metavar="FILE", help="accepted; see +rs")
    with_tls("-rc", "--require-peer-cert", dest="verify", action="store_true",
             default=True, help="verify peer certificate, fail if absent (default)")
    with_tls("-ic", "--ignore-peer-cert", dest="verify", action="store_false",
             help="don't verify peer certificate")
    a("peer", nargs="?", help="hostname of DICOM peer")
    a("port", nargs="?", help="tcp/ip port number of peer")
    a("files", nargs="*", metavar="dcmfile-in", help="DICOM file or directory to be transmitted")
    p.set_defaults(mode="uncompressed", read="file", recurse=False, profile="bcp195",
                   log_level="warn", tls=None, der=False)
    return p


def check(args: argparse.Namespace, given: Sequence[tuple[str, bool]] = ()) -> None:
    """storescu's value ranges and option dependencies, each broken one a usage error
    naming the option, before anything is read or sent. ``given``: the options needing
    TLS on the command line (:meth:`_Parser.given`): never dropped silently for a plain
    connection."""
    for name, for_key in given:
        if args.tls is None:
            raise UsageError(f"{name} only with +tls/--enable-tls or +tla/--anonymous-tls "
                             "(without them the connection is plain TCP)")
        if for_key and not args.tls:
            raise UsageError(f"{name} only with +tls/--enable-tls (+tla has no key)")
    for name, value in (("+ws/--write-seed", args.write_seed),
                        ("+wf/--write-seed-file", args.write_seed_file)):
        if value and args.seed is None:
            raise UsageError(f"{name} only with +rs/--seed")
    if args.verbose_pc and args.log_config is None and LOG_LEVELS[args.log_level] > logging.INFO:
        raise UsageError("+v/--verbose-pc only with -v/--verbose, -d/--debug or -ll info, "
                         "debug or trace")
    for opt, value in (("-to/--timeout", args.timeout), ("-ta/--acse-timeout", args.acse_timeout),
                       ("-td/--dimse-timeout", args.dimse_timeout), ("--repeat", args.repeat),
                       ("+IR/--invent-series", args.invent_series),
                       ("+IS/--invent-study", args.invent_study),
                       ("+IP/--invent-patient", args.invent_patient)):
        if value is not None and value < 1:
            raise UsageError(f"{opt} must be at least 1, got {value}")
    if args.socket_timeout < -1:
        raise UsageError(f"-ts/--socket-timeout must be at least -1 (0 and -1: none), got "
                         f"{args.socket_timeout}")
    for opt, value in (("-pdu/--max-pdu", args.max_pdu), ("--max-send-pdu", args.max_send_pdu)):
        if value is not None and not 4096 <= value <= 131072:
            raise UsageError(f"{opt} must be from 4096 to 131072 bytes, got {value}")
    for opt, title in (("-aet/--aetitle", args.aetitle), ("-aec/--call", args.call)):
        if not ae_title_ok(title):
            raise UsageError(f"{opt}: an AE title is 1 to 16 printable ASCII characters "
                             f"without backslash, got {title!r}")
    if not args.scan_directories:
        if args.scan_pattern is not None:
            raise UsageError("+sp/--scan-pattern only with +sd/--scan-directories")
        if args.recurse:
            raise UsageError("+r/--recurse only with +sd/--scan-directories")
    if args.pos_response and not any(getattr(args, d) for d in IDENTITY_OPTIONS):
        raise UsageError("-rsp/--pos-response only with -usr, -kt, --saml or --jwt")
    if args.empty_password and args.password is not None:
        raise UsageError("-epw/--empty-password and -pwd/--password exclude each other")
    if args.config_file is not None:  # the profile says what is proposed, and how
        opt = PROPOSE_MODES[args.mode][0]
        for given, name in ((args.mode != "uncompressed",
                             f"{opt}/{PROPOSE_LONG.get(opt, '--propose-' + args.mode)}"),
                            (args.combine, "+C/--combine"), (args.required, "-R/--required")):
            if given:
                raise UsageError(f"-xf/--config-file excludes {name}")
    elif args.compression_level is not None and args.mode != "deflated":
        raise UsageError("+cl/--compression-level only with -xd/--propose-deflated or "
                         "-xf/--config-file")


def peer_settings(args: argparse.Namespace) -> PeerSettings:
    """The association's settings from the network, identity and TLS options."""
    from forwarder.association import (
        IdentitySettings,
        PeerSettings,
        TLSSettings,
        identity_from_files,
    )
    from forwarder.ciphers import openssl_names

    if args.empty_password and args.password is None:
        args.password = ""  # runtime.setup() lets pynetdicom encode it
    if args.password is not None and not args.user:
        raise UsageError("-pwd/-epw need --user")
    identity: IdentitySettings = identity_from_files(
        args.user, args.password, args.kerberos, args.saml, args.jwt, args.pos_response)
    tls = None
    if args.tls is not None:
        key, cert = (args.tls if args.tls else (None, None))
        tls = TLSSettings(cert=cert, key=key, key_password=args.passwd,
                          prompt_password=args.passwd is None and sys.stdin.isatty(),
                          der=args.der, ca_files=tuple(args.add_cert_file),
                          ca_dirs=tuple(args.add_cert_dir), verify_peer=args.verify,
                          profile=args.profile, ciphers=openssl_names(args.cipher))
    try:
        port = int(args.port)
        if not 0 < port < 65536:
            raise ValueError
    except (TypeError, ValueError) as exc:
        raise UsageError(f"port must be a number from 1 to 65535, got {args.port!r}") from exc
    return PeerSettings(
        host=args.peer, port=port, called_ae=args.call, calling_ae=args.aetitle,
        max_pdu=args.max_pdu, max_send_pdu=args.max_send_pdu,
        connect_timeout=args.timeout, acse_timeout=args.acse_timeout,
        dimse_timeout=args.dimse_timeout,
        network_timeout=args.socket_timeout if args.socket_timeout > 0 else None,  # 0, -1: none
        tls=tls, identity=identity)
