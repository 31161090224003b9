"""Presentation-context planning, pure, and checked against what DCMTK storescu proposes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from forwarder.asconfig import ProfileError, parse_profile, read_profile
from forwarder.cli import main
from forwarder.negotiation import (
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    OPTION_TO_MODE,
    PROPOSE_MODES,
    STORESCU_DEFAULT_SOP_CLASSES,
    TooManyContexts,
    choose_context,
    plan_contexts,
    storescu_contexts,
)
from tests.peers import StoreSCP

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
JPEG_LL = "1.2.840.10008.1.2.4.70"


def pairs(contexts) -> list[tuple[str, tuple[str, ...]]]:
    return [(c.abstract_syntax, c.transfer_syntaxes) for c in contexts]


def test_default_is_two_contexts_per_class() -> None:
    assert pairs(storescu_contexts("uncompressed", False, [CT])) == [
        (CT, (EXPLICIT_LE,)), (CT, (EXPLICIT_BE, IMPLICIT_LE))]
    assert pairs(storescu_contexts("uncompressed", True, [CT])) == [
        (CT, (EXPLICIT_LE, EXPLICIT_BE, IMPLICIT_LE))]
    assert pairs(storescu_contexts("implicit", False, [CT, CT])) == [(CT, (IMPLICIT_LE,))]
    assert len(storescu_contexts("uncompressed", False, None)) == 128
    assert len(STORESCU_DEFAULT_SOP_CLASSES) == 64


def test_plan_puts_the_files_own_syntax_first_and_caps_at_128() -> None:
    plan = pairs(plan_contexts([(CT, JPEG_LL), (CT, EXPLICIT_LE), (MR, IMPLICIT_LE)],
                               "uncompressed", False))
    assert plan == [(CT, (JPEG_LL,)), (CT, (EXPLICIT_LE,)), (CT, (EXPLICIT_BE, IMPLICIT_LE)),
                    (MR, (IMPLICIT_LE,)), (MR, (EXPLICIT_LE,)), (MR, (EXPLICIT_BE, IMPLICIT_LE))]
    many = [(f"1.2.3.{i}", EXPLICIT_LE) for i in range(65)]
    with pytest.raises(TooManyContexts):
        plan_contexts(many, "uncompressed", False)


def test_choose_context_prefers_the_files_own_syntax() -> None:
    accepted = [(CT, IMPLICIT_LE), (CT, JPEG_LL)]
    assert choose_context(accepted, CT, JPEG_LL, [EXPLICIT_LE, IMPLICIT_LE]) == JPEG_LL
    assert choose_context(accepted, CT, EXPLICIT_LE, [IMPLICIT_LE]) == IMPLICIT_LE
    assert choose_context(accepted, MR, EXPLICIT_LE, [IMPLICIT_LE]) is None


def test_profile_file_like_storescu_cfg(tmp_path: Path) -> None:
    text = """
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LittleEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[JPEGLossless]
TransferSyntax1 = JPEGLossless:Non-hierarchical-1stOrderPrediction
[[PresentationContexts]]
[Mine]
PresentationContext1 = CTImageStorage\\JPEGLossless
PresentationContext2 = CTImageStorage\\Uncompressed
PresentationContext3 = 1.2.840.10008.5.1.4.1.1.4\\Uncompressed
[[Profiles]]
[Default]
PresentationContexts = Mine
"""
    assert pairs(parse_profile(text, "Default")) == [
        (CT, (JPEG_LL,)), (CT, (EXPLICIT_LE, IMPLICIT_LE)), (MR, (EXPLICIT_LE, IMPLICIT_LE))]
    with pytest.raises(ProfileError, match="no profile 'Other'"):
        parse_profile(text, "Other")
    with pytest.raises(ProfileError, match=r"<profile>:10: unknown SOP class 'CTImageStorag'"):
        parse_profile(text.replace("CTImageStorage\\JPEG", "CTImageStorag\\JPEG"), "Default")


SHUFFLED = """
[[TransferSyntaxes]]
[Unc]
TransferSyntax2 = LittleEndianImplicit
TransferSyntax1 = LittleEndianExplicit
[Gap]
transfersyntax1 = LittleEndianImplicit
TransferSyntax3 = BigEndianExplicit
[[PresentationContexts]]
[PCs]
PresentationContext2 = MRImageStorage\\Gap
PresentationContext1 = CTImageStorage\\Unc
[[SCPSCURoleSelection]]
[Roles]
Role1 = CTImageStorage\\SCU
[[Profiles]]
[P]
PresentationContexts = PCs
SCPSCURoleSelection = Roles
"""


def test_profile_keys_count_by_number_as_dcmtk_reads_them() -> None:
    """DCMTK takes TransferSyntax1, 2, 3... in the order of their numbers, up to the
    first number missing, wherever they stand: the order proposed is the numbers'."""
    profile = read_profile(SHUFFLED, "P", "x.cfg")
    assert pairs(profile.contexts) == [(CT, (EXPLICIT_LE, IMPLICIT_LE)), (MR, (IMPLICIT_LE,))]
    assert profile.skipped == ["x.cfg:8: TransferSyntax3"]
    assert profile.roles == {CT: (True, False)}


