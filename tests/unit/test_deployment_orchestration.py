"""The update-deployment orchestrators, replayed by the SDK with stand-in activities on a virtual clock.

The orchestrator generators are the production ones (``functions.deployments.ORCHESTRATORS``);
only the activities are replaced. The run's table (run row, machine rows, the rollout gate) is held
in memory by :class:`RunTable`, which follows ``RunStore.claim`` / ``finish_machine`` / ``complete``
with the real gate (``next_to_start``) and the real ``RunRecord``; each machine's steps are steered
by :data:`PLAN` and answer what ``shared.deployments.steps`` answers (``StepAnswer`` / ``StepOutcome``,
install statuses by the real ``machine_result_status``).
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import azure.durable_functions as df
import pytest

from functions import deployments
from local.clock import VirtualClock
from local.durable import DurableRunner
from local.durable.history import EventType
from shared.deployments.definition import DeploymentDefinition, validate_definition
from shared.deployments.messages import (
    MAX_INSTALL_CALLS,
    BatchMachines,
    BatchMachinesRead,
    ClaimInput,
    ClaimResult,
    DeploymentRunInput,
    DeploymentTuning,
    FinishInput,
    ResolveInput,
    RunPlan,
    StepAnswer,
    StepFailure,
    StepInput,
    StepOutcome,
)
from shared.deployments.results import MachineResultStatus, machine_result_status
from shared.deployments.rollout import (
    REASON_CANCELLED,
    REASON_ERROR_BUDGET,
    REASON_HEALTH_GATE,
    REASON_WINDOW_CLOSING,
    may_reboot,
    next_to_start,
)
from shared.deployments.runs_table import BUDGET_STATUSES, FINAL_STATES, MachineState, RunRecord, RunState
from shared.model.install_outcome import InstallOutcome
from shared.safety.checks import CheckResult, HealthCheckAnswer, HealthCheckInput
from shared.safety.messages import PointSummary, RestoreSummary, RollbackAnswer, SnapshotAnswer
from shared.settings import Settings, load_settings
from tests.unit.test_settings import VALID as VALID_SETTINGS

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
RUN_ID = "deploy-patch-test-now-20260113T020000Z-abc123"
RESTART_ONLY = "RebootOnly"  # the reboot setting the resolver turns into RunPlan.restart_only
SUCCEEDED = MachineResultStatus.SUCCEEDED.value

app = df.DFApp()
for _orchestrator in deployments.ORCHESTRATORS:
    app.orchestration_trigger(context_name="context")(_orchestrator)

# Per-machine behaviour, by machine name (all optional):
#   pending: int                  updates the pre-scan finds (default 3)
#   service_pack: bool            the pre-scan finds a service pack
#   minutes: {step: minutes}      how long a step runs on the machine (defaults in STEP_MINUTES)
#   installs: [ {installed, failed, pending, exceeded}, ... ]   one result per install call
#   fail: {step: StepFailure fields}   the step's start answers a permanent failure
#   start_raises / check_raises: {step, ...}   the activity raises (a transient error) every time
PLAN: dict[str, dict[str, Any]] = {}
STEP_MINUTES = {"prescan": 5, "install1": 25, "install2": 25, "postscan": 5, "restart": 5}
# Coarser polling than DeploymentTuning's defaults keeps histories, and so each replay, short: a step
# is checked 5, 12.5 and 22.5 minutes after it starts, then every 10 minutes, so with the minutes
# above a machine pre-scans until 5, installs until 37.5 and post-scans until 42.5 minutes.
# Transient-error retries keep their defaults (max_attempts 5, backoff_seconds 30).
# Installs of 3 h 55 min are checked up to every 30 minutes (seen done at 251 min when started at 5).
LONG_POLL = 1800
TUNING = {"poll_seconds": 300, "max_poll_seconds": 600, "slot_poll_seconds": 600, "progress_seconds": 600,
          "max_progress_seconds": 3600}
# Test-wide switches: resolve_error (str), cancel_at_step (the first start of that step on any
# machine is when the operator cancels), lose_claim_answers (claims that commit, then raise).
STATE: dict[str, Any] = {}
CALLS: dict[str, list[datetime]] = defaultdict(list)  # "activity:step:machine" -> clock times of calls
TOKENS: dict[str, list[str]] = defaultdict(list)  # machine -> steps started (a token was handed out)
FINISHED: dict[str, FinishInput] = {}  # machine -> the result it ended with, as its batch recorded it
_lock = threading.Lock()


def machine_id(i: int) -> str:
    provider = "Microsoft.Compute/virtualMachines"
    return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/{provider}/vm-{i:04d}"


def _name(resource_id: str) -> str:
    return resource_id.rsplit("/", 1)[1]


# --- the run's table, in memory ---------------------------------------------------------------------


@dataclass
class MachineRow:
    resource_id: str
    batch: int
    state: str = MachineState.QUEUED.value
    reason: str = ""
    started_at: datetime | None = None


class RunTable:
    """One run's row and machine rows, changed as ``RunStore`` changes them; the lock stands for the
    ETag-guarded transaction that makes each claim and finish atomic."""

    def __init__(self) -> None:
        self.run: RunRecord | None = None
        self.rows: dict[str, MachineRow] = {}
        self.peak_running = 0
        self.lock = threading.Lock()

    def create(self, definition: DeploymentDefinition, created: datetime) -> None:
        self.rows = {}
        self.peak_running = 0
        self.run = RunRecord(
            run_id=RUN_ID, deployment_name=definition.name, trigger="http", state=RunState.QUEUED,
            definition=definition, created=created, window_start=None,
            window_minutes=definition.maintenance_window_minutes,
        )  # fmt: skip

    def record(self) -> RunRecord:
        assert self.run is not None, "create the run first"
        return self.run

    def resolve(self, request: ResolveInput, machines: list[str], error: str | None) -> RunPlan:
        with self.lock:
            run = self.record()
            if error is not None:  # RunStore.fail
                self.run = replace(run, state=RunState.FAILED, error=error, finished=request.at)
                return RunPlan(error=error)
            if run.state is RunState.QUEUED:  # a retried resolve leaves a resolved run alone
                ordered = sorted(machines, key=str.lower)
                self.rows = {rid: MachineRow(rid, i // request.batch_size) for i, rid in enumerate(ordered)}
                window_start = run.window_start or request.at
                run = self.run = replace(run, state=RunState.RUNNING, window_start=window_start,
                                         targets=len(ordered), to_run=len(ordered))
            setting = run.definition.reboot_setting
            return RunPlan(
                targets=run.targets, to_run=run.to_run, batches=-(-run.to_run // request.batch_size),
                settled=run.targets - run.to_run, window_start=run.window_start,
                window_minutes=run.window_minutes, reboot=may_reboot(setting),
                restart_only=setting == RESTART_ONLY,
            )  # fmt: skip

    def batch(self, batch: int) -> list[str]:
        with self.lock:
            return sorted(rid for rid, row in self.rows.items() if row.batch == batch)

    def claim(self, request: ClaimInput) -> ClaimResult:
        """``RunStore.claim``: the real gate over the run's counters, one atomic change."""
        with self.lock:
            run = self.record()
            rows = [self.rows[rid] for rid in request.resource_ids]
            again = tuple(r.resource_id for r in rows if r.state == MachineState.RUNNING.value)
            queue = [r.resource_id for r in rows if r.state == MachineState.QUEUED.value]
            decision = next_to_start(run.rollout_state(), run.definition.rollout, run.window, request.at,
                                     queue, reboot=may_reboot(run.definition.reboot_setting))
            if not decision.start and not decision.stopped:
                return ClaimResult(start=again)
            for rid in decision.start:
                self.rows[rid].state, self.rows[rid].started_at = MachineState.RUNNING.value, request.at
            run = replace(run, started=run.started + len(decision.start),
                          running=run.running + len(decision.start))
            if decision.stop_reason is not None:
                status = (MachineResultStatus.CANCELLED if decision.stop_reason == REASON_CANCELLED
                          else MachineResultStatus.SKIPPED)
                for rid in decision.not_started:
                    self.rows[rid].state, self.rows[rid].reason = status.value, decision.stop_reason
                stopped = len(decision.not_started)
                counts = {**run.counts, status.value: run.counts.get(status.value, 0) + stopped}
                run = replace(run, counts=counts, to_run=run.to_run - stopped,
                              stop_reason=run.stop_reason or decision.stop_reason)
            self.run = run
            self.peak_running = max(self.peak_running, run.running)
            return ClaimResult(start=again + decision.start, stop_reason=decision.stop_reason,
                               not_started=decision.not_started)

    def finish(self, request: FinishInput) -> None:
        """``RunStore.finish_machine``: record once, free the slot, charge the error budget."""
        with self.lock:
            row = self.rows[request.resource_id]
            if row.state in FINAL_STATES:
                return
            run = self.record()
            status = MachineResultStatus(request.status)
            was_running = row.state == MachineState.RUNNING.value
            row.state, row.reason = status.value, request.reason
            self.run = replace(
                run, counts={**run.counts, status.value: run.counts.get(status.value, 0) + 1},
                running=run.running - (1 if was_running else 0),
                failed=run.failed + (1 if status in BUDGET_STATUSES else 0),
                health_failed=run.health_failed + (request.resource_id in STATE.get("health_failed", ())),
                to_run=run.to_run - (0 if was_running else 1),
            )  # fmt: skip

    def request_cancel(self, by: str) -> None:
        with self.lock:
            run = self.record()
            if not run.cancel_requested and run.state is RunState.RUNNING:
                self.run = replace(run, cancel_requested=True, cancelled_by=by)

    def complete(self, at: datetime) -> None:
        with self.lock:
            run = self.record()
            if run.state is RunState.RUNNING:
                state = RunState.CANCELLED if run.cancel_requested else RunState.COMPLETED
                self.run = replace(run, state=state, finished=at)

    def progress(self) -> dict[str, Any]:
        """What ``complete_deployment_run`` answers."""
        with self.lock:
            run = self.record().to_json()
        keys = ("state", "machines", "started", "running", "queued", "results", "stopReason",
                "cancelRequested", "windowStart", "windowEnd")
        return {k: run[k] for k in keys}

    def recorded(self) -> dict[str, tuple[str, str]]:
        """Machine name -> (state, reason) as the run's machine rows hold them."""
        with self.lock:
            return {_name(rid): (row.state, row.reason) for rid, row in self.rows.items()}


