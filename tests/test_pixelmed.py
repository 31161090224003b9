"""A fourth SCP from Debian's packages, a Java one: PixelMed's storage SCP receives from
the daemon's sender and from ``send`` the files it cannot take as they are (compressed
syntaxes it does not read, big endian, deflate, UN-encoded UIDs, a retired SOP class),
each once, with its pixels and UIDs intact."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from forwarder.cli import main
from forwarder.dicomfile import probe
from forwarder.spool import Spool
from tests.corpus import data_file, unique_copies
from tests.pixelmedpeer import PixelMedStorage
from tests.sendutil import destination, enqueue, run, settled, states
from tests.test_transcode import odd_deflated, retired_and_private, un_encoded

LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


@pytest.fixture
def pixelmed(tmp_path: Path):  # noqa: ANN201
    peer = PixelMedStorage(tmp_path / "pixelmed")
    yield peer
    peer.stop()


def inputs(work: Path) -> list[Path]:
    work.mkdir(exist_ok=True)
    return [data_file("ExplVR_BigEnd.dcm"), data_file("liver_expb_1frame.dcm"),
            data_file("rtdose_expb.dcm"), odd_deflated(work), un_encoded(work),
            retired_and_private(work)[0], data_file("CT_small.dcm"), data_file("JPEG2000.dcm"),
            data_file("MR_small_RLE.dcm"), data_file("SC_rgb_jpeg_gdcm.dcm")]


def assert_intact(peer: PixelMedStorage, files: list[Path], uids: list[str], aet: str) -> None:
    assert peer.counts() == Counter(uids)  # each once
    assert {a for _uid, a, _ts in peer.received()} == {aet}
    for uid, src in zip(uids, files, strict=True):
        original, stored = dcmread(src), dcmread(peer.file(uid))
        assert stored.SOPClassUID == original.SOPClassUID, src.name
        assert stored.SOPInstanceUID == uid
        if "PixelData" in original:
            assert np.array_equal(stored.pixel_array, original.pixel_array), src.name
    # PixelMed reads neither JPEG 2000 nor RLE here, so those were decompressed (the
    # JPEG 2000 file is lossy: the daemon's test allows it with decompress: always,
    # which is what send does)
    syntaxes = {uid: ts for uid, _aet, ts in peer.received()}
    for name in ("JPEG2000.dcm", "MR_small_RLE.dcm"):
        if data_file(name) in files:
            assert syntaxes[probe(data_file(name)).sop_instance_uid] in LITTLE_ENDIAN


def test_pixelmed_receives_what_the_daemon_converts_intact(pixelmed: PixelMedStorage,
                                                          tmp_path: Path) -> None:
    files = inputs(tmp_path / "files")
    spool = Spool(tmp_path / "spool")
    try:
        uids = enqueue(spool, files)
        run(spool, destination(pixelmed.port, f"called_ae_title: {pixelmed.aet}\n"
                                              "decompress: always"), lambda: settled(spool))
        assert spool.failed_jobs() == [] and states(spool)["done"] == len(files)
    finally:
        spool.close()
    assert_intact(pixelmed, files, uids, "FORWARDER")


def test_pixelmed_receives_what_send_converts_intact(pixelmed: PixelMedStorage,
                                                    tmp_path: Path) -> None:
    files = inputs(tmp_path / "files")
    uids = [probe(f).sop_instance_uid for f in files]
    assert main(["send", "-R", "-aec", pixelmed.aet, "127.0.0.1", str(pixelmed.port),
                 *map(str, files)]) == 0
    assert_intact(pixelmed, files, uids, "STORESCU")


def test_pixelmed_takes_many_files_over_one_association_in_small_pdus(
        pixelmed: PixelMedStorage, tmp_path: Path) -> None:
    """Forty files over one association with max_pdu and max_send_pdu of 4 KiB (a 0.5 MB
    file then takes more than a hundred P-DATA-TF from us): each arrives once, its pixels
    those of its source."""
    copies = unique_copies(tmp_path / "copies", 40)
    spool = Spool(tmp_path / "spool")
    try:
        uids = enqueue(spool, list(copies.values()))
        run(spool, destination(pixelmed.port, f"called_ae_title: {pixelmed.aet}\nmax_pdu: 4KiB\n"
                                              "max_send_pdu: 4KiB"),
            lambda: settled(spool))
        assert states(spool)["done"] == 40
    finally:
        spool.close()
    assert pixelmed.associations == 1
    assert_intact(pixelmed, list(copies.values()), uids, "FORWARDER")
