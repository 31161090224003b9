"""Pure presentation-context planning: storescu's proposal modes, for `send` and the daemon.

The rules follow DCMTK storescu (checked against the real binary in the tests):

* each mode has a *preferred* transfer syntax and, for all but implicit VR and the
  video syntaxes, *fallbacks* (the uncompressed syntaxes other than the preferred);
* by default one context carries the preferred syntax and a second the fallbacks
  (``+C``/``combine`` puts them all in one context);
* without ``-R`` storescu proposes its fixed list of 64 storage SOP classes whatever the
  files are; with ``-R`` only the SOP classes of the files, in the order first seen.

The daemon always plans "required" contexts and puts each file's own transfer syntax
first, so a file is streamed unchanged whenever the peer accepts its syntax.
PS3.8 9.3.2.2: at most 128 presentation contexts (odd IDs 1..255) per association.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_CONTEXTS = 128

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_LOSSY = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

UNCOMPRESSED = (EXPLICIT_LE, EXPLICIT_BE, IMPLICIT_LE)
LOCAL_EXPLICIT = EXPLICIT_LE if sys.byteorder == "little" else EXPLICIT_BE

# YAML name -> (storescu option, preferred transfer syntax, whether fallbacks follow)
PROPOSE_MODES: dict[str, tuple[str, str, bool]] = {
    "uncompressed": ("-x=", LOCAL_EXPLICIT, True),
    "little": ("-xe", EXPLICIT_LE, True),
    "big": ("-xb", EXPLICIT_BE, True),
    "implicit": ("-xi", IMPLICIT_LE, False),
    "lossless": ("-xs", JPEG_LOSSLESS_SV1, True),
    "jpeg8": ("-xy", JPEG_BASELINE, True),
    "jpeg12": ("-xx", JPEG_EXTENDED, True),
    "j2k-lossless": ("-xv", J2K_LOSSLESS, True),
    "j2k-lossy": ("-xw", J2K, True),
    "jls-lossless": ("-xt", JPEG_LS_LOSSLESS, True),
    "jls-lossy": ("-xu", JPEG_LS_LOSSY, True),
    "mpeg2": ("-xm", "1.2.840.10008.1.2.4.100", False),
    "mpeg2-high": ("-xh", "1.2.840.10008.1.2.4.101", False),
    "mpeg4": ("-xn", "1.2.840.10008.1.2.4.102", False),
    "mpeg4-bd": ("-xl", "1.2.840.10008.1.2.4.103", False),
    "mpeg4-2-2d": ("-x2", "1.2.840.10008.1.2.4.104", False),
    "mpeg4-2-3d": ("-x3", "1.2.840.10008.1.2.4.105", False),
    "mpeg4-2-st": ("-xo", "1.2.840.10008.1.2.4.106", False),
    "hevc": ("-x4", "1.2.840.10008.1.2.4.107", False),
    "hevc10": ("-x5", "1.2.840.10008.1.2.4.108", False),
    "rle": ("-xr", RLE_LOSSLESS, True),
    "deflated": ("-xd", DEFLATED_LE, True),
}
OPTION_TO_MODE = {opt: name for name, (opt, _, _) in PROPOSE_MODES.items()}

# DCMTK's dcmShortSCUStorageSOPClassUIDs in the order storescu proposes them (3.6.7).
_P = "1.2.840.10008.5.1.4.1.1."
STORESCU_DEFAULT_SOP_CLASSES: tuple[str, ...] = tuple(_P + s for s in (
    "9.1.3 88.11 9.4.1 11.4 9.3.1 88.65 88.69 11.2 88.33 1 2 1.3 1.3.1 1.2 1.2.1 1.1 1.1.1 "
    "104.1 2.1 4.1 88.22 12.1.1 12.2.1 9.1.2 11.1 9.2.1 88.59 88.50 4 4.2 7.2 7.3 7.1 7.4 20 "
    "77.1.5.2 77.1.5.1 77.1.5.4 128 88.40 11.3 66 67 481.4 481.6 481.2 481.1 481.5 481.3 "
    "481.7 7 66.2 66.1 77.1.5.3 9.1.1 6.1 3.1 77.1.1 77.1.2 77.1.4 77.1.3 12.1 88.67 12.2"
).split())


@dataclass(frozen=True)
class Context:
    """A proposed presentation context: one abstract syntax, its transfer syntaxes in order."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


class TooManyContexts(ValueError):
    """The plan needs more than 128 presentation contexts (PS3.8 9.3.2.2)."""