def test_profile_with_extended_negotiation_is_refused_not_dropped() -> None:
    text = SHUFFLED.replace("[[Profiles]]", "[[ExtendedNegotiation]]\n[Ext]\n"
                            "ExtendedNegotiation1 = CTImageStorage\\000102\n[[Profiles]]")
    text += "ExtendedNegotiation = Ext\n"
    with pytest.raises(ProfileError, match="x.cfg:23: profile 'P' asks for extended"):
        read_profile(text, "P", "x.cfg")


def test_profile_proposes_what_storescu_proposes(tmp_path: Path) -> None:
    cfg = tmp_path / "shuffled.cfg"
    cfg.write_text(SHUFFLED)
    argv = ["-xf", str(cfg), "P"]
    assert _seen_by_peer(argv, via_storescu=False) == _seen_by_peer(argv, via_storescu=True)


def test_profile_names_are_matched_as_dcmtk_matches_them(tmp_path: Path) -> None:
    """DCMTK compares section, group and profile names without their whitespace and in any
    case: the profile [Two Words] is asked for as TwoWords, its context group named as
    "p cs". What is proposed is what storescu proposes; an unknown name lists the
    profiles as the file writes them."""
    spaced = SHUFFLED.replace("[P]", "[Two Words]").replace("= PCs", "= p cs") \
        .replace("[[Profiles]]", "[[ Profiles ]]")
    for name in ("TwoWords", "two words", "TWOWORDS"):
        assert pairs(read_profile(spaced, name).contexts) == \
            pairs(read_profile(SHUFFLED, "P").contexts)
    with pytest.raises(ProfileError, match=r"no profile 'Three' \(profiles: Two Words\)"):
        read_profile(spaced, "Three")
    cfg = tmp_path / "spaced.cfg"
    cfg.write_text(spaced)
    argv = ["-xf", str(cfg), "TwoWords"]
    assert _seen_by_peer(argv, via_storescu=False) == _seen_by_peer(argv, via_storescu=True)


FILES = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]


def _seen_by_peer(argv_tail: list[str], via_storescu: bool) -> list[tuple[str, tuple[str, ...]]]:
    peer = StoreSCP().start()
    try:
        argv = [*argv_tail, "127.0.0.1", str(peer.port), *FILES]
        if via_storescu:
            subprocess.run(["storescu", *argv], check=True, capture_output=True, timeout=60)
        else:
            assert main(["send", *argv]) == 0
        assert len(peer.requested) == 1
        return peer.requested[0]
    finally:
        peer.stop()


@pytest.mark.parametrize("option", [*OPTION_TO_MODE])
@pytest.mark.parametrize("extra", [["-R"], ["-R", "+C"]])
def test_each_mode_proposes_what_storescu_proposes(option: str, extra: list[str]) -> None:
    mode = OPTION_TO_MODE[option]
    ours = _seen_by_peer([*extra, option], via_storescu=False) if PROPOSE_MODES[mode][2] or \
        mode == "implicit" else None
    if ours is None:
        # video-only modes cannot carry these image files: compare the proposal alone
        expected = storescu_contexts(mode, "+C" in extra, [CT, MR])
        storescu_seen = _seen_by_peer_allow_failure([*extra, option])
        assert storescu_seen == pairs(expected)
        return
    assert ours == _seen_by_peer([*extra, option], via_storescu=True)


