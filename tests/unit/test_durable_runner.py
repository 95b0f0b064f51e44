"""The local Durable runner drives real orchestrator code through the SDK's replay, on a virtual clock."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from local.clock import VirtualClock
from local.durable import DurableRunner, InstanceAlreadyRunning, InstanceGone
from tests.unit import durable_app

HOUR = timedelta(hours=1)


@pytest.fixture
def clock():
    return VirtualClock()


@pytest.fixture
def runner(clock):
    durable_app.reset()
    with DurableRunner(durable_app.app, clock, activity_concurrency=8) as running:
        yield running
    for gate in durable_app.GATES.values():
        gate.set()  # never leave an activity thread blocked


def finish(runner, name, input=None, instance_id=None):
    instance_id = runner.start_new(name, instance_id, input)
    return runner.wait_for_completion(instance_id, timeout=10)


def test_fan_out_of_sub_orchestrations_aggregates_in_input_order(runner):
    final = finish(runner, "fan_out", 50, "fan")
    assert final["runtimeStatus"] == "Completed"
    assert final["output"] == [i * 2 for i in range(50)]
    assert sorted(durable_app.COMPLETION_ORDER) == list(range(50))
    in_order = list(range(50))
    assert in_order != durable_app.COMPLETION_ORDER, "completions should arrive out of order"
    children = [s for s in runner.list_instances("Completed") if s["instanceId"].startswith("fan:")]
    assert len(children) == 50  # derived child ids: {parent}:{task id}


def test_changed_code_on_replay_fails_loudly_naming_the_task(runner):
    instance_id = runner.start_new("drifting", "drift-1")
    assert durable_app.ENTERED["drift"].wait(5)
    durable_app.DRIFT["enabled"] = True  # the code now asks for another activity at task 0
    durable_app.GATES["drift"].set()
    final = runner.wait_for_completion(instance_id, timeout=10)
    assert final["runtimeStatus"] == "Failed"
    message = final["output"]
    assert message.startswith("NonDeterminismError")
    assert "'drift-1'" in message and "task 0" in message
    assert "'gated'" in message and "'renamed_step'" in message


def test_retries_wait_on_the_clock_then_succeed(runner, clock):
    started = clock.now()
    plan = {"key": "ok", "fail_times": 2, "interval_ms": 300_000, "attempts": 3}
    final = finish(runner, "retrying", plan)
    assert final["output"] == {"calls": 3}
    assert clock.now() - started == timedelta(minutes=10)  # two waits of the first retry interval


def test_exhausted_retries_reach_the_orchestrator(runner, clock):
    started = clock.now()
    plan = {"key": "never", "fail_times": 99, "interval_ms": 60_000, "attempts": 2}
    final = finish(runner, "retrying", plan)
    assert durable_app.CALLS["never"] == 2
    assert "transient failure number 2" in final["output"]["error"]
    # DTFx (and the SDK) wait one interval after the last failed attempt too.
    assert clock.now() - started == timedelta(minutes=2)


def test_sub_orchestration_retries_reuse_the_given_instance_id(runner):
    plan = {"key": "child", "fail_times": 1, "interval_ms": 1000, "attempts": 3}
    final = finish(runner, "retrying_child", plan)
    assert final["output"] == 2
    assert runner.get_status("retry-child")["runtimeStatus"] == "Completed"


def test_six_hour_timer_takes_no_real_time(runner, clock):
    started, wall = clock.now(), time.monotonic()
    final = finish(runner, "sleeper", 6)
    assert time.monotonic() - wall < 1.0
    assert clock.now() - started == 6 * HOUR
    assert final["output"] == (started + 6 * HOUR).isoformat()


def test_waiting_orchestration_completes_when_the_event_arrives(runner):
    instance_id = runner.start_new("with_status", "status-1")
    runner.run_until_idle(5)
    waiting = runner.get_status(instance_id)
    assert waiting["runtimeStatus"] == "Running"
    assert waiting["customStatus"] == {"stage": "waiting"}
    runner.raise_event(instance_id, "go", {"by": "rita"})
    final = runner.wait_for_completion(instance_id, timeout=5)
    assert final["output"] == {"by": "rita"}
    assert final["customStatus"] == {"stage": "done"}


def test_event_raised_before_the_wait_is_kept(runner):
    instance_id = runner.start_new("gate_then_wait", "early", "early-gate")
    assert durable_app.ENTERED["early-gate"].wait(5)
    runner.raise_event(instance_id, "go", "came early")  # the orchestrator is still in its activity
    durable_app.GATES["early-gate"].set()
    assert runner.wait_for_completion(instance_id, timeout=5)["output"] == "came early"


def test_event_beats_the_timeout_timer(runner, clock):
    started = clock.now()
    with runner.hold_clock():
        instance_id = runner.start_new("approval", "approve-1", 24)
        runner.run_until_idle(5)
        runner.raise_event(instance_id, "approval", "yes")
        final = runner.wait_for_completion(instance_id, timeout=5)
    assert final["output"] == {"decision": "yes"}
    assert clock.now() == started
    runner.run_until_idle(5)  # the cancelled timer keeps nothing alive and moves no time
    assert clock.now() == started


def test_timeout_timer_beats_a_missing_event(runner, clock):
    started = clock.now()
    final = finish(runner, "approval", 24, "approve-2")
    assert final["output"] == {"timed_out": True}
    assert clock.now() - started == 24 * HOUR


def test_continue_as_new_restarts_with_fresh_history_until_done(runner):
    final = finish(runner, "counter", 0, "counter-1")
    assert final["runtimeStatus"] == "Completed"
    assert final["output"] == 5
    assert durable_app.CALLS["tick"] == 6  # inputs 0..5: five continuations and the last run
    history = runner.get_status("counter-1", show_history=True)["historyEvents"]
    assert sum(1 for e in history if e["EventType"] == 0) == 1  # only the last execution's history


def test_terminate_ends_the_instance_and_ignores_later_work(runner):
    instance_id = runner.start_new("with_status", "stop-me")
    runner.run_until_idle(5)
    runner.terminate(instance_id, "no longer needed")
    status = runner.get_status(instance_id)
    assert status["runtimeStatus"] == "Terminated"
    assert status["output"] == "no longer needed"
    with pytest.raises(InstanceGone):
        runner.raise_event(instance_id, "go", 1)
    runner.start_new("with_status", instance_id)  # an ended id can be reused
    with pytest.raises(InstanceAlreadyRunning):
        runner.start_new("with_status", instance_id)


def test_activity_concurrency_limit_is_respected(clock):
    durable_app.reset()
    with DurableRunner(durable_app.app, clock, activity_concurrency=3) as limited:
        final = finish(limited, "crowd", 20)
    assert final["output"] == "done"
    assert durable_app.CONCURRENCY["peak"] == 3


def test_failing_activity_is_an_exception_the_orchestrator_can_catch(runner):
    final = finish(runner, "catches_failure")
    assert final["runtimeStatus"] == "Completed"
    assert "boom on purpose" in final["output"] and final["output"].startswith("caught: ")


def test_uncaught_failure_fails_the_instance_with_a_readable_error(runner):
    final = finish(runner, "uncaught_failure")
    assert final["runtimeStatus"] == "Failed"
    assert final["output"].startswith("Orchestrator function 'uncaught_failure' failed:")
    assert "boom unhandled" in final["output"]
    assert "$OutOfProcData$" not in final["output"]


def test_sub_orchestration_failure_reaches_the_parent(runner):
    final = finish(runner, "parent_of_failure", None, "parent")
    assert final["runtimeStatus"] == "Completed"
    assert "child failed:" in final["output"] and "boom unhandled" in final["output"]
    assert runner.get_status("parent-child")["runtimeStatus"] == "Failed"


def test_unknown_orchestrator_and_purge(runner):
    with pytest.raises(ValueError, match="no orchestrator function named 'nope'"):
        runner.start_new("nope")
    instance_id = runner.start_new("with_status", "purge-me")
    runner.run_until_idle(5)
    runner.terminate(instance_id, "done")
    assert runner.purge(instance_id) is True
    assert runner.get_status(instance_id) is None
