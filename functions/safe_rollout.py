"""The safe-rollout steps of a machine's deployment (issue 14), as parts of its child orchestration
(``deploy_machine`` in functions/deployments.py): health checks before the install, the pre-patch
snapshots, the checks and bake after it, and the rollback from the snapshots when they fail.

Generators the orchestrator ``yield from``: deterministic, no I/O of their own; every Azure call is an
activity (functions/health_checks.py, functions/rollback.py) polled with ``poll_operation``.

Order for a machine with a policy and something to install:

1. an Arc-enabled server under a policy with snapshots and ``arcServers: skip`` is not patched
   ("cannot be rolled back");
2. every check but ``verdict`` runs once; a failure: not patched ("unhealthy before install");
3. with ``snapshot`` ``os`` or ``all``, a VM's disks are snapshotted; a snapshot that fails: not patched;
4. (the install);
5. every check but ``verdict`` runs, then each ``verdict`` is awaited, then the checks repeat every
   ``recheckMinutes`` until ``bakeMinutes`` after the install; the first failure ends it (with
   ``rollback: onHealthOrInstallFailure`` a failed install is such a failure, without checks);
6. on a failure with snapshots and rollback on: stop, disks from the snapshots, swap, start, the checks
   once more, and the rollback recorded (``record_rollback``: change history, the updates failed for the
   category, a notification). The machine's result is ``rolled back``.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import azure.durable_functions as df

from functions.durable import call_storage, poll_operation
from shared.deployments.messages import MachineDeploymentInput
from shared.deployments.results import MachineResultStatus
from shared.messages import PollingTuning
from shared.model.machines import MachineKind, machine_from_json, parse_resource_id
from shared.safety.checks import (
    VERDICT_EVENT,
    CheckResult,
    HealthCheckAnswer,
    HealthCheckInput,
    Phase,
    Verdict,
    result,
    timed_out,
)
from shared.safety.messages import (
    RestoreSummary,
    RollbackAnswer,
    RollbackInput,
    RollbackRecord,
    SnapshotAnswer,
    SnapshotInput,
)
from shared.safety.policy import (
    HEALTH_PASSED,
    HEALTH_UNHEALTHY_BEFORE,
    ROLLBACK_FAILED,
    ROLLBACK_NOT_POSSIBLE,
    ROLLBACK_RESTORED,
    AgentReadyCheck,
    ArcServers,
    CheckKind,
    CommandCheck,
    LogQueryCheck,
    RollbackWhen,
    SafetyPolicy,
    VerdictCheck,
    health_failed,
)

Check = AgentReadyCheck | CommandCheck | LogQueryCheck | VerdictCheck

# A log query answers in seconds; ten minutes covers a throttled workspace and the activity's retries.
LOG_QUERY_MINUTES = 10
# Room past a Run Command's own timeout for ARM to report its end.
COMMAND_GRACE_MINUTES = 5
# Snapshots of a VM's disks: incremental snapshots of a busy 1 TB disk take minutes; an hour is the
# most a machine waits before it is left unpatched.
SNAPSHOT_MINUTES = 60
# Stop, disks from snapshots, swap, start: each minutes on ARM; two hours covers a slow deallocation.
ROLLBACK_MINUTES = 120


@dataclass(frozen=True)
class SafetyEnd:
    """The machine's result when the safety steps end its deployment, with the record's fields."""

    status: MachineResultStatus
    reason: str
    health: str = ""
    rollback: str = ""
    restore_point: datetime | None = None


@dataclass(frozen=True)
class Guard:
    """What the steps before the install leave for the ones after it."""

    restore_point: datetime | None = None  # when the snapshots were taken; None: nothing to restore
    no_rollback: str = ""  # why the machine cannot be rolled back (an Arc-enabled server), if it cannot
    notes: list[str] = field(default_factory=list)


def _is_arc(request: MachineDeploymentInput) -> bool:
    return parse_resource_id(request.resource_id).kind is MachineKind.ARC_SERVER


def _check_input(request: MachineDeploymentInput, check: Check, phase: Phase,
                 since: datetime) -> HealthCheckInput:
    reference = parse_resource_id(request.resource_id)
    try:
        machine = machine_from_json(request.machine) if request.machine else None
    except (KeyError, ValueError, TypeError):  # a machine kept in an older shape: its id tells enough
        machine = None
    return HealthCheckInput(
        run_id=request.run_id, resource_id=request.resource_id, kind=reference.kind.value,
        os_type=machine.os_type.value if machine else "Linux",
        computer=machine.computer_name if machine else reference.name, check=check, phase=phase, since=since,
    )  # fmt: skip


def _minutes(check: Check) -> int:
    if isinstance(check, AgentReadyCheck):
        return check.within_minutes
    if isinstance(check, CommandCheck):
        return check.timeout_minutes + COMMAND_GRACE_MINUTES
    return LOG_QUERY_MINUTES


def run_check(context: df.DurableOrchestrationContext, request: MachineDeploymentInput, check: Check,
              phase: Phase, since: datetime) -> Generator[Any, Any, CheckResult]:
    """One check (not a verdict), polled until it answers or its time is up (a failure then)."""
    minutes = _minutes(check)
    polled = yield from poll_operation(
        context, "start_health_check", "check_health_check", _check_input(request, check, phase, since),
        done=lambda answer: not HealthCheckAnswer.model_validate(answer).in_progress,
        tuning=request.tuning, deadline=context.current_utc_datetime + timedelta(minutes=minutes),
        subject=request.resource_id,
    )  # fmt: skip
    if polled.timed_out:
        return timed_out(check, minutes, context.current_utc_datetime)
    if polled.failing is not None:
        return result(check, False, f"the check could not run: {polled.failing[:400]}",
                      context.current_utc_datetime)
    answer = HealthCheckAnswer.model_validate(polled.answer)
    assert answer.result is not None, "a finished check answers with its result"
    return answer.result


def run_checks(
    context: df.DurableOrchestrationContext, request: MachineDeploymentInput, checks: Sequence[Check],
    phase: Phase, since: datetime,
) -> Generator[Any, Any, CheckResult | None]:
    """The checks in order; the first failure, or None when all pass."""
    for check in checks:
        result = yield from run_check(context, request, check, phase, since)
        if not result.passed:
            return result
    return None


def await_verdicts(context: df.DurableOrchestrationContext,
                   checks: Sequence[VerdictCheck]) -> Generator[Any, Any, CheckResult | None]:
    """Each verdict check waits for a posted verdict (``VERDICT_EVENT``) until its timeout; a verdict that
    names no check answers every one still waiting. The first ``fail`` or time-out is the failure."""
    waiting = list(checks)
    while waiting:
        deadline = context.current_utc_datetime + timedelta(minutes=max(c.timeout_minutes for c in waiting))
        event = context.wait_for_external_event(VERDICT_EVENT)
        timer = context.create_timer(deadline)
        winner = yield context.task_any([event, timer])
        if winner is timer:
            return timed_out(waiting[0], waiting[0].timeout_minutes, context.current_utc_datetime)
        timer.cancel()
        verdict = Verdict.model_validate(_event_body(event.result))
        answered = [c for c in waiting if verdict.check is None or c.name.lower() == verdict.check.lower()]
        for check in answered:
            if verdict.result != "pass":
                said = f"the test system said fail: {verdict.reason or 'no reason given'}"
                return result(check, False, said, context.current_utc_datetime)
            waiting.remove(check)
    return None


def _event_body(value: Any) -> Any:
    """An external event's data as the SDK hands it over: parsed JSON, or JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return {"result": value}
    return value


