"""What the logs and the spool's reasons may say about patients: `log.paths: redact` and
the peers' error comments with `log.phi: false`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from forwarder import logs
from forwarder.redact import path_token
from forwarder.sender import DestinationSender
from forwarder.spool import Spool
from tests.corpus import data_file
from tests.peers import StoreSCP, wait_for
from tests.pipeline import Pipeline, make_config
from tests.sendutil import destination, enqueue, settled

CT = data_file("CT_small.dcm")


@pytest.fixture
def stderr_logs():  # noqa: ANN201
    """Install the daemon's logging to stderr for one test, then take it away."""
    root = logging.getLogger()
    saved = root.level

    def install(**kw) -> None:  # noqa: ANN003
        logs.setup(level="info", target="stderr", **kw)

    yield install
    for h in list(root.handlers):
        if getattr(h, "_forwarder", False):
            root.removeHandler(h)
    root.setLevel(saved)


@pytest.mark.parametrize("paths", ["keep", "redact"])
def test_file_paths_in_intake_events(tmp_path: Path, capfd, stderr_logs, paths: str) -> None:
    cfg = make_config(tmp_path, extra=f"log: {{paths: {paths}}}\n")
    assert cfg.log.paths == paths
    stderr_logs(paths=cfg.log.paths)
    folder = tmp_path / "in" / "DOE^JOHN 1234567"
    folder.mkdir()
    good, bad = folder / "ct.dcm", folder / "notes.txt"
    shutil.copy(CT, good)
    bad.write_text("not DICOM")
    with Pipeline(cfg) as p:
        wait_for(lambda: p.objects() and p.spool.quarantined(), 20, "accept and quarantine")
    err = capfd.readouterr().err
    assert "accepted" in err and "quarantined" in err
    if paths == "redact":
        assert "DOE^JOHN" not in err and "1234567" not in err
        assert path_token(str(good)) in err and path_token(str(bad)) in err
        assert f"FORWARDER_FILE={path_token(str(good))}" in err
    else:
        assert str(good) in err


# every file refused with 0xC000 and an error comment that quotes the patient
COMMENT = "Patient DOE^JOHN (1234567) already exists with another name"


@pytest.mark.parametrize("phi", [False, True])
def test_a_peers_error_comment_reaches_reasons_only_with_phi(tmp_path: Path,
                                                              phi: bool) -> None:
    peer = StoreSCP(status=lambda event: 0xC000, comment=COMMENT).start()
    spool = Spool(tmp_path / "spool")
    try:
        enqueue(spool, [CT])
        with DestinationSender(destination(peer.port), "FORWARDER", spool,
                               log=("info", "stderr", phi)):
            wait_for(lambda: settled(spool), 30, "the job to fail")
        [failed] = spool.failed_jobs()
        last = str(spool.status(["pacs"])["destinations"]["pacs"].get("last_error"))
    finally:
        spool.close()
        peer.stop()
    assert "0xC000" in failed["reason"]
    if phi:
        assert COMMENT in failed["reason"]
    else:
        assert "DOE^JOHN" not in failed["reason"] and "1234567" not in failed["reason"]
        assert "error comment withheld, 59 characters" in failed["reason"]
        assert "DOE^JOHN" not in last
