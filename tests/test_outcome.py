"""Pure outcome rules: status, association failure and lost responses -> actions."""

from __future__ import annotations

import pytest

from forwarder import outcome as o


@pytest.mark.parametrize(("status", "kind"), [
    (0x0000, o.DONE), (0xB000, o.DONE), (0xB006, o.DONE), (0xB007, o.DONE), (0x0111, o.DONE),
    (0x0001, o.DONE), (0xA700, o.RETRY), (0xA7FF, o.RETRY), (0x0213, o.RETRY),
    (0xA900, o.FAIL), (0xA9AB, o.FAIL), (0xC000, o.FAIL), (0xC211, o.FAIL), (0x0117, o.FAIL),
    (0x0212, o.FAIL), (0x0122, o.FAIL), (0x0211, o.FAIL), (0x0124, o.HOLD),
    (0x0210, o.RESEND), (0x0110, o.RETRY), (0x0299, o.RETRY),
])
def test_store_status(status: int, kind: str) -> None:
    assert o.store_status(status).kind == kind


def test_warnings_fail_when_they_are_not_success() -> None:
    a = o.store_status(0xB007, "elements coerced", warning_is_success=False)
    assert a.kind == o.FAIL and "0xB007 (elements coerced)" in a.reason
    assert o.store_status(0xB000).warning and not o.store_status(0x0000).warning


def test_processing_failure_is_retried_a_few_times_then_fails() -> None:
    kinds = [o.store_status(0x0110, attempts=n).kind for n in range(4)]
    assert kinds == [o.RETRY] * (o.PROCESSING_FAILURE_TRIES - 1) + \
        [o.FAIL] * (4 - o.PROCESSING_FAILURE_TRIES + 1)


@pytest.mark.parametrize(("kind", "result", "source", "reason", "action"), [
    ("refused", None, None, None, o.BACKOFF), ("timeout", None, None, None, o.BACKOFF),
    ("aborted", None, None, None, o.BACKOFF), ("tls", None, None, None, o.HOLD),
    ("identity", None, None, None, o.HOLD), ("no_contexts", None, None, None, o.FAIL),
    ("rejected", 1, 1, 7, o.HOLD), ("rejected", 1, 1, 3, o.HOLD), ("rejected", 1, 1, 2, o.HOLD),
    ("rejected", 2, 3, 1, o.BACKOFF), ("rejected", 2, 3, 2, o.BACKOFF),
    ("rejected", 2, 2, 1, o.HOLD), ("rejected", 1, 2, 2, o.HOLD), ("rejected", 2, 1, 1, o.BACKOFF),
])
def test_association_failures(kind: str, result: int | None, source: int | None,
                              reason: int | None, action: str) -> None:
    assert o.association_failure(kind, "x", result, source, reason).kind == action


def test_a_failure_right_after_stores_counts_against_the_file() -> None:
    resend = o.Action(o.RESEND, "no response during the C-STORE")
    assert o.alike(resend, 0, 1, True) == (resend, True)
    kind, alone = o.alike(resend, o.ABORTS_IN_A_ROW - 1, 1, True)
    assert kind.kind == o.FAIL and alone and "while other files were stored" in kind.reason


def test_a_700_fails_a_file_only_after_more_refusals_alone() -> None:
    refused = o.store_status(0xA700, "missing PatientID")
    assert o.alike(refused, o.ABORTS_IN_A_ROW - 1, 1, True, refused=True) == (refused, True)
    verdict, _ = o.alike(refused, o.REFUSALS_ALONE - 1, 1, True, refused=True)
    assert verdict.kind == o.FAIL and "0xA700 (missing PatientID)" in verdict.reason


@pytest.mark.parametrize("alone", [0, 1, 10])
def test_files_failing_alike_in_a_row_back_the_destination_off(alone: int) -> None:
    refused = o.store_status(0xA700)
    for streak in range(o.STREAK, o.STREAK + 5):
        verdict, counted = o.alike(refused, alone, streak, True, refused=True)
        assert verdict.kind == o.BACKOFF and not counted and "in a row" in verdict.reason


def test_a_file_failing_again_with_nothing_stored_between_proves_nothing() -> None:
    resend = o.Action(o.RESEND, "no response")
    for streak in (1, 2):
        assert o.alike(resend, o.ABORTS_IN_A_ROW - 1, streak, False) == (resend, False)
    assert o.alike(resend, o.ABORTS_IN_A_ROW - 1, 2, True) == (resend, False)
