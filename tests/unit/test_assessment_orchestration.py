"""The assessment orchestrators, driven through the SDK's replay with stand-in activities on a virtual clock.

The orchestrator generators are the production ones (``functions.assessment.ORCHESTRATORS``);
only the activities are replaced, each steered per machine by :data:`PLAN`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import azure.durable_functions as df
import pytest

from functions import assessment, runs_api
from local.clock import VirtualClock
from local.durable import DurableRunner
from shared.assessment.messages import (
    MAX_BATCH_PART_CHARS,
    AssessmentRunInput,
    AssessmentStep,
    BatchTargets,
    MachineResult,
    TargetListing,
    machine_groups,
)
from shared.model.assessment_outcome import Compliance

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
BATCH_SIZE = 100
PART_SIZE = 40  # machines per read of a batch: a batch of 100 comes in three parts

app = df.DFApp()
for _orchestrator in assessment.ORCHESTRATORS:
    app.orchestration_trigger(context_name="context")(_orchestrator)

# Per-machine behaviour, by machine name: {"start_failures": n, "permanent": bool, "checks": n | None,
# "seconds": n (done once this long after the start, instead of at a number of checks),
# "gate": a threading.Event its checks wait for (real time: the test looks at the run meanwhile)}
PLAN: dict[str, dict[str, Any]] = {}
CALLS: dict[str, list[Any]] = defaultdict(list)  # activity:machine -> clock times of calls
FAILURES: dict[str, str] = {}  # machine -> recorded failure code
STATE: dict[str, Any] = {"machines": 0, "clock": None}
_lock = threading.Lock()


def machine_id(i: int) -> str:
    provider = "Microsoft.Compute/virtualMachines"
    return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/{provider}/vm-{i:04d}"


def _name(request: dict[str, Any]) -> str:
    return str(request["resource_id"]).rsplit("/", 1)[1]


def _called(kind: str, name: str) -> int:
    with _lock:
        CALLS[f"{kind}:{name}"].append(STATE["clock"].now())
        return len(CALLS[f"{kind}:{name}"])


@app.activity_trigger(input_name="request")
def list_assessment_targets(request: dict[str, Any]) -> dict[str, Any]:
    if _called("list", "run") <= STATE.get("list_failures", 0):
        raise RuntimeError("table storage: 503 ServerBusy")
    count = STATE["machines"]
    return TargetListing(machines=count, to_assess=count, batches=-(-count // BATCH_SIZE)).model_dump()


@app.activity_trigger(input_name="request")
def read_assessment_batch(request: dict[str, Any]) -> dict[str, Any]:
    """A batch in parts of PART_SIZE machines, as the real one cuts a batch by size."""
    if _called("read", f"batch-{request['batch']}") <= STATE.get("read_failures", 0):
        raise RuntimeError("table storage: 503 ServerBusy")
    batch_end = min((request["batch"] + 1) * BATCH_SIZE, STATE["machines"])
    first = int(request["after"]) + 1 if request.get("after") else request["batch"] * BATCH_SIZE
    last = min(first + PART_SIZE, batch_end)
    machines = tuple(json.dumps({"resource_id": machine_id(i)}) for i in range(first, last))
    return BatchTargets(machines=machines, after=str(last - 1) if last < batch_end else None).model_dump()


@app.activity_trigger(input_name="request")
def start_assessment(request: dict[str, Any]) -> dict[str, Any]:
    name = _name(request)
    plan = PLAN.get(name, {})
    calls = _called("start", name)
    if calls <= plan.get("start_failures", 0):
        raise RuntimeError(f"HTTP 429 TooManyRequests (call {calls})")
    if plan.get("permanent"):
        FAILURES[name] = "VMAgentStatusCommunicationError"
        return {"recorded": MachineResult(state="failed").model_dump()}
    return {"token": f"token-{name}"}


@app.activity_trigger(input_name="request")
def check_assessment(request: dict[str, Any]) -> dict[str, Any]:
    name = _name(request)
    assert request["token"] == f"token-{name}"
    gate = PLAN.get(name, {}).get("gate")
    if gate is not None and not gate.wait(timeout=60):
        raise RuntimeError("the test never opened the gate")
    calls = _called("check", name)
    needed = PLAN.get(name, {}).get("checks", 1)
    seconds = PLAN.get(name, {}).get("seconds")
    if seconds is not None:
        running = STATE["clock"].now() < CALLS[f"start:{name}"][-1] + timedelta(seconds=seconds)
        if running:
            return AssessmentStep(in_progress=True).model_dump()
    elif needed is None or calls < needed:
        return AssessmentStep(in_progress=True).model_dump()
    # Names ending in 0 are compliant, in 5 unknown (no classification data), the rest non-compliant.
    unknown = name.endswith("5")
    result = MachineResult(state="assessed", compliant=name.endswith("0"),
                           compliance=Compliance.UNKNOWN if unknown else None,
                           missing_by_classification={"Security Updates": 2})
    return AssessmentStep(in_progress=False, result=result).model_dump()


@app.activity_trigger(input_name="request")
def record_assessment_failure(request: dict[str, Any]) -> dict[str, Any]:
    FAILURES[_name(request)] = request["failure_code"]
    _called("record", _name(request))
    state = "timed_out" if request["failure_code"] == "AssessmentTimedOut" else "failed"
    return MachineResult(state=state).model_dump()


@app.activity_trigger(input_name="request")
def apply_inventory_journal(request: dict[str, Any]) -> dict[str, int]:
    for journal in request["journals"]:
        _called("journal", str(journal))
    return {"entries": 0}


@app.activity_trigger(input_name="request")
def send_log_rows(request: dict[str, Any]) -> dict[str, Any]:
    _called("send", "run")
    return {"sent": 0, "found": 0, "left": 0, "errors": []}


@pytest.fixture
def clock():
    return VirtualClock()


@pytest.fixture
def runner(clock):
    PLAN.clear()
    CALLS.clear()
    FAILURES.clear()
    STATE.update(machines=0, clock=clock, list_failures=0, read_failures=0)
    with DurableRunner(app, clock, activity_concurrency=8) as running:
        yield running


def run(runner, machines: int, instance_id: str = "assessment-test") -> dict[str, Any]:
    STATE["machines"] = machines
    run_input = AssessmentRunInput(trigger="test", subscription_ids=(SUBSCRIPTION,))
    runner.start_new("assessment_run", instance_id, run_input.model_dump(mode="json"))
    final = runner.wait_for_completion(instance_id, timeout=60)
    assert final["runtimeStatus"] == "Completed", final["output"]
    return final


def test_a_fleet_is_split_into_batches_and_the_master_history_stays_small(runner):
    final = run(runner, 250)
    output = final["output"]
    assert output["batches"] == 3 and output["batchesDone"] == 3
    assert output["machines"] == output["assessed"] == 250
    assert output["compliant"] == 25 and output["non_compliant"] == 200  # names ending in 0, the rest
    assert output["compliance_unknown"] == 25  # names ending in 5
    assert output["missing_by_classification"] == {"Security Updates": 500}
    assert final["customStatus"] == output  # progress is counts, never machine lists
    batches = [i for i in runner.list_instances() if i["name"] == "assessment_batch"]
    groups = [i for i in runner.list_instances() if i["name"] == "assessment_group"]
    children = [i for i in runner.list_instances() if i["name"] == "assess_machine"]
    assert len(batches) == 3 and len(groups) == 25 and len(children) == 250
    assert children[0]["instanceId"].startswith("assessment-test-")
    first_two = sorted(g["instanceId"] for g in groups)[:2]
    assert first_two == ["assessment-test-b00000-g000", "assessment-test-b00000-g001"]
    # A batch sees its ten groups, a group its ten machines: each history holds a few dozen children's
    # events, so replaying it at each child's end stays cheap (a batch of 100 direct children: 400 events).
    for instance in batches[:1] + groups[:1]:
        history = runner.get_status(instance["instanceId"], show_history=True)["historyEvents"]
        assert len(history) < 70, (instance["instanceId"], len(history))
    master = runner.get_status("assessment-test", show_history=True)["historyEvents"]
    # The master sees one activity and three batches, not 250 children: its history does not grow
    # with the fleet, so replaying it stays cheap.
    assert len(master) < 40
    assert not any(e.get("Name") == "assess_machine" for e in master)
    # The finished batches' journals are applied together (three batches: once, at the end), each
    # journal once, then the rows they queued are sent before the run ends.
    assert len(CALLS["send:run"]) == 1
    assert sorted(k for k in CALLS if k.startswith("journal:")) == [
        f"journal:assessment-test|{n:05d}" for n in range(3)
    ]


def test_a_storage_blip_at_the_start_of_a_run_is_retried_not_fatal(runner, clock):
    STATE.update(list_failures=2, read_failures=1)
    started = clock.now()
    final = run(runner, 150)
    assert final["output"]["assessed"] == 150
    gaps = [(t - started).total_seconds() for t in CALLS["list:run"]]
    assert gaps[0] == 0 and len(gaps) == 3  # retried after STORAGE_RETRY's waits
    # Batch 0 comes in three parts (PART_SIZE), batch 1 in two; each batch's first read fails once.
    assert (len(CALLS["read:batch-0"]), len(CALLS["read:batch-1"])) == (4, 3)


def test_polling_waits_with_growing_timers_until_the_assessment_is_done(runner, clock):
    PLAN["vm-0000"] = {"checks": 4}
    started = clock.now()
    final = run(runner, 1)
    assert final["output"]["assessed"] == 1
    gaps = [(t - started).total_seconds() for t in CALLS["check:vm-0000"]]
    # 60 s, then 1.5 times longer each poll: 60, 150, 285, 487.5 seconds after the start.
    assert gaps == pytest.approx([60, 150, 285, 487.5])


@pytest.mark.parametrize(("seconds", "checks"), [(20, 1), (45, 1), (120, 2), (250, 3)])
def test_an_assessment_of_a_minute_or_so_is_checked_once_and_its_history_stays_short(runner, seconds, checks):
    """The first check waits a minute (ASSESSMENT_POLL_SECONDS): an assessment takes up to minutes, and each
    check is an ARM read and eight history events, all replayed on each of the machine's wake-ups."""
    PLAN["vm-0000"] = {"seconds": seconds}
    assert run(runner, 1)["output"]["assessed"] == 1
    assert len(CALLS["check:vm-0000"]) == checks
    child = next(i for i in runner.list_instances() if i["name"] == "assess_machine")
    history = runner.get_status(child["instanceId"], show_history=True)["historyEvents"]
    # 7 events for the start and the last wake-up, then 8 per check (two wake-ups, a timer, an activity).
    assert len(history) == 7 + 8 * checks