TABLE = RunTable()


# --- stand-in activities ----------------------------------------------------------------------------


def _called(kind: str, step: str, name: str) -> int:
    with _lock:
        CALLS[f"{kind}:{step}:{name}"].append(STATE["clock"].now())
        return len(CALLS[f"{kind}:{step}:{name}"])


@app.activity_trigger(input_name="request")
def resolve_deployment_run(request: dict[str, Any]) -> dict[str, Any]:
    plan = TABLE.resolve(ResolveInput.model_validate(request), STATE["machines"], STATE.get("resolve_error"))
    return plan.model_dump(mode="json")


@app.activity_trigger(input_name="request")
def apply_deployment_journal(request: dict[str, Any]) -> dict[str, int]:
    _called("journal", "batch", str(request["batch"]))
    return {"entries": 0}


@app.activity_trigger(input_name="request")
def read_deployment_batch(request: dict[str, Any]) -> dict[str, Any]:
    """The batch's machines as JSON in one part (RunStore.batch_part), as resolution stored them."""
    read = BatchMachinesRead.model_validate(request)
    assert read.run_id == RUN_ID and read.after is None
    ids = TABLE.batch(read.batch)
    machines = [json.dumps({"resource_id": rid}) for rid in ids]  # stands for machine_to_json
    keys = tuple("policy" if STATE.get("policy") else "" for _ in ids)  # every machine under STATE's policy
    return BatchMachines(resource_ids=tuple(ids), machines=tuple(machines),
                         safety_keys=keys).model_dump(mode="json")


