"""Pure parser of DCMTK's association negotiation profile files (``storescu -xf FILE PROFILE``).

The format (DCMTK ``asconfig.txt``): ``[[TransferSyntaxes]]``, ``[[PresentationContexts]]``
and ``[[Profiles]]`` sections, each holding ``[Name]`` groups of ``KeyN = value`` lines.
A presentation context line is ``SOPClass\\TransferSyntaxGroup``; names are DCMTK's
symbolic names or dotted UIDs.

As DCMTK reads a group, its entries are the keys ``TransferSyntax1``, ``TransferSyntax2``,
... (``PresentationContextN``, ``RoleN``), case not significant, taken in the order of
their numbers and up to the first number missing, wherever they stand in the group: the
order of the numbers is the order proposed. Other keys are passed over, as DCMTK passes
them over, and named in :attr:`Profile.skipped`.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field

from forwarder.negotiation import (
    DEFLATED_LE,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    LOCAL_EXPLICIT,
    Context,
)

_TS_NAMES = {
    "LittleEndianImplicit": IMPLICIT_LE,
    "LittleEndianExplicit": EXPLICIT_LE,
    "BigEndianExplicit": EXPLICIT_BE,
    "LocalEndianExplicit": LOCAL_EXPLICIT,
    "OppositeEndianExplicit": EXPLICIT_BE if LOCAL_EXPLICIT == EXPLICIT_LE else EXPLICIT_LE,
    "DeflatedLittleEndianExplicit": DEFLATED_LE,
    "JPEGBaseline": "1.2.840.10008.1.2.4.50",
    "JPEGExtended:Process2+4": "1.2.840.10008.1.2.4.51",
    "JPEGLossless:Non-hierarchical-1stOrderPrediction": "1.2.840.10008.1.2.4.70",
    "JPEGLossless:Non-hierarchical:Process14": "1.2.840.10008.1.2.4.57",
    "JPEGLSLossless": "1.2.840.10008.1.2.4.80",
    "JPEGLSLossy": "1.2.840.10008.1.2.4.81",
    "JPEG2000LosslessOnly": "1.2.840.10008.1.2.4.90",
    "JPEG2000": "1.2.840.10008.1.2.4.91",
    "MPEG2MainProfile@MainLevel": "1.2.840.10008.1.2.4.100",
    "MPEG2MainProfile@HighLevel": "1.2.840.10008.1.2.4.101",
    "MPEG4HighProfile/Level4.1": "1.2.840.10008.1.2.4.102",
    "MPEG4BDcompatibleHighProfile/Level4.1": "1.2.840.10008.1.2.4.103",
    "MPEG4HighProfile/Level4.2For2DVideo": "1.2.840.10008.1.2.4.104",
    "MPEG4HighProfile/Level4.2For3DVideo": "1.2.840.10008.1.2.4.105",
    "MPEG4StereoHighProfile/Level4.2": "1.2.840.10008.1.2.4.106",
    "HEVCMainProfile/Level5.1": "1.2.840.10008.1.2.4.107",
    "HEVCMain10Profile/Level5.1": "1.2.840.10008.1.2.4.108",
    "RLELossless": "1.2.840.10008.1.2.5",
}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


class ProfileError(ValueError):
    """The profile file is malformed or does not hold the profile; names file and line."""


class ProfileFileError(ProfileError):
    """The path given is no profile file at all (a folder, a device, something huge)."""


_ROLES = {"SCU": (True, False), "SCP": (False, True), "BOTH": (True, True)}


@dataclass
class Profile:
    """What a profile proposes: its presentation contexts in order, the SCP/SCU roles it
    selects per SOP class, and the entries DCMTK would not read (``file:line: key``)."""

    contexts: list[Context]
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _numbered(lines: list[tuple[int, str, str]], prefix: str, file: str,
              skipped: list[str]) -> list[tuple[int, str]]:
    """The values of ``prefix1``, ``prefix2``, ... in the order of their numbers, up to
    the first number missing (DCMTK's rule); every other key goes to ``skipped``."""
    by_number: dict[int, tuple[int, str]] = {}
    for lineno, key, value in lines:
        tail = _name(key)[len(prefix):] if _name(key).startswith(_name(prefix)) else ""
        if tail.isdigit() and not tail.startswith("0") and int(tail) not in by_number:
            by_number[int(tail)] = (lineno, value)
    taken: list[tuple[int, str]] = []
    while len(taken) + 1 in by_number:
        taken.append(by_number[len(taken) + 1])
    used = {lineno for lineno, _ in taken}
    skipped.extend(f"{file}:{lineno}: {key}" for lineno, key, _ in lines if lineno not in used)
    return taken


def _sop_uid(name: str) -> str | None:
    if _UID.match(name):
        return name
    from pydicom.uid import UID_dictionary

    wanted = name.lower()
    for uid, entry in UID_dictionary.items():
        if entry[4].lower() == wanted:
            return str(uid)
    return None


def _name(text: str) -> str:
    """A section, group, key or profile name as DCMTK compares them: without whitespace,
    in upper case (``[Two Words]`` is the profile ``TwoWords``, and ``two words``)."""
    return "".join(text.split()).upper()


def parse_profile(text: str, profile: str, file: str = "<profile>") -> list[Context]:
    """The presentation contexts of ``profile`` in a DCMTK association config ``text``."""
    return read_profile(text, profile, file).contexts


def read_profile(text: str, profile: str, file: str = "<profile>") -> Profile:
    """``profile`` of a DCMTK association config ``text``: its presentation contexts and
    SCP/SCU roles. A profile naming extended negotiation is refused: it is not proposed
    here, and leaving it out would change what the peer is asked."""
    sections: dict[str, dict[str, list[tuple[int, str, str]]]] = {}
    written: dict[tuple[str, str], str] = {}  # (section, group): the group as written
    section = group = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[[") and line.endswith("]]"):
            section, group = _name(line[2:-2]), None
            sections.setdefault(section, {})
        elif line.startswith("[") and line.endswith("]"):
            if section is None:
                raise ProfileError(f"{file}:{lineno}: group {line} outside a [[section]]")
            group = _name(line[1:-1])
            written.setdefault((section, group), line[1:-1].strip())
            sections[section].setdefault(group, [])
        elif "=" in line and section is not None and group is not None:
            key, value = (s.strip() for s in line.split("=", 1))
            sections[section][group].append((lineno, key, value))
        else:
            raise ProfileError(f"{file}:{lineno}: cannot read {raw.strip()!r}")

    profiles = sections.get(_name("Profiles"), {})
    entries = profiles.get(_name(profile))
    if entries is None:
        known = ", ".join(sorted(written[_name("Profiles"), g] for g in profiles)) or "none"
        raise ProfileError(f"{file}: no profile '{profile}' (profiles: {known})")
    keys = {_name(k): (n, v) for n, k, v in reversed(entries)}
    if _name("ExtendedNegotiation") in keys:
        lineno, name = keys[_name("ExtendedNegotiation")]
        raise ProfileError(f"{file}:{lineno}: profile '{profile}' asks for extended "
                           f"negotiation ('{name}'), which send does not propose; use a "
                           "profile without it")
    if _name("PresentationContexts") not in keys:
        raise ProfileError(f"{file}: profile '{profile}' has no PresentationContexts key")
    lineno, pc_name = keys[_name("PresentationContexts")]
    contexts_group = sections.get(_name("PresentationContexts"), {}).get(_name(pc_name))
    if contexts_group is None:
        raise ProfileError(f"{file}:{lineno}: no presentation context group '{pc_name}'")
    ts_groups = sections.get(_name("TransferSyntaxes"), {})
    skipped: list[str] = []
    out: list[Context] = []
    for lineno, value in _numbered(contexts_group, "PresentationContext", file, skipped):
        if "\\" not in value:
            raise ProfileError(f"{file}:{lineno}: expected SOPClass\\TransferSyntaxGroup")
        sop_name, ts_group = (s.strip() for s in value.split("\\", 1))
        sop = _sop_uid(sop_name)
        if sop is None:
            raise ProfileError(f"{file}:{lineno}: unknown SOP class '{sop_name}'")
        group_lines = ts_groups.get(_name(ts_group))
        if group_lines is None:
            raise ProfileError(f"{file}:{lineno}: no transfer syntax group '{ts_group}'")
        syntaxes = []
        for ts_line, ts_name in _numbered(group_lines, "TransferSyntax", file, skipped):
            uid = ts_name if _UID.match(ts_name) else _TS_NAMES.get(ts_name)
            if uid is None:
                raise ProfileError(f"{file}:{ts_line}: unknown transfer syntax '{ts_name}'")
            syntaxes.append(uid)
        if not syntaxes:
            raise ProfileError(f"{file}:{lineno}: transfer syntax group '{ts_group}' has no "
                               "TransferSyntax1")
        out.append(Context(sop, tuple(syntaxes)))
    if not out:
        raise ProfileError(f"{file}:{lineno}: presentation context group '{pc_name}' has no "
                           "PresentationContext1")
    if len(out) > 128:
        raise ProfileError(f"{file}: profile '{profile}' has {len(out)} presentation contexts; "
                           "at most 128 fit in one association")
    roles: dict[str, tuple[bool, bool]] = {}
    if _name("SCPSCURoleSelection") in keys:
        lineno, role_name = keys[_name("SCPSCURoleSelection")]
        role_group = sections.get(_name("SCPSCURoleSelection"), {}).get(_name(role_name))
        if role_group is None:
            raise ProfileError(f"{file}:{lineno}: no SCP/SCU role selection group "
                               f"'{role_name}'")
        for lineno, value in _numbered(role_group, "Role", file, skipped):
            sop_name, _, role = (s.strip() for s in value.partition("\\"))
            sop = _sop_uid(sop_name)
            if sop is None:
                raise ProfileError(f"{file}:{lineno}: unknown SOP class '{sop_name}'")
            if role.upper() not in _ROLES:
                raise ProfileError(f"{file}:{lineno}: expected SOPClass\\SCU, SCP or BOTH")
            # as DCMTK refuses them: a role item beside no proposed context, or a second
            # role for one SOP class (one of the two would be dropped)
            if sop not in {cx.abstract_syntax for cx in out}:
                raise ProfileError(f"{file}:{lineno}: role for '{sop}', a SOP class no "
                                   f"presentation context of profile '{profile}' proposes; "
                                   "remove the role or propose the SOP class")
            if sop in roles:
                raise ProfileError(f"{file}:{lineno}: a second role for '{sop}' in group "
                                   f"'{role_name}'; keep one")
            roles[sop] = _ROLES[role.upper()]
    return Profile(out, roles, list(dict.fromkeys(skipped)))  # a group shared: said once


MAX_PROFILE_FILE = 4 << 20  # DCMTK's own storescu.cfg is 20 KiB


def read_profile_file(file: str, profile: str) -> Profile:
    """``profile`` of the DCMTK association config ``file`` (OSError, ProfileError). Bytes
    that are not UTF-8 (a Latin-1 comment) are read as DCMTK reads them: passed over; a
    device, FIFO or other file that is no configuration is refused, not read for ever."""
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as fp:
        st = os.fstat(fp.fileno())
        if stat.S_ISDIR(st.st_mode):
            raise ProfileFileError(f"{file} is a folder, not a file: give the file's path")
        if not stat.S_ISREG(st.st_mode):
            raise ProfileFileError(f"{file} is not a regular file (a device or a FIFO): "
                                   "give the profile file's path")
        data = fp.read(MAX_PROFILE_FILE + 1)
    if len(data) > MAX_PROFILE_FILE:
        raise ProfileFileError(f"{file}: larger than {MAX_PROFILE_FILE >> 20} MiB, not a "
                               "DCMTK association configuration; give the profile file's path")
    return read_profile(data.decode("utf-8", errors="replace"), profile, file)