def test_an_assessment_that_never_finishes_is_recorded_as_timed_out_at_the_deadline(runner, clock):
    PLAN["vm-0000"] = {"checks": None}
    started = clock.now()
    final = run(runner, 1)
    assert final["output"]["timed_out"] == 1 and final["output"]["assessed"] == 0
    assert FAILURES == {"vm-0000": "AssessmentTimedOut"}
    recorded_at = CALLS["record:vm-0000"][0]
    assert recorded_at - started == timedelta(minutes=30)
    # Waits grew to the cap: far fewer polls than one every 30 s for 30 minutes.
    assert len(CALLS["check:vm-0000"]) < 15


def test_transient_errors_are_retried_with_exponential_backoff_then_succeed(runner, clock):
    PLAN["vm-0000"] = {"start_failures": 3}
    started = clock.now()
    final = run(runner, 1)
    assert final["output"]["assessed"] == 1 and not FAILURES
    gaps = [(t - started).total_seconds() for t in CALLS["start:vm-0000"]]
    assert gaps == [0, 30, 90, 210]  # waits of 30, 60, 120 seconds


def test_transient_errors_that_never_stop_are_recorded_after_the_last_attempt(runner):
    PLAN["vm-0000"] = {"start_failures": 99}
    final = run(runner, 1)
    assert final["output"]["failed"] == 1
    assert FAILURES == {"vm-0000": "TransientErrorsExhausted"}
    assert len(CALLS["start:vm-0000"]) == 5  # AssessmentTuning.max_attempts


