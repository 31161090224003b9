"""`dicom-forwarder send` against real peers on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble  # noqa: F401

from forwarder.cli import main
from forwarder.dicomfile import probe
from forwarder.errors import NotDicomError, UsageError
from tests.peers import StoreSCP, StoreSCPProcess, free_port
from tests.tlsutil import make_pki, server_context

NAMES = ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
         "JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "rtplan.dcm", "rtdose.dcm",
         "waveform_ecg.dcm", "image_dfl.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm",
         "test-SR.dcm", "rtstruct.dcm", "ExplVR_BigEndNoMeta.dcm", "liver_1frame.dcm"]


def sample(name: str) -> str:
    path = get_testdata_file(name, download=False)  # only files bundled with pydicom
    assert path, f"{name} is not bundled with pydicom"
    return str(path)


def dataset_bytes(path: str) -> bytes:
    """The bytes after the file meta: what a C-STORE carries when a file goes unchanged."""
    with open(path, "rb") as fp:
        ds = dcmread(fp, stop_before_pixels=True)
        offset = ds.file_meta.get("FileMetaInformationGroupLength", 0) + 132 + 12
        fp.seek(offset)
        return fp.read()


def test_pydicom_files_arrive_once_byte_identical_when_syntax_kept(scp: StoreSCP) -> None:
    files = [sample(n) for n in NAMES]
    assert main(["send", "-R", "-xs", "127.0.0.1", str(scp.port), *files]) == 0
    # several MR_small variants share one SOP Instance UID: each file arrives once
    assert scp.counts() == Counter(probe(f).sop_instance_uid for f in files)
    assert [r.sop_instance for r in scp.received] == [probe(f).sop_instance_uid for f in files]
    streamed = 0
    for rec, src in zip(scp.received, files, strict=False):
        pr = probe(src)
        assert rec.sop_class == pr.sop_class_uid
        if rec.transfer_syntax == pr.transfer_syntax and pr.meta_consistent:
            assert rec.dataset_bytes == dataset_bytes(src), src
            streamed += 1
    # -xs offers JPEG lossless SV1 and explicit VR little endian first: those go unchanged
    keep = ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.1")
    assert streamed == sum(probe(f).transfer_syntax in keep and probe(f).meta_consistent
                           for f in files) == 6


def test_dcmtk_storescp_receives_compressed_and_big_endian(storescp: StoreSCPProcess) -> None:
    files = [sample(n) for n in ("CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                                   "JPEG2000.dcm", "rtplan.dcm")]
    assert main(["send", "127.0.0.1", str(storescp.port), *files]) == 0
    got = {str(dcmread(p).SOPInstanceUID) for p in storescp.files()}
    assert got == {probe(f).sop_instance_uid for f in files}
    # storescp only takes uncompressed here: compressed files were decompressed, pixels equal
    for f in storescp.files():
        ds = dcmread(f)
        src = next(x for x in files if probe(x).sop_instance_uid == ds.SOPInstanceUID)
        src_ds = dcmread(src)
        if "PixelData" in src_ds:
            assert (ds.pixel_array == src_ds.pixel_array).all()


def test_non_dicom_halts_unless_no_halt(scp: StoreSCP, tmp_path: Path, capsys) -> None:
    junk = tmp_path / "report.pdf"
    junk.write_bytes(b"%PDF-1.4 not dicom" * 20)
    good = [sample("CT_small.dcm"), sample("MR_small.dcm")]
    assert main(["send", "127.0.0.1", str(scp.port), good[0], str(junk), good[1]]) == 1
    assert f"E: {junk}: " in capsys.readouterr().err
    assert scp.received == []  # halted before anything was sent
    assert main(["send", "-nh", "127.0.0.1", str(scp.port), good[0], str(junk), good[1]]) == 1
    assert set(scp.counts()) == {probe(g).sop_instance_uid for g in good}


@pytest.mark.parametrize("args, message", [
    (["/does/not/exist.dcm"], "/does/not/exist.dcm: no such file"),
    (["{dir}"], "is a directory, passed over (use +sd to scan directories)"),
])
def test_bad_inputs_get_one_line_errors(scp: StoreSCP, tmp_path: Path, capsys, args, message):
    argv = [a.replace("{dir}", str(tmp_path)) for a in args]
    assert main(["send", "127.0.0.1", str(scp.port), *argv]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["-td", "-5"], "-td/--dimse-timeout must be at least 1, got -5"),
    (["-ta", "0"], "-ta/--acse-timeout must be at least 1, got 0"),
    (["-to", "0"], "-to/--timeout must be at least 1, got 0"),
    (["-ts", "-2"], "-ts/--socket-timeout must be at least -1 (0 and -1: none), got -2"),
    (["--repeat", "0"], "--repeat must be at least 1, got 0"),
    (["+IR", "0"], "+IR/--invent-series must be at least 1, got 0"),
    (["-pdu", "0"], "-pdu/--max-pdu must be from 4096 to 131072 bytes, got 0"),
    (["--max-send-pdu", "999999"], "--max-send-pdu must be from 4096 to 131072 bytes"),
    (["-aec", ""], "-aec/--call: an AE title is 1 to 16 printable ASCII characters"),
    (["-aet", "SEVENTEEN_LETTERS"], "-aet/--aetitle: an AE title is 1 to 16 printable"),
    (["+sp", "*.dcm"], "+sp/--scan-pattern only with +sd/--scan-directories"),
    (["+r"], "+r/--recurse only with +sd/--scan-directories"),
    (["-usr", "u", "-pwd", "p", "-epw"], "-epw/--empty-password and -pwd/--password exclude"),
    (["-rsp"], "-rsp/--pos-response only with -usr, -kt, --saml or --jwt"),
    (["+cl", "9"], "+cl/--compression-level only with -xd/--propose-deflated or -xf"),
    (["-xf", "x.cfg", "p", "-xi"], "-xf/--config-file excludes -xi/--propose-implicit"),
    (["-xf", "x.cfg", "p", "+C"], "-xf/--config-file excludes +C/--combine"),
    (["-xf", "x.cfg", "p", "-R"], "-xf/--config-file excludes -R/--required"),
    # TLS settings without +tls/+tla: never a plain connection the user did not ask for
    (["+cf", "/etc/hosts"], "+cf/--add-cert-file only with +tls/--enable-tls or +tla/"),
    (["--add-cert-dir=/etc"], "+cd/--add-cert-dir only with +tls/--enable-tls or +tla/"),
    (["-ic"], "-ic/--ignore-peer-cert only with +tls/--enable-tls or +tla/"),
    (["+py"], "+py/--profile-bcp195-nd only with +tls/--enable-tls or +tla/"),
    (["+cs", "TLS_RSA_WITH_AES_128_CBC_SHA"], "+cs/--cipher only with +tls/--enable-tls"),
    (["-der"], "-der/--der-keys only with +tls/--enable-tls or +tla/--anonymous-tls"),
    (["+tls", "k.pem", "c.pem", "-tls", "+cf", "ca.pem"], "+cf/--add-cert-file only with"),
    (["+tla", "+pw", "x"], "+pw/--use-passwd only with +tls/--enable-tls (+tla has no key)"),
    (["+tla", "+ws"], "+ws/--write-seed only with +rs/--seed"),
    (["+v"], "+v/--verbose-pc only with -v/--verbose, -d/--debug or -ll info"),
    (["-kt", "{empty}"], "is empty: it should hold the Kerberos service ticket sent as"),
    (["--jwt", "{empty}"], "is empty: it should hold the JSON web token sent as the user"),
])
def test_values_storescu_refuses_are_usage_errors_before_anything_is_sent(
        scp: StoreSCP, capsys, tmp_path: Path, args: list[str], message: str) -> None:
    """A value out of storescu's range is named at once (exit 2), never found out later
    as a traceback, a connection error or a silent change."""
    (tmp_path / "empty").touch()
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    assert main(["send", *args, "127.0.0.1", str(scp.port), sample("CT_small.dcm")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert scp.associations == 0


@pytest.mark.parametrize("args, mode", [
    (["-xf", "x.cfg", "p", "-x="], "uncompressed"),
    (["+cl", "5", "-xf", "x.cfg", "p"], "uncompressed"),
    (["-xd", "+cl", "5"], "deflated"),
    (["-xd", "-x=", "-xf", "x.cfg", "p"], "uncompressed"),  # the last proposal option wins
    (["-d", "+v"], "uncompressed"),
    (["-ll", "info", "+v"], "uncompressed"),
])
def test_option_combinations_storescu_takes_are_taken(tmp_path: Path, args: list[str],
                                                      mode: str) -> None:
    """What storescu does not refuse as a usage error (it says "error:"), send takes."""
    from forwarder.send.options import build_parser, check

    oracle = subprocess.run(["storescu", *args, "127.0.0.1", "1", sample("CT_small.dcm")],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert "error:" not in oracle.stderr + oracle.stdout, oracle.stderr
    parsed = build_parser().parse_args([*args, "127.0.0.1", "104", "f.dcm"])
    check(parsed)
    assert parsed.mode == mode


def test_verbose_pc_with_a_log_config_is_taken() -> None:
    """+v needs a verbose level; a -lc file sets the level itself, so it is not refused."""
    from forwarder.send.options import build_parser, check

    parser = build_parser()
    argv = ["-lc", "log.cfg", "+v", "127.0.0.1", "104", "f.dcm"]
    check(parser.parse_intermixed_args(argv), parser.given(argv))


@pytest.mark.parametrize("args, kind", [
    (["-kt", "{f}", "-usr", "alice"], 1),
    (["-usr", "alice", "-kt", "{f}"], 3),
    (["--jwt", "{f}", "-usr", "alice", "-pwd", "x"], 2),
    (["--saml", "{f}", "--jwt", "{f}"], 5),
    (["--jwt", "{f}", "--saml", "{f}"], 4),
])
def test_the_rightmost_identity_option_wins_as_in_storescu(tmp_path: Path, args: list[str],
                                                          kind: int) -> None:
    """-usr, -kt, --saml and --jwt exclude each other; storescu (3.6.7, seen in its
    A-ASSOCIATE-RQ) sends the rightmost, never a fixed favourite."""
    from forwarder.send.options import build_parser, check, peer_settings

    ticket = tmp_path / "ticket"
    ticket.write_bytes(b"ticket")
    argv = [a.replace("{f}", str(ticket)) for a in args]
    parsed = build_parser().parse_intermixed_args([*argv, "127.0.0.1", "104", "f.dcm"])
    check(parsed)
    assert peer_settings(parsed).identity.kind == kind


def test_a_password_for_a_user_another_identity_replaced_is_refused() -> None:
    from forwarder.send.options import build_parser, check, peer_settings

    parsed = build_parser().parse_intermixed_args(
        ["-usr", "alice", "-pwd", "x", "--jwt", "t.jwt", "127.0.0.1", "104", "f.dcm"])
    check(parsed)
    with pytest.raises(UsageError, match="need --user"):
        peer_settings(parsed)


@pytest.mark.parametrize("edge", [["-ts", "0"], ["-ts", "-1"], ["-ta", "1"], ["-pdu", "4096"],
                                  ["--max-send-pdu", "131072"], ["-aec", "SIXTEEN_LETTERS_"]])
def test_the_edges_of_storescus_ranges_are_taken(scp: StoreSCP, edge: list[str]) -> None:
    """The last values storescu takes still send (-ts 0 and -1: no socket timeout)."""
    ct = sample("CT_small.dcm")
    assert main(["send", *edge, "127.0.0.1", str(scp.port), ct]) == 0
    assert scp.counts() == {probe(ct).sop_instance_uid: 1}


def test_compression_level_sets_the_deflate_send_must_do(make_scp, tmp_path: Path) -> None:
    """A deflated file with an odd-length stream is deflated again as it is sent: +cl 0
    stores the data set uncompressed in the stream, +cl 9 packs it; both inflate to the
    same data set."""
    import zlib

    from tests.test_transcode import odd_deflated

    src = str(odd_deflated(tmp_path))
    peer = make_scp(transfer_syntaxes=["1.2.840.10008.1.2.1.99"])  # deflated only
    for level in ("0", "9"):
        assert main(["send", "-R", "-xd", "+cl", level, "127.0.0.1", str(peer.port), src]) == 0
    loose, packed = (r.dataset_bytes for r in peer.received)
    data_set = zlib.decompress(packed, -15)
    assert zlib.decompress(loose, -15) == data_set
    assert len(loose) > len(data_set) > 1.5 * len(packed)  # level 0 only frames the bytes


def test_command_file_as_dcmtk_reads_it(scp: StoreSCP, tmp_path: Path, capsys) -> None:
    """Quotes group words; a backslash is a character of the name; a quote left open is
    a usage error naming the file."""
    folder = tmp_path / "a\\b"  # a name with a backslash in it
    folder.mkdir()
    shutil.copy(sample("CT_small.dcm"), folder / "it's a ct.dcm")
    cmd = tmp_path / "files.txt"
    cmd.write_text(f'"{folder}/it\'s a ct.dcm"\n')
    assert main(["send", "127.0.0.1", str(scp.port), f"@{cmd}"]) == 0
    assert set(scp.counts()) == {probe(sample("CT_small.dcm")).sop_instance_uid}
    latin = os.fsencode(folder) + b"/r\xe9sum\xe9.dcm"  # a name that is not UTF-8
    shutil.copy(sample("MR_small.dcm"), latin)
    cmd.write_bytes(latin + b"\n")
    assert main(["send", "127.0.0.1", str(scp.port), f"@{cmd}"]) == 0
    assert probe(sample("MR_small.dcm")).sop_instance_uid in scp.counts()
    cmd.write_text(f"{folder}/it's a ct.dcm\n")
    assert main(["send", "127.0.0.1", str(scp.port), f"@{cmd}"]) == 2
    assert f"command file {cmd}: a quotation mark is not closed" in capsys.readouterr().err


def test_a_library_traceback_only_in_debug_mode_and_quiet_means_quiet(tmp_path: Path) -> None:
    """A file the decoder cannot read fails with one line saying why; the decoder's own
    traceback shows with -d, and -q prints nothing at all (as storescu -q)."""
    peer = StoreSCP(transfer_syntaxes=["1.2.840.10008.1.2.1"]).start()  # must decompress
    try:
        argv = [sys.executable, "-m", "forwarder", "send", "127.0.0.1", str(peer.port),
                sample("JPEG-lossy.dcm")]  # pylibjpeg refuses its scan parameters
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        runs = {flag: subprocess.run(argv[:4] + ([flag] if flag else []) + argv[4:],
                                     capture_output=True, text=True, timeout=60, env=env)
                for flag in ("", "-d", "-q")}
    finally:
        peer.stop()
    assert {flag: r.returncode for flag, r in runs.items()} == {"": 1, "-d": 1, "-q": 1}
    assert "not sent: cannot decompress JPEG Extended" in runs[""].stderr
    assert "Traceback" not in runs[""].stderr and "Traceback" in runs["-d"].stderr
    assert runs["-q"].stderr == "" and peer.received == []


def test_quiet_still_says_why_the_association_failed_as_storescu_does() -> None:
    """-q holds back warnings and errors, not the fatal line that ends the run: storescu -q
    still prints "F: Association Request Failed" for a port where no one listens."""
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    ours = subprocess.run([sys.executable, "-m", "forwarder", "send", "-q", "127.0.0.1", port,
                           sample("CT_small.dcm")], capture_output=True, text=True,
                          timeout=60, env=env)
    oracle = subprocess.run(["storescu", "-q", "127.0.0.1", port, sample("CT_small.dcm")],
                            capture_output=True, text=True, timeout=60)
    assert oracle.returncode == ours.returncode == 1
    assert oracle.stderr.startswith("F: Association Request Failed"), oracle.stderr
    assert ours.stderr == f"F: cannot connect to ANY-SCP@127.0.0.1:{port} (Connection " \
        "refused)\n", ours.stderr


def test_verbose_says_storescus_steps_in_its_words(tmp_path: Path) -> None:
    """-v: the association requested, accepted, each file sent, the release; the lines
    storescu -v prints for the same steps, in the same order."""
    files = [sample("CT_small.dcm"), sample("MR_small.dcm")]
    steps = ("Requesting Association", "Association Accepted", "Sending file: ",
             "Releasing Association")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    said = {}
    for who, argv in (("send", [sys.executable, "-m", "forwarder", "send"]),
                      ("storescu", ["storescu"])):
        peer = StoreSCPProcess(tmp_path / who)
        try:
            r = subprocess.run([*argv, "-v", "127.0.0.1", str(peer.port), *files],
                               capture_output=True, text=True, timeout=60, env=env)
        finally:
            peer.stop()
        assert r.returncode == 0, r.stderr
        said[who] = [line[3:] for line in r.stderr.splitlines()
                     if line.startswith("I: ") and line[3:].startswith(steps)]
    assert [line.split(" (")[0] for line in said["send"]] == \
        [line.split(" (")[0] for line in said["storescu"]] == \
        ["Requesting Association", "Association Accepted", f"Sending file: {files[0]}",
         f"Sending file: {files[1]}", "Releasing Association"]


JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"


def test_objects_without_pixels_go_under_a_compressed_syntax_the_peer_alone_accepted(
        tmp_path: Path) -> None:
    """A peer that accepts only JPEG Lossless: an RT plan (implicit VR in its file) and two
    SRs (explicit VR) go under it, as storescu sends them, every element as in the file
    (explicit VR little endian is what JPEG Lossless makes of all but pixel data); an
    image, which would need compressing, is still refused with the reason."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    peer = StoreSCP(transfer_syntaxes=[JPEG_LOSSLESS_SV1]).start()
    names = ["rtplan.dcm", "test-SR.dcm", "reportsi.dcm"]
    try:
        assert main(["send", "-xs", "127.0.0.1", str(peer.port),
                     *(sample(n) for n in names)]) == 0
        assert main(["send", "-xs", "127.0.0.1", str(peer.port), sample("CT_small.dcm")]) == 1
    finally:
        peer.stop()
    assert [r.transfer_syntax for r in peer.received] == [JPEG_LOSSLESS_SV1] * 3
    for name, got in zip(names, peer.received, strict=True):
        original = dcmread(sample(name))
        arrived = read_dataset(DicomBytesIO(got.dataset_bytes), False, True)
        assert [(e.tag, e.VR, e.value) for e in arrived] == \
            [(e.tag, e.VR, e.value) for e in original], name
    sr = Path(sample("test-SR.dcm")).read_bytes()  # explicit VR: its own bytes, unchanged
    assert sr.endswith(peer.received[1].dataset_bytes)


