"""`send`'s run: options, inputs, one association, a C-STORE per file, the exit code.

Success is the daemon's rule (:func:`forwarder.outcome.store_status`). pydicom and
pynetdicom are imported once the options say there is something to send, so ``--help``,
``--version`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import codecs
import configparser
import io
import logging
import logging.config as logging_config
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from forwarder import __version__, outcome, runtime
from forwarder.asconfig import ProfileError, read_profile_file
from forwarder.errors import EXIT_FAILURE, EXIT_OK, UsageError
from forwarder.negotiation import TooManyContexts, storescu_contexts
from forwarder.send import inputs
from forwarder.send.inputs import Item, collect_inputs, expand_command_files, probe_inputs
from forwarder.send.options import LOG_LEVELS, build_parser, check, peer_settings

if TYPE_CHECKING:
    from forwarder.association import PeerSettings

LOGGER = logging.getLogger("forwarder.send")


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
    check(args, parser.given(argv))
    _setup_logging(args)
    if args.arguments:
        print("expanded command line arguments:\n" + "\n".join(argv), file=sys.stderr)
    if args.list_ciphers:
        from forwarder.association import TLSSettings, ssl_context
        from forwarder.ciphers import iana_name

        print("Supported TLS ciphersuites are:")
        for c in ssl_context(TLSSettings(verify_peer=False)).get_ciphers():
            if c["protocol"] != "TLSv1.3":  # +cs holds the connection to TLS 1.2
                print(f"  {iana_name(c['name'])}")
        return EXIT_OK
    if args.seed or args.write_seed or args.write_seed_file:
        LOGGER.warning("+rs/+ws/+wf ignored: the TLS library seeds its generator itself")
    if not args.peer or not args.port or not args.files:
        raise UsageError("missing parameter: peer port dcmfile-in...")
    peer = peer_settings(args)
    runtime.setup()  # after the usage checks: a mistyped command line loads no DICOM library

    paths, errors = collect_inputs(args)
    items = probe_inputs(args, paths, errors)
    for line in errors:
        LOGGER.error("%s", line)
    if errors and not args.no_halt:
        return EXIT_FAILURE
    if not items:
        LOGGER.error("no DICOM files to send")
        return EXIT_FAILURE

    roles: dict[str, tuple[bool, bool]] = {}
    try:
        if args.config_file:
            file, name = args.config_file
            profile = read_profile_file(file, name)
            for entry in profile.skipped:  # each once
                LOGGER.warning("%s: not read (DCMTK reads the keys numbered 1, 2, 3... up "
                               "to the first number missing)", entry)
            contexts, roles = profile.contexts, profile.roles
        else:
            required = [it.probe.sop_class_uid for it in items] if args.required else None
            contexts = storescu_contexts(args.mode, args.combine, required)
    except (ProfileError, TooManyContexts, OSError) as exc:
        raise UsageError(str(exc)) from exc
    return _send(args, peer, contexts, items, bool(errors), roles)


def _send(args: argparse.Namespace, peer: PeerSettings, contexts, items: list[Item],
          had_errors: bool, roles: dict[str, tuple[bool, bool]] | None = None) -> int:
    import ssl

    from forwarder.association import AssociationFailed
    from forwarder.cstore import StoreResult, store_file
    from forwarder.progress import Progress
    from forwarder.scu import Association
    from forwarder.send.invent import modifier

    LOGGER.info("Requesting Association")  # -v: storescu's lines, in its words
    try:
        assoc = Association.open(peer, contexts, roles or None)
    except AssociationFailed as exc:  # storescu's "F: Association Rejected", even with -q
        LOGGER.critical("%s", exc)
        return EXIT_FAILURE
    except (ssl.SSLError, OSError, ValueError) as exc:
        LOGGER.critical("cannot set up the association: %s", exc)
        return EXIT_FAILURE
    LOGGER.info("Association Accepted (Max Send PDV: %d)", assoc.fragment)
    if args.verbose_pc:
        from pydicom.uid import UID

        for cx in assoc.accepted:
            LOGGER.info("presentation context %s: %s %s", cx.context_id,
                        UID(cx.abstract_syntax).name, cx.transfer_syntax)
        for rejected in assoc.rejected:
            LOGGER.info("presentation context rejected: %s", UID(rejected.abstract_syntax).name)
    modify = modifier(args)
    failed = had_errors
    progress = Progress(len(items) * args.repeat, sum(i.size for i in items) * args.repeat)
    msg_id = 0
    try:
        # storescu --repeat sends each file n times before the next one
        for item in [it for it in items for _ in range(args.repeat)]:
            if not assoc.is_established:
                LOGGER.error("%s: not sent, the association is gone", item.path)
                failed = True
                if not args.no_halt:
                    return EXIT_FAILURE
                continue
            msg_id = msg_id % 65535 + 1
            LOGGER.info("Sending file: %s", item.path)
            started = time.monotonic()
            inputs.current[:] = [item.path]
            try:
                result = store_file(assoc, item.path, item.probe, "always", modify, msg_id,
                                    deflate_level=6 if args.compression_level is None
                                    else args.compression_level)
            except OSError as exc:  # gone or unreadable since it was read: nothing was sent
                result = StoreResult(None, refused=f"cannot read it: {exc.strerror or exc}")
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
                LOGGER.error("%s: no response from the peer (%s)", item.path,
                             result.comment or outcome.no_response_cause(
                                 time.monotonic() - started, peer.dimse_timeout, False))
            else:
                comment = f" ({result.comment})" if result.comment else ""
                LOGGER.error("%s: store failed, status 0x%04X%s", item.path, result.status,
                             comment)
            if not args.no_halt:
                return EXIT_FAILURE
    finally:
        inputs.current.clear()
        progress.close()
        if assoc.is_established:
            LOGGER.info("Aborting Association" if args.abort else "Releasing Association")
            assoc.abort() if args.abort else assoc.release()
    return EXIT_FAILURE if failed else EXIT_OK


# the loggers of the libraries that read and decode files (py: Python's warnings)
_READERS = ("pydicom", "py", "pylibjpeg", "libjpeg", "openjpeg", "rle")


class _Lines(logging.Formatter):
    """storescu's ``W: message`` lines (``F:`` for what ends the run, which ``-q`` still
    prints); a traceback a library logs only in debug mode (the failure it explains has
    its own line)."""

    def __init__(self, tracebacks: bool):
        super().__init__()
        self.tracebacks = tracebacks

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        letter = "F" if record.levelno >= logging.CRITICAL else record.levelname[:1]
        where = f"{os.fspath(inputs.current[0])}: " \
            if record.name.split(".")[0] in _READERS and inputs.current else ""
        return f"{letter}: {where}{record.getMessage()}"

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]  # noqa: ANN001, N802
        return super().formatException(ei) if self.tracebacks else ""


def _own_bytes(exc: UnicodeError) -> tuple[str | bytes, int]:
    """stderr's encoding errors: a file name's undecodable bytes (Python's lone
    surrogates) are written back as they were, as storescu prints them; any other
    character stderr cannot encode is escaped, never an error in the middle of a line."""
    if isinstance(exc, UnicodeEncodeError):
        chunk = exc.object[exc.start:exc.end]
        if all(0xDC80 <= ord(c) <= 0xDCFF for c in chunk):
            return bytes(ord(c) - 0xDC00 for c in chunk), exc.end
    return codecs.backslashreplace_errors(exc)


def _setup_logging(args: argparse.Namespace) -> None:
    if isinstance(sys.stderr, io.TextIOWrapper):
        codecs.register_error("forwarder-own-bytes", _own_bytes)
        sys.stderr.reconfigure(errors="forwarder-own-bytes")
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
    handler.setFormatter(_Lines(level <= logging.DEBUG))
    handler.setLevel(level)  # -q: the libraries' own loggers are held to it too
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if level > logging.DEBUG else level)

