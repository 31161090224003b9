"""The probe's answer read straight from a walked plain file's bytes, without pydicom.

:mod:`forwarder.headwalk` keeps the raw values the probe needs; when every one of them is
plain (valid UIDs, short printable ASCII names, a character set whose bytes read the
same as ASCII) and the answer is a success, it is built here. Anything else gets None,
and :mod:`forwarder.dicomfile` has pydicom decode the values, with its words for what is
wrong.
"""

from __future__ import annotations

import re

from forwarder import headwalk
from forwarder.model import Probe

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_PLAIN_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # pydicom's own check
# Patient's Name and ID: printable ASCII with no multi-value or PN group separator, no
# longer than pydicom's length check allows: such a value reads the same in every
# character set of headwalk.PLAIN_CHARSETS, and pydicom decodes it without a warning
_PLAIN_TEXT = re.compile(rb"[\x20-\x3c\x3e-\x5b\x5d-\x7e]{0,64}")
_PHI = ((0x00100010, "PatientName", "PN"), (0x00100020, "PatientID", "LO"))


def plain_uid(value: bytes | None) -> str | None:
    """A valid UID's text from its raw bytes, or None."""
    if not value:
        return None
    text = value.decode("latin-1").rstrip("\0 ")
    return text if len(text) <= 64 and _PLAIN_UID.fullmatch(text) else None


class _NotPlain(Exception):
    pass


def plain_answer(walked: headwalk.Walked, size: int) -> Probe | None:
    """The probe's answer read from a walked file's bytes, when every value it needs is
    plain (see :data:`_PLAIN_TEXT`, :func:`plain_uid`) and the answer is a success;
    None: pydicom decodes the values, and says what is wrong if anything is."""
    ds, meta = walked.dataset, walked.meta

    def uid(raws: dict[int, headwalk.Raw], tag: int, required: bool = False) -> str | None:
        raw = raws.get(tag)
        if raw is None and not required:
            return None
        text = plain_uid(raw.value) if raw is not None and raw.vr in ("UI", None) else None
        if text is None:
            raise _NotPlain
        return text

    group_length = meta.get(0x00020000)  # 4 bytes long in a walked file
    if group_length is not None and 144 + int.from_bytes(group_length.value, "little") > size:
        return None
    try:
        charset = ds.get(0x00080005)
        if charset is not None and not plain_charset(charset.value):
            return None
        sop_class, sop_instance = uid(ds, 0x00080016, True), uid(ds, 0x00080018, True)
        meta_class = uid(meta, 0x00020002)
        if MEDIA_STORAGE_DIRECTORY in (sop_class, meta_class):
            return None
        phi = {}
        for tag, keyword, vr in _PHI:
            raw = ds.get(tag)
            if raw is None:
                continue
            if raw.vr not in (vr, None) or not _PLAIN_TEXT.fullmatch(raw.value):
                return None
            phi[keyword] = raw.value.decode("ascii").strip()
        assert sop_class and sop_instance
        # walked in the encoding its syntax names: streamable as it is, whatever UIDs the
        # file meta holds (a C-STORE carries the dataset's own, never the file meta)
        return Probe(sop_class, sop_instance, uid(meta, 0x00020010, True) or "",
                     uid(ds, 0x0020000D), True, True, {}, phi)
    except _NotPlain:
        return None


def plain_charset(value: bytes) -> bool:
    """A Specific Character Set of terms from headwalk.PLAIN_CHARSETS, space-padded, the
    first one possibly empty (the default repertoire)."""
    if b"\0" in value:
        return False
    terms = [t.strip(" ") for t in value.decode("latin-1").split("\\")]
    return all(t in headwalk.PLAIN_CHARSETS or (i == 0 and not t) for i, t in enumerate(terms))
