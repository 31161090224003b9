"""File names as the operator sees them: any bytes, shown faithfully in printable UTF-8.

A name on Linux is any bytes but ``/`` and NUL: Latin-1 names from SMB and NFS shares,
names with newlines or terminal escapes. Python hands them over with lone surrogates
(``os.fsdecode``), which SQLite, JSON files and journald refuse, and a newline in a name
would start a new line in a log. :func:`shown` is the one text form of a path used in
the spool's index, quarantine records, log messages and journal fields: valid UTF-8,
printable, and one-to-one (two different names never look the same), in the style of a
Python string literal:

- a backslash is doubled: ``\\\\``;
- a byte that is not UTF-8 is ``\\xNN``;
- a newline, carriage return and tab are ``\\n``, ``\\r``, ``\\t``; any other character
  that is not printable is ``\\uNNNN`` or ``\\UNNNNNNNN``.

Names made of printable UTF-8 without backslashes (nearly all) are shown unchanged.
:func:`unshown` gives the original path back.
"""

from __future__ import annotations

import os
import re

_SPECIAL = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BYTES = {"\\": b"\\", "n": b"\n", "r": b"\r", "t": b"\t"}
_ESCAPE = re.compile(r"\\(\\|n|r|t|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def _char(c: str) -> str:
    if c in _SPECIAL:
        return _SPECIAL[c]
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if c.isprintable() and not 0xD800 <= code <= 0xDFFF:
        return c
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown(path: str | bytes | os.PathLike[str]) -> str:
    """The printable, one-to-one UTF-8 text of ``path`` (see the module's rules)."""
    raw = os.fsencode(path)
    text = raw.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_char(c) for c in text)


def unshown(text: str) -> str:
    """The path (as ``os.fsdecode`` would give it) that :func:`shown` turned into ``text``."""
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        out += text[pos:m.start()].encode()
        esc = m.group(1)
        if esc[0] == "x":
            out.append(int(esc[1:], 16))
        elif esc[0] in "uU":
            out += chr(int(esc[1:], 16)).encode("utf-8", "surrogatepass")
        else:
            out += _BYTES[esc]
        pos = m.end()
    out += text[pos:].encode()
    return os.fsdecode(bytes(out))
