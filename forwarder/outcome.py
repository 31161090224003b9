"""Pure: what a C-STORE status, an association failure or a lost response means for the
job and for the destination.

Follows PS3.4 B.2.3 (C-STORE statuses: A7xx refused out of resources, A9xx data set does
not match SOP class, Cxxx cannot understand, B000/B006/B007 warnings), PS3.7 Annex C
(status classes: 0000 success, 0001/Bxxx warning, other codes failure; 0110, 0111, 0117,
0122, 0124, 0210-0213 general statuses) and PS3.8 9.3.4 (A-ASSOCIATE-RJ result, source,
reason). The rule of thumb: blame the instance and the instance fails (a poison file
never blocks the others); blame the peer's load and the job waits; blame configuration
or credentials and the whole destination is held, its jobs kept.
"""

from __future__ import annotations

from dataclasses import dataclass

# job actions
DONE = "done"
RETRY = "retry"          # pending again after the job's backoff
RESEND = "resend"        # at once, on a new association (the outcome is unknown)
FAIL = "fail"            # failed with the reason, kept for an operator
# destination actions (the job is released unattempted)
BACKOFF = "backoff"      # transient: the whole destination waits, with jitter
HOLD = "hold"            # configuration or credentials: held, probed slowly, loud log

PROCESSING_FAILURE_TRIES = 3  # 0110 and unknown failure codes: then the job fails
ABORTS_IN_A_ROW = 3           # a file that fails alone (others stored) this often fails
REFUSALS_ALONE = 5            # ... or is refused out of resources (A7xx) this often
STREAK = 3                    # this many failures in a row, no store between: the peer's


@dataclass(frozen=True)
class Action:
    kind: str
    reason: str
    warning: bool = False  # stored, but the peer said something worth a WARNING

    @property
    def destination_level(self) -> bool:
        return self.kind in (BACKOFF, HOLD)


def status_text(status: int) -> str:
    return f"0x{status:04X}"


def store_status(status: int, comment: str | None = None, attempts: int = 0,
                 warning_is_success: bool = True) -> Action:
    """The action for one C-STORE response status; ``attempts`` made before this one."""
    said = f"{status_text(status)}" + (f" ({comment})" if comment else "")
    if status == 0x0000:
        return Action(DONE, "stored")
    warning = status == 0x0001 or status == 0x0107 or status == 0x0116 or (status >> 12) == 0xB
    if warning or status == 0x0111:  # 0111 duplicate SOP instance: the peer already has it
        what = "duplicate SOP instance, already stored" if status == 0x0111 else "warning"
        if warning_is_success:
            return Action(DONE, f"stored with {what} {said}", warning=True)
        return Action(FAIL, f"peer answered {what} {said} and warning_is_success is false")
    if out_of_resources(status):
        return Action(RETRY, f"peer out of resources {said}")
    if (status >> 8) == 0xA9:
        return Action(FAIL, f"data set does not match SOP class {said} (PS3.4 B.2.3)")
    if (status >> 12) == 0xC:
        return Action(FAIL, f"peer cannot understand the data set {said} (PS3.4 B.2.3)")
    if status in (0x0117, 0x0212):
        return Action(FAIL, f"peer refused the instance {said}: "
                      + ("invalid object instance" if status == 0x0117 else "mistyped argument"))
    if status in (0x0122, 0x0211):
        return Action(FAIL, f"peer does not support this SOP class {said}; every file of "
                      "this class fails at this destination until its configuration changes")
    if status == 0x0124:
        return Action(HOLD, f"peer refused: not authorised {said}")
    if status == 0x0210:  # duplicate invocation: a message ID clash, never the file's fault
        return Action(RESEND, f"peer reported a duplicate invocation {said}")
    if attempts + 1 >= PROCESSING_FAILURE_TRIES:
        return Action(FAIL, f"peer failed to process it {said} {attempts + 1} times")
    return Action(RETRY, f"peer failed to process it {said}")


def out_of_resources(status: int) -> bool:
    """A7xx and 0213: transient by the standard, whether the peer means this file or all."""
    return (status >> 8) == 0xA7 or status == 0x0213


def alike(action: Action, alone: int, streak: int, stored_since: bool,
          refused: bool = False) -> tuple[Action, bool]:
    """Whose fault is a failure that a file or its peer could cause (no response, stall,
    A7xx)? Returns the action and whether this failure counts against the file alone.

    ``alone``: earlier failures of this file that counted; ``streak``: different files
    failing in a row at this destination, this one included, none stored between;
    ``stored_since``: the destination stored a file since this one last failed (true at
    its first failure). ``STREAK`` files failing alike are the destination's fault: it
    backs off, no file is blamed, and a peer that refuses or aborts everything fails
    nothing. A failure counts against the file when other files are being stored around
    it; after ``ABORTS_IN_A_ROW`` (``REFUSALS_ALONE`` for A7xx, which the standard calls
    transient) the file fails so it cannot block the queue. A file failing again with
    nothing stored between proves nothing: it waits its (growing) backoff."""
    if streak >= STREAK:
        return Action(BACKOFF, f"{streak} files in a row failed alike, none stored between "
                      f"(last: {action.reason}); the peer, not the files"), False
    if streak > 1 or not stored_since:
        return action, False
    n = alone + 1
    if n >= (REFUSALS_ALONE if refused else ABORTS_IN_A_ROW):
        if refused:
            return Action(FAIL, f"{action.reason} for this file {n} times while it stored "
                          "other files; given up so it cannot block the queue"), True
        what = action.reason.split(" during the C-STORE")[0]
        return Action(FAIL, f"{what}, {n} times while other files were stored; given up so "
                      "it cannot block the queue"), True
    return action, True


def no_response_cause(elapsed: float, dimse_timeout: float | None, aborted: bool) -> str:
    """Why a C-STORE got no response, in words about this file."""
    if dimse_timeout and elapsed >= dimse_timeout * 0.95:
        return f"no response to the C-STORE of this file within the DIMSE timeout ({dimse_timeout:g}s)"
    if aborted:
        return "the peer aborted the association (or closed the connection) while receiving this file"
    return "the connection was lost while sending this file"


# PS3.8 9.3.4 A-ASSOCIATE-RJ: source 1 service user, 2 provider (ACSE), 3 provider
# (presentation); result 1 permanent, 2 transient.
def association_failure(kind: str, message: str, result: int | None = None,
                        source: int | None = None, reason: int | None = None) -> Action:
    """The destination's fate when an association cannot be used."""
    if kind in ("tls", "identity"):
        return Action(HOLD, message)
    if kind == "rejected":
        if source == 3:  # presentation provider: temporary congestion, local limit exceeded
            return Action(BACKOFF, message)
        if source == 2 and reason == 1 and result == 2:
            # ACSE provider, transient, no reason: how a failed user identity is
            # rejected (pynetdicom's acceptor); retrying cannot fix credentials
            return Action(HOLD, message + " (user identity refused?)")
        if result == 2:
            return Action(BACKOFF, message)
        return Action(HOLD, message)  # permanent: AE title, application context, version
    if kind == "no_contexts":
        return Action(FAIL, message)
    return Action(BACKOFF, message)  # refused, timeout, aborted
