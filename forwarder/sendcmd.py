"""`dicom-forwarder send`: a one-shot C-STORE SCU taking DCMTK storescu's options.

Same spellings, meanings and defaults as storescu(1): options may stand anywhere, the
rightmost of mutually exclusive ones wins, and ``@file`` expands to the file's words.
"""

from __future__ import annotations

import argparse
import configparser
import fnmatch
import logging
import logging.config as logging_config
import shlex
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from forwarder import __version__, emptypasscode, nosecrets, outcome, runtime
from forwarder.asconfig import ProfileError, parse_profile
from forwarder.association import (
    AssociationFailed,
    IdentitySettings,
    PeerSettings,
    TLSSettings,
    identity_from_files,
    ssl_context,
)
from forwarder.ciphers import iana_name, openssl_names
from forwarder.cstore import store_file
from forwarder.dicomfile import Probe, probe
from forwarder.errors import EXIT_FAILURE, EXIT_OK, NotDicomError, UsageError
from forwarder.negotiation import OPTION_TO_MODE, TooManyContexts, storescu_contexts
from forwarder.progress import Progress
from forwarder.scu import Association

LOGGER = logging.getLogger("forwarder.send")

LOG_LEVELS = {"fatal": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING,
              "info": logging.INFO, "debug": logging.DEBUG, "trace": 5}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see 'dicom-forwarder send --help')")


def build_parser() -> argparse.ArgumentParser:
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
        long = {"-x=": "--propose-uncompr"}.get(opt, f"--propose-{mode}")
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
    n.add_argument("+cl", "--compression-level", type=int, default=6, choices=range(10),
                   metavar="[0-9]", help="deflate compression level (default: 6)")
    n.add_argument("-usr", "--user", help="authenticate using user name u")
    n.add_argument("-pwd", "--password", help="authenticate using password p")
    n.add_argument("-epw", "--empty-password", action="store_true", help="send empty password")
    n.add_argument("-kt", "--kerberos", metavar="FILE", help="read kerberos ticket from file f")
    n.add_argument("--saml", metavar="FILE", help="read SAML request from file f")
    n.add_argument("--jwt", metavar="FILE", help="read JWT data from file f")
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
    t.add_argument("-tls", "--disable-tls", dest="tls", action="store_const", const=None,
                   help="use normal TCP/IP connection (default)")
    t.add_argument("+tls", "--enable-tls", dest="tls", nargs=2, metavar=("KEY", "CERT"),
                   help="use authenticated secure TLS connection")
    t.add_argument("+tla", "--anonymous-tls", dest="tls", action="store_const", const=[],
                   help="use secure TLS connection without certificate")
    t.add_argument("+ps", "--std-passwd", dest="passwd", action="store_const", const=None,
                   help="prompt user to type password on stdin (default)")
    t.add_argument("+pw", "--use-passwd", dest="passwd", help="use specified password")
    t.add_argument("-pw", "--null-passwd", dest="passwd", action="store_const", const="",
                   help="use empty string as password")
    t.add_argument("-pem", "--pem-keys", dest="der", action="store_false",
                   help="read keys and certificates as PEM file (default)")
    t.add_argument("-der", "--der-keys", dest="der", action="store_true",
                   help="read keys and certificates as DER file")
    t.add_argument("+cf", "--add-cert-file", action="append", default=[], metavar="FILE",
                   help="add certificate file to list of certificates")
    t.add_argument("+cd", "--add-cert-dir", action="append", default=[], metavar="DIR",
                   help="add certificates in d to list of certificates")
    for opt, long, prof in (("+px", "--profile-bcp195", "bcp195"),
                            ("+py", "--profile-bcp195-nd", "bcp195-nd"),
                            ("+pb", "--profile-basic", "basic"),
                            ("+pa", "--profile-aes", "aes"),
                            ("+pn", "--profile-null", "null")):
        t.add_argument(opt, long, dest="profile", action="store_const", const=prof,
                       help=f"{prof} TLS profile")
    t.add_argument("+cc", "--list-ciphers", action="store_true",
                   help="show list of supported TLS ciphersuites and exit")
    t.add_argument("+cs", "--cipher", action="append", default=[],
                   help="add ciphersuite to list of negotiated suites")
    t.add_argument("+rs", "--seed", metavar="FILE", help="accepted; the TLS library seeds itself")
    t.add_argument("+ws", "--write-seed", action="store_true", help="accepted; see +rs")
    t.add_argument("+wf", "--write-seed-file", metavar="FILE", help="accepted; see +rs")
    t.add_argument("-rc", "--require-peer-cert", dest="verify", action="store_true",
                   default=True, help="verify peer certificate, fail if absent (default)")
    t.add_argument("-ic", "--ignore-peer-cert", dest="verify", action="store_false",
                   help="don't verify peer certificate")
    a("peer", nargs="?", help="hostname of DICOM peer")
    a("port", nargs="?", help="tcp/ip port number of peer")
    a("files", nargs="*", metavar="dcmfile-in", help="DICOM file or directory to be transmitted")
    p.set_defaults(mode="uncompressed", read="file", recurse=False, profile="bcp195",
                   log_level="warn", tls=None, der=False)
    return p


