"""Runs whose orchestration is gone are closed: the reconciler timer, and a cancel of such a run.

The run is written the way the activities write it (RunStore: create, resolve, claim): app01 and app02
are running (in a batch the master does not run), app03 waits in batch 0 for a slot they hold. The real
``deployment_run`` then runs on the local Durable runner: its batch waits on a timer (the virtual clock
stands still), so the orchestration is live until the test terminates (and purges) it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import function_app
from functions.durable import batch_instance_id
from local.clock import VirtualClock
from local.durable import DurableRunner
from local.functions_host import FunctionsHost
from shared.assessment.journal import APPLIED_ROW, JOURNAL_TABLE, journal_key
from shared.azure.log_outbox import log_outbox
from shared.azure.tables import table_service
from shared.deployments.definition import validate_definition
from shared.deployments.messages import DeploymentRunInput
from shared.deployments.runs_table import MachineTarget, RunStore, run_store
from shared.log_tables import UPDATE_RUN_MACHINE, record_id
from shared.model.machines import OsType, machine_key
from shared.principal import Role, encode_principal
from shared.settings import load_settings
from tests.unit.test_deployment_definition import vm, windows

START = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
COMPUTERS = ("app01", "app02", "app03")


def body_of(response) -> Any:
    return json.loads(response.get_body())


@pytest.fixture
def durable(app_settings) -> Iterator[DurableRunner]:
    # The clock held: a batch left waiting for a slot would otherwise ask the gate on timers the runner
    # fires at once, until the window closes and the batch ends before the test terminates it.
    with DurableRunner(function_app.app, VirtualClock(START), task_hub="TestHub") as running, \
            running.hold_clock():
        yield running


@pytest.fixture
def operator(durable) -> FunctionsHost:
    return FunctionsHost(function_app.app, durable.client_binding_json,
                         signed_in_principal=encode_principal("olga", [Role.OPERATOR]))


def wait_until_live(durable: DurableRunner, instance_id: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = durable.get_status(instance_id)
        if status and status["runtimeStatus"] == "Running":
            return
        time.sleep(0.05)
    raise AssertionError(f"{instance_id} never ran")


def live_run(durable: DurableRunner) -> tuple[str, dict[str, str]]:
    """A run with two machines running and one waiting, its orchestration live on the runner."""
    runs: RunStore = run_store(load_settings())
    defined = validate_definition({**windows(), "name": f"lost-{uuid.uuid4().hex[:8]}",
                                   "rollout": {"maxConcurrent": 2}})
    run_id = f"deploy-{defined.name}-{START:%Y%m%dT%H%MZ}"
    runs.create_run(run_id, defined, "schedule", START, occurrence=START)
    machines = {c: vm(c, OsType.WINDOWS).resource_id for c in COMPUTERS}
    keys = {c: machine_key(r) for c, r in machines.items()}
    # Batch 0 is the only one the master runs (one batch for three machines): app03 waits there for
    # the slots app01 and app02 hold.
    targets = [MachineTarget(keys[c], machines[c], c, 0 if c == "app03" else 7) for c in COMPUTERS]
    runs.resolve(run_id, START, targets, [])
    running = [machines["app01"], machines["app02"]]
    assert runs.claim(run_id, running, {r: machine_key(r) for r in running}, START).start == tuple(running)
    payload = DeploymentRunInput(run_id=run_id, deployment=defined.name, trigger="schedule")
    durable.start_new("deployment_run", run_id, payload.model_dump(mode="json"))
    wait_until_live(durable, batch_instance_id(run_id, 0))
    return run_id, keys


def by_computer(details: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["computer"]: m for m in details["machines"]}


def test_the_reconciler_closes_a_terminated_run_and_records_each_machine(durable, operator):
    run_id, _ = live_run(durable)
    operator.fire_timer("reconcile_deployment_runs")  # live: left alone
    assert body_of(operator.request("GET", f"/api/deployment-runs/{run_id}"))["state"] == "running"

    durable.terminate(batch_instance_id(run_id, 0), "operator")
    durable.terminate(run_id, "operator")
    operator.fire_timer("reconcile_deployment_runs")

    details = body_of(operator.request("GET", f"/api/deployment-runs/{run_id}"))
    assert details["state"] == "failed" and details["error"] == "run lost: orchestration terminated"
    assert details["running"] == 0 and details["queued"] == 0
    assert details["results"]["failed"] == 2 and details["results"]["skipped"] == 1
    machines = by_computer(details)
    for computer in ("app01", "app02"):
        assert machines[computer]["status"] == "failed" and machines[computer]["errorCode"] == "RunLost"
        assert machines[computer]["reason"].startswith("run lost (orchestration terminated) while")
    assert machines["app03"]["status"] == "skipped"
    assert machines["app03"]["reason"] == "run lost (orchestration terminated): not started"
    # Each machine's UpdateRunMachine_CL row is queued through the path every finishing machine takes.
    queued = log_outbox(load_settings()).states(UPDATE_RUN_MACHINE)
    for computer in COMPUTERS:
        assert record_id(UPDATE_RUN_MACHINE.name, run_id, vm(computer, OsType.WINDOWS).resource_id) in queued
    # The batches' journals (and what the machines' rows carry for them) are applied, as at a batch's end.
    journal = table_service(load_settings()).get_table_client(JOURNAL_TABLE)
    for batch in (0, 7):
        assert journal.get_entity(journal_key(run_id, batch), APPLIED_ROW)["AppliedAt"]

    operator.fire_timer("reconcile_deployment_runs")  # closed once: nothing changes
    assert body_of(operator.request("GET", f"/api/deployment-runs/{run_id}")) == details


def test_cancel_of_a_purged_run_closes_it_cancelled(durable, operator):
    run_id, _ = live_run(durable)
    durable.terminate(batch_instance_id(run_id, 0), "host lost")
    durable.terminate(run_id, "host lost")
    assert durable.purge(run_id) and durable.get_status(run_id) is None

    cancelled = operator.request("POST", f"/api/deployment-runs/{run_id}/cancel")
    assert cancelled.status_code == 202
    assert body_of(cancelled)["state"] == "cancelled" and body_of(cancelled)["cancelledBy"] == "olga"

    details = body_of(operator.request("GET", f"/api/deployment-runs/{run_id}"))
    assert details["error"] == "run lost: orchestration not found (purged, or lost with its host)"
    machines = by_computer(details)
    assert machines["app03"]["status"] == "cancelled"
    assert [machines[c]["status"] for c in ("app01", "app02")] == ["failed", "failed"]
    again = operator.request("POST", f"/api/deployment-runs/{run_id}/cancel")
    assert again.status_code == 409