def test_a_compressed_syntax_for_a_data_set_without_pixels_is_lossless_and_encapsulating(
) -> None:
    from forwarder.negotiation import without_pixels_context
    from forwarder.transcode import LOSSLESS

    sr = "1.2.840.10008.5.1.4.1.1.88.33"
    accepted = [(sr, "1.2.840.10008.1.2.4.50"), (sr, JPEG_LOSSLESS_SV1)]
    assert without_pixels_context(accepted, sr, LOSSLESS) == JPEG_LOSSLESS_SV1
    assert without_pixels_context(accepted[:1], sr, LOSSLESS) == "1.2.840.10008.1.2.4.50"
    for other in ("1.2.840.10008.1.2.7.1", "1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.205"):
        assert without_pixels_context([(sr, other)], sr, LOSSLESS) is None  # RTV, JPIP


def test_an_sr_labelled_compressed_goes_to_a_peer_of_uncompressed_syntaxes(
        tmp_path: Path) -> None:
    """An SR whose file says JPEG Lossless (as a peer that took it so may have written
    it): nothing to decompress, it goes in the syntax the peer accepted, every element
    as in the file."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    ds = dcmread(sample("test-SR.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEG_LOSSLESS_SV1
    labelled = tmp_path / "sr-jpeg-label.dcm"
    ds.save_as(labelled, enforce_file_format=True)
    assert probe(labelled).transfer_syntax == JPEG_LOSSLESS_SV1
    peer = StoreSCP(transfer_syntaxes=["1.2.840.10008.1.2"]).start()
    try:
        assert main(["send", "-R", "127.0.0.1", str(peer.port), str(labelled)]) == 0
    finally:
        peer.stop()
    [got] = peer.received
    assert got.transfer_syntax == "1.2.840.10008.1.2"
    arrived = read_dataset(DicomBytesIO(got.dataset_bytes), True, True)
    assert [(e.tag, e.value) for e in arrived] == [(e.tag, e.value) for e in ds]


def test_a_spooled_job_without_pixels_is_looked_at_again_not_refused() -> None:
    """The daemon's jobs do not carry whether a file holds pixel data (their probe says
    it may): the file is looked at when only a compressed syntax was accepted, and an SR
    goes as send sends it."""
    from forwarder.association import PeerSettings
    from forwarder.cstore import store_file
    from forwarder.model import Probe
    from forwarder.negotiation import Context
    from forwarder.scu import Association

    sr = sample("test-SR.dcm")
    found = probe(sr)
    assert not found.pixels
    spooled = Probe(found.sop_class_uid, found.sop_instance_uid, found.transfer_syntax)
    peer = StoreSCP(transfer_syntaxes=[JPEG_LOSSLESS_SV1]).start()
    try:
        with Association.open(PeerSettings("127.0.0.1", peer.port),
                              [Context(found.sop_class_uid, (JPEG_LOSSLESS_SV1,))]) as assoc:
            assert store_file(assoc, sr, spooled).status == 0
    finally:
        peer.stop()
    assert [(r.sop_instance, r.transfer_syntax) for r in peer.received] == \
        [(found.sop_instance_uid, JPEG_LOSSLESS_SV1)]
    assert Path(sr).read_bytes().endswith(peer.received[0].dataset_bytes)


def data_set_dump(path: Path) -> list[str]:
    """DCMTK's dump of a stored object's data set, lengths and comments left out."""
    out = subprocess.run(["dcmdump", "-q", "-M", "+L", str(path)], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    body = out[out.index("# Dicom-Data-Set"):].splitlines()[1:]
    return [" ".join(line.split("#")[0].split()) for line in body]


def new_vr_file(tmp_path: Path) -> Path:
    """rtplan with UR, UT, UC, SV, UV, UN, OF, OD and OL elements (some in an item of
    its own character set) and a UID padded with a space."""
    ds = dcmread(sample("rtplan.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    for tag, vr, value in ((0x00080120, "UR", "http://example.org/x"),
                           (0x0040A160, "UT", "some text"), (0x00080119, "UC", "code"),
                           (0x00091010, "LO", "PRIV"), (0x00091012, "SV", -5),
                           (0x00091013, "UV", 7), (0x00091011, "UN", b"\x01\x02\x03\x04"),
                           (0x00091014, "OF", b"\x00\x00\x80\x3f"),
                           (0x00091015, "OD", b"\x00" * 7 + b"\x40"),
                           (0x00091016, "OL", b"\x01\x00\x00\x00")):
        ds.add_new(tag, vr, value)
    ds.SpecificCharacterSet = "ISO_IR 100"  # Latin-1, and an item of its own in UTF-8
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 192"
    item.add_new(0x0040A160, "UT", "café, naïve")
    item.add_new(0x00091010, "LO", "PRIV")
    item.add_new(0x00091012, "SV", [-5, 1 << 40])
    ds.add_new(0x0040A730, "SQ", [item])  # Content Sequence
    src = tmp_path / "new-vrs.dcm"
    ds.save_as(src, implicit_vr=False, little_endian=True, enforce_file_format=True)
    # a Referenced SOP Instance UID padded with a space instead of a NUL
    src.write_bytes(src.read_bytes().replace(PADDED.replace(b" ", b"\0"), PADDED, 1))
    assert PADDED in src.read_bytes()
    return src


PADDED = b"1.9.999.999.99.9.9999.9999.20030903145128 "


def storescu_dump(tmp_path: Path, src: Path, *options: str) -> list[str]:
    """What DCMTK's storescp stores from storescu with ``options``: its dump."""
    peer = StoreSCPProcess(tmp_path / "out-storescu")
    try:
        done = subprocess.run(["storescu", *options, "127.0.0.1", str(peer.port), str(src)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        [stored] = peer.files()
    finally:
        peer.stop()
    return data_set_dump(stored)


def test_disable_new_vr_sends_what_storescu_sends(tmp_path: Path) -> None:
    """-u with UR, UT, UC, SV, UV and UN elements: DCMTK's storescp stores from send
    exactly the data set it stores from storescu -u (each such element as OB holding
    its own value's bytes)."""
    src = new_vr_file(tmp_path)
    peer = StoreSCPProcess(tmp_path / "out-send")
    try:
        done = subprocess.run([sys.executable, "-m", "forwarder", "send", "-u", "127.0.0.1",
                               str(peer.port), str(src)], capture_output=True, text=True,
                              timeout=60, cwd=Path(__file__).resolve().parent.parent)
        assert done.returncode == 0, done.stderr
        [stored] = peer.files()
    finally:
        peer.stop()
    sent = data_set_dump(stored)
    assert sent == storescu_dump(tmp_path, src, "-u")
    assert any(line.startswith("(0008,0120) OB ") for line in sent)
    assert any("63\\61\\66\\c3\\a9" in line for line in sent)  # "café" in UTF-8


def test_a_destination_asks_for_what_storescu_u_and_up_do(tmp_path: Path) -> None:
    """``new_vrs: false`` and ``strip_uid_padding: true``: the daemon's peer stores the
    data set storescu -u -up gives it; the same file to a destination without them
    arrives unchanged, byte for byte."""
    from tests.daemonutil import DaemonProcess, write_config
    from tests.peers import wait_for

    src = new_vr_file(tmp_path)
    old, plain = StoreSCPProcess(tmp_path / "out-old", ("+B",)), \
        StoreSCPProcess(tmp_path / "out-plain", ("+B",))
    try:
        cfg = write_config(tmp_path, old.port, "    new_vrs: false\n    strip_uid_padding: true\n"
                           f"  plain: {{host: 127.0.0.1, port: {plain.port}}}\n",
                           min_age="100ms")
        cfg.write_text(cfg.read_text().replace("to: [pacs]", "to: [pacs, plain]"))
        d = DaemonProcess(cfg, tmp_path)
        try:
            d.wait_ready()
            shutil.copy(src, tmp_path / "in" / src.name)
            wait_for(lambda: old.files() and plain.files(), 30, "the file at both peers")
        finally:
            assert d.stop() == 0
        [changed], [unchanged] = old.files(), plain.files()
    finally:
        old.stop()
        plain.stop()
    assert data_set_dump(changed) == storescu_dump(tmp_path, src, "-u", "-up")
    assert PADDED not in changed.read_bytes() and PADDED[:-1] in changed.read_bytes()
    assert dataset_bytes(str(unchanged)) == dataset_bytes(str(src))


def test_a_destination_s_compression_level_is_zlib_s_when_it_deflates(tmp_path: Path) -> None:
    """``propose: deflated`` to peers that take only the deflated syntax: level 0 sends
    zlib's stored blocks, level 9 compresses; both carry the file's data set exactly."""
    import zlib

    from tests.daemonutil import DaemonProcess, write_config
    from tests.peers import wait_for

    src = sample("CT_small.dcm")
    deflated = ["1.2.840.10008.1.2.1.99"]
    fast = StoreSCP(transfer_syntaxes=deflated).start()
    best = StoreSCP(transfer_syntaxes=deflated).start()
    try:
        cfg = write_config(tmp_path, fast.port, "    propose: deflated\n    compression_level: 0\n"
                           f"  best: {{host: 127.0.0.1, port: {best.port}, propose: deflated, "
                           "compression_level: 9}\n", min_age="100ms")
        cfg.write_text(cfg.read_text().replace("to: [pacs]", "to: [pacs, best]"))
        d = DaemonProcess(cfg, tmp_path)
        try:
            d.wait_ready()
            shutil.copy(src, tmp_path / "in" / "ct.dcm")
            wait_for(lambda: fast.received and best.received, 30, "the file at both peers")
        finally:
            assert d.stop() == 0
    finally:
        fast.stop()
        best.stop()
    [at0], [at9] = fast.received, best.received
    assert at0.transfer_syntax == at9.transfer_syntax == deflated[0]
    plain = dataset_bytes(src)
    assert len(at0.dataset_bytes) > len(plain) > len(at9.dataset_bytes)  # 0: stored blocks
    for got in (at0, at9):
        assert zlib.decompress(got.dataset_bytes, -zlib.MAX_WBITS) == plain


def test_invented_values_replace_only_what_the_data_set_has(scp: StoreSCP) -> None:
    """+II as storescu: rtplan has no Instance Number, and gets none."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    plan = sample("rtplan.dcm")
    assert "InstanceNumber" not in dcmread(plan)
    assert main(["send", "+II", "127.0.0.1", str(scp.port), plan]) == 0
    [got] = scp.received
    sent = read_dataset(DicomBytesIO(got.dataset_bytes), False, True)
    assert "InstanceNumber" not in sent and sent.SOPInstanceUID != probe(plan).sop_instance_uid
    assert str(sent.PatientID).startswith("PID_")


def test_a_name_that_is_not_utf8_is_printed_as_its_own_bytes(scp: StoreSCP,
                                                             tmp_path: Path) -> None:
    """As storescu prints it: the name's bytes (here Latin-1), not Python's escapes, so
    the line names the very file."""
    name = os.fsencode(tmp_path) + b"/r\xe9sum\xe9.dcm"
    with open(name, "wb") as fp:
        fp.write(b"not DICOM at all" * 10)
    argv = [sys.executable, "-m", "forwarder", "send", "127.0.0.1", str(scp.port),
            os.fsdecode(name)]
    done = subprocess.run(argv, capture_output=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 1 and scp.received == []
    assert done.stderr.startswith(b"E: " + name + b": not DICOM"), done.stderr
    # a stderr that cannot write a real character (an ASCII locale) escapes it
    utf8 = tmp_path / "café.dcm"
    utf8.write_bytes(b"not DICOM at all" * 10)
    ascii_only = subprocess.run(argv[:-1] + [str(utf8)], capture_output=True, timeout=60,
                                cwd=Path(__file__).resolve().parent.parent,
                                env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert ascii_only.returncode == 1 and b"Logging error" not in ascii_only.stderr
    assert ascii_only.stderr.startswith(b"E: " + os.fsencode(tmp_path) + b"/caf\\xe9.dcm: ")


def test_unreadable_file(scp: StoreSCP, tmp_path: Path) -> None:
    locked = tmp_path / "locked.dcm"
    shutil.copy(sample("CT_small.dcm"), locked)
    locked.chmod(0)
    tmp_path.chmod(0o755)
    argv = [sys.executable, "-m", "forwarder", "send", "127.0.0.1", str(scp.port), str(locked)]
    if os.geteuid() == 0:  # root reads anything: run the command as nobody
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 1
    assert f"{locked}: cannot read" in proc.stderr and scp.received == []


def test_syntax_no_context_covers_is_named(make_scp, capsys) -> None:
    peer = make_scp(transfer_syntaxes=["1.2.840.10008.1.2.4.50"])  # JPEG baseline only
    assert main(["send", "-R", "127.0.0.1", str(peer.port), sample("CT_small.dcm")]) == 1
    err = capsys.readouterr().err
    assert "CT Image Storage" in err and peer.received == []


def test_repeat_abort_and_invented_uids(scp: StoreSCP) -> None:
    ct = sample("CT_small.dcm")
    assert main(["send", "--repeat", "3", "127.0.0.1", str(scp.port), ct]) == 0
    assert scp.counts() == {probe(ct).sop_instance_uid: 3}
    assert scp.releases_seen >= 1
    scp.received.clear()
    assert main(["send", "+II", "--abort", "--repeat", "2", "127.0.0.1", str(scp.port), ct]) == 0
    uids = [r.sop_instance for r in scp.received]
    assert len(set(uids)) == 2 and probe(ct).sop_instance_uid not in uids
    from tests.peers import wait_for
    wait_for(lambda: scp.aborts_seen >= 1, 5, "the peer to see an A-ABORT")


def test_invent_series_and_study(scp: StoreSCP) -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    ct = sample("CT_small.dcm")
    assert main(["send", "+IR", "2", "+IS", "2", "--repeat", "5", "127.0.0.1",
                 str(scp.port), ct]) == 0
    ds = [read_dataset(DicomBytesIO(r.dataset_bytes), False, True) for r in scp.received]
    series = [d.SeriesInstanceUID for d in ds]
    studies = [d.StudyInstanceUID for d in ds]
    assert series[0] == series[1] != series[2] == series[3] != series[4]
    assert studies[0] == studies[3] != studies[4]


def test_scan_directories_pattern_and_recursion(scp: StoreSCP, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(sample("CT_small.dcm"), tmp_path / "a" / "ct.dcm")
    shutil.copy(sample("MR_small.dcm"), tmp_path / "a" / "b" / "mr.dcm")
    shutil.copy(sample("rtplan.dcm"), tmp_path / "a" / "plan.ima")
    assert main(["send", "+sd", "+sp", "*.dcm", "127.0.0.1", str(scp.port),
                 str(tmp_path / "a")]) == 0
    assert set(scp.counts()) == {probe(sample("CT_small.dcm")).sop_instance_uid}
    assert main(["send", "+sd", "+r", "+sp", "*.dcm", "127.0.0.1", str(scp.port),
                 str(tmp_path / "a")]) == 0
    assert probe(sample("MR_small.dcm")).sop_instance_uid in scp.counts()


def test_a_scan_follows_linked_folders_once_and_names_what_it_cannot_read(
        scp: StoreSCP) -> None:
    """As storescu: +sd +r goes into a linked folder; a link back up the tree is followed
    once, not round and round; a folder it may not read and a link that leads nowhere are
    bad inputs (halting, or reported and passed with -nh), never silently left out."""
    import tempfile

    with tempfile.TemporaryDirectory() as top:  # /tmp: open to the account that reads it
        scan_a_tree(scp, Path(top))


def scan_a_tree(scp: StoreSCP, tmp_path: Path) -> None:
    tree, elsewhere = tmp_path / "tree", tmp_path / "elsewhere"
    (tree / "locked").mkdir(parents=True)
    (elsewhere / "inner").mkdir(parents=True)
    shutil.copy(sample("rtplan.dcm"), tree / "plan.dcm")
    shutil.copy(sample("MR_small.dcm"), elsewhere / "mr.dcm")
    shutil.copy(sample("CT_small.dcm"), elsewhere / "inner" / "ct.dcm")
    shutil.copy(sample("rtdose.dcm"), tree / "locked" / "dose.dcm")
    (tree / "linked").symlink_to("../elsewhere")
    (elsewhere / "up").symlink_to("../tree")  # a way round, back to the start
    (tree / "gone.dcm").symlink_to("/nonexistent/x.dcm")
    (tree / "round").symlink_to("round")  # a link to itself
    (tree / "locked").chmod(0)
    tmp_path.chmod(0o755)
    argv = [sys.executable, "-m", "forwarder", "send", "+sd", "+r", "127.0.0.1",
            str(scp.port), str(tree)]
    if os.geteuid() == 0:  # root reads anything: run the command as nobody
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    repo = Path(__file__).resolve().parent.parent
    try:
        halted = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=repo)
        assert halted.returncode == 1 and scp.received == [], halted.stderr
        assert halted.stderr.splitlines() == [
            f"E: {tree / 'gone.dcm'}: cannot access: No such file or directory",
            f"E: {tree / 'locked'}: cannot read: Permission denied",
            f"E: {tree / 'round'}: cannot access: Too many levels of symbolic links"
        ], halted.stderr
        # a name the pattern leaves out is not looked at, whatever it is
        patterned = subprocess.run([*argv[:-3], "+sp", "*.dcm", *argv[-3:]],
                                   capture_output=True, text=True, timeout=60, cwd=repo)
        assert "round" not in patterned.stderr and patterned.stderr.count("E: ") == 2
        passed = subprocess.run([*argv[:-3], "-nh", *argv[-3:]], capture_output=True,
                                text=True, timeout=60, cwd=repo)
    finally:
        (tree / "locked").chmod(0o755)
    assert passed.returncode == 1 and passed.stderr.count("E: ") == 3, passed.stderr
    assert scp.counts() == Counter(probe(sample(n)).sop_instance_uid
                                   for n in ("rtplan.dcm", "MR_small.dcm", "CT_small.dcm"))


def test_command_file(scp: StoreSCP, tmp_path: Path) -> None:
    cmd = tmp_path / "opts.txt"
    cmd.write_text(f'-aet "MY AE" -aec ANY-SCP 127.0.0.1 {scp.port}\n')
    assert main(["send", f"@{cmd}", sample("CT_small.dcm")]) == 0
    assert len(scp.received) == 1


def test_user_identity_accepted_refused_and_positive_response(make_scp, capsys,
                                                             tmp_path: Path) -> None:
    def check(event):
        if event.user_id_type == 5:  # JWT: confirmed with a server response
            return event.primary_field == b"token-123", b"welcome"
        return event.primary_field == b"alice" and event.secondary_field == b"secret", None

    peer = make_scp(user_check=check)
    ct = sample("CT_small.dcm")
    assert main(["send", "-usr", "alice", "-pwd", "secret", "127.0.0.1", str(peer.port), ct]) == 0
    assert main(["send", "-usr", "alice", "-pwd", "wrong", "127.0.0.1", str(peer.port), ct]) == 1
    assert "association rejected" in capsys.readouterr().err
    assert len(peer.received) == 1
    jwt = tmp_path / "token.jwt"
    jwt.write_bytes(b"token-123")
    assert main(["send", "--jwt", str(jwt), "-rsp", "127.0.0.1", str(peer.port), ct]) == 0
    assert len(peer.received) == 2
    # this peer never confirms a user name (pynetdicom sends no response for types 1-2):
    # with -rsp we refuse to go on, as storescu does
    assert main(["send", "-usr", "alice", "-pwd", "secret", "-rsp", "127.0.0.1",
                 str(peer.port), ct]) == 1
    assert "did not confirm the user identity" in capsys.readouterr().err
    assert len(peer.received) == 2


def test_tls_mutual_authentication(make_scp, tmp_path: Path, capsys) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", "other-ca")
    peer = make_scp(ssl_context=server_context(pki))
    ct = sample("CT_small.dcm")
    tls = ["+tls", str(pki["client.key"]), str(pki["client.pem"])]
    assert main(["send", *tls, "+cf", str(pki["ca.pem"]), "127.0.0.1", str(peer.port), ct]) == 0
    assert len(peer.received) == 1
    # a CA we do not trust: refused, nothing sent (and never in plaintext)
    assert main(["send", *tls, "+cf", str(other["ca.pem"]), "127.0.0.1", str(peer.port), ct]) == 1
    assert len(peer.received) == 1
    # without TLS the TLS peer gets no association at all
    assert main(["send", "-to", "5", "-ta", "5", "127.0.0.1", str(peer.port), ct]) == 1
    assert len(peer.received) == 1
    # -ic: the chain is not checked, the session is still encrypted
    assert main(["send", *tls, "-ic", "127.0.0.1", str(peer.port), ct]) == 0
    assert len(peer.received) == 2


def test_send_pz_offers_the_extended_bcp195_suites_alone(make_scp, tmp_path: Path) -> None:
    """``+pz`` (DCMTK's later storescu: the extended BCP 195 profile, as ``profile:
    bcp195-ex`` in the YAML) offers its four ECDHE GCM suites alone: a TLS 1.2 peer that
    takes only ChaCha20 is refused where ``+px`` (BCP 195) is served."""
    import ssl

    pki = make_pki(tmp_path / "pki")
    server = server_context(pki, require_client=False)
    server.maximum_version = ssl.TLSVersion.TLSv1_2
    server.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305")
    peer = make_scp(ssl_context=server)
    ct = sample("CT_small.dcm")
    tls = ["+tls", str(pki["client.key"]), str(pki["client.pem"]), "+cf", str(pki["ca.pem"])]
    assert main(["send", *tls, "+pz", "127.0.0.1", str(peer.port), ct]) == 1
    assert len(peer.received) == 0
    assert main(["send", *tls, "+px", "127.0.0.1", str(peer.port), ct]) == 0
    assert len(peer.received) == 1
    ok = make_scp(ssl_context=server_context(pki, require_client=False))
    assert main(["send", *tls, "--profile-bcp195-ex", "127.0.0.1", str(ok.port), ct]) == 0
    assert len(ok.received) == 1


def test_probe_rejects_non_dicom(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"\0" * 10)
    with pytest.raises(NotDicomError):
        probe(f)


def test_progress_line_on_a_terminal_and_silence_off_it(scp, tmp_path: Path) -> None:
    import pty

    from tests.corpus import unique_copies

    files = [str(p) for p in unique_copies(tmp_path / "c", 30).values()]
    argv = [sys.executable, "-m", "forwarder", "send", "-R", "127.0.0.1", str(scp.port), *files]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stderr=slave, stdout=subprocess.DEVNULL, env=env)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(30) == 0
    text = out.decode()
    assert "\rsent 30/30 files" in text and "files/s" in text and text.endswith("\r\n")
    quiet = subprocess.run(argv, capture_output=True, env=env, timeout=30)
    assert quiet.returncode == 0 and b"files/s" not in quiet.stderr
    assert len(scp.received) == 60


def test_many_inputs_are_probed_by_two_processes_and_a_bad_one_still_halts_first(
        scp: StoreSCP, tmp_path: Path) -> None:
    """Past PARALLEL_FROM files a forked process probes every second one: the answers come
    back in order, a bad input among them still halts the run before the association, and
    with -nh every good file arrives once."""
    from forwarder.send.inputs import PARALLEL_FROM
    from tests.corpus import unique_copies

    files = unique_copies(tmp_path / "in", PARALLEL_FROM + 17)
    paths = [str(p) for p in files.values()]
    junk = tmp_path / "in" / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x00")  # cut short
    paths.insert(PARALLEL_FROM // 2 + 1, str(junk))  # probed by the second process

    def send(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "forwarder", "send", *extra, "127.0.0.1",
                               str(scp.port), *paths], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parent.parent)

    halted = send()
    assert halted.returncode == 1 and f"E: {junk}: " in halted.stderr
    assert scp.received == []
    kept_going = send("-nh")
    assert kept_going.returncode == 1 and kept_going.stderr.count(f"E: {junk}: ") == 1
    assert scp.counts() == dict.fromkeys(files, 1)


def test_a_pydicom_warning_is_printed_once_as_a_log_line(scp, tmp_path: Path) -> None:
    """pydicom both logs and warns about a value it finds invalid; a user sees one line."""
    src = sample("rtdose_expb.dcm")  # a UID component with a leading zero
    argv = [sys.executable, "-m", "forwarder", "send", "127.0.0.1", str(scp.port), src]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "PYTHONWARNINGS": ""}
    done = subprocess.run(argv, capture_output=True, env=env, timeout=60, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert [ln for ln in lines if "Invalid value for VR UI" in ln] == [
        f"W: {src}: Invalid value for VR UI: '1.2.123.456.78.9.0123.4567.89012345678901'. Please see "
        "<https://dicom.nema.org/medical/dicom/current/output/html/part05.html#table_6.2-1> "
        "for allowed values for each VR."], done.stderr
    assert not any("Warning" in ln or "warn_and_log" in ln for ln in lines), done.stderr
    assert [r.sop_instance for r in scp.received] == [probe(src).sop_instance_uid]


def relabelled(src: str, dst: Path, syntax: str) -> Path:
    """``src`` with its meta's Transfer Syntax UID replaced by ``syntax`` (padded to even
    length), its dataset untouched: a header that misnames its dataset's encoding."""
    from pydicom.filewriter import write_file_meta_info

    ds = dcmread(src)
    with open(src, "rb") as fp:
        body = fp.read()[dataset_offset_of(src):]
    ds.file_meta.TransferSyntaxUID = syntax
    with open(dst, "wb") as out:
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, ds.file_meta, enforce_standard=False)
    with open(dst, "ab") as out:
        out.write(body)
    return dst