def before_install(context: df.DurableOrchestrationContext, request: MachineDeploymentInput,
                   policy: SafetyPolicy) -> Generator[Any, Any, Guard | SafetyEnd]:
    """Steps 1-3: the machine's guard for after the install, or the result that ends it unpatched."""
    arc = _is_arc(request)
    no_rollback = ""
    if policy.takes_snapshots and arc:
        no_rollback = "cannot be rolled back: an Arc-enabled server has no disks in Azure to snapshot"
        if policy.arc_servers is ArcServers.SKIP:
            return SafetyEnd(MachineResultStatus.SKIPPED, no_rollback, rollback=ROLLBACK_NOT_POSSIBLE)
    failure = yield from run_checks(context, request, policy.checks_before(), "before",
                                    context.current_utc_datetime)
    if failure is not None:
        return SafetyEnd(MachineResultStatus.SKIPPED,
                         f"{HEALTH_UNHEALTHY_BEFORE}: {failure.check}: {failure.detail}",
                         health=HEALTH_UNHEALTHY_BEFORE)
    if not policy.takes_snapshots or arc:
        return Guard(no_rollback=no_rollback or ("" if policy.takes_snapshots else "no snapshots taken"))
    snapshot = SnapshotInput(run_id=request.run_id, resource_id=request.resource_id, scope=policy.snapshot,
                             retention_days=policy.snapshot_retention_days)
    polled = yield from poll_operation(
        context, "start_snapshots", "check_snapshots", snapshot,
        done=lambda answer: not SnapshotAnswer.model_validate(answer).in_progress,
        tuning=request.tuning, deadline=context.current_utc_datetime + timedelta(minutes=SNAPSHOT_MINUTES),
        subject=request.resource_id,
    )  # fmt: skip
    why: str | None = None
    if polled.timed_out:
        why = f"the snapshots took longer than {SNAPSHOT_MINUTES} minutes"
    elif polled.failing is not None:
        why = polled.failing
    answer = SnapshotAnswer.model_validate(polled.answer) if why is None else None
    if answer is not None and (answer.failure or answer.point is None):
        why = answer.failure or "no snapshot was taken"
    if why is not None or answer is None or answer.point is None:
        return SafetyEnd(MachineResultStatus.SKIPPED,
                         f"not patched: the pre-patch snapshot failed: {why}"[:1000])
    return Guard(restore_point=answer.point.taken_at)


