"""One small hierarchy of faults, each with the exit code the command line returns for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd's RestartPreventExitStatus uses it


class ForwarderError(Exception):
    """Base of every fault the program reports in words rather than a traceback."""

    exit_code = EXIT_FAILURE


class UsageError(ForwarderError):
    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file, located as precisely as the YAML allows."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(ForwarderError):
    """The configuration is unusable; carries every issue found, not only the first."""

    exit_code = EXIT_CONFIG

    def __init__(self, issues: list[ConfigIssue], spool: str | None = None):
        self.issues = list(issues)
        self.spool = spool  # the spool the file names, when that key alone is sound
        super().__init__("\n".join(str(i) for i in self.issues))


class SpoolError(ForwarderError):
    """The spool cannot keep its promise (write or fsync failed): fatal, never retried."""


class SpoolUnusable(SpoolError):
    """The spool cannot be made or kept where the configuration puts it (a network or
    kernel file system, a directory that cannot be created), or its index was written by
    a newer version: no restart fixes that, so the daemon refuses to start with exit 78."""

    exit_code = EXIT_CONFIG


class SpoolFull(ForwarderError):
    """No space left for a new object: intake leaves sources in place and tries later.
    ``undecided``: the files of the refused batch that got no verdict yet (set by intake)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.undecided: list[Any] = []


class SourceChanged(ForwarderError):
    """A source was written to while it was taken: it is not accepted, it settles again."""


class NotDicomError(ForwarderError):
    """An input is not a storable DICOM object; the message says why."""


class SpoolIndexError(ForwarderError):
    """The spool index is missing, empty or damaged next to spooled objects: starting
    would lose every queued job, so the daemon refuses (exit 78, no restart loop) and
    says how to rebuild it."""

    exit_code = EXIT_CONFIG
