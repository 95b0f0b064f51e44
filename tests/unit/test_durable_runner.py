"""The local Durable runner drives real orchestrator code through the SDK's replay, on a virtual clock."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest

from local.clock import VirtualClock
from local.durable import (
    DurableRunner,
    DurableRunnerError,
    InstanceAlreadyRunning,
    InstanceGone,
    InvalidInstanceId,
)
from local.durable.history import EventType
from local.durable.limits import TABLE_PROPERTY_SPILL_BYTES, instance_id_problem, spill_reason
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


# --- Azure's limits -------------------------------------------------------------------------------

@pytest.mark.parametrize("instance_id, rule", [
    ("run/1", "must not contain"),
    ("run\\1", "must not contain"),
    ("run#1", "must not contain"),
    ("run?1", "must not contain"),
    ("run\n1", "must not contain"),
    ("run\x7f1", "must not contain"),
    ("@light@check", "must not start with '@'"),
    ("x" * 257, "must not exceed 256 characters"),
    ("\U0001F600" * 129, "must not exceed 256 characters"),  # .NET counts UTF-16 units: 258
])
def test_an_instance_id_azure_refuses_is_refused_with_the_rule_it_breaks(runner, instance_id, rule):
    with pytest.raises(InvalidInstanceId, match=rule) as refused:
        runner.start_new("with_status", instance_id)
    assert repr(instance_id) in str(refused.value)
    assert runner.list_instances() == []


def test_instance_ids_azure_accepts_are_accepted(runner):
    for instance_id in ("x" * 256, "é" * 256, "deploy-Patch_Tuesday.prod-20260310T0200Z", "a:b c+d=e"):
        assert instance_id_problem(instance_id) is None
        assert runner.start_new("with_status", instance_id) == instance_id


@pytest.mark.parametrize("child_id, rule", [
    ("@child", "must not start with '@'"),
    ("child/1", "must not contain"),
    ("parent-of-itself", "must be different than the instance ID of a parent"),
])
def test_a_sub_orchestration_id_azure_refuses_fails_the_caller(runner, child_id, rule):
    final = finish(runner, "child_with_id", child_id, "parent-of-itself")
    assert final["runtimeStatus"] == "Failed"
    assert final["output"].startswith("Orchestrator function 'child_with_id' failed:")
    assert rule in final["output"]
    assert [s["instanceId"] for s in runner.list_instances()] == ["parent-of-itself"]


def test_custom_status_over_16_kb_of_utf16_fails_the_orchestration(runner):
    # Azure counts floor(UTF-16 bytes / 1024) > 16: '{"blob":"..."}' of 8,692 x's is 17,406 bytes, accepted.
    accepted = finish(runner, "with_big_status", 8692, "status-fits")
    assert accepted["runtimeStatus"] == "Completed"
    assert len(accepted["customStatus"]["blob"]) == 8692
    refused = finish(runner, "with_big_status", 8693, "status-too-big")
    assert refused["runtimeStatus"] == "Failed"
    assert "must not exceed 16 KB" in refused["output"] and "it is 17 KB" in refused["output"]
    assert refused["customStatus"] is None  # Azure refuses the status: the old one stays


def test_payloads_azure_would_move_to_blobs_are_logged(runner, caplog):
    caplog.set_level("WARNING", logger="local.durable.runner")
    assert finish(runner, "echo_through_activity", "small", "echo-small")["output"] == "small"
    assert not caplog.records
    big = "x" * (TABLE_PROPERTY_SPILL_BYTES // 2)  # its JSON adds two quotes: just over 60 KB as UTF-16
    assert finish(runner, "echo_through_activity", big, "echo-big")["runtimeStatus"] == "Completed"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for what in (
        "the input of orchestration 'echo_through_activity'",
        "the input of activity 'echo'",
        "the result of activity 'echo'",
        "the output of orchestration 'echo_through_activity'",
    ):
        expected = f"instance echo-big: {what} is 61,444 bytes as UTF-16"
        assert [w for w in warnings if w.startswith(expected)], what
    assert len(warnings) == 4 and all("blob" in w for w in warnings)


def test_the_spill_thresholds_are_azures():
    assert spill_reason("x" * 30_720) is None  # 61,440 bytes as UTF-16: the table property's limit
    assert "over the 61,440 of a table property" in spill_reason("x" * 30_721)
    # Text beyond ASCII meets the queue message's 45 KB of UTF-8 first: the euro sign is 3 bytes, or 2.
    assert spill_reason("€" * 15_360) is None
    assert "46,083 bytes as UTF-8, over the 46,080 of a queue message" in spill_reason("€" * 15_361)


# --- simulated host restarts ----------------------------------------------------------------------

def history_of(runner, instance_id):
    return runner.get_status(instance_id, show_history=True)["historyEvents"]


def count_by_task(history, event_type, key):
    """How many events of one type each task id has (``key``: the field holding the task id)."""
    return Counter(e[key] for e in history if e["EventType"] == event_type)


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_restart_runs_the_in_flight_activity_again_and_keeps_the_finished_one(runner, clock):
    started = clock.now()
    instance_id = runner.start_new("two_steps", "two-1", "two-1")
    assert durable_app.ENTERED["two-1-second"].wait(5)
    durable_app.ENTERED["two-1-second"].clear()
    before = history_of(runner, instance_id)

    outcome = runner.simulate_host_restart()

    assert outcome.redelivered_tasks == ((instance_id, 1),)
    assert outcome.replayed_instances == (instance_id,) and outcome.failed_on_replay == ()
    assert history_of(runner, instance_id) == before  # replaying writes nothing
    assert durable_app.ENTERED["two-1-second"].wait(5), "the in-flight activity was not delivered again"
    assert durable_app.CALLS["two-1-second"] == 2
    durable_app.GATES["two-1-second run 1"].set()  # the dead host's run ends first: its result is lost
    assert durable_app.LEFT["two-1-second run 1"].wait(5)
    durable_app.GATES["two-1-second run 2"].set()
    final = runner.wait_for_completion(instance_id, timeout=5)
    assert final["runtimeStatus"] == "Completed"
    assert final["output"] == ["two-1-first run 1", "two-1-second run 2"]
    assert durable_app.CALLS["two-1-first"] == 1
    history = history_of(runner, instance_id)
    assert count_by_task(history, EventType.TASK_SCHEDULED, "EventId") == {0: 1, 1: 1}
    assert count_by_task(history, EventType.TASK_COMPLETED, "TaskScheduledId") == {0: 1, 1: 1}
    assert clock.now() == started


def test_restart_mid_fan_out_creates_no_child_twice_and_keeps_the_timer(runner, clock):
    started = clock.now()
    plan = {"key": "paced", "count": 4, "pause_hours": 1}
    parent_id = runner.start_new("paced_fan_out", "paced", plan)
    keys = [f"paced-{i}" for i in range(4)]
    for key in keys:
        assert durable_app.ENTERED[key].wait(5)
    for key in keys[:2]:
        durable_app.GATES[f"{key} run 1"].set()
    wait_until(lambda: len(count_by_task(
        history_of(runner, parent_id), EventType.SUB_ORCHESTRATION_COMPLETED, "TaskScheduledId"
    )) == 2)
    children = sorted(s["instanceId"] for s in runner.list_instances() if s["instanceId"] != parent_id)
    first_executions = {child: history_of(runner, child)[1]["OrchestrationInstance"] for child in children}
    unfinished = {s["instanceId"] for s in runner.list_instances("Running")} - {parent_id}
    assert len(unfinished) == 2
    for key in keys[2:]:
        durable_app.ENTERED[key].clear()

    outcome = runner.simulate_host_restart()

    assert len(outcome.redelivered_tasks) == 2 and outcome.failed_on_replay == ()
    assert set(outcome.replayed_instances) == {parent_id, *unfinished}  # ended children need no replay
    for key in keys[2:]:
        assert durable_app.ENTERED[key].wait(5)
        durable_app.GATES[f"{key} run 1"].set()
        durable_app.GATES[f"{key} run 2"].set()
    final = runner.wait_for_completion(parent_id, timeout=5)
    assert final["runtimeStatus"] == "Completed"
    assert final["output"] == {
        "results": ["paced-0 run 1", "paced-1 run 1", "paced-2 run 2", "paced-3 run 2"],
        "resumed_at": (started + HOUR).isoformat(),  # the timer kept its fire time
    }
    assert [durable_app.CALLS[key] for key in keys] == [1, 1, 2, 2]
    assert clock.now() - started == HOUR
    assert len(runner.list_instances()) == 5
    for child in children:
        child_history = history_of(runner, child)
        assert sum(1 for e in child_history if e["EventType"] == EventType.EXECUTION_STARTED) == 1
        assert child_history[1]["OrchestrationInstance"] == first_executions[child]  # the same execution
        assert runner.get_status(child)["runtimeStatus"] == "Completed"
    history = history_of(runner, parent_id)
    created = [e for e in history if e["EventType"] == EventType.SUB_ORCHESTRATION_CREATED]
    assert sorted(e["InstanceId"] for e in created) == children
    child_tasks = {e["EventId"]: 1 for e in created}
    assert count_by_task(history, EventType.SUB_ORCHESTRATION_COMPLETED, "TaskScheduledId") == child_tasks
    timer_tasks = count_by_task(history, EventType.TIMER_CREATED, "EventId")
    assert len(timer_tasks) == 1 and set(timer_tasks.values()) == {1}
    assert count_by_task(history, EventType.TIMER_FIRED, "TimerId") == timer_tasks


def test_restart_during_a_retry_wait_keeps_the_retry_timer(runner, clock):
    started = clock.now()
    plan = {"key": "retry-restart", "fail_times": 1, "interval_ms": 300_000, "attempts": 3}
    with runner.hold_clock():
        instance_id = runner.start_new("retrying", "retry-restart", plan)
        runner.run_until_idle(5)  # the first attempt failed; the retry timer waits on the held clock
        outcome = runner.simulate_host_restart()
    assert outcome.redelivered_tasks == () and outcome.replayed_instances == (instance_id,)
    final = runner.wait_for_completion(instance_id, timeout=5)
    assert final["output"] == {"calls": 2}
    assert clock.now() - started == timedelta(minutes=5)


def test_code_that_changed_fails_on_the_replay_after_a_restart(runner):
    instance_id = runner.start_new("drifting", "drift-restart")
    assert durable_app.ENTERED["drift"].wait(5)
    durable_app.DRIFT["enabled"] = True  # a deployment changed the code while the activity ran

    outcome = runner.simulate_host_restart()

    assert outcome.failed_on_replay == (instance_id,)
    status = runner.get_status(instance_id)
    assert status["runtimeStatus"] == "Failed"
    assert status["output"].startswith("NonDeterminismError")
    assert "task 0" in status["output"] and "'renamed_step'" in status["output"]


def test_restart_with_nothing_running_changes_nothing(runner, clock):
    assert runner.simulate_host_restart().replayed_instances == ()  # no instances at all
    done_id = finish(runner, "sleeper", 2, "slept")["instanceId"]
    waiting_id = runner.start_new("with_status", "waiting")
    runner.run_until_idle(5)
    at = clock.now()
    before = {i: (runner.get_status(i), history_of(runner, i)) for i in (done_id, waiting_id)}

    for _ in range(2):
        outcome = runner.simulate_host_restart()
        assert outcome.redelivered_tasks == () and outcome.failed_on_replay == ()
        assert outcome.replayed_instances == (waiting_id,)

    runner.run_until_idle(5)
    assert {i: (runner.get_status(i), history_of(runner, i)) for i in (done_id, waiting_id)} == before
    assert clock.now() == at
    runner.raise_event(waiting_id, "go", "after restarts")
    assert runner.wait_for_completion(waiting_id, timeout=5)["output"] == "after restarts"


def test_a_runner_that_is_not_started_has_no_host_to_restart(clock):
    with pytest.raises(DurableRunnerError, match="not started"):
        DurableRunner(durable_app.app, clock).simulate_host_restart()
