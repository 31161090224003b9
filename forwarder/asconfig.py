"""Pure parser of DCMTK's association negotiation profile files (``storescu -xf FILE PROFILE``).

The format (DCMTK ``asconfig.txt``): ``[[TransferSyntaxes]]``, ``[[PresentationContexts]]``
and ``[[Profiles]]`` sections, each holding ``[Name]`` groups of ``KeyN = value`` lines.
A presentation context line is ``SOPClass\\TransferSyntaxGroup``; names are DCMTK's
symbolic names or dotted UIDs.
"""

from __future__ import annotations

import re

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


def _sop_uid(name: str) -> str | None:
    if _UID.match(name):
        return name
    from pydicom.uid import UID_dictionary

    wanted = name.lower()
    for uid, entry in UID_dictionary.items():
        if entry[4].lower() == wanted:
            return str(uid)
    return None


def parse_profile(text: str, profile: str, file: str = "<profile>") -> list[Context]:
    """The presentation contexts of ``profile`` in a DCMTK association config ``text``."""
    sections: dict[str, dict[str, list[tuple[int, str, str]]]] = {}
    section = group = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[[") and line.endswith("]]"):
            section, group = line[2:-2].strip().lower(), None
            sections.setdefault(section, {})
        elif line.startswith("[") and line.endswith("]"):
            if section is None:
                raise ProfileError(f"{file}:{lineno}: group {line} outside a [[section]]")
            group = line[1:-1].strip().lower()
            sections[section].setdefault(group, [])
        elif "=" in line and section is not None and group is not None:
            key, value = (s.strip() for s in line.split("=", 1))
            sections[section][group].append((lineno, key, value))
        else:
            raise ProfileError(f"{file}:{lineno}: cannot read {raw.strip()!r}")

    profiles = sections.get("profiles", {})
    entries = profiles.get(profile.lower())
    if entries is None:
        known = ", ".join(sorted(profiles)) or "none"
        raise ProfileError(f"{file}: no profile '{profile}' (profiles: {known})")
    pc_key = [(n, v) for n, k, v in entries if k.lower() == "presentationcontexts"]
    if not pc_key:
        raise ProfileError(f"{file}: profile '{profile}' has no PresentationContexts key")
    lineno, pc_name = pc_key[0]
    contexts_group = sections.get("presentationcontexts", {}).get(pc_name.lower())
    if contexts_group is None:
        raise ProfileError(f"{file}:{lineno}: no presentation context group '{pc_name}'")
    ts_groups = sections.get("transfersyntaxes", {})
    out: list[Context] = []
    for lineno, _key, value in contexts_group:
        if "\\" not in value:
            raise ProfileError(f"{file}:{lineno}: expected SOPClass\\TransferSyntaxGroup")
        sop_name, ts_group = (s.strip() for s in value.split("\\", 1))
        sop = _sop_uid(sop_name)
        if sop is None:
            raise ProfileError(f"{file}:{lineno}: unknown SOP class '{sop_name}'")
        group_lines = ts_groups.get(ts_group.lower())
        if group_lines is None:
            raise ProfileError(f"{file}:{lineno}: no transfer syntax group '{ts_group}'")
        syntaxes = []
        for ts_line, _k, ts_name in group_lines:
            uid = ts_name if _UID.match(ts_name) else _TS_NAMES.get(ts_name)
            if uid is None:
                raise ProfileError(f"{file}:{ts_line}: unknown transfer syntax '{ts_name}'")
            syntaxes.append(uid)
        out.append(Context(sop, tuple(syntaxes)))
    if len(out) > 128:
        raise ProfileError(f"{file}: profile '{profile}' has {len(out)} presentation contexts; "
                           "at most 128 fit in one association")
    return out