@app.activity_trigger(input_name="request")
def claim_deployment_machines(request: dict[str, Any]) -> dict[str, Any]:
    parsed = ClaimInput.model_validate(request)
    for ended in parsed.finished:  # recorded before the gate decides, as ``RunStore.claim`` does
        if ended.health.startswith("failed: "):
            with _lock:
                STATE.setdefault("health_failed", set()).add(ended.resource_id)
        _record(FinishInput(run_id=parsed.run_id, resource_id=ended.resource_id, status=ended.status,
                            reason=ended.reason, at=ended.at or parsed.at, failure=ended.failure))
    claim = TABLE.claim(parsed)
    # A claim that only records ended children (nothing waits) is not an ask of the gate.
    _called("claim" if parsed.resource_ids else "record", str(request["batch"]), "run")
    with _lock:
        lose = claim.start and STATE.get("lose_claim_answers", 0) > 0
        if lose:
            STATE["lose_claim_answers"] -= 1
    if lose:  # the transaction committed, then the answer was lost: the retry must hand them back
        raise ConnectionResetError("connection reset by peer after the transaction committed")
    return claim.model_dump(mode="json")


@app.activity_trigger(input_name="request")
def start_machine_step(request: dict[str, Any]) -> dict[str, Any]:
    """``{token}`` or ``{failure}``; a transient error raises (as ``steps.start_step``)."""
    step_input = StepInput.model_validate(request)
    name, step = _name(step_input.resource_id), step_input.step
    plan = PLAN.get(name, {})
    _called("start", step, name)
    if step == STATE.get("cancel_at_step"):
        TABLE.request_cancel("operator@contoso.example")  # POST /api/deployment-runs/{runId}/cancel
    if step in plan.get("start_raises", ()):
        raise RuntimeError("HTTP 503 ServerBusy: the server is busy, retry later")
    if step in plan.get("fail", {}):
        return StepAnswer(failure=StepFailure(**plan["fail"][step])).model_dump(mode="json")
    with _lock:
        TOKENS[name].append(step)
    return StepAnswer(token=f"{step}:{name}").model_dump(mode="json")


@app.activity_trigger(input_name="request")
def check_machine_step(request: dict[str, Any]) -> dict[str, Any]:
    """In progress until the step's minutes have passed since its start, then what ``check_step`` answers."""
    step_input = StepInput.model_validate(request)
    name, step = _name(step_input.resource_id), step_input.step
    assert step_input.token == f"{step}:{name}" and step_input.at is not None
    plan = PLAN.get(name, {})
    _called("check", step, name)
    if step in plan.get("check_raises", ()):
        raise RuntimeError("HTTP 429 TooManyRequests")
    started = CALLS[f"start:{step}:{name}"][-1]
    minutes = {**STEP_MINUTES, **plan.get("minutes", {})}[step]
    if step_input.at < started + timedelta(minutes=minutes):
        return StepAnswer(in_progress=True).model_dump(mode="json")
    return StepAnswer(outcome=_outcome(plan, step, started)).model_dump(mode="json")


def _outcome(plan: dict[str, Any], step: str, started: datetime) -> StepOutcome:
    if step == "prescan":
        return StepOutcome(pending=plan.get("pending", 3), has_service_pack=plan.get("service_pack", False),
                           unclassified=plan.get("unclassified", False))
    if step == "postscan":
        return StepOutcome()
    if step == "restart":
        return StepOutcome(status=SUCCEEDED)
    calls = plan.get("installs", [{"installed": plan.get("pending", 3)}])
    call = int(step.removeprefix("install"))
    result = calls[call - 1]
    installed_before = sum(c.get("installed", 0) for c in calls[:call - 1])
    installed, failed, pending = result.get("installed", 0), result.get("failed", 0), result.get("pending", 0)
    api_status = "Failed" if failed and not installed else "CompletedWithWarnings" if failed else "Succeeded"
    install = InstallOutcome(
        status=api_status, activity_id=f"activity-{step}", reboot_status="Completed",
        maintenance_window_exceeded=result.get("exceeded", False), installed=installed, failed=failed,
        pending=pending, excluded=0, not_selected=0, started_at=started,
    )  # fmt: skip
    status = machine_result_status(install, installed_before)
    return StepOutcome(pending=pending, status=status.value, installed=installed,
                       failed=failed, window_exceeded=install.maintenance_window_exceeded)


def _record(parsed: FinishInput) -> None:
    with _lock:
        FINISHED.setdefault(_name(parsed.resource_id), parsed)
    TABLE.finish(parsed)


@app.activity_trigger(input_name="request")
def complete_deployment_run(request: dict[str, Any]) -> dict[str, Any]:
    TABLE.complete(datetime.fromisoformat(str(request["at"])))
    return TABLE.progress()