def restore_from_snapshots(
    context: df.DurableOrchestrationContext, run_id: str, resource_id: str, reason: str,
    tuning: PollingTuning,
) -> Generator[Any, Any, RestoreSummary | str]:
    """The rollback's stages polled to their end (functions/rollback.py's activities): what was restored,
    or why it could not be."""
    polled = yield from poll_operation(
        context, "start_rollback_step", "check_rollback_step",
        RollbackInput(run_id=run_id, resource_id=resource_id, reason=reason[:1000]),
        done=lambda answer: not RollbackAnswer.model_validate(answer).in_progress,
        tuning=tuning, deadline=context.current_utc_datetime + timedelta(minutes=ROLLBACK_MINUTES),
        subject=resource_id,
    )  # fmt: skip
    answer = RollbackAnswer.model_validate(polled.answer) if polled.answer is not None else None
    if answer is not None and answer.restored is not None:
        return answer.restored
    if answer is not None and answer.failure:
        return answer.failure
    return polled.failing or f"not done within {ROLLBACK_MINUTES} minutes"


def after_install(context: df.DurableOrchestrationContext, request: MachineDeploymentInput,
                  policy: SafetyPolicy, guard: Guard, install_failed: bool,
                  status: MachineResultStatus) -> Generator[Any, Any, SafetyEnd]:
    """Steps 5-6: the machine's result (``status`` when healthy), its health and rollback record."""
    installed_at = context.current_utc_datetime
    failure: CheckResult | None = None
    trigger = "health"
    if install_failed and policy.rollback is RollbackWhen.HEALTH_OR_INSTALL_FAILURE:
        failure = CheckResult(check="install", kind=CheckKind.COMMAND, passed=False, at=installed_at,
                              detail="the install failed")  # no check ran: the install's own failure
        trigger = "install"
    else:
        probes = [c for c in policy.checks if not isinstance(c, VerdictCheck)]
        verdicts = [c for c in policy.checks if isinstance(c, VerdictCheck)]
        failure = yield from run_checks(context, request, probes, "after", installed_at)
        if failure is None and verdicts:
            failure = yield from await_verdicts(context, verdicts)
        bake_end = installed_at + timedelta(minutes=policy.bake_minutes)
        again = [c for c in probes if not isinstance(c, AgentReadyCheck)] or probes
        while failure is None and again and context.current_utc_datetime < bake_end:
            recheck = timedelta(minutes=policy.recheck_minutes)
            next_round = min(context.current_utc_datetime + recheck, bake_end)
            yield context.create_timer(next_round)
            failure = yield from run_checks(context, request, again, "after", installed_at)
    if failure is None:
        return SafetyEnd(status, "", health=HEALTH_PASSED if policy.checks else "")
    health = health_failed(failure.check, failure.detail) if trigger == "health" else ""
    said = (f"health check {failure.check} failed after the install: {failure.detail}" if trigger == "health"
            else "the install failed")
    if guard.restore_point is None or not policy.rolls_back:
        why = guard.no_rollback or ("rollback is off" if not policy.rolls_back else "no snapshot")
        fail_status = MachineResultStatus.FAILED if trigger == "health" else status
        return SafetyEnd(fail_status, f"{said}; not rolled back: {why}"[:1000], health=health,
                         rollback=ROLLBACK_NOT_POSSIBLE if policy.rolls_back else "")
    restored = yield from restore_from_snapshots(context, request.run_id, request.resource_id, said,
                                                 request.tuning)
    if isinstance(restored, str):
        return SafetyEnd(MachineResultStatus.FAILED, f"{said}; the rollback failed: {restored}"[:1000],
                         health=health, rollback=ROLLBACK_FAILED, restore_point=guard.restore_point)
    probes = [c for c in policy.checks if not isinstance(c, VerdictCheck)]
    still = yield from run_checks(context, request, probes, "after", context.current_utc_datetime)
    reason = f"{said}; restored from the snapshots of {guard.restore_point:%Y-%m-%d %H:%M} UTC"
    if still is not None:
        reason += f"; after the restore {still.check} still fails: {still.detail}"
    yield call_storage(context, "record_rollback", RollbackRecord(
        run_id=request.run_id, resource_id=request.resource_id, reason=reason[:1000], manual=False,
        requested_by=None, restored=restored, at=context.current_utc_datetime, trigger=trigger,
    ).model_dump(mode="json"))  # fmt: skip
    return SafetyEnd(MachineResultStatus.ROLLED_BACK, reason[:1000], health=health or health_failed(
        "install", "the install failed"), rollback=ROLLBACK_RESTORED, restore_point=guard.restore_point)
