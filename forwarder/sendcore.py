"""Pure: the decisions of one association worker, as a state machine without I/O.

The worker (:mod:`forwarder.worker`) is its I/O shell. It feeds events in: jobs
``Claimed``, the association ``Opened`` or ``OpenFailed``, a C-STORE ``Stored`` with its
status, ``Refused`` (the file's fault, nothing sent), ``NoResponse``, ``Interrupted``
(stopping, or the association went away between two files), ``FailureNoted`` (the answer
to ``NoteFailure``), ``Closed`` and the idle ``Tick``. It carries out the commands that
come back, in order: ``Open``, ``Store``, ``Done``, ``Retry``, ``Fail``, ``Release``,
``Degrade`` (the destination backs off or is held), ``NoteFailure``, ``Close``, ``Pace``
and ``Wait``. What a status or a failure means is :mod:`forwarder.outcome`'s rule; this
module only sequences it: which job is in flight, when an association is reused, opened
or closed, and that every claimed job is recorded exactly once.

After ``Open`` the shell answers ``Opened`` or ``OpenFailed``; after ``Store``, one of
``Stored``, ``Refused``, ``NoResponse`` or ``Interrupted``; after ``NoteFailure``,
``FailureNoted``. Every other command needs no answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from forwarder import outcome
from forwarder.negotiation import Context, TooManyContexts, plan_contexts


@dataclass(frozen=True)
class Item:
    """What the decisions need of a claimed job."""

    id: int
    sop_class: str
    transfer_syntax: str
    attempts: int = 0  # attempts made before this claim
    aborts: int = 0    # earlier failures that counted against the file alone

    @property
    def need(self) -> tuple[str, str]:
        return (self.sop_class, self.transfer_syntax)


@dataclass(frozen=True)
class Policy:
    """The destination settings the decisions depend on."""

    propose: str = "uncompressed"
    combine: bool = False
    max_association_age: float = 3600.0
    idle_release: float = 10.0
    warning_is_success: bool = True
    # a negotiation profile's contexts: proposed as they are, whatever the jobs need
    fixed: tuple[Context, ...] = ()


# --- events in ---------------------------------------------------------------------

@dataclass(frozen=True)
class Claimed:
    jobs: tuple[Item, ...]
    now: float
    link_up: bool  # the association the shell holds is still established


@dataclass(frozen=True)
class Opened:
    now: float


@dataclass(frozen=True)
class OpenFailed:
    action: outcome.Action  # outcome.association_failure(), or a BACKOFF/HOLD of its own
    now: float


@dataclass(frozen=True)
class Stored:
    status: int
    comment: str | None
    now: float


@dataclass(frozen=True)
class Refused:
    """The file cannot be sent (missing, cannot be prepared or converted); the
    association is still usable."""

    reason: str
    now: float


@dataclass(frozen=True)
class NoResponse:
    cause: str  # outcome.no_response_cause(), in words about this file
    now: float


@dataclass(frozen=True)
class Interrupted:
    now: float


@dataclass(frozen=True)
class FailureNoted:
    streak: int
    stored_since: bool


@dataclass(frozen=True)
class Closed:
    pass


@dataclass(frozen=True)
class Tick:
    now: float
    due_in: float | None  # seconds until the destination's next job is due; None: none


Event = (Claimed | Opened | OpenFailed | Stored | Refused | NoResponse | Interrupted
         | FailureNoted | Closed | Tick)


# --- commands out ------------------------------------------------------------------

@dataclass(frozen=True)
class Open:
    jobs: tuple[int, ...]
    contexts: tuple[Context, ...]


@dataclass(frozen=True)
class Store:
    job: int


@dataclass(frozen=True)
class Done:
    job: int
    status: str
    reason: str
    warning: bool


@dataclass(frozen=True)
class Retry:
    job: int
    reason: str
    status: str | None
    alone: bool = False
    delay: float | None = None  # None: the job's backoff


@dataclass(frozen=True)
class Fail:
    job: int
    reason: str
    status: str | None = None
    attempted: bool = True


@dataclass(frozen=True)
class Release:
    jobs: tuple[int, ...]


@dataclass(frozen=True)
class Degrade:
    action: outcome.Action
    attempts: int = 0


@dataclass(frozen=True)
class NoteFailure:
    job: int


@dataclass(frozen=True)
class Close:
    abort: bool = False  # abort an association still established instead of releasing it


@dataclass(frozen=True)
class Pace:
    idle: bool


@dataclass(frozen=True)
class Wait:
    seconds: float


Command = (Open | Store | Done | Retry | Fail | Release | Degrade | NoteFailure | Close
           | Pace | Wait)
RECORDS = (Done, Retry, Fail, Release)  # the commands that settle a claimed job
LIMIT_KEPT = 3600.0  # seconds a learned limit of C-STOREs per association is kept


@dataclass
class _Noting:
    """A failure that the file or its peer may have caused, waiting for FailureNoted."""

    action: outcome.Action
    status: str | None
    refused: bool
    lost: bool  # no response: the association ends whatever the verdict


@dataclass
class SendCore:
    """One worker's association and the batch it is sending."""

    policy: Policy
    open: bool = False
    opened_at: float = 0.0
    last_used: float = 0.0
    proposed: set[tuple[str, str]] = field(default_factory=set)
    batch: list[Item] = field(default_factory=list)  # in flight first, then the rest
    phase: str = "idle"  # idle | opening | storing | noting
    stores: int = 0  # C-STOREs answered on the open association
    lost_at: tuple[int, int] | None = None  # (n, job): the association before, lost at its nth
    lost_last: bool = False  # the last association ended lost
    per_association: int = 0  # the peer's learned limit of C-STOREs per association; 0: none
    learned_at: float = 0.0
    _noting: _Noting | None = None

    @property
    def busy(self) -> bool:
        """Some claimed job is not recorded yet."""
        return bool(self.batch)

    def handle(self, event: Event) -> list[Command]:
        name = type(event).__name__
        expected = {"Claimed": "idle", "Tick": "idle", "Opened": "opening",
                    "OpenFailed": "opening", "Stored": "storing", "Refused": "storing",
                    "NoResponse": "storing", "Interrupted": "storing",
                    "FailureNoted": "noting"}.get(name)
        if expected is not None and self.phase != expected:
            raise RuntimeError(f"{name} while {self.phase}")
        return getattr(self, f"_on_{name.lower()}")(event)

    # --- associations --------------------------------------------------------------

    def _covers(self, jobs: Sequence[Item], now: float, link_up: bool) -> bool:
        return (self.open and link_up and now - self.opened_at < self.policy.max_association_age
                and not self._spent
                and (bool(self.policy.fixed) or all(j.need in self.proposed for j in jobs)))

    def _fit(self, jobs: Sequence[Item]) -> tuple[list[Item], list[Item], list[Context]]:
        """The leading jobs whose contexts fit in one association (PS3.8 9.3.2.2: 128),
        the others, and the contexts planned for the first."""
        if self.policy.fixed:  # the profile's, for every job
            return list(jobs), [], list(self.policy.fixed)
        needs: list[tuple[str, str]] = []
        contexts: list[Context] = []
        for i, j in enumerate(jobs):
            if j.need in needs:
                continue
            try:
                contexts = plan_contexts([*needs, j.need], self.policy.propose,
                                         self.policy.combine)
            except TooManyContexts:
                return list(jobs[:i]), list(jobs[i:]), contexts
            needs.append(j.need)
        return list(jobs), [], contexts

    @property
    def _spent(self) -> bool:
        """The open association carried as many C-STOREs as the peer takes in one."""
        return 0 < self.per_association <= self.stores

    def _open_for(self, jobs: Sequence[Item], cmds: list[Command]) -> list[Command]:
        take, rest, contexts = self._fit(jobs)
        if rest:
            cmds.append(Release(tuple(j.id for j in rest)))
        self.batch = take
        self.phase = "opening"
        cmds.append(Open(tuple(j.id for j in take), tuple(contexts)))
        return cmds

    def _close(self, abort: bool = False) -> list[Command]:
        self.open = False
        self.proposed = set()
        return [Close(abort)]

    def _on_closed(self, event: Closed) -> list[Command]:
        self.open = False
        self.proposed = set()
        return []

    def _on_claimed(self, event: Claimed) -> list[Command]:
        if not event.jobs:
            return []
        self.last_used = event.now
        if self._covers(event.jobs, event.now, event.link_up):
            self.batch = list(event.jobs)
            return [Pace(idle=False), *self._next(event.now)]
        return self._open_for(event.jobs, self._close() if self.open else [Close()])

    def _on_opened(self, event: Opened) -> list[Command]:
        self.open = True
        self.opened_at = event.now
        self.stores = 0
        if not self.lost_last:  # a loss counts toward a limit only in the next association
            self.lost_at = None
        self.lost_last = False
        if self.per_association and event.now - self.learned_at > LIMIT_KEPT:
            self.per_association = 0  # learned again if the peer still aborts
        self.proposed = {j.need for j in self.batch}
        return [Pace(idle=False), *self._next(event.now)]

    def _on_openfailed(self, event: OpenFailed) -> list[Command]:
        jobs, self.batch = self.batch, []
        self.phase = "idle"
        self.open = False
        if event.action.kind == outcome.FAIL:  # the peer takes none of these SOP classes
            return [Fail(j.id, event.action.reason, attempted=False) for j in jobs]
        return [Release(tuple(j.id for j in jobs)), Degrade(event.action)]

    # --- sending ---------------------------------------------------------------------

    def _next(self, now: float) -> list[Command]:
        """Store the next job of the batch, or end the batch."""
        self.last_used = now
        if not self.batch:
            self.phase = "idle"
            return []
        if self._spent:  # released before the C-STORE the peer would abort
            return self._open_for(self.batch, self._close())
        self.phase = "storing"
        return [Store(self.batch[0].id)]

    def _stop(self, now: float, cmds: list[Command]) -> list[Command]:
        """The association is not used further: the jobs not sent go back unattempted."""
        rest, self.batch = self.batch, []
        self.phase = "idle"
        self.last_used = now
        if rest:
            cmds.append(Release(tuple(j.id for j in rest)))
        return cmds

    def _on_interrupted(self, event: Interrupted) -> list[Command]:
        return self._stop(event.now, [])

    def _on_refused(self, event: Refused) -> list[Command]:
        job = self.batch.pop(0)
        return [Fail(job.id, event.reason), *self._next(event.now)]

    def _on_stored(self, event: Stored) -> list[Command]:
        job = self.batch[0]
        self.stores += 1
        action = outcome.store_status(event.status, event.comment, job.attempts,
                                      self.policy.warning_is_success)
        status = outcome.status_text(event.status)
        if action.kind == outcome.DONE:
            self.batch.pop(0)
            return [Done(job.id, status, action.reason, action.warning),
                    *self._next(event.now)]
        if action.kind == outcome.FAIL:
            self.batch.pop(0)
            return [Fail(job.id, action.reason, status), *self._next(event.now)]
        if action.kind == outcome.RETRY and outcome.out_of_resources(event.status):
            return self._note(job, _Noting(action, status, refused=True, lost=False))
        if action.kind == outcome.RETRY:
            self.batch.pop(0)
            return [Retry(job.id, action.reason, status), *self._next(event.now)]
        self.batch.pop(0)
        if action.kind == outcome.RESEND:
            cmds: list[Command] = [Retry(job.id, action.reason, status, delay=0.0)]
            return self._stop(event.now, [*cmds, *self._close()])
        # HOLD: the peer refuses us, not the file
        return self._stop(event.now, [Release((job.id,)), Degrade(action), *self._close()])

    def _on_noresponse(self, event: NoResponse) -> list[Command]:
        self.last_used = event.now
        job, nth = self.batch[0], self.stores + 1
        again = self.lost_at is not None and self.lost_at[0] == nth and self.lost_at[1] != job.id
        self.lost_at, self.lost_last = (nth, job.id), True
        if again and nth > 1:  # two files lost at the same count in a row: the peer's limit
            self.per_association, self.learned_at = nth - 1, event.now
            self.batch.pop(0)
            reason = (f"{event.cause} during the C-STORE, the association's C-STORE number "
                      f"{nth} as in the association before (another file): the peer's limit, "
                      f"not this file's fault; associations to it now carry at most "
                      f"{nth - 1} C-STOREs")
            return self._stop(event.now, [Retry(job.id, reason, None), *self._close(abort=True)])
        action = outcome.Action(outcome.RESEND, f"{event.cause} during the C-STORE; sending "
                                "it again on a new association")
        return self._note(job, _Noting(action, None, refused=False, lost=True))

    def _note(self, job: Item, noting: _Noting) -> list[Command]:
        self._noting = noting
        self.phase = "noting"
        return [NoteFailure(job.id)]

    def _on_failurenoted(self, event: FailureNoted) -> list[Command]:
        """A failure the file or its peer may have caused: the file's when others are
        being stored around it, the destination's when they fail alike
        (:func:`outcome.alike`)."""
        noting, self._noting = self._noting, None
        assert noting is not None
        job = self.batch.pop(0)
        verdict, alone = outcome.alike(noting.action, job.aborts, event.streak,
                                       event.stored_since, noting.refused)
        cmds: list[Command]
        go_on = True
        if verdict.kind == outcome.FAIL:
            cmds = [Fail(job.id, verdict.reason, noting.status)]
        elif verdict.kind == outcome.BACKOFF:  # the file waits its turn, its count unchanged
            cmds = [Retry(job.id, noting.action.reason, noting.status),
                    Degrade(verdict, attempts=event.streak - outcome.STREAK + 1),
                    *self._close()]
            go_on = False
        else:  # the others go first: a file that fails alone must not be next again
            cmds = [Retry(job.id, verdict.reason, noting.status, alone=alone)]
        if noting.lost:
            cmds += self._close(abort=True)
            return self._stop(self.last_used, cmds)
        if not go_on:
            return self._stop(self.last_used, cmds)
        return [*cmds, *self._next(self.last_used)]

    # --- idle --------------------------------------------------------------------------

    def _on_tick(self, event: Tick) -> list[Command]:
        """Nothing claimed: keep the association for ``idle_release``, then close it."""
        if self.open:
            left = self.last_used + self.policy.idle_release - event.now
            if left <= 0:
                return self._close()
            return [Pace(idle=True), Wait(min(left, 1.0))]
        wait = 5.0 if event.due_in is None else max(0.0, min(5.0, event.due_in))
        return [Wait(max(wait, 0.01))]
