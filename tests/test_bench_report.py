"""The benchmark's rounds: interleaved order, slow senders run once, medians and ranges;
the daemon's time to its first file and its rate after it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench.rounds import Result, Summary, interleave, row, settled


def scripted(walls: dict[str, list[float]], order: list[str]) -> dict[str, Callable[[], Result]]:
    """Jobs that return the next of their scripted walls and record the order they ran in."""
    left = {name: list(w) for name, w in walls.items()}

    def job(name: str) -> Callable[[], Result]:
        def run() -> Result:
            order.append(name)
            wall = left[name].pop(0)
            return Result(wall=wall, cpu=wall / 10, rss_mib=10 + wall, pss_mib=5 + wall)
        return run

    return {name: job(name) for name in walls}


def test_rounds_interleave_in_order_and_slow_senders_run_once() -> None:
    order: list[str] = []
    jobs = scripted({"anchor": [1.0, 3.0, 2.0], "slow": [25.0], "send": [0.5, 0.4, 0.6]}, order)
    seen: list[tuple[int, str]] = []
    out = interleave(jobs, 3, slow=20.0, report=lambda rnd, name, _r: seen.append((rnd, name)))
    assert order == ["anchor", "slow", "send", "anchor", "send", "anchor", "send"]
    assert seen == [(1, "anchor"), (1, "slow"), (1, "send"), (2, "anchor"), (2, "send"),
                    (3, "anchor"), (3, "send")]
    assert [r.wall for r in out["anchor"].runs] == [1.0, 3.0, 2.0]
    assert len(out["slow"].runs) == 1


def test_a_first_run_at_the_threshold_is_repeated() -> None:
    order: list[str] = []
    out = interleave(scripted({"a": [20.0, 19.0]}, order), 2, slow=20.0)
    assert len(out["a"].runs) == 2


def test_every_figure_is_the_median_and_the_range_spans_the_runs() -> None:
    s = Summary((Result(2.0, 0.3, 50, 40), Result(1.0, 0.1, 70, 30), Result(4.0, 0.2, 60, 20)))
    assert (s.wall, s.cpu, s.rss_mib, s.pss_mib) == (2.0, 0.2, 60, 30)
    assert s.spread(100) == "25–100"
    assert Summary((Result(180.0, 2.6, 17, 10),)).spread(2000) == "1 run"


def test_the_ratio_to_the_anchor_divides_median_walls() -> None:
    # the anchor's single fast run (10 s) would give 2.00x; its median (20 s) gives 4.00x
    anchor = Summary((Result(10.0, 1.0, 15, 8), Result(20.0, 1.0, 15, 8),
                      Result(30.0, 1.0, 15, 8)))
    send = Summary((Result(5.0, 0.5, 60, 50), Result(6.0, 0.5, 60, 50),
                    Result(4.0, 0.5, 60, 50)))
    assert row(send, anchor, 1000, 500.0, "storescu (stock)") == (
        "200", "167–250", "100.0", "0.50", "0.5x", "60", "50", "4.00x vs storescu (stock)")
    assert row(anchor, anchor, 1000, 500.0, "storescu (stock)")[-1] == \
        "1.00x vs storescu (stock)"


def test_a_daemons_rate_after_its_first_file_is_the_median_of_its_runs() -> None:
    # 501 files: 500 after the first in 0.8, 0.5 and 1.0 s -> 625, 1000, 500 files/s
    daemon = Summary((Result(1.0, 1.0, 100, 46, first=0.2), Result(0.8, 1.0, 100, 46, first=0.3),
                      Result(1.3, 1.0, 100, 46, first=0.3)))
    anchor = Summary((Result(0.5, 0.6, 15, 8), Result(0.7, 0.6, 15, 8), Result(0.6, 0.6, 15, 8)))
    assert daemon.first == 0.3 and anchor.first is None
    assert daemon.after_first(501) == 625
    # the anchor's median run: 501 files in 0.6 s, 835 files/s
    assert settled(daemon, anchor, 501) == ("300 ms", "625", "0.75x")
    # every file stored at the first look: no rate after the first to report
    burst = Summary((Result(0.3, 1.0, 100, 46, first=0.3),))
    assert burst.after_first(501) is None
    assert settled(burst, anchor, 501) == ("300 ms", "-", "-")
    assert settled(anchor, anchor, 501) == ("-", "-", "-")


def test_repeat_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        interleave({}, 0)