def mode_syntaxes(mode: str) -> tuple[str, tuple[str, ...]]:
    """The preferred syntax of ``mode`` and its fallbacks (empty for -xi and video)."""
    _, preferred, with_fallbacks = PROPOSE_MODES[mode]
    fallbacks = tuple(ts for ts in UNCOMPRESSED if ts != preferred) if with_fallbacks else ()
    return preferred, fallbacks


def mode_contexts(sop_class: str, mode: str, combine: bool) -> list[Context]:
    """The contexts storescu proposes for one SOP class in ``mode``."""
    preferred, fallbacks = mode_syntaxes(mode)
    if combine or not fallbacks:
        return [Context(sop_class, (preferred, *fallbacks))]
    return [Context(sop_class, (preferred,)), Context(sop_class, fallbacks)]


def storescu_contexts(mode: str, combine: bool, required: Sequence[str] | None) -> list[Context]:
    """What ``storescu`` proposes: ``required`` is the files' SOP classes with ``-R``, else None."""
    classes = STORESCU_DEFAULT_SOP_CLASSES if required is None else tuple(dict.fromkeys(required))
    contexts = [cx for sop in classes for cx in mode_contexts(sop, mode, combine)]
    if len(contexts) > MAX_CONTEXTS:
        raise TooManyContexts(f"{len(contexts)} presentation contexts needed, at most "
                              f"{MAX_CONTEXTS} fit in one association")
    return contexts


def plan_contexts(needs: Iterable[tuple[str, str]], mode: str, combine: bool) -> list[Context]:
    """The daemon's plan for (SOP class, file transfer syntax) pairs.

    Per SOP class: each distinct file syntax the mode does not already offer first (so
    the file can go unchanged), then the mode's contexts as fallbacks for conversion.
    """
    by_class: dict[str, list[str]] = {}
    for sop, ts in needs:
        by_class.setdefault(sop, [])
        if ts not in by_class[sop]:
            by_class[sop].append(ts)
    contexts: list[Context] = []
    for sop, file_syntaxes in by_class.items():
        preferred, _ = mode_syntaxes(mode)
        own = [ts for ts in file_syntaxes if ts != preferred]
        for ts in own:
            contexts.append(Context(sop, (ts,)))
        for cx in mode_contexts(sop, mode, combine):
            if not (len(cx.transfer_syntaxes) == 1 and cx.transfer_syntaxes[0] in own):
                contexts.append(cx)
    if len(contexts) > MAX_CONTEXTS:
        raise TooManyContexts(f"{len(contexts)} presentation contexts needed, at most "
                              f"{MAX_CONTEXTS} fit in one association")
    return contexts


def choose_context(
    accepted: Sequence[tuple[str, str]], sop_class: str, file_syntax: str,
    convertible: Iterable[str] = (),
) -> str | None:
    """The transfer syntax to send a file with: its own if accepted, else the first
    accepted one in ``convertible`` (what transcoding can produce), else None."""
    offered = [ts for sop, ts in accepted if sop == sop_class]
    if file_syntax in offered:
        return file_syntax
    for ts in convertible:
        if ts in offered:
            return ts
    return None


# compressed syntaxes whose data sets are not explicit VR little endian elements with
# encapsulated pixel data: JPIP references its pixels elsewhere (and deflates, in two)
_JPIP = {"1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.204",
         "1.2.840.10008.1.2.4.205"}
_ENCAPSULATED = "1.2.840.10008.1.2.4."
ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"
_ENCAPSULATED_ALSO = {"1.2.840.10008.1.2.5", ENCAPSULATED_UNCOMPRESSED}  # RLE


def without_pixels_context(accepted: Sequence[tuple[str, str]], sop_class: str,
                           prefer: Iterable[str] = ()) -> str | None:
    """For a data set without pixel data: a compressed syntax the peer accepted for
    ``sop_class`` (the first in ``prefer``, else the first accepted). Only pixel data is
    compressed under them; every other element is explicit VR little endian (PS3.5
    A.4), so such a data set goes in that encoding, its values unchanged, as storescu
    sends an SR or RT object; None when there is none."""
    found = [ts for sop, ts in accepted if sop == sop_class and ts not in _JPIP and (
        ts.startswith(_ENCAPSULATED) or ts in _ENCAPSULATED_ALSO)]
    preferred = set(prefer)
    return next((ts for ts in found if ts in preferred), found[0] if found else None)


def ae_title_ok(title: str) -> bool:
    """An AE title an A-ASSOCIATE-RQ can carry (PS3.5 6.2, VR AE): 1 to 16 printable
    ASCII characters, not all spaces, no backslash. The YAML's titles and `send`'s
    ``-aet``/``-aec`` are held to it alike."""
    return (len(title) <= 16 and "\\" not in title and bool(title.strip())
            and title.isprintable() and title.isascii())
