"""Keep user identity secrets out of every log record.

pynetdicom narrates each A-ASSOCIATE-RQ at DEBUG, the user identity's passcode in
clear text ("Password: [...]"); `send -d`, `log.level: debug`/`trace` and `receive`
would write it out. A filter on the logger that narrates it replaces the value.
"""

from __future__ import annotations

import logging
import re

NARRATOR = "pynetdicom._handlers"
_PASSWORD = re.compile(r"(Password:\s*\[).*(\])", re.DOTALL)


class SecretFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, str) and "Password:" in msg:
            record.msg = _PASSWORD.sub(r"\1(not logged)\2", msg)
        return True


def install() -> None:
    """Attach the filter once to pynetdicom's narrating logger (it is a logger filter:
    it holds for whatever handlers a logging configuration adds)."""
    logger = logging.getLogger(NARRATOR)
    if not any(isinstance(f, SecretFilter) for f in logger.filters):
        logger.addFilter(SecretFilter())
