"""Which runs the reconciler closes, and how, from a fake Durable status source."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.deployments import reconcile as reconciler
from shared.deployments.definition import validate_definition
from shared.deployments.reconcile import QUEUED_GRACE, describe, is_lost, machine_result
from shared.deployments.results import MachineResultStatus
from shared.deployments.runs_table import RunRecord, RunState
from tests.unit.test_deployment_definition import windows

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def run(run_id: str, state: RunState = RunState.RUNNING, age: timedelta = timedelta(hours=1)) -> RunRecord:
    return RunRecord(run_id=run_id, deployment_name="d", trigger="schedule", state=state,
                     definition=validate_definition(windows()), created=NOW - age, window_start=None,
                     window_minutes=120)


@pytest.mark.parametrize("status", ["Pending", "Running", "ContinuedAsNew", "Suspended"])
def test_a_run_whose_orchestration_is_live_is_left_alone(status):
    assert not is_lost(run("r"), status, NOW)
    assert not is_lost(run("r", RunState.QUEUED), status, NOW)


@pytest.mark.parametrize("status", [None, "Terminated", "Failed", "Completed", "Canceled"])
def test_a_running_run_whose_orchestration_ended_or_vanished_is_lost(status):
    assert is_lost(run("r"), status, NOW)


def test_a_queued_run_without_an_orchestration_gets_a_grace_period_to_start():
    assert not is_lost(run("r", RunState.QUEUED, age=timedelta(minutes=2)), None, NOW)
    assert is_lost(run("r", RunState.QUEUED, age=QUEUED_GRACE + timedelta(seconds=1)), None, NOW)
    assert is_lost(run("r", RunState.QUEUED, age=timedelta(minutes=2)), "Terminated", NOW)


@pytest.mark.parametrize("state", [RunState.COMPLETED, RunState.CANCELLED, RunState.FAILED, RunState.MISSED])
def test_a_closed_run_is_never_lost(state):
    assert not is_lost(run("r", state), None, NOW)


def test_open_machines_get_failed_if_they_were_running_and_never_started_otherwise():
    assert machine_result("running", cancel_requested=False) == (MachineResultStatus.FAILED, True)
    assert machine_result("queued", cancel_requested=False) == (MachineResultStatus.SKIPPED, False)
    assert machine_result("queued", cancel_requested=True) == (MachineResultStatus.CANCELLED, False)


def test_the_reason_says_what_became_of_the_orchestration():
    assert describe(None) == "orchestration not found (purged, or lost with its host)"
    assert describe("Terminated") == "orchestration terminated"
    assert "without closing the run" in describe("Completed")


def test_reconcile_asks_the_status_source_about_each_run_and_closes_only_the_lost(monkeypatch):
    statuses = {"live": "Running", "terminated": "Terminated", "new": None}  # "purged": not in the source
    runs = [run("live"), run("terminated"), run("purged"), run("new", RunState.QUEUED, timedelta(minutes=1))]
    closed: list[tuple[str, Any]] = []

    def close(settings: Any, run_id: str, status: str | None, at: datetime) -> reconciler.ClosedRun:
        closed.append((run_id, status))
        assert at == NOW
        return reconciler.ClosedRun(run_id, RunState.FAILED, describe(status), 1)

    monkeypatch.setattr(reconciler, "close_lost_run", close)
    asked: list[str] = []

    def status_of(run_id: str) -> str | None:
        asked.append(run_id)
        return statuses.get(run_id)

    done = reconciler.reconcile(object(), runs, status_of, NOW)  # type: ignore[arg-type]
    assert asked == ["live", "terminated", "purged", "new"]
    assert closed == [("terminated", "Terminated"), ("purged", None)]
    assert [c.run_id for c in done] == ["terminated", "purged"]
    # A run closed by its orchestration in the meantime is not reported.
    monkeypatch.setattr(reconciler, "close_lost_run", lambda *args: None)
    assert reconciler.reconcile(object(), [replace(run("x"))], lambda _: None, NOW) == []  # type: ignore[arg-type]
