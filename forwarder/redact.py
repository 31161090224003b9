"""What may leak patient data out of the logs: file paths and peers' error comments.

Modalities name files and folders after patients. With ``log.paths: redact`` every file
path the daemon logs (messages and ``FORWARDER_FILE``) becomes ``path#`` and the first
16 hex digits of its SHA-256: stable, so one file's events still line up, but a path
is only confirmed by someone who already guesses it. A peer's error comment (free text
that may quote the dataset) reaches reasons, ``last_error`` and ``status`` only with
``log.phi: true``.
"""

from __future__ import annotations

import hashlib
import logging
import os

PATH_FIELD = "FORWARDER_FILE"


def path_token(path: str | os.PathLike[str]) -> str:
    raw = os.fsencode(path)
    return "path#" + hashlib.sha256(raw).hexdigest()[:16]


class PathFilter(logging.Filter):
    """Replaces the record's file path, in its fields and its message arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = record.__dict__.get(PATH_FIELD)
        if isinstance(path, str):
            token = path_token(path)
            record.__dict__[PATH_FIELD] = token
            if isinstance(record.args, tuple):  # the path itself, or quoted in a reason
                record.args = tuple(a.replace(path, token) if isinstance(a, str) else a
                                    for a in record.args)
        return True


def comment(text: str | None, phi: bool) -> str | None:
    """A peer's error comment as reasons may carry it."""
    if text is None or phi:
        return text
    return f"error comment withheld, {len(text)} characters; log.phi: true shows it"