def expand_command_files(argv: Sequence[str]) -> list[str]:
    """Replace each ``@file`` with the whitespace-separated words it holds (one level)."""
    out: list[str] = []
    for arg in argv:
        if arg.startswith("@") and len(arg) > 1:
            try:
                text = Path(arg[1:]).read_text()
            except OSError as exc:
                raise UsageError(f"cannot read command file {arg[1:]}: {exc.strerror}") from exc
            out.extend(shlex.split(text, comments=False))
        else:
            out.append(arg)
    return out


@dataclass
class Item:
    path: Path
    probe: Probe
    size: int


def collect_inputs(args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """Files to send, in command-line order, and an error line for each unusable input."""
    files: list[Path] = []
    errors: list[str] = []
    for name in args.files:
        path = Path(name)
        try:
            if path.is_dir():
                if not args.scan_directories:
                    errors.append(f"{name}: is a directory (use +sd to scan directories)")
                    continue
                walker = sorted(path.rglob("*")) if args.recurse else sorted(path.iterdir())
                files.extend(f for f in walker if f.is_file() and (
                    not args.scan_pattern or fnmatch.fnmatch(f.name, args.scan_pattern)))
            elif not path.exists():
                errors.append(f"{name}: no such file")
            else:
                files.append(path)
        except OSError as exc:
            errors.append(f"{name}: cannot read: {exc.strerror}")
    return files, errors


class UidInventor:
    """storescu's +II/+IR/+IS/+IP: every image gets a new SOP Instance UID and invented
    patient, study and series: a new series after n images (+IR, default 100), a new
    study after n series (+IS, 50), a new patient after n studies (+IP, 25). Patient ID,
    Patient Name, Study ID, Series Number and Instance Number are set as storescu sets
    them (a counter after the time in seconds)."""

    def __init__(self, series_every: int, study_every: int, patient_every: int):
        self.series_every, self.study_every, self.patient_every = (
            series_every, study_every, patient_every)
        self.stamp = str(int(time.time()))
        self.images = self.series = self.studies = self.patients = 0
        self._new_series()
        self._new_study()
        self._new_patient()

    def _new_series(self) -> None:
        self.series_uid = generate_uid()
        self.series_number = str(self.series)  # kept when a new study resets the count

    def _new_study(self) -> None:
        self.study_uid = generate_uid()
        self.study_id = f"SID_{self.stamp}{self.studies}"

    def _new_patient(self) -> None:
        self.patient_id = f"PID_{self.stamp}{self.patients}"
        self.patient_name = f"FORWARDER^TEST_PN_{self.stamp}{self.patients}"

    def __call__(self, ds: Dataset) -> None:
        if self.images >= self.series_every:
            self.images, self.series = 0, self.series + 1
            self._new_series()
        if self.series >= self.study_every:
            self.series, self.studies = 0, self.studies + 1
            self._new_study()
        if self.studies >= self.patient_every:
            self.studies, self.patients = 0, self.patients + 1
            self._new_patient()
        ds.PatientID, ds.PatientName = self.patient_id, self.patient_name
        ds.StudyID, ds.StudyInstanceUID = self.study_id, self.study_uid
        ds.SeriesInstanceUID, ds.SeriesNumber = self.series_uid, self.series_number
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = str(self.images)
        self.images += 1


def _modifier(args: argparse.Namespace):  # noqa: ANN202 - returns None or a callable
    steps: list[Callable[[Dataset], None]] = []
    if args.invent_instance or args.invent_series or args.invent_study or args.invent_patient:
        steps.append(UidInventor(args.invent_series or 100, args.invent_study or 50,
                                 args.invent_patient or 25))
    if args.uid_padding:
        def fix_uids(ds: Dataset) -> None:
            for elem in ds.iterall():
                if elem.VR == "UI" and isinstance(elem.value, str):
                    elem.value = elem.value.rstrip(" \0")
        steps.append(fix_uids)
    if not args.new_vr:
        def old_vrs(ds: Dataset) -> None:
            for elem in ds.iterall():
                if elem.VR in ("UN", "UT", "UC", "UR", "OV", "SV", "UV"):
                    if isinstance(elem.value, str):
                        elem.value = elem.value.encode("utf-8")
                    elem.VR = "OB"
        steps.append(old_vrs)
    if not steps:
        return None

    def apply(ds: Dataset) -> None:
        for step in steps:
            step(ds)
    return apply


def peer_settings(args: argparse.Namespace) -> PeerSettings:
    if args.empty_password and args.password is None:
        args.password = ""
        emptypasscode.apply()
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
    if not 4096 <= args.max_pdu <= 131072 and args.max_pdu != 0:
        raise UsageError("-pdu must be from 4096 to 131072")
    return PeerSettings(
        host=args.peer, port=port, called_ae=args.call, calling_ae=args.aetitle,
        max_pdu=args.max_pdu, max_send_pdu=args.max_send_pdu,
        connect_timeout=args.timeout, acse_timeout=args.acse_timeout,
        dimse_timeout=args.dimse_timeout, network_timeout=args.socket_timeout or None,
        tls=tls, identity=identity)


def run(argv: Sequence[str]) -> int:
    """Parse storescu's options and send; 0 only when every file was stored."""
    argv = expand_command_files(argv)
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.help:
        parser.print_help()
        return EXIT_OK
    if args.version:
        print(f"dicom-forwarder send {__version__} (storescu-compatible C-STORE SCU)")
        return EXIT_OK
    runtime.setup()
    _setup_logging(args)
    if args.arguments:
        print("expanded command line arguments:\n" + "\n".join(argv), file=sys.stderr)
    if args.list_ciphers:
        print("Supported TLS ciphersuites are:")
        for c in ssl_context(TLSSettings(verify_peer=False)).get_ciphers():
            print(f"  {iana_name(c['name'])}")
        return EXIT_OK
    if args.seed or args.write_seed or args.write_seed_file:
        LOGGER.warning("+rs/+ws/+wf ignored: the TLS library seeds its generator itself")
    if not args.peer or not args.port or not args.files:
        raise UsageError("missing parameter: peer port dcmfile-in...")
    peer = peer_settings(args)

    paths, errors = collect_inputs(args)
    items: list[Item] = []
    for path in paths:
        try:
            pr = probe(path, require_meta=args.read == "file-only",
                       dataset_only=args.read == "dataset")
            items.append(Item(path, pr, path.stat().st_size))
        except NotDicomError as exc:
            errors.append(f"{path}: {exc}")
        except OSError as exc:
            errors.append(f"{path}: cannot read: {exc.strerror}")
    for line in errors:
        LOGGER.error("%s", line)
    if errors and not args.no_halt:
        return EXIT_FAILURE
    if not items:
        LOGGER.error("no DICOM files to send")
        return EXIT_FAILURE

    try:
        if args.config_file:
            file, profile = args.config_file
            contexts = parse_profile(Path(file).read_text(), profile, file)
        else:
            required = [it.probe.sop_class_uid for it in items] if args.required else None
            contexts = storescu_contexts(args.mode, args.combine, required)
    except (ProfileError, TooManyContexts, OSError) as exc:
        raise UsageError(str(exc)) from exc
    return _send(args, peer, contexts, items, bool(errors))


def _send(args: argparse.Namespace, peer: PeerSettings, contexts, items: list[Item],
          had_errors: bool) -> int:
    try:
        assoc = Association.open(peer, contexts)
    except AssociationFailed as exc:
        LOGGER.error("%s", exc)
        return EXIT_FAILURE
    except (ssl.SSLError, OSError, ValueError) as exc:
        LOGGER.error("cannot set up the association: %s", exc)
        return EXIT_FAILURE
    if args.verbose_pc:
        for cx in assoc.accepted:
            LOGGER.info("presentation context %s: %s %s", cx.context_id,
                        UID(cx.abstract_syntax).name, cx.transfer_syntax)
        for rejected in assoc.rejected:
            LOGGER.info("presentation context rejected: %s", UID(rejected.abstract_syntax).name)
    modify = _modifier(args)
    failed = had_errors
    progress = Progress(len(items) * args.repeat, sum(i.size for i in items) * args.repeat)
    msg_id = 0
    try:
        # storescu --repeat sends each file n times before the next one
        for item in [it for it in items for _ in range(max(args.repeat, 1))]:
            if not assoc.is_established:
                LOGGER.error("%s: not sent, the association is gone", item.path)
                failed = True
                if not args.no_halt:
                    return EXIT_FAILURE
                continue
            msg_id = msg_id % 65535 + 1
            started = time.monotonic()
            result = store_file(assoc, item.path, item.probe, "always", modify, msg_id)
            # the daemon's rule (outcome.py): success, warnings and 0111 duplicate
            action = (outcome.store_status(result.status, result.comment)
                      if result.status is not None else None)
            if action is not None and action.kind == outcome.DONE:
                LOGGER.info("%s: stored, status 0x%04X%s", item.path, result.status,
                            f" ({action.reason})" if action.warning else "")
                progress.advance(item.size)
                continue
            failed = True
            if result.refused:
                LOGGER.error("%s: not sent: %s", item.path, result.refused)
            elif result.status is None:  # the transport says why, in words
                LOGGER.error("%s: %s", item.path, result.comment or outcome.no_response_cause(
                    time.monotonic() - started, peer.dimse_timeout, False))
            else:
                comment = f" ({result.comment})" if result.comment else ""
                LOGGER.error("%s: store failed, status 0x%04X%s", item.path, result.status,
                             comment)
            if not args.no_halt:
                return EXIT_FAILURE
    finally:
        progress.close()
        if assoc.is_established:
            assoc.abort() if args.abort else assoc.release()
    return EXIT_FAILURE if failed else EXIT_OK


def _setup_logging(args: argparse.Namespace) -> None:
    nosecrets.install()
    if args.log_config:
        try:
            text = Path(args.log_config).read_text(errors="replace")
        except OSError as exc:
            raise UsageError(f"cannot read log config {args.log_config}: {exc.strerror}") from exc
        if "log4cplus." in text:
            raise UsageError(f"{args.log_config} is a DCMTK (log4cplus) logger configuration; "
                             "-lc takes a Python logging.config file ([loggers], [handlers], "
                             "[formatters]); use -ll/-v/-d for the level")
        try:
            logging_config.fileConfig(args.log_config, disable_existing_loggers=False)
        except (OSError, KeyError, ValueError, configparser.Error, ImportError,
                AttributeError, TypeError) as exc:
            raise UsageError(f"cannot use log config {args.log_config}: not a Python "
                             f"logging.config file ({type(exc).__name__}: {exc})") from exc
        return
    level = LOG_LEVELS[args.log_level]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname).1s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if level > logging.DEBUG else level)

