from __future__ import annotations

from pathlib import Path

import pytest

from forwarder import config
from forwarder.cli import main
from forwarder.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
ae_title: FWD
spool: /tmp/spool
watch:
  - name: modality
    path: /tmp/in
destinations:
  pacs: {host: 127.0.0.1, port: 104}
  ai:
    host: 127.0.0.1
    port: 105
    retry: {initial: 500ms, max: 2h}
    max_pdu: 64KiB
routes:
  - to: [pacs]
  - name: ct
    match: {watch: modality, Modality: [CT, MR], StudyDescription: {regex: "(?i)chest"}}
    to: [ai]
    final: true
"""


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(text, "f.yaml")
    return [str(i) for i in info.value.issues]


def test_good_config_with_defaults_and_units() -> None:
    cfg = config.parse(GOOD, "f.yaml")
    ai = cfg.destinations["ai"]
    assert ai.retry.initial == 0.5 and ai.retry.max == 7200 and ai.max_pdu == 65536
    assert cfg.destinations["pacs"].called_ae_title == "ANY-SCP"
    assert cfg.calling_ae(cfg.destinations["pacs"]) == "FWD"
    assert cfg.watch[0].min_age == 2.0 and cfg.watch[0].ignore[1] == "*.tmp"
    assert cfg.routes[1].final and cfg.routes[1].match[2].regex is not None
    assert cfg.attribute_keywords == {"Modality", "StudyDescription"}


def test_example_config_loads() -> None:
    cfg = config.load(REPO / "etc" / "forwarder.yaml")
    assert cfg.destinations and cfg.routes and cfg.watch


def _keys(cls: type) -> set[str]:
    import dataclasses

    out = set()
    for f in dataclasses.fields(cls):
        if "parse" in f.metadata:
            out.add(f.name)
            inner = f.default if dataclasses.is_dataclass(f.default) else None
            if inner is not None:
                out |= _keys(type(inner))
    return out


def test_example_config_and_reference_explain_every_key() -> None:
    import re

    example = (REPO / "etc" / "forwarder.yaml").read_text()
    reference = (REPO / "docs" / "configuration.md").read_text()
    every = set().union(*(_keys(c) for c in (config.Config, config.Watch,
                                               config.Destination, config.Route)))
    every |= {"watch", "destinations", "routes", "match", "unrouted"}
    for key in sorted(every):
        assert re.search(rf"(^|[\s{{,]){key}:", example, re.M), f"etc/forwarder.yaml lacks {key}"
        assert f"`{key}`" in reference, f"docs/configuration.md lacks `{key}`"


def test_unknown_key_names_line_path_and_hint() -> None:
    text = GOOD.replace("    port: 105\n", "    port: 105\n    retyr: {}\n")
    assert issues(text) == ["f.yaml:11: destinations.ai.retyr: unknown key (did you mean 'retry'?)"]


def test_every_error_is_reported_not_only_the_first() -> None:
    text = GOOD.replace("port: 104", "port: abc").replace("500ms", "soon") \
        .replace("to: [ai]", "to: [nowhere]").replace("Modality: [CT, MR]", "Modalty: CT")
    found = issues(text)
    assert "f.yaml:7: destinations.pacs.port: expected an integer, got 'abc'" in found
    assert any(f.startswith("f.yaml:11: destinations.ai.retry.initial: expected a duration")
               for f in found)
    assert any("routes[1].to[0]: undefined destination 'nowhere'" in f for f in found)
    assert any("routes[1].match.Modalty: unknown DICOM keyword (did you mean 'Modality'?)" in f
               for f in found)
    assert len(found) == 4


@pytest.mark.parametrize("text, expected", [
    ("", "f.yaml: the file is empty"),
    ("spool: [unclosed\n", "f.yaml:2: YAML syntax error"),
    # a control character (a paste from a terminal): an error with its line, not a crash
    ("spool: /srv\nroutes: [] # \x00\n", "f.yaml:2: a character YAML does not allow, U+0000 "
     "(not printable): remove it"),
    ("spool: /srv\x1b[0m\n", "f.yaml:1: a character YAML does not allow, U+001B"),
    ("spool: a\nspool: b\n", "f.yaml:2: spool: duplicate key"),
    ("destinations:\n  a: {host: h, port: 1}\n  a: {host: h, port: 2}\n",
     "f.yaml:3: destinations.a: duplicate key"),
    ("watch:\n  - {name: w, path: /a}\n  - {name: w, path: /b}\n",
     "f.yaml:3: watch[1].name: duplicate watch name 'w'"),
    ("destinations:\n  a: {host: h, port: 1, max_pdu: 12 parsecs}\n",
     "f.yaml:2: destinations.a.max_pdu: expected a size"),
    ("destinations:\n  a: {port: 1}\n", "f.yaml:2: destinations.a: missing required key 'host'"),
    ("routes:\n  - {to: [x], match: {StudyDescription: {regex: '('}}}\n",
     "f.yaml:2: routes[0].match.StudyDescription.regex: bad regular expression"),
    ("log: {level: loud}\n", "f.yaml:1: log.level: expected one of fatal, error"),
    ("destinations:\n  a: {host: h, port: 1, tls: {profile: null}}\n",
     "f.yaml:2: destinations.a.tls.profile: expected one of bcp195, bcp195-nd, bcp195-ex, "
     'basic, aes, null, got no value (for the choice null write it in quotes, "null"'),
    ("ae_title: THIS-TITLE-IS-TOO-LONG\n", "f.yaml:1: ae_title: an AE title is 1 to 16"),
    # YAML's not-a-number and infinity, and timers further ahead than the platform's time
    ("watch:\n  - {name: w, path: /a, min_age: .nan}\n",
     "f.yaml:2: watch[0].min_age: expected a duration"),
    ("destinations:\n  a: {host: h, port: 1, retry: {max: .nan}}\n",
     "f.yaml:2: destinations.a.retry.max: expected a duration"),
    ("destinations:\n  a: {host: h, port: 1, timeouts: {connect: .inf}}\n",
     "f.yaml:2: destinations.a.timeouts.connect: expected a duration"),
    ("destinations:\n  a: {host: h, port: 1, timeouts: {dimse: 1.0e+12}}\n",
     "f.yaml:2: destinations.a.timeouts.dimse: a duration is at most 3650d"),
    ("destinations:\n  a: {host: h, port: 1, retry: {max_age: 99999d}}\n",
     "f.yaml:2: destinations.a.retry.max_age: a duration is at most 3650d"),
    ("routes:\n  - {to: [x], matchs: {Modality: CT}}\n",
     "f.yaml:2: routes[0].matchs: unknown key (did you mean 'match'?)"),
    # the sections are top-level keys too: named when one is misspelt
    ("destination:\n  a: {host: h, port: 1}\n",
     "f.yaml:1: destination: unknown key (did you mean 'destinations'?)"),
    ("watchs:\n  - {name: w, path: /a}\n", "f.yaml:1: watchs: unknown key (did you mean 'watch'?)"),
    ("route:\n  - to: [x]\n", "f.yaml:1: route: unknown key (did you mean 'routes'?)"),
    ("pacs:\n  host: h\n", "f.yaml:1: pacs: unknown key (known keys: ae_title, destinations, "
     "log, retention, routes, spool, unrouted, watch)"),
    ("routes:\n  - to: [x]\n    match: {SeriesNumber: seven}\n",
     "f.yaml:3: routes[0].match.SeriesNumber: SeriesNumber is an integer (IS), such as 7; "
     "'seven' is not one"),
    ("routes:\n  - to: [x]\n    match: {SeriesNumber: 7.5}\n",
     "f.yaml:3: routes[0].match.SeriesNumber: SeriesNumber is an integer (IS)"),
    ("routes:\n  - to: [x]\n    match: {SliceThickness: 1_0}\n",
     "f.yaml:3: routes[0].match.SliceThickness: SliceThickness is a decimal number (DS)"),
    ("routes:\n  - to: [x]\n    match: {StudyDate: 2024-01-05}\n",
     "f.yaml:3: routes[0].match.StudyDate: StudyDate is a date, written YYYYMMDD"),
    ("routes:\n  - to: [x]\n    match: {StudyDate: [20240105, 2024-1-5]}\n",
     "f.yaml:3: routes[0].match.StudyDate: StudyDate is a date, written YYYYMMDD"),
    ("routes:\n  - to: [x]\n    match: {StudyTime: 12:30:00}\n",
     "f.yaml:3: routes[0].match.StudyTime: StudyTime is a time, written HHMMSS (123000, not "
     "12:30:00); '12:30:00' is not one"),
    ("routes:\n  - to: [x]\n    match: {AcquisitionDateTime: 2024-01-05}\n",
     "f.yaml:3: routes[0].match.AcquisitionDateTime: AcquisitionDateTime is a date and time"),
    # binary values are no text to compare; routing would read Pixel Data for them
    ("routes:\n  - to: [x]\n    match: {PixelData: {regex: x0}}\n",
     "f.yaml:3: routes[0].match.PixelData: a binary attribute (OB or OW) cannot be matched"),
    ("routes:\n  - to: [x]\n    match: {Rows: 128.0}\n",
     "f.yaml:3: routes[0].match.Rows: Rows is an integer (US), such as 512; '128.0' is not one"),
    ("routes:\n  - to: [x]\n    match: {DiffusionBValue: abc}\n",
     "f.yaml:3: routes[0].match.DiffusionBValue: DiffusionBValue is a decimal number (FD)"),
    # compiled, it would hold a billion copies: refused before the daemon's memory is
    ("routes:\n  - to: [x]\n    match: {StudyDescription: {regex: '(?:(?:a{1000}){1000}){10}'}}\n",
     "f.yaml:3: routes[0].match.StudyDescription.regex: counted repeats whose least "
     "counts ({n}, {n,m}) multiply to more than 100,000 cannot be compiled safely"),
    # 0 makes a socket non-blocking: nothing would ever be sent
    ("destinations:\n  a: {host: h, port: 1, timeouts: {acse: 0}}\n",
     "f.yaml:2: destinations.a.timeouts.acse: must be at least 100ms (null for no limit)"),
    ("watch:\n  - {name: w, path: /a, truncated_after: 0}\n",
     "f.yaml:2: watch[0].truncated_after: must be at least 1s"),
    ("watch:\n  - {name: w, path: /a, min_age: 1m, truncated_after: 30s}\n",
     "f.yaml:2: watch[0].truncated_after: must be at least min_age (60s)"),
    # 0 expired every job at the first look, before its first retry
    ("destinations:\n  a: {host: h, port: 1, retry: {max_age: 0}}\n",
     "f.yaml:2: destinations.a.retry.max_age: must be at least 60s"),
    # one user identity per association: none is silently preferred to another
    ("destinations:\n  a:\n    host: h\n    port: 1\n    identity:\n      user: u\n"
     "      jwt_file: /j\n",
     "f.yaml:7: destinations.a.identity.jwt_file: user and jwt_file exclude each other"),
    ("destinations:\n  a: {host: h, port: 1, identity: {positive_response: true}}\n",
     "f.yaml:2: destinations.a.identity.positive_response: a positive response is asked "
     "for an identity"),
    # storescu's +cl only with -xd: a level nothing would use is a mistake to say
    ("destinations:\n  a: {host: h, port: 1, compression_level: 9}\n",
     "f.yaml:2: destinations.a.compression_level: only with 'propose: deflated'"),
    ("destinations:\n  a: {host: h, port: 1, propose: deflated, compression_level: 10}\n",
     "f.yaml:2: destinations.a.compression_level: "),
    # storescu -xf takes no -x option: the profile alone says what is proposed
    ("destinations:\n  a: {host: h, port: 1, propose: lossless, negotiation_profile: "
     "{file: /p.cfg, profile: P}}\n",
     "f.yaml:2: destinations.a.propose: 'propose' and 'negotiation_profile' exclude each other"),
    ("destinations:\n  a: {host: h, port: 1, negotiation_profile: {file: /p.cfg}}\n",
     "f.yaml:2: destinations.a.negotiation_profile: missing required key 'profile'"),
    # TLS settings with no word on TLS itself: never a plain connection no one asked for
    ("destinations:\n  a:\n    host: h\n    port: 1\n    tls:\n      ca: [/ca.pem]\n",
     "f.yaml:5: destinations.a.tls: TLS settings without 'enabled': the association would "
     "be plain TCP. Add 'enabled: true'"),
])
def test_each_error_points_at_the_problem(text: str, expected: str) -> None:
    assert any(i.startswith(expected) for i in issues(text)), issues(text)


def test_tls_settings_kept_unused_by_enabled_false_are_taken() -> None:
    cfg = config.parse("destinations:\n  a: {host: h, port: 1, tls: {enabled: false, "
                       "ca: [/ca.pem]}}\n", "f.yaml")
    assert not cfg.destinations["a"].tls.enabled


def test_check_config_prints_all_and_exits_78(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("port: 104", "port: x").replace("FWD", "A" * 20))
    assert main(["check-config", "-c", str(bad)]) == 78
    err = capsys.readouterr().err.splitlines()
    assert f"{bad}:1: ae_title: an AE title is 1 to 16" in err[0] or len(err) == 2
    assert len(err) == 2 and all(line.startswith(str(bad)) for line in err)
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert main(["check-config", "-c", str(good)]) == 0
    assert main(["check-config", "-c", str(tmp_path / "missing.yaml")]) == 78


def test_match_values_are_taken_as_written() -> None:
    """Unquoted, YAML 1.1 reads NO and ON as booleans, 012345 as an octal number, 12:30
    as a number of minutes: a route compares the text the user wrote, which is what the
    file holds, never what YAML made of it."""
    text = GOOD.replace(
        '    match: {watch: modality, Modality: [CT, MR], StudyDescription: {regex: "(?i)chest"}}',
        "    match:\n"
        "      BurnedInAnnotation: NO\n"
        "      StationName: [ON, 0x1A, 1_000, 1.50]\n"
        "      PatientID: 012345\n"
        "      AccessionNumber: 12:30\n"
        "      SeriesNumber: 7\n"
        "      StudyID: {regex: 2024}\n"
        "      InstitutionName: {regex: '^\\d{1,10}\\.\\d{1,10}\\.\\d{1,10}\\.\\d{1,10}\\.\\d{1,10}$'}\n"
        "      Rows: 0512\n"
        "      TransferSyntaxUID: 1.2.840.10008.1.2.1")
    conditions = {c.key: c for c in config.parse(text, "f.yaml").routes[1].match}
    assert conditions["BurnedInAnnotation"].values == ("NO",)
    assert conditions["StationName"].values == ("ON", "0x1A", "1_000", "1.50")
    assert conditions["PatientID"].values == ("012345",)
    assert conditions["AccessionNumber"].values == ("12:30",)
    assert conditions["SeriesNumber"].values == ("7",) and conditions["SeriesNumber"].numeric
    assert not conditions["PatientID"].numeric
    assert conditions["StudyID"].regex is not None
    assert conditions["StudyID"].regex.pattern == "2024"
    assert conditions["InstitutionName"].regex is not None  # {1,10} six times: cheap, taken
    assert conditions["Rows"].values == ("0512",) and conditions["Rows"].numeric
    assert conditions["TransferSyntaxUID"].values == ("1.2.840.10008.1.2.1",)


def test_a_longer_min_age_lengthens_the_default_truncated_after_and_values_lose_padding() -> None:
    """A configuration valid before keeps working: with min_age above the default 10m,
    truncated_after (not written) follows it. A value padded in the file or in the route
    is compared without the padding, and an empty one matches an empty attribute."""
    text = GOOD.replace("    path: /tmp/in\n", "    path: /tmp/in\n    min_age: 15m\n").replace(
        '    match: {watch: modality, Modality: [CT, MR], StudyDescription: {regex: "(?i)chest"}}',
        "    match: {StudyTime: ' 123000', StudyDate: '', Modality: 'CT ', path: ' a* '}")
    cfg = config.parse(text, "f.yaml")
    assert cfg.watch[0].min_age == cfg.watch[0].truncated_after == 900.0
    conditions = {c.key: c.values for c in cfg.routes[1].match}
    assert conditions == {"StudyTime": ("123000",), "StudyDate": ("",), "Modality": ("CT",),
                          "path": (" a* ",)}  # a glob on file names keeps its spaces