@app.activity_trigger(input_name="request")
def send_log_rows(request: dict[str, Any]) -> dict[str, Any]:
    with _lock:
        CALLS["send:run"].append(STATE["clock"].now())
    return {"sent": 0, "found": 0, "left": 0, "errors": []}


# The safe-rollout activities (functions/health_checks.py, functions/rollback.py), steered by PLAN:
#   unhealthy_before: True     every check before the install fails
#   breaks: True               the command check fails after the install (until a rollback)


@app.activity_trigger(input_name="request")
def read_safety_policy(request: dict[str, Any]) -> dict[str, Any] | None:
    return STATE.get("policy")


def _check_result(request: dict[str, Any]) -> dict[str, Any]:
    parsed = HealthCheckInput.model_validate(request)
    name = _name(parsed.resource_id)
    plan = PLAN.get(name, {})
    _called("check", f"health-{parsed.phase}", name)
    broken = (plan.get("unhealthy_before") and parsed.phase == "before") or (
        plan.get("breaks") and parsed.phase == "after" and not STATE.get("restored", set()) & {name})
    passed = not (broken and parsed.check.type == "command")
    detail = "healthy" if passed else "exit code 1: the application fails"
    at = parsed.at or STATE["clock"].now()
    found = CheckResult(check=parsed.check.name, kind=parsed.check.type, passed=passed, detail=detail, at=at)
    return HealthCheckAnswer(result=found).model_dump(mode="json")


@app.activity_trigger(input_name="request")
def start_health_check(request: dict[str, Any]) -> dict[str, Any]:
    return _check_result(request)


@app.activity_trigger(input_name="request")
def check_health_check(request: dict[str, Any]) -> dict[str, Any]:
    return _check_result(request)


@app.activity_trigger(input_name="request")
def start_snapshots(request: dict[str, Any]) -> dict[str, Any]:
    _called("start", "snapshots", _name(str(request["resource_id"])))
    return SnapshotAnswer(token="snapshots", in_progress=True).model_dump(mode="json")


@app.activity_trigger(input_name="request")
def check_snapshots(request: dict[str, Any]) -> dict[str, Any]:
    now = STATE["clock"].now()
    point = PointSummary(taken_at=now, expires_at=now + timedelta(days=7), snapshots=("snap-os",))
    return SnapshotAnswer(point=point).model_dump(mode="json")


@app.activity_trigger(input_name="request")
def start_rollback_step(request: dict[str, Any]) -> dict[str, Any]:
    _called("start", "rollback", _name(str(request["resource_id"])))
    return RollbackAnswer(token="rollback", in_progress=True).model_dump(mode="json")


@app.activity_trigger(input_name="request")
def check_rollback_step(request: dict[str, Any]) -> dict[str, Any]:
    name = _name(str(request["resource_id"]))
    with _lock:
        STATE.setdefault("restored", set()).add(name)
    restored = RestoreSummary(taken_at=STATE["clock"].now(), disks=("disk-rb",), replaced=("disk-os",))
    return RollbackAnswer(restored=restored).model_dump(mode="json")


@app.activity_trigger(input_name="request")
def record_rollback(request: dict[str, Any]) -> dict[str, int]:
    _called("record", "rollback", _name(str(request["resource_id"])))
    return {"failedUpdates": 0, "changes": 0}


# --- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def runner(clock):
    PLAN.clear()
    STATE.clear()
    STATE.update(clock=clock, machines=[])
    CALLS.clear()
    TOKENS.clear()
    FINISHED.clear()
    with DurableRunner(app, clock, activity_concurrency=8) as running:
        yield running


def run(runner: DurableRunner, machines: int, **options: Any) -> dict[str, Any]:
    """Create a run of ``machines`` machines as ``POST /deployments/{name}/runs`` does, run it to the end."""
    start_run(runner, machines, **options)
    final = runner.wait_for_completion(RUN_ID, timeout=30)
    assert final["runtimeStatus"] == "Completed", final["output"]
    failed = [i["instanceId"] for i in runner.list_instances() if i["runtimeStatus"] != "Completed"]
    assert failed == [], f"orchestrations that did not complete: {failed}"
    return final