def test_a_permanent_error_is_recorded_and_the_batch_completes(runner):
    PLAN["vm-0001"] = {"permanent": True}
    final = run(runner, 5)
    output = final["output"]
    assert output["failed"] == 1 and output["assessed"] == 4 and output["machines"] == 5
    assert FAILURES == {"vm-0001": "VMAgentStatusCommunicationError"}
    assert "check:vm-0001" not in CALLS
    assert all(i["runtimeStatus"] == "Completed" for i in runner.list_instances())


class _RunnerClient:
    """What ``functions.runs_api`` reads of a Durable client, answered from the runner."""

    def __init__(self, runner: DurableRunner) -> None:
        self.runner = runner

    async def get_status(self, instance_id: str) -> Any:
        status = self.runner.get_status(instance_id)
        if status is None:
            return None
        return SimpleNamespace(runtime_status=df.OrchestrationRuntimeStatus(status["runtimeStatus"]),
                               output=status["output"], custom_status=status["customStatus"])


def test_a_running_assessment_counts_each_group_of_machines_as_it_finishes_not_each_batch(runner):
    held = threading.Event()
    PLAN["vm-0002"] = {"gate": held}  # one machine of the first batch keeps it running
    STATE["machines"] = 150
    run_input = AssessmentRunInput(trigger="test", subscription_ids=(SUBSCRIPTION,))
    runner.start_new("assessment_run", "assessment-live", run_input.model_dump(mode="json"))
    try:
        def progress() -> dict[str, Any]:
            master = runner.get_status("assessment-live")
            assert master is not None
            return asyncio.run(runs_api._live_assessment(_RunnerClient(runner), "assessment-live",
                                                         master["customStatus"]))

        deadline = time.monotonic() + 30
        while not (isinstance(live := progress(), dict) and live.get("assessed") == 140):
            assert time.monotonic() < deadline, live
            time.sleep(0.05)
        # The master has folded in only the second batch; the first is counted group by group: nine of
        # its ten groups have ended, the one holding vm-0002 has not.
        assert live["batchesDone"] == 1 and live["stage"] == "assessing"
        assert live["machines"] == 140 and live["compliant"] == 14  # names ending in 0
        batch = runner.get_status("assessment-live-b00000")
        assert batch is not None and batch["customStatus"]["assessed"] == 90
    finally:
        held.set()
    final = runner.wait_for_completion("assessment-live", timeout=60)
    assert final["output"]["assessed"] == 150


def test_a_batch_is_cut_into_groups_of_ten_machines_and_never_one_that_spills_to_a_blob():
    machines = [f'{{"resource_id": "vm-{n:04d}"}}' for n in range(25)]
    assert [len(g) for g in machine_groups(machines)] == [10, 10, 5]
    assert [m for g in machine_groups(machines) for m in g] == machines  # in order, each once
    large = "x" * (MAX_BATCH_PART_CHARS // 3 + 1)  # three of these pass the limit
    groups = machine_groups([large] * 7)
    assert [len(g) for g in groups] == [2, 2, 2, 1]
    assert all(sum(map(len, g)) <= MAX_BATCH_PART_CHARS for g in groups)
    alone = "y" * (MAX_BATCH_PART_CHARS + 1)
    assert machine_groups([alone, "z"]) == [(alone,), ("z",)]
    assert machine_groups([]) == []
