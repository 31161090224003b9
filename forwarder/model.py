"""The values that cross layers: what a probe found, what the spool hands a sender, what a
C-STORE answered. Plain dataclasses, importable without pydicom, pynetdicom or numpy, so
the spool, the journal and the status commands load quickly."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Probe:
    """What intake and the sender need to know about one DICOM object."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_instance_uid: str | None = None
    has_meta: bool = True
    # the dataset is encoded as its file meta's syntax says and no element needs its VR
    # back: safe to stream as is (the file meta's UIDs are not sent: they may disagree)
    meta_consistent: bool = True
    attributes: dict[str, str] = field(default_factory=dict)
    phi: dict[str, str] = field(default_factory=dict)
    # the data set reaches (7FE0,0008): it holds pixel data, float or not, or ends past
    # where it would be; an image without it is what a writer that paused leaves
    pixels: bool = True


@dataclass(frozen=True)
class Accepted:
    """What :meth:`forwarder.spool.Spool.accept` made of one input: its object's id and the
    destinations it was queued for (0 and none when each of them had the identical
    content pending already)."""

    object_id: int
    queued: tuple[str, ...]


@dataclass(frozen=True)
class Incoming:
    """One input for :meth:`forwarder.spool.Spool.accept`: an open source file and where
    it must go."""

    fd: int  # opened by intake with O_NOFOLLOW; read from, never closed here
    source: str
    probe: Probe
    destinations: tuple[str, ...]
    watch: str = ""
    link_ok: bool = True  # False: copy even on the same filesystem (other hard links)
    stat: os.stat_result | None = None
    remember: bool = False  # keep_source: record (path, inode, size, mtime) as seen
    path: str | None = None  # the source's real path, to hard-link it by (None: copy)


@dataclass(frozen=True)
class Job:
    """One claimed job: an object in the spool for one destination."""

    id: int
    object_id: int
    destination: str
    attempts: int
    aborts: int
    created_at: float
    path: Path
    probe: Probe


@dataclass(frozen=True)
class StoreResult:
    """``status`` is the DIMSE status, or None when no response came (timeout, abort)."""

    status: int | None
    comment: str | None = None
    refused: str | None = None  # no usable context or conversion failed: why, in words
