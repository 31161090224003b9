"""The command line: `dicom-forwarder COMMAND ...`; the only place that parses argv."""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from forwarder import __version__
from forwarder.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_USAGE, ConfigError, ForwarderError

COMMANDS = ("run", "check-config", "status", "retry", "resume", "failed", "quarantine", "echo",
            "send", "receive", "spool", "purge")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicom-forwarder",
                                description="DICOM watch-folder autoforwarder")
    p.add_argument("--version", action="version", version=f"dicom-forwarder {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("send", help="one-shot C-STORE SCU with storescu's options", add_help=False)

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML configuration")
        return sp

    run = with_config("run", "the daemon, in the foreground (systemd runs this)")
    run.add_argument("--log-target", choices=("auto", "journal", "stderr"),
                     help="override log.target of the configuration")
    with_config("check-config", "validate the configuration; exit 0 or 78")
    st = with_config("status", "per destination: pending, sending, done, failed, state")
    st.add_argument("--json", action="store_true", help="print the status contract as JSON")
    rt = with_config("retry", "requeue failed jobs")
    rt.add_argument("--destination", metavar="NAME", help="only this destination")
    rt.add_argument("--all-failed", action="store_true", help="every failed job")
    rs = with_config("resume", "probe a held or backed-off destination now; its jobs due now")
    rs.add_argument("name", metavar="NAME")
    fl = with_config("failed", "list failed jobs with their reasons")
    fl.add_argument("--json", action="store_true")
    qu = with_config("quarantine", "list quarantined inputs with their reasons")
    qu.add_argument("--json", action="store_true")
    sp = with_config("spool", "spool maintenance, with the service stopped")
    sp.add_argument("action", choices=("rebuild",),
                    help="rebuild: a new index, the spool's objects taken again through "
                    "the current routes (for a missing, empty or damaged index)")
    sp.add_argument("--force", action="store_true",
                    help="rebuild even though the index is readable and holds jobs or "
                    "their history")
    pg = with_config("purge", "delete failed jobs and quarantined files older than an age, "
                     "or the jobs of a removed destination")
    pg.add_argument("--failed-older-than", metavar="AGE",
                    help="failed jobs last touched longer ago than AGE (30d, 12h...)")
    pg.add_argument("--quarantine-older-than", metavar="AGE",
                    help="quarantined files (and their .json) older than AGE")
    pg.add_argument("--removed-destination", metavar="NAME",
                    help="every job of a destination no longer in the configuration (its "
                    "files would wait for it for ever)")
    pg.add_argument("--dry-run", action="store_true", help="only count what would go")
    ec = with_config("echo", "C-ECHO each destination with its full settings")
    ec.add_argument("names", nargs="*", metavar="NAME")
    rc = sub.add_parser("receive", help="a small storage SCP for trying things out")
    rc.add_argument("--port", type=int, required=True)
    rc.add_argument("--output", required=True, metavar="DIR")
    rc.add_argument("--aet", default="ANY-SCP")
    rc.add_argument("--bind", default="127.0.0.1")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code (0 ok, 1 failure, 2 usage, 78 config);
    1 without a word when stdout's reader went away before all was written."""
    out = sys.stdout
    if out is not None:  # None: started with stdout closed, and print() writes nothing
        sys.stdout = _Output(out)  # type: ignore[assignment]
    try:
        code = _run(argv)
        if sys.stdout is not None:
            sys.stdout.flush()  # here, not at exit, so a closed pipe is met in the try
    except BrokenPipeError:
        if not _reader_gone():
            raise  # a socket's, not stdout's: a fault to see
        return _quiet()
    except _OutputFailed as exc:  # stdout on a full disk, a failing device (> /dev/full)
        print(f"dicom-forwarder: cannot write the output: {exc.strerror}", file=sys.stderr)
        return _quiet()
    finally:
        sys.stdout = out
    return code


class _OutputFailed(OSError):
    """Writing to stdout failed (not a closed pipe): said in words, not a traceback."""


@contextlib.contextmanager
def _told_apart() -> Iterator[None]:
    """stdout's own error, a closed pipe aside, as :class:`_OutputFailed`."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _OutputFailed(exc.errno, exc.strerror) from exc


class _Output:
    """stdout, whose own write errors are told apart from any other file's."""

    def __init__(self, out: TextIO):
        self._out = out

    def write(self, text: str) -> int:
        with _told_apart():
            return self._out.write(text)

    def flush(self) -> None:
        with _told_apart():
            self._out.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)


def _reader_gone() -> bool:
    """Has stdout's reader gone (``status --json | head -1``)? A pipe or socket whose
    other end is closed polls as an error or hang-up."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (replaced, closed)
        return False
    poller = select.poll()
    poller.register(fd, 0)  # errors and hang-ups are reported whatever is asked
    return any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in poller.poll(0))


def _quiet() -> int:
    """Stop without a word, as tools that SIGPIPE ends do. What is left in stdout's
    buffer goes to /dev/null, so the interpreter's flush at exit does not fail again
    (Python's docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_FAILURE  # not all was written; the exit codes stay the documented four


def _run(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list and args_list[0] == "send":
            from forwarder.send import run as send

            return send(args_list[1:])
        parser = _parser()
        try:
            args = parser.parse_args(args_list)
        except SystemExit as exc:
            return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        from forwarder import commands

        handler = getattr(commands, "cmd_" + args.command.replace("-", "_"))
        return int(handler(args))
    except ConfigError as exc:
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        return exc.exit_code
    except ForwarderError as exc:
        print(f"dicom-forwarder: {exc}", file=sys.stderr)
        return exc.exit_code
    except sqlite3.DatabaseError as exc:  # damage found by a query, after the open
        from forwarder.spool import db

        if not db.is_damage(exc):
            raise
        print(f"dicom-forwarder: the spool index is damaged ({exc}); {db.HOW}",
              file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