def start_run(runner: DurableRunner, machines: int, *, window_minutes: int = 120,
              max_concurrent: int | str = "50%", error_budget: int | str = "100%",
              reboot_setting: str = "IfRequired", batch_size: int = 50, settings: Settings | None = None,
              **tuning: int) -> None:
    """Create a run of ``machines`` machines as ``POST /deployments/{name}/runs`` does and start it."""
    ids = [machine_id(i) for i in range(machines)]
    definition = validate_definition({
        "name": "patch-test", "operatingSystem": "Linux", "targets": {"machines": ids},
        "classifications": ["Critical and security updates"],
        "schedule": {"startTime": "2026-01-13T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": window_minutes, "rebootSetting": reboot_setting,
        "rollout": {"maxConcurrent": max_concurrent, "errorBudget": error_budget},
    })  # fmt: skip
    TABLE.create(definition, STATE["clock"].now())
    STATE["machines"] = ids
    run_input = DeploymentRunInput(run_id=RUN_ID, deployment=definition.name, trigger="http",
                                   tuning=DeploymentTuning(batch_size=batch_size, **{**TUNING, **tuning}))
    if settings is not None:  # the input the scheduler and the HTTP start build from the app settings
        started = DeploymentRunInput.model_validate(
            deployments.run_input(RUN_ID, definition, "http", settings))
        coarse = {k: v for k, v in TUNING.items() if k != "poll_seconds"}
        run_input = started.model_copy(update={"tuning": started.tuning.model_copy(update=coarse)})
    runner.start_new("deployment_run", RUN_ID, run_input.model_dump(mode="json"))


def installs(name: str) -> list[str]:
    """The install calls started on a machine, in order."""
    return [step for step in TOKENS[name] if step.startswith("install")]


def minutes_after(start: datetime, moments: list[datetime]) -> list[float]:
    return [(m - start).total_seconds() / 60 for m in moments]


def instances(runner: DurableRunner, name: str) -> list[dict[str, Any]]:
    return [i for i in runner.list_instances() if i["name"] == name]


# --- tests ------------------------------------------------------------------------------------------


def test_a_run_over_three_batches_prescans_installs_and_postscans_every_machine(runner):
    output = run(runner, 5, window_minutes=360, batch_size=2, max_concurrent=2)["output"]
    assert output["state"] == RunState.COMPLETED.value and output["stopReason"] is None
    assert output["machines"] == output["started"] == 5 and output["running"] == output["queued"] == 0
    assert output["results"][SUCCEEDED] == 5 and sum(output["results"].values()) == 5
    for i in range(5):
        name = f"vm-{i:04d}"
        assert TOKENS[name] == ["prescan", "install1", "postscan"], name
        assert FINISHED[name].status == SUCCEEDED and FINISHED[name].reason == ""
        assert FINISHED[name].failure is None
    assert TABLE.peak_running == 2  # the gate shared by the three batches never let a third start
    batches = instances(runner, "deployment_batch")
    assert len(batches) == 3 and len(instances(runner, "deploy_machine")) == 5
    assert sorted(b["output"][SUCCEEDED] for b in batches) == [1, 2, 2]  # only counts travel upwards
    assert runner.get_status(RUN_ID)["customStatus"] == {"stage": "done", **output}
    # The queued log rows are sent after each batch and once more when the run is complete.
    assert len(CALLS["send:run"]) == 4


def test_the_master_waits_on_its_batches_alone_and_its_status_shows_their_counts(runner):
    """No timer and no progress read in the master (each was replayed on every wake-up): its history holds
    the resolve, the batches, the log sends and the completion; while batches run, its status says how
    many ended and with what. The live counters are the run's row (GET /api/deployment-runs/{runId})."""
    gone = {"code": "ResourceNotFound", "message": "the machine was deleted"}
    PLAN["vm-0000"] = PLAN["vm-0001"] = {"fail": {"prescan": gone}}  # batch 0 ends without a timer
    with runner.hold_clock():  # the other batches' machines wait on their first check
        start_run(runner, 5, window_minutes=360, batch_size=2, max_concurrent=5)
        runner.run_until_idle(10)
        assert runner.get_status(RUN_ID)["customStatus"] == {
            "stage": "running", "machines": 5, "batches": 3, "batchesDone": 1,
            "batchResults": {MachineResultStatus.FAILED.value: 2},
        }  # fmt: skip
    output = runner.wait_for_completion(RUN_ID, timeout=30)["output"]
    results = {k: v for k, v in output["results"].items() if v}
    assert results == {MachineResultStatus.FAILED.value: 2, SUCCEEDED: 3}
    history = runner.get_status(RUN_ID, show_history=True)["historyEvents"]
    kinds = [EventType(e["EventType"]) for e in history]
    assert EventType.TIMER_CREATED not in kinds
    activities = [e["Name"] for e in history if e["EventType"] == EventType.TASK_SCHEDULED]
    assert activities == ["resolve_deployment_run", "send_log_rows", "send_log_rows", "send_log_rows",
                          "complete_deployment_run", "send_log_rows"]
    assert kinds.count(EventType.SUB_ORCHESTRATION_CREATED) == 3


def test_a_machine_with_nothing_pending_is_recorded_not_needed_without_an_install(runner):
    PLAN["vm-0001"] = {"pending": 0}
    output = run(runner, 2)["output"]
    assert TOKENS["vm-0001"] == ["prescan"]
    assert FINISHED["vm-0001"].status == MachineResultStatus.NOT_NEEDED.value
    assert FINISHED["vm-0001"].reason == "no pending update matches the deployment"
    assert output["results"][SUCCEEDED] == 1 and output["results"]["not needed"] == 1


def test_a_machine_whose_distribution_classifies_nothing_is_skipped_saying_why_not_not_needed(runner):
    PLAN["vm-0001"] = {"pending": 0, "unclassified": True}
    output = run(runner, 2)["output"]
    assert TOKENS["vm-0001"] == ["prescan"]
    assert FINISHED["vm-0001"].status == MachineResultStatus.SKIPPED.value
    assert FINISHED["vm-0001"].reason == (
        "this distribution publishes no classification data: select Other updates or name the packages"
    )
    assert output["results"].get("not needed", 0) == 0 and output["results"]["skipped"] == 1


def test_machines_not_started_before_the_window_closes_are_skipped_by_the_gate(runner, clock):
    # An 87-minute window, one machine at a time, 42.5 minutes per machine: the gate stops starting
    # machines after 62 minutes (one update and a reboot must still fit). The batch holding the slot
    # starts its second machine at 42.5 min; the other batch asks at 0, 10 minutes later, then every 20
    # minutes while its asks start nothing (DeploymentTuning.slot_poll), finds no free slot and is told
    # "window closing" at 70.
    start = clock.now()
    output = run(runner, 4, window_minutes=87, max_concurrent=1, batch_size=2)["output"]
    assert output["state"] == RunState.COMPLETED.value and output["stopReason"] == REASON_WINDOW_CLOSING
    assert output["results"][SUCCEEDED] == 2 and output["results"]["skipped"] == 2
    recorded = TABLE.recorded()
    done = sorted(n for n, (state, _) in recorded.items() if state == SUCCEEDED)
    never = sorted(n for n, (state, _) in recorded.items() if state != SUCCEEDED)
    assert len(done) == 2 and all(installs(n) == ["install1"] for n in done)
    for name in never:
        assert recorded[name] == ("skipped", REASON_WINDOW_CLOSING)
        assert name not in TOKENS and name not in FINISHED  # never pre-scanned, never a child
    starts = [row.started_at for row in TABLE.rows.values() if row.started_at is not None]
    assert sorted(minutes_after(start, starts)) == [0, 42.5]
    # The batch that held the slot ran both its machines; the other one never got a turn.
    outputs = [sorted(b["output"].items()) for b in instances(runner, "deployment_batch")]
    assert sorted(outputs) == [[(SUCCEEDED, 2)], [(REASON_WINDOW_CLOSING, 2)]]
    waiting = next(b for b in instances(runner, "deployment_batch") if REASON_WINDOW_CLOSING in b["output"])
    asks = CALLS[f"claim:{waiting['input']['batch']}:run"]
    assert minutes_after(start, asks) == [0, 10, 30, 50, 70]


def test_a_machine_prescanned_past_its_own_cutoff_is_skipped_without_an_install(runner):
    # An 83-minute window: the gate starts machines until 58 min. vm-0001 starts at 42.5 min; its
    # slow pre-scan (until 55 min) finds a service pack, which needs 20 minutes plus the reboot's 10,
    # so its own cutoff (53 min) has passed. vm-0002 still gets through the gate at 55 min, but its
    # scan ends at 60 min, past the 58-minute cutoff of an ordinary update; then the gate stops.
    PLAN["vm-0001"] = {"service_pack": True, "minutes": {"prescan": 10}}
    output = run(runner, 4, window_minutes=83, max_concurrent=1)["output"]
    assert output["stopReason"] == REASON_WINDOW_CLOSING
    assert {n: FINISHED[n].status for n in FINISHED} == {
        "vm-0000": SUCCEEDED, "vm-0001": "skipped", "vm-0002": "skipped",
    }  # fmt: skip
    assert FINISHED["vm-0001"].reason == FINISHED["vm-0002"].reason == REASON_WINDOW_CLOSING
    assert TOKENS["vm-0001"] == TOKENS["vm-0002"] == ["prescan"]  # no install, no post-scan
    assert TABLE.recorded()["vm-0003"] == ("skipped", REASON_WINDOW_CLOSING) and "vm-0003" not in TOKENS


def test_a_capped_first_install_is_followed_by_one_more_call_for_what_it_left(runner, clock):
    # A 6-hour window: the first call runs its 3 h 55 min and leaves 5 updates pending with about
    # two hours of window left, so a second call installs them.
    PLAN["vm-0000"] = {
        "pending": 25, "minutes": {"install1": 235, "install2": 40},
        "installs": [{"installed": 20, "pending": 5, "exceeded": True}, {"installed": 5}],
    }
    start = clock.now()
    output = run(runner, 1, window_minutes=360, max_poll_seconds=LONG_POLL)["output"]
    assert installs("vm-0000") == ["install1", "install2"] and len(installs("vm-0000")) == MAX_INSTALL_CALLS
    assert FINISHED["vm-0000"].status == SUCCEEDED and FINISHED["vm-0000"].reason == ""
    second = minutes_after(start, CALLS["start:install2:vm-0000"])
    assert len(second) == 1 and 240 < second[0] < 252  # at the first check after its 3 h 55 min
    assert TOKENS["vm-0000"][-1] == "postscan" and output["results"][SUCCEEDED] == 1


def test_there_is_no_third_install_call_even_with_window_left(runner):
    PLAN["vm-0000"] = {
        "pending": 25, "minutes": {"install1": 235, "install2": 60},
        "installs": [{"installed": 20, "pending": 5, "exceeded": True}, {"installed": 3, "pending": 2}],
    }
    output = run(runner, 1, window_minutes=360, max_poll_seconds=LONG_POLL)["output"]
    # About 40 minutes of the window are left after the second call, yet MAX_INSTALL_CALLS is 2.
    assert installs("vm-0000") == ["install1", "install2"]
    assert FINISHED["vm-0000"].status == MachineResultStatus.WINDOW_EXCEEDED.value
    assert FINISHED["vm-0000"].reason == "2 updates left pending when the window ran out"
    assert output["results"]["window exceeded"] == 1


def test_no_second_install_call_when_the_window_has_no_room_for_another_update(runner):
    # A 4-hour window: the first call is seen done only after the window's end (at 251 min), with
    # less left than one update and a reboot need (25 minutes), so what it left stays pending.
    PLAN["vm-0000"] = {"pending": 25, "minutes": {"install1": 235},
                       "installs": [{"installed": 20, "pending": 5, "exceeded": True}]}
    run(runner, 1, window_minutes=240, max_poll_seconds=LONG_POLL)
    assert installs("vm-0000") == ["install1"]
    assert FINISHED["vm-0000"].status == MachineResultStatus.WINDOW_EXCEEDED.value
    assert FINISHED["vm-0000"].reason == "5 updates left pending when the window ran out"


def test_a_second_install_whose_updates_all_fail_leaves_the_machine_partially_succeeded(runner):
    PLAN["vm-0000"] = {
        "pending": 25, "minutes": {"install1": 235, "install2": 30},
        "installs": [{"installed": 20, "pending": 5, "exceeded": True}, {"failed": 5}],
    }
    run(runner, 1, window_minutes=360, max_poll_seconds=LONG_POLL)
    assert installs("vm-0000") == ["install1", "install2"]
    assert FINISHED["vm-0000"].status == MachineResultStatus.PARTIALLY_SUCCEEDED.value


def test_cancel_stops_new_starts_while_the_running_machines_finish(runner):
    # The operator cancels when the first install starts: the two machines holding the slots finish
    # their install and post-scan, the four still waiting in either batch are recorded as cancelled.
    STATE["cancel_at_step"] = "install1"
    output = run(runner, 6, max_concurrent=2, batch_size=3)["output"]
    assert output["state"] == RunState.CANCELLED.value and output["cancelRequested"] is True
    assert output["stopReason"] == REASON_CANCELLED
    assert output["results"][SUCCEEDED] == 2 and output["results"]["cancelled"] == 4
    recorded = TABLE.recorded()
    ran = sorted(FINISHED)
    assert len(ran) == 2 and all(TOKENS[n] == ["prescan", "install1", "postscan"] for n in ran)
    assert all(FINISHED[n].status == SUCCEEDED for n in ran)
    for name in set(recorded) - set(ran):
        assert recorded[name] == ("cancelled", REASON_CANCELLED) and name not in TOKENS
    assert sum(len(installs(n)) for n in recorded) == 2


def test_the_error_budget_stops_new_starts_after_the_second_failed_machine(runner):
    # errorBudget 2, one machine at a time. vm-0000 cannot be reached (not charged to the budget),
    # vm-0002 fails every update, vm-0004 fails one of three (partially succeeded, charged): after it
    # the gate starts nothing more.
    PLAN["vm-0000"] = {"fail": {"prescan": {"code": "VMAgentStatusCommunicationError", "unreachable": True,
                                            "message": "the VM agent is not responding"}}}
    PLAN["vm-0002"] = {"installs": [{"failed": 3}]}
    PLAN["vm-0004"] = {"installs": [{"installed": 2, "failed": 1}]}
    output = run(runner, 7, window_minutes=360, max_concurrent=1, error_budget=2)["output"]
    assert output["state"] == RunState.COMPLETED.value and output["stopReason"] == REASON_ERROR_BUDGET
    statuses = {n: FINISHED[n].status for n in FINISHED}
    assert statuses == {
        "vm-0000": "not reachable", "vm-0001": SUCCEEDED, "vm-0002": "failed", "vm-0003": SUCCEEDED,
        "vm-0004": "partially succeeded",
    }  # fmt: skip
    assert FINISHED["vm-0000"].reason == "pre-scan: VMAgentStatusCommunicationError"
    assert FINISHED["vm-0000"].failure is not None and FINISHED["vm-0000"].failure.unreachable
    assert TABLE.recorded()["vm-0005"] == TABLE.recorded()["vm-0006"] == ("skipped", REASON_ERROR_BUDGET)
    assert "vm-0005" not in TOKENS and "vm-0006" not in TOKENS
    assert sum(len(installs(f"vm-{i:04d}")) for i in range(7)) == 4


def test_transient_errors_exhausted_fail_the_machine_and_the_run_goes_on(runner, clock):
    PLAN["vm-0001"] = {"start_raises": {"prescan"}}  # assessPatches keeps answering 503
    PLAN["vm-0002"] = {"check_raises": {"install1"}}  # the install's status keeps answering 429
    start = clock.now()
    output = run(runner, 4)["output"]
    assert output["state"] == RunState.COMPLETED.value and output["stopReason"] is None
    assert output["results"][SUCCEEDED] == 2 and output["results"]["failed"] == 2
    assert FINISHED["vm-0001"].status == "failed"
    assert FINISHED["vm-0001"].reason == "pre-scan: TransientErrorsExhausted"
    failure = FINISHED["vm-0001"].failure
    assert failure is not None and "start_machine_step kept failing: " in failure.message
    assert "HTTP 503" in failure.message
    # max_attempts 5, waits doubling from 30 s: 0, 30, 90, 210, 450 seconds after the start.
    tries = minutes_after(start, CALLS["start:prescan:vm-0001"])
    assert [round(m * 60) for m in tries] == [0, 30, 90, 210, 450] and "vm-0001" not in TOKENS
    assert FINISHED["vm-0002"].status == "failed"
    assert FINISHED["vm-0002"].reason == "install: TransientErrorsExhausted"
    assert len(CALLS["check:install1:vm-0002"]) == 5 and installs("vm-0002") == ["install1"]
    assert "postscan" not in TOKENS["vm-0002"]
    for name in ("vm-0000", "vm-0003"):
        assert FINISHED[name].status == SUCCEEDED and TOKENS[name] == ["prescan", "install1", "postscan"]


def test_reboot_only_restarts_and_postscans_without_installing(runner):
    PLAN["vm-0002"] = {"fail": {"restart": {"code": "OperationNotAllowed", "unreachable": True,
                                            "message": "the VM is deallocated"}}}
    output = run(runner, 3, reboot_setting=RESTART_ONLY)["output"]
    for name in ("vm-0000", "vm-0001"):
        assert TOKENS[name] == ["restart", "postscan"] and FINISHED[name].status == SUCCEEDED
    assert FINISHED["vm-0002"].status == "not reachable"
    assert FINISHED["vm-0002"].reason == "restart: OperationNotAllowed"
    assert not any(key.startswith(("start:prescan", "start:install")) for key in CALLS)
    assert output["results"][SUCCEEDED] == 2 and output["results"]["not reachable"] == 1


def test_a_run_whose_targets_cannot_be_resolved_fails_without_starting_a_batch(runner):
    STATE["resolve_error"] = "could not list the machines of subscriptions " + SUBSCRIPTION
    output = run(runner, 3)["output"]
    assert output == {"state": RunState.FAILED.value, "error": STATE["resolve_error"]}
    assert instances(runner, "deployment_batch") == [] and not CALLS
    assert runner.get_status(RUN_ID)["customStatus"]["stage"] == "failed"


def test_a_claim_whose_answer_was_lost_is_retried_and_starts_each_machine_once(runner, clock):
    # The gate's transaction commits, then the activity fails: STORAGE_RETRY calls it again after
    # 5 s, and the machines it had already marked running come back in `start` instead of being lost.
    STATE["lose_claim_answers"] = 1
    start = clock.now()
    output = run(runner, 3, max_concurrent=3)["output"]
    assert [round(m * 60) for m in minutes_after(start, CALLS["claim:0:run"])] == [0, 5]
    assert output["results"][SUCCEEDED] == 3 and output["started"] == 3
    assert all(TOKENS[f"vm-{i:04d}"] == ["prescan", "install1", "postscan"] for i in range(3))
    assert len(instances(runner, "deploy_machine")) == 3


@pytest.mark.parametrize(("deadline", "prescanned"), [(None, True), ("20", False)])
def test_the_assessment_deadline_setting_bounds_a_deployments_prescan(runner, deadline, prescanned):
    """``ASSESSMENT_DEADLINE_MINUTES`` reaches the run: a 25-minute pre-scan fits the default 30
    minutes and is given up at 20, with nothing installed."""
    PLAN["vm-0000"] = {"minutes": {"prescan": 25}}
    env = VALID_SETTINGS | ({"ASSESSMENT_DEADLINE_MINUTES": deadline} if deadline else {})
    run(runner, 1, settings=load_settings(env))
    finished = FINISHED["vm-0000"]
    if prescanned:
        assert finished.status == SUCCEEDED and installs("vm-0000") == ["install1"]
    else:
        assert finished.status != SUCCEEDED and installs("vm-0000") == []
        assert "pre-scan" in finished.reason, finished


# --- safe rollouts (functions/safe_rollout.py) ----------------------------------------------------------

SAFETY = {"checks": [{"name": "agent", "type": "agentReady"},
                     {"name": "app-probe", "type": "command", "script": ["systemctl is-active app"]}],
          "snapshot": "os", "bakeMinutes": 30, "recheckMinutes": 10}  # fmt: skip


def _steps(name: str) -> list[str]:
    """What happened to a machine, in order of the calls' clock times (ties keep the listed order)."""
    kinds = [("start", "prescan"), ("check", "health-before"), ("start", "snapshots"), ("start", "install1"),
             ("check", "health-after"), ("start", "rollback"), ("record", "rollback"), ("start", "postscan")]
    return [f"{kind}:{step}" for kind, step in kinds if CALLS.get(f"{kind}:{step}:{name}")]


def test_a_check_failing_after_the_install_rolls_the_machine_back_and_the_health_gate_stops_the_ring(runner):
    STATE["policy"] = validate_definition({
        "name": "x", "operatingSystem": "Linux", "targets": {"machines": [machine_id(0)]},
        "classifications": ["Critical"], "schedule": {"startTime": "2026-01-13T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 120, "safety": SAFETY}).safety.model_dump(mode="json")  # type: ignore[union-attr]
    PLAN["vm-0000"] = {"breaks": True}
    output = run(runner, 3, window_minutes=360, max_concurrent=1, error_budget=1)["output"]
    assert output["stopReason"] == REASON_HEALTH_GATE
    assert FINISHED["vm-0000"].status == "rolled back"
    assert "app-probe failed after the install" in FINISHED["vm-0000"].reason
    assert TABLE.recorded()["vm-0001"] == TABLE.recorded()["vm-0002"] == ("skipped", REASON_HEALTH_GATE)
    assert _steps("vm-0000") == ["start:prescan", "check:health-before", "start:snapshots", "start:install1",
                                 "check:health-after", "start:rollback", "record:rollback", "start:postscan"]
    # After the restore the checks ran once more: the agent and the probe, both passing.
    after = CALLS["check:health-after:vm-0000"]
    assert len(after) == 4 and after[-1] >= CALLS["start:rollback:vm-0000"][0]
    assert "vm-0001" not in TOKENS and "vm-0002" not in TOKENS


def test_a_healthy_machine_bakes_its_checks_and_one_unhealthy_before_is_left_alone(runner, clock):
    STATE["policy"] = validate_definition({
        "name": "x", "operatingSystem": "Linux", "targets": {"machines": [machine_id(0)]},
        "classifications": ["Critical"], "schedule": {"startTime": "2026-01-13T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 120, "safety": SAFETY}).safety.model_dump(mode="json")  # type: ignore[union-attr]
    PLAN["vm-0001"] = {"unhealthy_before": True}
    start = clock.now()
    run(runner, 2, window_minutes=360, max_concurrent=2)
    assert FINISHED["vm-0000"].status == SUCCEEDED
    assert FINISHED["vm-0001"].status == "skipped"
    assert FINISHED["vm-0001"].reason.startswith("unhealthy before install: app-probe: exit code 1")
    assert _steps("vm-0001") == ["start:prescan", "check:health-before"] and not installs("vm-0001")
    # The bake: the probe again every 10 minutes until 30 minutes after the install (the agent only first).
    after = minutes_after(CALLS["start:install1:vm-0000"][0], CALLS["check:health-after:vm-0000"])
    install_minutes = STEP_MINUTES["install1"]
    assert len(after) == 2 + 3 and all(m >= install_minutes for m in after)
    assert max(after) - min(after) <= SAFETY["bakeMinutes"]
    assert minutes_after(start, CALLS["start:postscan:vm-0000"])[0] >= minutes_after(
        start, CALLS["check:health-after:vm-0000"])[-1]
