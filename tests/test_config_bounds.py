"""Values that parse alone but cannot work, and YAML that must be refused in words, not by
exhausting the stack or memory: for check-config, for start and for reload alike."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from forwarder import config
from forwarder.cli import main
from forwarder.errors import ConfigError
from tests.corpus import unique_copies
from tests.daemonutil import DaemonProcess, drop, write_config
from tests.peers import wait_for

BASE = """\
spool: /tmp/fwd-bounds/spool
watch:
  - name: modality
    path: /tmp/fwd-bounds/in
destinations:
  pacs: {host: 127.0.0.1, port: 104}
routes:
  - to: [pacs]
"""

DEEP = "spool: /tmp/s\nx: " + "[" * 5000 + "]" * 5000 + "\n"
LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 10))
ALIAS_DEPTH = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200))


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(text, "f.yaml")
    return [str(i) for i in info.value.issues]


@pytest.mark.parametrize("change, expected", [
    (("    path: /tmp/fwd-bounds/in\n", "    path: /tmp/fwd-bounds/in\n    rescan: 0\n"),
     "f.yaml:5: watch[0].rescan: must be at least 100ms"),
    (("port: 104}", "port: 104, retry: {initial: 0}}"),
     "f.yaml:6: destinations.pacs.retry.initial: must be at least 100ms"),
    (("port: 104}", "port: 104, retry: {initial: 10s, max: 5s}}"),
     "f.yaml:6: destinations.pacs.retry.max: the longest delay (5s) is below the first"),
    (("port: 104}", "port: 104, max_association_age: 0}"),
     "f.yaml:6: destinations.pacs.max_association_age: must be at least 1s"),
    (("port: 104}", "port: 104, called_ae_title: PACSÉ}"),
     "f.yaml:6: destinations.pacs.called_ae_title: an AE title is 1 to 16 printable ASCII"),
    (("spool: /tmp/fwd-bounds/spool", "spool: /tmp/fwd-bounds/in/.spool"),
     "f.yaml:4: watch[0].path: the spool /tmp/fwd-bounds/in/.spool is inside this watch"),
    (("path: /tmp/fwd-bounds/in", "path: /tmp/fwd-bounds/spool/in"),
     "f.yaml:4: watch[0].path: this watch folder is inside the spool"),
    (("spool: /tmp/fwd-bounds/spool", "spool: /tmp/fwd-bounds/in"),
     "f.yaml:4: watch[0].path: the spool /tmp/fwd-bounds/in is inside this watch"),
])
def test_unusable_values_name_line_and_key(change: tuple[str, str], expected: str) -> None:
    text = BASE.replace(*change)
    assert text != BASE
    found = issues(text)
    assert any(i.startswith(expected) for i in found), found
    assert len(found) == 1, found


def test_ae_titles_with_control_characters_backslash_or_17_characters() -> None:
    for title in ('"A\\tB"', '"A\\\\B"', "A" * 17):
        found = issues(BASE.replace("port: 104}", f"port: 104, called_ae_title: {title}}}"))
        assert found and "an AE title is 1 to 16" in found[0], (title, found)


def test_merge_key_override_is_not_a_duplicate() -> None:
    text = BASE.replace(
        "  pacs: {host: 127.0.0.1, port: 104}\n",
        "  pacs: &peer {host: 127.0.0.1, port: 104, retry: {initial: 1s}}\n"
        "  backup:\n    <<: *peer\n    port: 105\n")
    cfg = config.parse(text, "f.yaml")
    assert cfg.destinations["backup"].port == 105
    assert cfg.destinations["backup"].retry.initial == 1.0
    assert cfg.destinations["pacs"].port == 104
    repeated = text.replace("    port: 105\n", "    port: 105\n    port: 106\n")
    assert any(i.startswith("f.yaml:10: destinations.backup.port: duplicate key")
               for i in issues(repeated)), issues(repeated)


@pytest.mark.parametrize("text, expected", [
    (DEEP, "f.yaml:2: nested more than 64 levels deep"),
    (LAUGHS, "values once aliases are expanded; refusing to expand them"),
    (ALIAS_DEPTH, "nested more than 64 levels deep (through aliases)"),
    ("x: [" + ", ".join(["*a"] * 1001) + "]\n", "more than 1000 alias uses"),
])
def test_hostile_yaml_is_refused_quickly(text: str, expected: str) -> None:
    if "*a]" in text or "*a," in text:
        text = "a: &a 1\n" + text
    start = time.monotonic()
    found = issues(text)
    assert time.monotonic() - start < 10
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith("f.yaml")


def test_check_config_refuses_huge_deep_and_bombs_with_78(tmp_path: Path, capsys) -> None:
    cases = {"deep.yaml": DEEP, "laughs.yaml": LAUGHS,
             "huge.yaml": BASE + "# " + "x" * (2 << 20) + "\n"}
    for name, text in cases.items():
        f = tmp_path / name
        f.write_text(text)
        start = time.monotonic()
        assert main(["check-config", "-c", str(f)]) == 78, name
        assert time.monotonic() - start < 10
        err = capsys.readouterr().err
        assert err.startswith(str(f)) and "Traceback" not in err, err
        if name == "huge.yaml":
            assert "larger than 1024 KiB" in err


def test_start_refuses_a_spool_inside_the_watch_folder(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 104)
    cfg.write_text(cfg.read_text().replace(f"spool: {tmp_path / 'spool'}",
                                           f"spool: {tmp_path / 'in' / 'spool'}"))
    d = DaemonProcess(cfg, tmp_path)
    assert d.wait(30) == 78
    assert f"{cfg}:4: watch[0].path: the spool" in d.output()
    assert not (tmp_path / "in" / "spool").exists()


def test_reload_with_hostile_yaml_keeps_the_daemon_and_old_config(make_scp,
                                                                  tmp_path: Path) -> None:
    peer = make_scp()
    cfg = write_config(tmp_path, peer.port)
    good = cfg.read_text()
    files = list(unique_copies(tmp_path / "corpus", 4).values())
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        for n, bad in enumerate((DEEP, LAUGHS, good.replace("rescan: 2s", "rescan: 0")), 2):
            cfg.write_text(bad)
            d.signal(signal.SIGHUP)
            d.wait_ready(count=n, timeout=30)
            assert d.proc.poll() is None
        out = d.output()
        assert out.count("reload refused") == 3, out
        assert "nested more than 64 levels deep" in out
        assert "refusing to expand them" in out and "rescan: must be at least" in out
        drop(files, tmp_path / "in")
        wait_for(lambda: len(peer.counts()) == 4, 30, "files after three refused reloads")
    finally:
        assert d.stop() == 0
    assert all(n == 1 for n in peer.counts().values())
