"""Pure settling and routing: values in, values out, injected time."""

from __future__ import annotations

import pytest

from forwarder import config, router
from forwarder.settle import Settler, Signature, wanted


def sig(size: int, mtime: int = 1, ctime: int = 1, ino: int = 7) -> Signature:
    return Signature(size, mtime, ctime, ino)


def test_a_file_is_ready_only_after_min_age_unchanged() -> None:
    s = Settler(2.0, trust_times=False)
    assert s.observe("a", sig(10), now=100.0) == 102.0
    assert not s.ready("a", sig(10), now=101.9)
    assert not s.ready("a", sig(20, 2, 2), now=102.5)  # it grew: the wait starts again
    assert not s.ready("a", sig(20, 2, 2), now=104.4)
    assert s.ready("a", sig(20, 2, 2), now=104.5)


def test_an_event_cannot_shorten_the_wait_below_min_age() -> None:
    s = Settler(2.0, trust_times=True)
    wall = 1000.0
    fresh = sig(10, mtime=int(wall * 1e9), ctime=int(wall * 1e9))  # just written
    assert s.observe("a", fresh, now=50.0, wall=wall) == 52.0
    assert not s.ready("a", fresh, now=51.0, wall=wall + 1)


def test_local_backlog_untouched_for_min_age_is_ready_at_once() -> None:
    s = Settler(2.0, trust_times=True)
    old = sig(10, mtime=int(900 * 1e9), ctime=int(900 * 1e9))
    assert s.ready("a", old, now=50.0, wall=1000.0)
    half = sig(10, mtime=int(999 * 1e9), ctime=int(999 * 1e9))  # written a second ago
    assert s.observe("b", half, now=50.0, wall=1000.0) == 51.0


def test_a_file_renamed_in_counts_from_its_last_write_not_from_the_rename() -> None:
    """A rename sets the ctime and leaves the content and its mtime as they were: a file
    written elsewhere 100 s ago and renamed in now is ready at once; one written half a
    second before its rename waits the rest of min_age."""
    s = Settler(2.0, trust_times=True)
    moved = sig(10, mtime=int(900 * 1e9), ctime=int(1000 * 1e9))
    assert s.ready("a", moved, now=50.0, wall=1000.0, moved=True)
    recent = sig(10, mtime=int(999.5 * 1e9), ctime=int(1000 * 1e9))
    assert s.observe("b", recent, now=50.0, wall=1000.0, moved=True) == 51.5


def test_a_rename_s_event_after_a_scan_saw_the_file_counts_from_its_mtime() -> None:
    """A scan may find a file the moment it is renamed in, before the rename's event:
    the event still lets its mtime count."""
    s = Settler(2.0, trust_times=True)
    moved = sig(10, mtime=int(900 * 1e9), ctime=int(1000 * 1e9))
    assert s.observe("a", moved, now=50.0, wall=1000.0) == 52.0  # by the scan: ctime
    assert s.ready("a", moved, now=50.1, wall=1000.1, moved=True)


def test_an_old_mtime_on_a_file_written_in_place_does_not_count() -> None:
    """A writer that stamps an old mtime on a part and closes it (robocopy, to resume
    later) changed the ctime: written in place, the wait counts from that."""
    s = Settler(2.0, trust_times=True)
    stamped = sig(10, mtime=int(315532800 * 1e9), ctime=int(1000 * 1e9))
    assert not s.ready("a", stamped, now=50.0, wall=1000.0)
    assert s.observe("a", stamped, now=50.0, wall=1000.0) == 52.0


def test_an_mtime_in_the_future_waits_the_whole_min_age() -> None:
    s = Settler(2.0, trust_times=True)
    ahead = sig(10, mtime=int(1005 * 1e9), ctime=int(1000 * 1e9))
    assert s.observe("a", ahead, now=50.0, wall=1000.0, moved=True) == 52.0


