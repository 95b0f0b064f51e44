"""The local Durable runner with its task hub in Azurite tables: a second runner on the same tables takes
over every live instance from storage alone (local/durable/store.py). The kill tests in
tests/e2e/test_host_kill.py do the same with a real host process killed by SIGKILL."""

from __future__ import annotations

import uuid

import pytest
from azure.data.tables import TableServiceClient

from local.clock import VirtualClock
from local.durable import DurableRunner
from local.durable.store import TableStore
from tests.unit import durable_app


@pytest.fixture
def hub(azurite):
    durable_app.reset()
    name = "Hub" + uuid.uuid4().hex[:12]
    yield name
    for gate in durable_app.GATES.values():
        gate.set()


def _crash(runner: DurableRunner) -> None:
    """What SIGKILL leaves: storage as it is now; nothing the old runner does later reaches it."""
    with runner._cond:
        runner._store = None
        runner._activity_runs.clear()
    runner.stop()


def test_ended_instances_read_back_from_the_tables(azurite, hub):
    clock = VirtualClock()
    with DurableRunner(durable_app.app, clock, store=TableStore(azurite.connection_string, hub)) as first:
        first.start_new("fan_out", "fan", 12)
        assert first.wait_for_completion("fan", 10)["output"] == [i * 2 for i in range(12)]
    with DurableRunner(durable_app.app, clock, store=TableStore(azurite.connection_string, hub)) as second:
        status = second.get_status("fan", show_history=True)
        assert status and status["runtimeStatus"] == "Completed"
        assert status["output"] == [i * 2 for i in range(12)]
        children = [s for s in second.list_instances("Completed") if s["instanceId"].startswith("fan:")]
        assert len(children) == 12
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    tables = {t.name for t in service.list_tables()}
    assert {f"{hub}Instances", f"{hub}History"} <= tables


def test_a_new_runner_resumes_activities_timers_events_and_retries_left_by_a_crashed_one(azurite, hub):
    clock = VirtualClock()
    first = DurableRunner(durable_app.app, clock, store=TableStore(azurite.connection_string, hub)).start()
    with first.hold_clock():
        first.start_new("gate_then_wait", "gated-1", "crash")
        first.start_new("sleeper", "sleep-1", 2)
        first.start_new("approval", "approve-1", 5)
        plan = {"key": "r", "fail_times": 1, "interval_ms": 1000, "attempts": 3}
        first.start_new("retrying", "retry-1", plan)
        first.start_new("fan_out", "fan-2", 30)
        assert durable_app.ENTERED["crash"].wait(5)  # the activity is running when the host dies
        first.raise_event("approve-1", "approval", "yes")
        _crash(first)
    durable_app.ENTERED["crash"].clear()
    second = DurableRunner(durable_app.app, clock, store=TableStore(azurite.connection_string, hub)).start()
    try:
        assert durable_app.ENTERED["crash"].wait(5), "the activity in flight at the crash runs again"
        durable_app.GATES["crash"].set()
        second.raise_event("gated-1", "go", 7)
        assert second.wait_for_completion("gated-1", 10)["output"] == 7
        assert second.wait_for_completion("sleep-1", 10)["runtimeStatus"] == "Completed"
        assert second.wait_for_completion("approve-1", 10)["runtimeStatus"] == "Completed"
        assert second.wait_for_completion("retry-1", 10)["runtimeStatus"] == "Completed"
        fan = second.wait_for_completion("fan-2", 10)
        assert fan["output"] == [i * 2 for i in range(30)]
    finally:
        second.stop()
