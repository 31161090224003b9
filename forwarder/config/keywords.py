"""The DICOM keywords a route may match on, from pydicom's data dictionary.

Importing ``pydicom.datadict`` imports all of pydicom, and with it numpy and the pixel
handlers (about 0.2 s), which commands like ``status`` never use. pydicom's dictionary is
one module of plain literals (``pydicom/_dicom_dict.py``), so it is read on its own when
pydicom is not loaded yet; anything unexpected falls back to ``pydicom.datadict``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Mapping
from typing import Any


@functools.cache
def _dictionary() -> Mapping[int, tuple[Any, ...]]:
    """pydicom's ``DicomDictionary``: tag -> (VR, VM, name, retired, keyword)."""
    if "pydicom.datadict" not in sys.modules:
        try:
            spec = importlib.util.find_spec("pydicom")
            where = spec.submodule_search_locations if spec else None
            if where:
                file = os.path.join(list(where)[0], "_dicom_dict.py")
                own = importlib.util.spec_from_file_location("forwarder._dicom_dict", file)
                if own is not None and own.loader is not None:
                    module = importlib.util.module_from_spec(own)
                    own.loader.exec_module(module)
                    table = module.DicomDictionary
                    if isinstance(table, dict) and table:
                        return table
        except Exception:  # noqa: BLE001 - pydicom's own import below says what is wrong
            pass
    from pydicom.datadict import DicomDictionary

    return DicomDictionary


@functools.cache
def keyword_tags() -> Mapping[str, int]:
    """Keyword -> tag, as ``pydicom.datadict.keyword_dict``."""
    return {entry[4]: tag for tag, entry in _dictionary().items()}


def vr(tag: int) -> str:
    """The dictionary VR of an official ``tag``, as ``pydicom.datadict.dictionary_VR``."""
    return str(_dictionary()[tag][0])
