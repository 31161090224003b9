"""A third SCP from Debian's packages: CTN simple_storage receives the files the
forwarder must convert (big endian planar and 32-bit, odd-length deflate, UN-encoded
UIDs, a retired SOP class) with their pixels and UIDs intact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from forwarder.spool import Spool
from tests.corpus import data_file
from tests.ctnpeer import CTNStorage
from tests.sendutil import destination, enqueue, run, settled, states
from tests.test_transcode import odd_deflated, retired_and_private, un_encoded


@pytest.fixture
def ctn(tmp_path: Path):  # noqa: ANN201
    peer = CTNStorage(tmp_path / "ctn")
    yield peer
    peer.stop()


def test_ctn_receives_converted_files_intact(ctn: CTNStorage, tmp_path: Path) -> None:
    work = tmp_path / "files"
    work.mkdir()
    files = [data_file("ExplVR_BigEnd.dcm"), data_file("liver_expb_1frame.dcm"),
             data_file("rtdose_expb.dcm"), odd_deflated(work), un_encoded(work),
             retired_and_private(work)[0]]
    spool = Spool(tmp_path / "spool")
    try:
        uids = enqueue(spool, files)
        run(spool, destination(ctn.port), lambda: settled(spool))
        # CTN predates Segmentation Storage: it rejects that context, the file fails alone
        [failed] = spool.failed_jobs()
        assert failed["sop_instance_uid"] == uids[1]
        assert failed["reason"].startswith("Segmentation Storage in Explicit VR Big Endian: "
                                           "the peer accepted nothing for this SOP class")
        assert states(spool)["done"] == len(files) - 1
    finally:
        spool.close()
    got = {str(dcmread(f, force=True).SOPInstanceUID): f for f in ctn.files()}
    assert set(got) == set(uids) - {uids[1]}
    for uid, src in zip(uids, files, strict=True):
        if uid == uids[1]:
            continue
        original, stored = dcmread(src), dcmread(got[uid], force=True)
        assert stored.SOPClassUID == original.SOPClassUID
        assert np.array_equal(stored.pixel_array, original.pixel_array), src.name
