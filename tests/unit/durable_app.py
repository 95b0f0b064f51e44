"""A small DFApp for the Durable runner's tests: one orchestrator per behaviour under test.

Module-level state (gates, counters, the drift flag) lets a test steer activities from outside;
tests reset it through :func:`reset`.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any

import azure.durable_functions as df

app = df.DFApp()

DRIFT = {"enabled": False}
GATES: dict[str, threading.Event] = defaultdict(threading.Event)
ENTERED: dict[str, threading.Event] = defaultdict(threading.Event)
LEFT: dict[str, threading.Event] = defaultdict(threading.Event)
CALLS: dict[str, int] = defaultdict(int)
COMPLETION_ORDER: list[int] = []
CONCURRENCY = {"active": 0, "peak": 0}
_lock = threading.Lock()


def reset() -> None:
    DRIFT["enabled"] = False
    GATES.clear()
    ENTERED.clear()
    LEFT.clear()
    CALLS.clear()
    COMPLETION_ORDER.clear()
    CONCURRENCY.update(active=0, peak=0)


# --- fan-out through sub-orchestrations -----------------------------------------------------------

@app.orchestration_trigger(context_name="context")
def fan_out(context: df.DurableOrchestrationContext) -> Any:
    count = context.get_input()
    results = yield context.task_all([context.call_sub_orchestrator("double_child", i) for i in range(count)])
    return results


@app.orchestration_trigger(context_name="context")
def double_child(context: df.DurableOrchestrationContext) -> Any:
    return (yield context.call_activity("slow_double", context.get_input()))


@app.activity_trigger(input_name="value")
def slow_double(value: int) -> int:
    # A spread of delays makes completions arrive in an order unrelated to the input order.
    time.sleep(((value * 37) % 50) / 2000)
    with _lock:
        COMPLETION_ORDER.append(value)
    return value * 2


# --- determinism ----------------------------------------------------------------------------------

@app.orchestration_trigger(context_name="context")
def drifting(context: df.DurableOrchestrationContext) -> Any:
    # Deliberately wrong: reads module state, so a replay can ask for a different activity.
    first = yield context.call_activity("renamed_step" if DRIFT["enabled"] else "gated", "drift")
    return first


@app.activity_trigger(input_name="key")
def gated(key: str) -> str:
    ENTERED[key].set()
    if not GATES[key].wait(timeout=10):
        raise TimeoutError(f"gate {key!r} was never opened")
    return f"passed {key}"


@app.activity_trigger(input_name="key")
def renamed_step(key: str) -> str:
    return key


# --- retries --------------------------------------------------------------------------------------

@app.orchestration_trigger(context_name="context")
def retrying(context: df.DurableOrchestrationContext) -> Any:
    plan = context.get_input()
    options = df.RetryOptions(plan["interval_ms"], plan["attempts"])
    try:
        calls = yield context.call_activity_with_retry("flaky", options, plan)
    except Exception as error:  # noqa: BLE001 - the point is to see the final failure
        return {"error": str(error)}
    return {"calls": calls}


@app.activity_trigger(input_name="plan")
def flaky(plan: dict[str, Any]) -> int:
    with _lock:
        CALLS[plan["key"]] += 1
        calls = CALLS[plan["key"]]
    if calls <= plan["fail_times"]:
        raise RuntimeError(f"transient failure number {calls}")
    return calls


@app.orchestration_trigger(context_name="context")
def retrying_child(context: df.DurableOrchestrationContext) -> Any:
    plan = context.get_input()
    options = df.RetryOptions(plan["interval_ms"], plan["attempts"])
    return (yield context.call_sub_orchestrator_with_retry("flaky_child", options, plan, "retry-child"))


@app.orchestration_trigger(context_name="context")
def flaky_child(context: df.DurableOrchestrationContext) -> Any:
    return (yield context.call_activity("flaky", context.get_input()))


# --- timers and external events -------------------------------------------------------------------

@app.orchestration_trigger(context_name="context")
def sleeper(context: df.DurableOrchestrationContext) -> Any:
    hours = context.get_input()
    yield context.create_timer(context.current_utc_datetime + timedelta(hours=hours))
    return context.current_utc_datetime.isoformat()


@app.orchestration_trigger(context_name="context")
def approval(context: df.DurableOrchestrationContext) -> Any:
    decision = context.wait_for_external_event("approval")
    timeout = context.create_timer(context.current_utc_datetime + timedelta(hours=context.get_input()))
    winner = yield context.task_any([decision, timeout])
    if winner == decision:
        timeout.cancel()
        return {"decision": decision.result}
    return {"timed_out": True}


@app.orchestration_trigger(context_name="context")
def gate_then_wait(context: df.DurableOrchestrationContext) -> Any:
    yield context.call_activity("gated", context.get_input())
    return (yield context.wait_for_external_event("go"))


@app.orchestration_trigger(context_name="context")
def with_status(context: df.DurableOrchestrationContext) -> Any:
    context.set_custom_status({"stage": "waiting"})
    data = yield context.wait_for_external_event("go")
    context.set_custom_status({"stage": "done"})
    return data


# --- continue-as-new ------------------------------------------------------------------------------

@app.orchestration_trigger(context_name="context")
def counter(context: df.DurableOrchestrationContext) -> Any:
    value = context.get_input()
    yield context.call_activity("tick", value)
    if value < 5:
        context.continue_as_new(value + 1)
        return None
    return value


@app.activity_trigger(input_name="value")
def tick(value: int) -> int:
    with _lock:
        CALLS["tick"] += 1
    return value


# --- concurrency and failures ---------------------------------------------------------------------

@app.orchestration_trigger(context_name="context")
def crowd(context: df.DurableOrchestrationContext) -> Any:
    yield context.task_all([context.call_activity("tracked", i) for i in range(context.get_input())])
    return "done"


@app.activity_trigger(input_name="value")
async def tracked(value: int) -> int:
    with _lock:
        CONCURRENCY["active"] += 1
        CONCURRENCY["peak"] = max(CONCURRENCY["peak"], CONCURRENCY["active"])
    time.sleep(0.02)
    with _lock:
        CONCURRENCY["active"] -= 1
    return value


@app.orchestration_trigger(context_name="context")
def catches_failure(context: df.DurableOrchestrationContext) -> Any:
    try:
        yield context.call_activity("boom", "on purpose")
    except Exception as error:  # noqa: BLE001 - the orchestrator handles the activity's failure
        return f"caught: {error}"
    return "not reached"


@app.orchestration_trigger(context_name="context")
def uncaught_failure(context: df.DurableOrchestrationContext) -> Any:
    yield context.call_activity("boom", "unhandled")
    return "not reached"


@app.orchestration_trigger(context_name="context")
def parent_of_failure(context: df.DurableOrchestrationContext) -> Any:
    try:
        yield context.call_sub_orchestrator("uncaught_failure", None, f"{context.instance_id}-child")
    except Exception as error:  # noqa: BLE001 - the sub-orchestration's failure reaches the parent
        return f"child failed: {error}"
    return "not reached"


@app.activity_trigger(input_name="value")
def boom(value: str) -> None:
    raise ValueError(f"boom {value}")


# --- host restarts --------------------------------------------------------------------------------

def _count_run(key: str) -> int:
    with _lock:
        CALLS[key] += 1
        return CALLS[key]


@app.orchestration_trigger(context_name="context")
def two_steps(context: df.DurableOrchestrationContext) -> Any:
    key = context.get_input()
    first = yield context.call_activity("counted", f"{key}-first")
    second = yield context.call_activity("counted_gated", f"{key}-second")
    return [first, second]


@app.activity_trigger(input_name="key")
def counted(key: str) -> str:
    return f"{key} run {_count_run(key)}"


@app.activity_trigger(input_name="key")
def counted_gated(key: str) -> str:
    # Each run has its own gate, named like its result, so a test can choose which run ends first
    # and tell whose result reached history.
    run_name = f"{key} run {_count_run(key)}"
    ENTERED[key].set()
    try:
        if not GATES[run_name].wait(timeout=10):
            raise TimeoutError(f"gate {run_name!r} was never opened")
        return run_name
    finally:
        LEFT[run_name].set()


@app.orchestration_trigger(context_name="context")
def paced_fan_out(context: df.DurableOrchestrationContext) -> Any:
    plan = context.get_input()
    pause = context.create_timer(context.current_utc_datetime + timedelta(hours=plan["pause_hours"]))
    children = [
        context.call_sub_orchestrator("gated_child", f"{plan['key']}-{i}") for i in range(plan["count"])
    ]
    results = yield context.task_all(children)
    yield pause
    return {"results": results, "resumed_at": context.current_utc_datetime.isoformat()}


@app.orchestration_trigger(context_name="context")
def gated_child(context: df.DurableOrchestrationContext) -> Any:
    return (yield context.call_activity("counted_gated", context.get_input()))


# --- Azure's limits -------------------------------------------------------------------------------

@app.orchestration_trigger(context_name="context")
def with_big_status(context: df.DurableOrchestrationContext) -> Any:
    context.set_custom_status({"blob": "x" * context.get_input()})
    return "status set"


@app.orchestration_trigger(context_name="context")
def child_with_id(context: df.DurableOrchestrationContext) -> Any:
    return (yield context.call_sub_orchestrator("double_child", 1, context.get_input()))


@app.orchestration_trigger(context_name="context")
def echo_through_activity(context: df.DurableOrchestrationContext) -> Any:
    return (yield context.call_activity("echo", context.get_input()))


@app.activity_trigger(input_name="text")
def echo(text: str) -> str:
    return text
