"""The spool, the values that cross layers and the journal set-up load without the DICOM
and numeric libraries, so the commands that only look at the spool start quickly."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("pydicom", "pynetdicom", "numpy")


@pytest.mark.parametrize("module", ["forwarder.model", "forwarder.spool", "forwarder.logs",
                                    "forwarder.spool.recovery", "forwarder.spool.retention"])
def test_module_loads_without_pydicom_or_numpy(module: str) -> None:
    code = (f"import sys, {module}; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split() == [], f"{module} imports {out.stdout.strip()}"
