"""The sender's decisions (forwarder.sendcore) driven by hypothesis as a shell would drive
them: any order of claims, answers, failures and ticks keeps the invariants a user relies
on (every claimed job recorded exactly once, nothing stored without an association, a
destination backed off only by failures alike or a failed association)."""

from __future__ import annotations

from collections import Counter

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from forwarder import outcome, sendcore
from forwarder.negotiation import EXPLICIT_LE, IMPLICIT_LE, Context

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
JPEG = "1.2.840.10008.1.2.4.50"
NEEDS = [(CT, EXPLICIT_LE), (CT, IMPLICIT_LE), (MR, EXPLICIT_LE), (MR, JPEG)]
STATUSES = [0x0000, 0x0001, 0xB000, 0x0111, 0xA700, 0x0213, 0xA900, 0xC000, 0x0110,
            0x0117, 0x0122, 0x0124, 0x0210]
ASSOCIATION_FAILURES = [("refused", None, None, None), ("timeout", None, None, None),
                        ("aborted", None, None, None), ("tls", None, None, None),
                        ("rejected", 1, 1, 3), ("rejected", 2, 3, 1),
                        ("no_contexts", None, None, None)]


class SenderMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = sendcore.SendCore(sendcore.Policy(idle_release=5.0,
                                                      max_association_age=60.0))
        self.now = 0.0
        self.next_id = 1
        self.claimed: set[int] = set()
        self.records: Counter[int] = Counter()
        self.link = False       # an association is open, as the shell holds it
        self.awaiting: str | None = None  # open | store | note
        self.in_flight: int | None = None
        self.backoff_cause: str | None = None  # what the next Degrade(BACKOFF) may follow
        self.hold_cause: str | None = None

    def feed(self, event: sendcore.Event) -> None:
        self.awaiting = None
        for cmd in self.core.handle(event):
            self.carry_out(cmd)

    def carry_out(self, cmd: sendcore.Command) -> None:
        assert self.awaiting is None, f"{cmd} while an answer to {self.awaiting} is due"
        if isinstance(cmd, sendcore.Open):
            assert not self.link, "a new association while one is open"
            assert cmd.jobs and 0 < len(cmd.contexts) <= 128
            self.awaiting = "open"
        elif isinstance(cmd, sendcore.Store):
            assert self.link, "C-STORE without an open association"
            assert cmd.job in self.claimed and not self.records[cmd.job]
            self.awaiting, self.in_flight = "store", cmd.job
        elif isinstance(cmd, sendcore.NoteFailure):
            assert cmd.job == self.in_flight
            self.awaiting = "note"
        elif isinstance(cmd, sendcore.Release):
            for job in cmd.jobs:
                self.record(job)
        elif isinstance(cmd, sendcore.Done | sendcore.Retry | sendcore.Fail):
            self.record(cmd.job)
        elif isinstance(cmd, sendcore.Degrade):
            if cmd.action.kind == outcome.BACKOFF:
                assert self.backoff_cause is not None, "backoff without failures alike"
            else:
                assert cmd.action.kind == outcome.HOLD and self.hold_cause is not None
        elif isinstance(cmd, sendcore.Close):
            self.link = False
        elif isinstance(cmd, sendcore.Wait):
            assert cmd.seconds > 0
        else:
            assert isinstance(cmd, sendcore.Pace)

    def record(self, job: int) -> None:
        assert job in self.claimed
        self.records[job] += 1
        assert self.records[job] == 1, f"job {job} recorded twice"

    def tick(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    @precondition(lambda self: self.awaiting is None)
    @rule(needs=st.lists(st.sampled_from(NEEDS), min_size=1, max_size=5),
          attempts=st.integers(0, 3), aborts=st.integers(0, 4), link_up=st.booleans())
    def claim(self, needs: list[tuple[str, str]], attempts: int, aborts: int,
              link_up: bool) -> None:
        items = []
        for need in needs:
            items.append(sendcore.Item(self.next_id, *need, attempts, aborts))
            self.claimed.add(self.next_id)
            self.next_id += 1
        self.backoff_cause = self.hold_cause = None
        self.feed(sendcore.Claimed(tuple(items), self.tick(0.5), link_up and self.link))

    @precondition(lambda self: self.awaiting == "open")
    @rule()
    def opened(self) -> None:
        self.link = True
        self.feed(sendcore.Opened(self.tick(0.1)))

    @precondition(lambda self: self.awaiting == "open")
    @rule(failure=st.sampled_from(ASSOCIATION_FAILURES))
    def open_failed(self, failure: tuple) -> None:
        kind, result, source, reason = failure
        action = outcome.association_failure(kind, f"cannot associate ({kind})", result,
                                             source, reason)
        self.backoff_cause = self.hold_cause = "open failed"
        self.feed(sendcore.OpenFailed(action, self.tick(0.1)))

    @precondition(lambda self: self.awaiting == "store")
    @rule(status=st.sampled_from(STATUSES))
    def stored(self, status: int) -> None:
        if status == 0x0124:
            self.hold_cause = "not authorised"
        self.feed(sendcore.Stored(status, None, self.tick(0.1)))

    @precondition(lambda self: self.awaiting == "store")
    @rule()
    def refused(self) -> None:
        self.feed(sendcore.Refused("cannot prepare or send this file", self.tick(0.1)))

    @precondition(lambda self: self.awaiting == "store")
    @rule()
    def no_response(self) -> None:
        self.feed(sendcore.NoResponse("the connection was lost", self.tick(0.1)))

    @precondition(lambda self: self.awaiting is None)
    @rule()
    def a_batch_to_a_peer_that_takes_two_per_association(self) -> None:
        """Three files on a new association: two stored, the third aborted (unless the
        core learned the limit and opens another association first)."""
        jobs = tuple(sendcore.Item(self.next_id + i, *NEEDS[0]) for i in range(3))
        self.claimed.update(j.id for j in jobs)
        self.next_id += 3
        self.backoff_cause = self.hold_cause = None
        self.feed(sendcore.Claimed(jobs, self.tick(0.5), False))
        if self.awaiting == "open":
            self.opened()
        for _ in range(2):
            if self.awaiting == "store":
                self.feed(sendcore.Stored(0, None, self.tick(0.1)))
        if self.awaiting == "store":
            self.feed(sendcore.NoResponse("the peer aborted", self.tick(0.1)))
        if self.awaiting == "note":
            self.noted(1, True)

    @precondition(lambda self: self.awaiting == "store")
    @rule()
    def interrupted(self) -> None:
        self.feed(sendcore.Interrupted(self.tick(0.1)))

    @precondition(lambda self: self.awaiting == "note")
    @rule(streak=st.integers(1, 6), stored_since=st.booleans())
    def noted(self, streak: int, stored_since: bool) -> None:
        if streak >= outcome.STREAK:
            self.backoff_cause = f"{streak} alike"
        self.feed(sendcore.FailureNoted(streak, stored_since))

    @precondition(lambda self: self.awaiting is None)
    @rule(seconds=st.floats(0, 20), due_in=st.none() | st.floats(-5, 30))
    def idle(self, seconds: float, due_in: float | None) -> None:
        self.feed(sendcore.Tick(self.tick(seconds), due_in))

    @precondition(lambda self: self.awaiting is None)
    @rule()
    def closed_by_health(self) -> None:
        self.link = False
        self.feed(sendcore.Closed())

    @invariant()
    def every_claimed_job_ends_recorded_once(self) -> None:
        assert all(n <= 1 for n in self.records.values())
        if self.awaiting is None:
            assert not self.core.busy
            assert {j for j, n in self.records.items() if n == 1} == self.claimed

    @invariant()
    def no_association_carries_more_than_a_learned_limit(self) -> None:
        assert not self.core.per_association or self.core.stores <= self.core.per_association

    @invariant()
    def the_core_and_the_shell_agree_on_the_association(self) -> None:
        if self.awaiting != "open":
            assert self.core.open == self.link


TestSenderMachine = SenderMachine.TestCase
TestSenderMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_a_batch_on_an_open_association_reuses_it() -> None:
    core = sendcore.SendCore(sendcore.Policy())
    first = sendcore.Item(1, CT, EXPLICIT_LE)
    cmds = core.handle(sendcore.Claimed((first,), 0.0, False))
    assert isinstance(cmds[-1], sendcore.Open)
    assert core.handle(sendcore.Opened(0.1))[-1] == sendcore.Store(1)
    assert core.handle(sendcore.Stored(0, None, 0.2))[0].__class__ is sendcore.Done
    cmds = core.handle(sendcore.Claimed((sendcore.Item(2, CT, EXPLICIT_LE),), 1.0, True))
    assert cmds == [sendcore.Pace(idle=False), sendcore.Store(2)]


def test_a_profile_s_contexts_are_proposed_whatever_the_files_and_kept_for_others() -> None:
    """With a negotiation profile the proposal is the profile's: a batch of files of
    other classes and syntaxes opens it as it stands, and a later batch of yet another
    class reuses the association (the peer's answer decides each file, not a new
    proposal)."""
    fixed = (Context(CT, (IMPLICIT_LE,)),)
    core = sendcore.SendCore(sendcore.Policy(fixed=fixed))
    jobs = (sendcore.Item(1, CT, EXPLICIT_LE), sendcore.Item(2, MR, EXPLICIT_LE))
    cmds = core.handle(sendcore.Claimed(jobs, 0.0, False))
    assert cmds[-1] == sendcore.Open((1, 2), fixed)
    core.handle(sendcore.Opened(0.1))
    core.handle(sendcore.Stored(0, None, 0.2))
    core.handle(sendcore.Stored(0, None, 0.3))
    cmds = core.handle(sendcore.Claimed((sendcore.Item(3, "1.2.3", IMPLICIT_LE),), 1.0, True))
    assert cmds == [sendcore.Pace(idle=False), sendcore.Store(3)]


def test_three_files_failing_alike_back_the_destination_off_without_blaming_them() -> None:
    core = sendcore.SendCore(sendcore.Policy())
    core.handle(sendcore.Claimed((sendcore.Item(1, CT, EXPLICIT_LE, aborts=2),), 0.0, False))
    core.handle(sendcore.Opened(0.1))
    assert core.handle(sendcore.NoResponse("lost", 0.2)) == [sendcore.NoteFailure(1)]
    cmds = core.handle(sendcore.FailureNoted(outcome.STREAK, False))
    kinds = [type(c).__name__ for c in cmds]
    assert kinds == ["Retry", "Degrade", "Close", "Close"]
    assert cmds[1].action.kind == outcome.BACKOFF and not core.busy and not core.open


def test_an_idle_association_is_closed_after_idle_release() -> None:
    core = sendcore.SendCore(sendcore.Policy(idle_release=10.0))
    core.handle(sendcore.Claimed((sendcore.Item(1, CT, EXPLICIT_LE),), 0.0, False))
    core.handle(sendcore.Opened(0.0))
    core.handle(sendcore.Stored(0, None, 1.0))
    assert core.handle(sendcore.Tick(5.0, None)) == [sendcore.Pace(idle=True),
                                                      sendcore.Wait(1.0)]
    assert core.handle(sendcore.Tick(11.0, None)) == [sendcore.Close()]
    assert core.handle(sendcore.Tick(12.0, 30.0)) == [sendcore.Wait(5.0)]


def _lost_at_third(core: sendcore.SendCore, first: int, now: float) -> list[sendcore.Command]:
    """A batch of jobs ``first``.. on a new association: two stored, the third lost."""
    jobs = tuple(sendcore.Item(i, CT, EXPLICIT_LE) for i in range(first, first + 4))
    core.handle(sendcore.Claimed(jobs, now, False))
    core.handle(sendcore.Opened(now))
    core.handle(sendcore.Stored(0, None, now))
    core.handle(sendcore.Stored(0, None, now))
    return core.handle(sendcore.NoResponse("the peer aborted", now))


def test_two_associations_lost_at_the_same_c_store_teach_the_peer_s_limit() -> None:
    """A peer that takes two C-STOREs per association and aborts the third: the first
    loss counts as usual, the second (another file, the same count) is the peer's limit.
    The file is not charged for it, and the next associations are released after two."""
    core = sendcore.SendCore(sendcore.Policy())
    assert _lost_at_third(core, 1, 0.0) == [sendcore.NoteFailure(3)]
    core.handle(sendcore.FailureNoted(1, True))
    cmds = _lost_at_third(core, 10, 1.0)
    retry = cmds[0]
    assert isinstance(retry, sendcore.Retry) and retry.job == 12 and not retry.alone
    assert "at most 2 C-STOREs" in retry.reason
    assert cmds[1:] == [sendcore.Close(abort=True), sendcore.Release((13,))]
    jobs = tuple(sendcore.Item(i, CT, EXPLICIT_LE) for i in (12, 13, 14))
    assert isinstance(core.handle(sendcore.Claimed(jobs, 2.0, False))[-1], sendcore.Open)
    core.handle(sendcore.Opened(2.0))
    core.handle(sendcore.Stored(0, None, 2.0))
    cmds = core.handle(sendcore.Stored(0, None, 2.0))
    assert [type(c).__name__ for c in cmds] == ["Done", "Close", "Open"]
    assert cmds[1] == sendcore.Close(abort=False) and cmds[2].jobs == (14,)
    core.handle(sendcore.Opened(2.1))
    assert core.handle(sendcore.Stored(0, None, 2.1))[0].__class__ is sendcore.Done
    cmds = core.handle(sendcore.Claimed((sendcore.Item(15, CT, EXPLICIT_LE),), 3.0, True))
    assert cmds[-1] == sendcore.Store(15)  # one stored on this one: room for one more
    core.handle(sendcore.Stored(0, None, 3.0))
    # an open association that carried its two is not reused for the next claim
    cmds = core.handle(sendcore.Claimed((sendcore.Item(16, CT, EXPLICIT_LE),), 4.0, True))
    assert cmds == [sendcore.Close(), sendcore.Open((16,), cmds[-1].contexts)]


def test_the_same_file_lost_twice_at_the_same_count_is_still_charged_to_it() -> None:
    core = sendcore.SendCore(sendcore.Policy())
    assert _lost_at_third(core, 1, 0.0) == [sendcore.NoteFailure(3)]
    core.handle(sendcore.FailureNoted(1, True))
    jobs = (sendcore.Item(7, CT, EXPLICIT_LE), sendcore.Item(8, CT, EXPLICIT_LE),
            sendcore.Item(3, CT, EXPLICIT_LE, aborts=1))
    core.handle(sendcore.Claimed(jobs, 1.0, False))
    core.handle(sendcore.Opened(1.0))
    core.handle(sendcore.Stored(0, None, 1.0))
    core.handle(sendcore.Stored(0, None, 1.0))
    assert core.handle(sendcore.NoResponse("the peer aborted", 1.0)) == [
        sendcore.NoteFailure(3)]
    assert core.per_association == 0


def test_losses_at_the_same_count_with_a_longer_association_between_teach_no_limit() -> None:
    core = sendcore.SendCore(sendcore.Policy())
    assert _lost_at_third(core, 1, 0.0) == [sendcore.NoteFailure(3)]
    core.handle(sendcore.FailureNoted(1, True))
    jobs = tuple(sendcore.Item(i, CT, EXPLICIT_LE) for i in (20, 21, 22))
    core.handle(sendcore.Claimed(jobs, 1.0, False))
    core.handle(sendcore.Opened(1.0))
    for _ in jobs:  # three in one association: the third was no limit
        core.handle(sendcore.Stored(0, None, 1.0))
    core.handle(sendcore.Tick(100.0, None))
    assert _lost_at_third(core, 30, 200.0) == [sendcore.NoteFailure(32)]
    assert core.per_association == 0


def test_losses_at_the_first_c_store_teach_no_limit() -> None:
    core = sendcore.SendCore(sendcore.Policy())
    for job in (1, 2):
        core.handle(sendcore.Claimed((sendcore.Item(job, CT, EXPLICIT_LE),), job, False))
        core.handle(sendcore.Opened(job))
        assert core.handle(sendcore.NoResponse("lost", job)) == [sendcore.NoteFailure(job)]
        core.handle(sendcore.FailureNoted(1, True))
    assert core.per_association == 0


def test_a_learned_limit_is_forgotten_after_an_hour_and_learned_again() -> None:
    core = sendcore.SendCore(sendcore.Policy())
    _lost_at_third(core, 1, 0.0)
    core.handle(sendcore.FailureNoted(1, True))
    _lost_at_third(core, 10, 1.0)
    assert core.per_association == 2
    later = 1.0 + sendcore.LIMIT_KEPT + 1
    jobs = tuple(sendcore.Item(i, CT, EXPLICIT_LE) for i in (20, 21, 22))
    core.handle(sendcore.Claimed(jobs, later, False))
    core.handle(sendcore.Opened(later))
    assert core.per_association == 0
    core.handle(sendcore.Stored(0, None, later))
    core.handle(sendcore.Stored(0, None, later))
    assert core.handle(sendcore.Stored(0, None, later))[0].__class__ is sendcore.Done


def test_losses_at_the_same_count_with_a_shorter_association_between_teach_no_limit() -> None:
    """Only two associations in a row count: one between that carried fewer C-STOREs
    and ended without a loss (released when idle) breaks the run."""
    core = sendcore.SendCore(sendcore.Policy(idle_release=5.0))
    assert _lost_at_third(core, 1, 0.0) == [sendcore.NoteFailure(3)]
    core.handle(sendcore.FailureNoted(1, True))
    core.handle(sendcore.Claimed((sendcore.Item(20, CT, EXPLICIT_LE),), 1.0, False))
    core.handle(sendcore.Opened(1.0))
    core.handle(sendcore.Stored(0, None, 1.0))
    assert core.handle(sendcore.Tick(100.0, None)) == [sendcore.Close()]
    assert _lost_at_third(core, 30, 200.0) == [sendcore.NoteFailure(32)]
    assert core.per_association == 0