def test_a_change_while_settling_restarts_the_wait_from_the_new_mtime() -> None:
    s = Settler(2.0, trust_times=True)
    assert s.observe("a", sig(10, mtime=int(999 * 1e9)), now=50.0, wall=1000.0,
                     moved=True) == 51.0
    grown = sig(20, mtime=int(1000.5 * 1e9), ctime=int(1000.5 * 1e9))
    assert not s.ready("a", grown, now=50.5, wall=1000.5, moved=True)
    assert s.observe("a", grown, now=50.5, wall=1000.5, moved=True) == 52.5


def test_polling_ignores_the_servers_clock() -> None:
    s = Settler(2.0, trust_times=False)
    old = sig(10, mtime=int(900 * 1e9), ctime=int(900 * 1e9))
    assert not s.ready("a", old, now=50.0, wall=1000.0)
    assert s.ready("a", old, now=52.0, wall=1002.0)


def test_name_filters() -> None:
    pats, ign = ("*",), (".*", "*.tmp", "*.part", "*.partial")
    assert wanted("x.dcm", pats, ign) and wanted("a/b/IM0001", pats, ign)
    assert not wanted("x.dcm.tmp", pats, ign) and not wanted(".hidden", pats, ign)
    assert not wanted(".sync/x.dcm", pats, ign) and not wanted("a/x.part", pats, ign)
    assert wanted("ct/x.dcm", ("*.dcm",), ()) and not wanted("ct/x.txt", ("*.dcm",), ())
    assert wanted("ct/x.dcm", ("ct/*",), ()) and not wanted("mr/x.dcm", ("ct/*",), ())


CFG = """
spool: /tmp/x
watch:
  - {name: modality, path: /in}
  - {name: scanner2, path: /in2}
destinations:
  pacs: {host: h, port: 1}
  ai: {host: h, port: 2}
  archive: {host: h, port: 3}
  research: {host: h, port: 4}
routes:
  - name: chest-ct-to-ai
    match: {watch: modality, Modality: [CT], StudyDescription: {regex: "(?i)chest"}}
    to: [ai]
  - name: research-path
    match: {path: "research/*"}
    to: [research]
    final: true
  - name: image-type
    match: {ImageType: DERIVED}
    to: [archive]
  - name: all
    to: [pacs, ai]
"""


def test_routes_fan_out_in_order_without_repeats() -> None:
    cfg = config.parse(CFG)
    d = router.route(cfg.routes, "modality", "x.dcm",
                     {"Modality": "CT", "StudyDescription": "CHEST w/o"})
    assert d.destinations == ("ai", "pacs") and d.routes == ("chest-ct-to-ai", "all")
    d = router.route(cfg.routes, "scanner2", "x.dcm",
                     {"Modality": "CT", "StudyDescription": "CHEST"})
    assert d.destinations == ("pacs", "ai")  # the watch condition fails


def test_final_stops_and_missing_attributes_never_match() -> None:
    cfg = config.parse(CFG)
    d = router.route(cfg.routes, "modality", "research/a.dcm", {"Modality": "CT"})
    assert d.destinations == ("research",)
    d = router.route(cfg.routes, "modality", "x.dcm", {})
    assert d.destinations == ("pacs", "ai") and d.routes == ("all",)


def test_multi_valued_attribute_matches_any_part() -> None:
    cfg = config.parse(CFG)
    d = router.route(cfg.routes, "modality", "x", {"ImageType": "DERIVED\\SECONDARY"})
    assert d.destinations[0] == "archive"
    d = router.route(cfg.routes, "modality", "x", {"ImageType": "ORIGINAL\\PRIMARY"})
    assert "archive" not in d.destinations


def test_no_route_matches_gives_nothing() -> None:
    cfg = config.parse(CFG.replace("  - name: all\n    to: [pacs, ai]\n", ""))
    assert router.route(cfg.routes, "scanner2", "x", {}).destinations == ()