def dataset_offset_of(path: str) -> int:
    from forwarder.scu.dimse import dataset_offset

    fd = os.open(path, os.O_RDONLY)
    try:
        return dataset_offset(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("source", ["SC_rgb_rle.dcm", "JPEG2000.dcm"])
def test_pixel_fragments_under_an_uncompressed_label_are_refused_as_storescu_refuses_them(
        storescp: StoreSCPProcess, tmp_path: Path, capsys, source: str) -> None:
    """Encapsulated pixel data with a meta that names Explicit VR Little Endian: sent, a
    peer would store the compressed bytes as pixel values and answer success. storescu
    fails the file; so do send and the daemon's intake, with the reason."""
    from tests.peers import wait_for
    from tests.pipeline import Pipeline, make_config

    cfg = make_config(tmp_path)
    bad = relabelled(sample(source), tmp_path / "in" / "relabelled.dcm", "1.2.840.10008.1.2.1")
    oracle = subprocess.run(["storescu", "127.0.0.1", str(storescp.port), str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert oracle.returncode != 0 and "Store Failed" in oracle.stderr, oracle.stderr
    assert main(["send", "127.0.0.1", str(storescp.port), str(bad)]) != 0
    said = capsys.readouterr().err
    assert "mislabelled: the pixel data is encapsulated (compressed fragments)" in said, said
    assert storescp.files() == []
    data = bad.read_bytes()
    with Pipeline(cfg) as p:
        wait_for(lambda: p.spool.quarantined(), 10, "the file quarantined")
        [q] = p.spool.quarantined()
        assert "mislabelled" in q["reason"] and "Explicit VR Little Endian" in q["reason"]
        assert p.objects() == [] and Path(q["file"]).read_bytes() == data


@pytest.mark.parametrize("source, label", [
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2.1"),  # implicit VR dataset, meta says explicit
    ("MR_small.dcm", "1.2.840.10008.1.2"),  # explicit VR dataset, meta says implicit
])
def test_a_header_that_misnames_its_encoding_is_re_encoded_not_sent_under_the_label(
        storescp: StoreSCPProcess, tmp_path: Path, source: str, label: str) -> None:
    """Sent as it is, the bytes would be read by the peer in the label's encoding: a
    success status for an object no one can read. The dataset is re-encoded instead, and
    DCMTK reads back every value of the source."""
    from pydicom import config

    from forwarder.spool import Spool
    from tests.peers import StoreSCPProcess
    from tests.sendutil import destination, enqueue, run, settled, states

    src = sample(source)
    bad = relabelled(src, tmp_path / "relabelled.dcm", label)
    assert not probe(bad).meta_consistent
    assert main(["send", "127.0.0.1", str(storescp.port), str(bad)]) == 0
    daemons_peer = StoreSCPProcess(tmp_path / "from-the-daemon")
    spool = Spool(tmp_path / "spool")
    try:  # the daemon's sender, from the spool, the same way
        enqueue(spool, [bad])
        run(spool, destination(daemons_peer.port), lambda: settled(spool))
        assert states(spool)["done"] == 1
    finally:
        spool.close()
        daemons_peer.stop()
    original = dcmread(src)
    padding = 0xFFFCFFFC  # Data Set Trailing Padding, which storescp drops as it stores
    for got in [*storescp.files(), *daemons_peer.files()]:
        dump = subprocess.run(["dcmdump", "-q", str(got)], capture_output=True, text=True,
                              timeout=30)
        assert dump.returncode == 0 and "E:" not in dump.stderr, dump.stderr
        with config.strict_reading():
            stored = dcmread(got)
        assert [(e.tag, e.value) for e in stored] == [(e.tag, e.value) for e in original
                                                      if e.tag != padding]
    assert len(storescp.files()) == len(daemons_peer.files()) == 1


def test_what_pydicom_warns_names_the_file(scp: StoreSCP, tmp_path: Path, capsys) -> None:
    """A warning pydicom logs while a file is read or converted (here an invalid UID)
    says which file it is about, as every other line of send's does."""
    ds = dcmread(sample("CT_small.dcm"))
    ds.StudyInstanceUID = "1.2.03.4"  # a component with a leading zero
    bad = tmp_path / "bad-uid.dcm"
    ds.save_as(bad)
    assert main(["send", "-xi", "127.0.0.1", str(scp.port), str(bad)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "1.2.03.4" in line]
    assert warned and all(line.startswith(f"W: {bad}: ") for line in warned), warned


def test_send_xf_reads_a_profile_with_latin1_bytes_as_storescu_does(tmp_path: Path,
                                                                    capsys) -> None:
    """A profile saved in Latin-1 (a comment with a German street name) is read as DCMTK
    reads it, not a UnicodeDecodeError; here the missing profile is then the reason."""
    cfg = tmp_path / "latin.cfg"
    cfg.write_bytes(b"# Stra\xdfe\n[[TransferSyntaxes]]\n[U]\nTransferSyntax1 = "
                    b"LittleEndianImplicit\n[[PresentationContexts]]\n[C]\n"
                    b"PresentationContext1 = CTImageStorage\\U\n[[Profiles]]\n[P]\n"
                    b"PresentationContexts = C\n")
    ct = get_testdata_file("CT_small.dcm")
    assert main(["send", "-xf", str(cfg), "Q", "127.0.0.1", "1", ct]) != 0
    assert f"{cfg}: no profile 'Q' (profiles: P)" in capsys.readouterr().err