def _seen_by_peer_allow_failure(argv_tail: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    peer = StoreSCP().start()
    try:
        subprocess.run(["storescu", *argv_tail, "127.0.0.1", str(peer.port), *FILES],
                       capture_output=True, timeout=60)
        return peer.requested[0]
    finally:
        peer.stop()


@pytest.mark.parametrize("extra", [[], ["+C"]])
def test_without_required_the_fixed_list_like_storescu(extra: list[str]) -> None:
    assert _seen_by_peer(extra, via_storescu=False) == _seen_by_peer(extra, via_storescu=True)


@pytest.mark.slow
def test_a_destination_s_negotiation_profile_is_proposed_as_storescu_proposes_it(
        tmp_path: Path) -> None:
    """``negotiation_profile`` (storescu -xf): the daemon proposes the profile's contexts,
    in its numbers' order, as storescu does; a file its profile does not propose fails
    with the reason, the others arrive."""
    import json
    import shutil

    from tests.daemonutil import DaemonProcess, write_config
    from tests.peers import wait_for

    profile = tmp_path / "shuffled.cfg"
    profile.write_text(SHUFFLED)
    plan = get_testdata_file("rtplan.dcm")
    peer = StoreSCP().start()
    try:
        cfg = write_config(tmp_path, peer.port, "    negotiation_profile: "
                           f"{{file: {profile}, profile: P}}\n", min_age="100ms")
        d = DaemonProcess(cfg, tmp_path)
        try:
            d.wait_ready()
            for f in (*FILES, plan):
                shutil.copy(f, tmp_path / "in" / Path(f).name)
            wait_for(lambda: len(peer.received) == 2, 30, "the CT and the MR")
            failed = lambda: json.loads(subprocess.run(  # noqa: E731
                [sys.executable, "-m", "forwarder", "failed", "-c", str(cfg), "--json"],
                capture_output=True, text=True, timeout=60, check=True).stdout)
            wait_for(lambda: failed(), 30, "the plan failed")
        finally:
            assert d.stop() == 0
        proposed = peer.requested[0]
    finally:
        peer.stop()
    assert proposed == _seen_by_peer(["-xf", str(profile), "P"], via_storescu=True)
    assert sorted(r.sop_class for r in peer.received) == sorted([CT, MR])
    [job] = failed()
    assert "not proposed" in json.dumps(job) and "RT Plan Storage" in json.dumps(job)


@pytest.mark.slow
def test_an_edited_negotiation_profile_is_proposed_after_a_reload(tmp_path: Path) -> None:
    """The profile is read with the configuration: after the file is edited and the
    daemon reloaded, what the new profile proposes is proposed (and an MR the old one
    left out arrives)."""
    import shutil
    import signal

    from tests.daemonutil import DaemonProcess, write_config
    from tests.peers import wait_for

    profile = tmp_path / "p.cfg"
    ct_only = SHUFFLED.replace("PresentationContext2 = MRImageStorage\\Gap\n", "")
    profile.write_text(ct_only)
    peer = StoreSCP().start()
    try:
        cfg = write_config(tmp_path, peer.port, "    negotiation_profile: "
                           f"{{file: {profile}, profile: P}}\n    idle_release: 100ms\n",
                           min_age="100ms")
        d = DaemonProcess(cfg, tmp_path)
        try:
            d.wait_ready()
            shutil.copy(FILES[0], tmp_path / "in" / "ct.dcm")
            wait_for(lambda: len(peer.received) == 1, 30, "the CT")
            profile.write_text(SHUFFLED)
            d.signal(signal.SIGHUP)
            d.wait_ready(count=2)
            wait_for(lambda: "configuration reloaded" in d.output(), 10, "the reload")
            shutil.copy(FILES[1], tmp_path / "in" / "mr.dcm")
            wait_for(lambda: len(peer.received) == 2, 30, "the MR, proposed by the new profile")
        finally:
            assert d.stop() == 0
    finally:
        peer.stop()
    assert [sop for sop, _ in peer.requested[0]] == [CT]
    assert [sop for sop, _ in peer.requested[-1]] == [CT, MR]


@pytest.mark.parametrize(("roles", "error"), [
    ("Role1 = CTImageStorage\\SCU\nRole2 = RTPlanStorage\\BOTH\n",
     r"x.cfg:16: role for '1.2.840.10008.5.1.4.1.1.481.5', a SOP class no presentation "
     r"context of profile 'P' proposes"),
    ("Role1 = CTImageStorage\\SCP\nRole2 = CTImageStorage\\SCU\n",
     r"x.cfg:16: a second role for '1.2.840.10008.5.1.4.1.1.2'"),
])
def test_profile_roles_refused_where_dcmtk_refuses_them(roles: str, error: str) -> None:
    """storescu -xf refuses a role for a SOP class its profile does not propose (it would
    go out in the A-ASSOCIATE-RQ beside no context) and a SOP class given two roles (one
    would be dropped in silence)."""
    text = SHUFFLED.replace("Role1 = CTImageStorage\\SCU\n", roles)
    with pytest.raises(ProfileError, match=error):
        read_profile(text, "P", "x.cfg")
