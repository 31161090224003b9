"""The commands that never read a DICOM file start without pydicom, numpy or pynetdicom."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("pydicom", "numpy", "pynetdicom")


def loaded_after(code: str) -> dict[str, bool]:
    """Which of HEAVY a fresh interpreter has imported after running ``code``."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_cli_and_config_load_import_no_dicom_library(tmp_path: Path) -> None:
    cfg = tmp_path / "forwarder.yaml"
    cfg.write_text("spool: /tmp/spool\nwatch:\n  - {name: in, path: /tmp/in}\n"
                   "destinations:\n  pacs: {host: 127.0.0.1, port: 104}\n"
                   "routes:\n  - match: {watch: in, Modality: [CT, MR]}\n    to: pacs\n")
    found = loaded_after("import forwarder.cli, forwarder.commands\n"
                         "from forwarder import config\n"
                         f"c = config.load({str(cfg)!r})\n"
                         "assert c.attribute_keywords == {'Modality'}, c.attribute_keywords")
    assert found == dict.fromkeys(HEAVY, False)


def test_route_keywords_are_pydicoms_dictionary() -> None:
    """Read without pydicom, the keywords and their VRs are pydicom.datadict's own."""
    code = ("from forwarder.config import keywords\n"
            "import sys\n"
            "tags = dict(keywords.keyword_tags())\n"
            "vrs = {k: keywords.vr(t) for k, t in tags.items()}\n"
            "assert 'pydicom' not in sys.modules\n"
            "from pydicom.datadict import keyword_dict, dictionary_VR\n"
            "assert tags == keyword_dict, 'keywords differ'\n"
            "assert vrs == {k: dictionary_VR(t) for k, t in keyword_dict.items()}\n"
            "assert vrs['Modality'] == 'CS' and vrs['ReferencedImageSequence'] == 'SQ'\n")
    assert loaded_after(code)["pydicom"] is True


def test_send_help_and_usage_errors_import_no_dicom_library() -> None:
    found = loaded_after("import contextlib, io\n"
                         "from forwarder.cli import main\n"
                         "with contextlib.redirect_stdout(io.StringIO()) as out, "
                         "contextlib.redirect_stderr(io.StringIO()):\n"
                         "    assert main(['send', '--help']) == 0\n"
                         "    assert main(['send', '-aet', 'ME', '127.0.0.1']) == 2\n"
                         "assert 'storescu' in out.getvalue()\n")
    assert found == dict.fromkeys(HEAVY, False)