def test_numbers_match_as_numbers() -> None:
    """IS and DS values are numbers: 007 is 7 and 5.000 is 5.0, in any part of a
    multi-valued one; text that is no number matches nothing."""
    cfg = config.parse(
        "spool: /s\ndestinations: {a: {host: h, port: 1}, b: {host: h, port: 1}}\n"
        "routes:\n  - {to: [a], match: {SeriesNumber: 7, SliceThickness: [5.0, 2.5]}}\n"
        "  - {to: [b], match: {PixelSpacing: 0.5}}\n", "f.yaml")

    def to(attrs: dict[str, str]) -> tuple[str, ...]:
        return router.route(cfg.routes, "w", "x.dcm", attrs).destinations

    assert to({"SeriesNumber": "007 ", "SliceThickness": "5.000"}) == ("a",)
    assert to({"SeriesNumber": "+7", "SliceThickness": "2.5E0"}) == ("a",)
    assert to({"SeriesNumber": "70", "SliceThickness": "5"}) == ()
    assert to({"PixelSpacing": "0.25\\0.500"}) == ("b",)
    assert to({"PixelSpacing": "NaN\\x"}) == ()
    empty = config.parse(  # present but empty: '' only, not a value that is no number
        "spool: /s\ndestinations: {a: {host: h, port: 1}}\n"
        "routes:\n  - {to: [a], match: {DiffusionBValue: ''}}\n", "f.yaml").routes
    for held, routed in (("", ("a",)), ("1\\", ("a",)), ("nan", ()), ("inf", ()),
                         ("-inf", ()), ("0.0", ())):
        assert router.route(empty, "w", "x", {"DiffusionBValue": held}).destinations == routed
    whole = config.parse(  # a whole multi-value: each part the same number, in order
        "spool: /s\ndestinations: {a: {host: h, port: 1}}\n"
        "routes:\n  - {to: [a], match: {PixelSpacing: '0.5\\0.7'}}\n", "f.yaml").routes
    assert router.route(whole, "w", "x", {"PixelSpacing": "0.50\\.7"}).destinations == ("a",)
    assert router.route(whole, "w", "x", {"PixelSpacing": "0.7\\0.5"}).destinations == ()
    assert router.route(whole, "w", "x", {"PixelSpacing": "0.5"}).destinations == ()


def test_a_regex_is_searched_in_the_whole_value_parts_joined() -> None:
    """A regex sees a multi-value as the file holds it, parts joined by a backslash, so
    a pattern that excludes a part (a lookahead) keeps its meaning; one part is found
    with the backslash as its edge."""
    cfg = config.parse(
        "spool: /s\ndestinations: {a: {host: h, port: 1}, b: {host: h, port: 1}}\n"
        "routes:\n  - {to: [a], match: {ImageType: {regex: '(^|\\\\)DERIVED(\\\\|$)'}}}\n"
        "  - {to: [b], match: {ImageType: {regex: '^(?!.*DERIVED)'}}}\n", "f.yaml")

    def to(value: str) -> tuple[str, ...]:
        return router.route(cfg.routes, "w", "x", {"ImageType": value}).destinations

    assert to("ORIGINAL\\DERIVED\\AXIAL") == ("a",)
    assert to("DERIVED") == ("a",)
    assert to("ORIGINAL\\UNDERIVED") == ()  # neither: one part contains the word, none is it
    assert to("ORIGINAL\\PRIMARY") == ("b",)


def test_a_regex_that_backtracks_without_end_is_stopped_and_named() -> None:
    """A nested repeat against one long value would search for centuries; it is stopped
    after router.SEARCH_LIMIT and the error names the route and the pattern, not the
    value (which may be a patient's name)."""
    cfg = config.parse(
        "spool: /s\ndestinations: {a: {host: h, port: 1}}\n"
        "routes:\n  - {name: ai, to: [a], match: {StudyDescription: {regex: '^(a|aa)+$'}}}\n",
        "f.yaml")
    value = "a" * 80 + "!"
    with pytest.raises(router.RouteError) as info:
        router.route(cfg.routes, "w", "x.dcm", {"StudyDescription": value})
    said = str(info.value)
    assert said.startswith("route ai: its condition StudyDescription: {regex: '^(a|aa)+$'}")
    assert "backtracks" in said and value not in said
    assert router.route(cfg.routes, "w", "x.dcm",
                        {"StudyDescription": "aaaa"}).destinations == ("a",)
