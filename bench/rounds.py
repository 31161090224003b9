"""Interleaved benchmark rounds and their medians.

One run of a sender on a loaded two-core machine can be off by a third (storescu to a tuned
storescp has measured anywhere from 1,060 to 1,515 small files/s here), so a ratio read
from single runs says as much about the noise as about the senders. `make bench` runs the
senders of one peer and corpus in rounds, every sender once per round in the same order,
so that a slow spell of the machine falls on all of them alike, and reports per sender the
median of its rounds and the range of its files/s.

A sender whose first run took longer than ``SLOW_RUN_S`` is not run again: those are the
runs that wait on Nagle's algorithm or on a slow peer (tens of files per second, minutes
per run), whose pace is set by timers rather than by load, and repeating them would triple
the length of the bench. Its row reports that one run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# a first run longer than this is not repeated (seconds)
SLOW_RUN_S = 20.0


@dataclass(frozen=True)
class Result:
    """One run of one sender: wall and CPU seconds, peak RSS and PSS in MiB; for the
    daemon also the seconds from the drop to the first file stored at the peer."""

    wall: float
    cpu: float
    rss_mib: float
    pss_mib: float  # one sender: its peak; the daemon: all its processes after the run
    first: float | None = None


@dataclass(frozen=True)
class Summary:
    """The runs of one sender over the rounds; each figure is the median of its runs."""

    runs: tuple[Result, ...]

    @property
    def wall(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(r.cpu for r in self.runs)

    @property
    def rss_mib(self) -> float:
        return statistics.median(r.rss_mib for r in self.runs)

    @property
    def pss_mib(self) -> float:
        return statistics.median(r.pss_mib for r in self.runs)

    @property
    def first(self) -> float | None:
        """The median time to the first file stored, where the runs measured it."""
        known = [r.first for r in self.runs if r.first is not None]
        return statistics.median(known) if known else None

    def after_first(self, files: int) -> float | None:
        """The median rate in files/s from the first file stored to the last, over the
        runs where the two are apart; None where no run has that."""
        rates = [(files - 1) / (r.wall - r.first) for r in self.runs
                 if r.first is not None and r.wall > r.first]
        return statistics.median(rates) if rates else None

    def spread(self, files: int) -> str:
        """The slowest and fastest run in files/s, or "1 run" where there was only one."""
        if len(self.runs) == 1:
            return "1 run"
        rates = [files / r.wall for r in self.runs]
        return f"{min(rates):.0f}–{max(rates):.0f}"


def interleave(jobs: Mapping[str, Callable[[], Result]], repeat: int,
               slow: float = SLOW_RUN_S,
               report: Callable[[int, str, Result], None] | None = None) -> dict[str, Summary]:
    """Run every job once per round, in ``jobs``' order, for ``repeat`` rounds; a job whose
    first run took longer than ``slow`` seconds is left out of the later rounds.
    ``report(round, name, result)`` is called after each run."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    runs: dict[str, list[Result]] = {name: [] for name in jobs}
    for rnd in range(1, repeat + 1):
        for name, job in jobs.items():
            if runs[name] and runs[name][0].wall > slow:
                continue
            result = job()
            runs[name].append(result)
            if report:
                report(rnd, name, result)
    return {name: Summary(tuple(r)) for name, r in runs.items()}


def row(summary: Summary, anchor: Summary, files: int, mb: float,
        anchor_name: str) -> tuple[str, ...]:
    """The report's columns after peer, corpus and sender: files/s, its range, MB/s, CPU ms
    per file, CPU vs anchor, peak RSS, PSS, and files/s vs anchor from the median walls."""
    return (f"{files / summary.wall:.0f}", summary.spread(files), f"{mb / summary.wall:.1f}",
            f"{summary.cpu * 1000 / files:.2f}",
            f"{summary.cpu / anchor.cpu:.1f}x" if anchor.cpu else "-",
            f"{summary.rss_mib:.0f}", f"{summary.pss_mib:.0f}",
            f"{anchor.wall / summary.wall:.2f}x vs {anchor_name}")


def settled(summary: Summary, anchor: Summary, files: int) -> tuple[str, ...]:
    """A daemon's columns beside peer, corpus and sender: the median time to its first
    file stored, its median rate from that file to the last, and that rate against the
    anchor's whole-run rate (its start and association included); "-" where unknown."""
    first, rate = summary.first, summary.after_first(files)
    return ("-" if first is None else f"{first * 1000:.0f} ms",
            "-" if rate is None else f"{rate:.0f}",
            "-" if rate is None else f"{rate * anchor.wall / files:.2f}x")

