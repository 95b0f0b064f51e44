"""Sorting ARM errors into retry-later and record-and-move-on; a 409 by the machine's power state alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from shared.azure.patch_operations import PermanentArmError, TransientArmError, classify
from shared.model.assessment_outcome import Readiness
from shared.model.machines import PowerState

# Which code Azure answers while another patch operation runs is undocumented; all of these are seen.
CONFLICT_CODES = ["Conflict", "OperationPreempted", "OperationNotAllowed", "SomethingNew"]


class _Response:
    """Just enough of an HTTP response for HttpResponseError and the adapter's body reading."""

    reason = "Conflict"
    content_type = "application/json"

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}
        self._text = json.dumps(body)

    def text(self, encoding: str | None = None) -> str:
        return self._text

    def json(self) -> Any:
        return json.loads(self._text)

    def body(self) -> bytes:
        return self._text.encode()


def _error(status: int, code: str, message: str = "the raw message") -> HttpResponseError:
    return HttpResponseError(response=_Response(status, {"error": {"code": code, "message": message}}))


@pytest.mark.parametrize("code", CONFLICT_CODES)
@pytest.mark.parametrize("state", [PowerState.RUNNING, PowerState.STARTING, PowerState.UNKNOWN])
def test_a_409_on_a_machine_that_runs_is_busy_whatever_its_code(code, state):
    sorted_ = classify(_error(409, code), lambda: state)
    assert isinstance(sorted_, TransientArmError)
    assert f"HTTP 409 {code}: the raw message" in str(sorted_)


@pytest.mark.parametrize("code", CONFLICT_CODES)
@pytest.mark.parametrize("state", [PowerState.STOPPED, PowerState.DEALLOCATED, PowerState.DISCONNECTED])
def test_a_409_on_a_machine_that_does_not_run_is_not_assessable_with_the_raw_code(code, state):
    sorted_ = classify(_error(409, code), lambda: state)
    assert isinstance(sorted_, PermanentArmError)
    failure = sorted_.failure
    assert (failure.readiness, failure.code, failure.message) == (
        Readiness.NOT_ASSESSABLE, code, "the raw message"
    )
    assert state.value in failure.hint


def test_an_unreadable_power_state_leaves_the_machine_to_the_retries():
    def unreadable() -> PowerState:
        raise RuntimeError("instance view GET failed")

    assert isinstance(classify(_error(409, "OperationNotAllowed"), unreadable), TransientArmError)
    assert isinstance(classify(_error(409, "OperationNotAllowed")), TransientArmError)


def test_other_errors_are_sorted_by_status_and_never_read_the_power_state():
    def never() -> PowerState:
        raise AssertionError("the power state is read only after a 409")

    assert isinstance(classify(_error(429, "TooManyRequests"), never), TransientArmError)
    assert isinstance(classify(_error(503, "ServiceUnavailable"), never), TransientArmError)
    refused = classify(_error(400, "OperationNotAllowed"), never)
    assert isinstance(refused, PermanentArmError) and refused.failure.readiness is Readiness.FAILED
    denied = classify(_error(403, "AuthorizationFailed", "no assessPatches action"), never)
    assert isinstance(denied, PermanentArmError)
    assert denied.failure.message == "AuthorizationFailed: no assessPatches action"
