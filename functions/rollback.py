"""Pre-patch snapshots and rollbacks (issue 14): the activities a machine's deployment polls
(functions/safe_rollout.py), the record of a rollback, the daily cleanup of what passed its retention, and
an operator's rollback of a machine of a run over HTTP.

``POST /api/deployment-runs/{runId}/machines/{machine}/rollback`` ``{"justification": "..."}`` (Operator):
202 with the rollback's status URL; 404 when the run or machine is unknown or no snapshot was taken of the
machine in that run; 410 ``RestorePointExpired`` past the retention; 409 while the machine's deployment
still runs, while a rollback of it runs, or once it was restored from that point already.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from pydantic import Field

from functions.deployment_runs_api import run_machine
from functions.durable import call_storage, machine_instance_id, runtime_status
from functions.http import error_response, read_json, requires, run_accepted
from functions.safe_rollout import restore_from_snapshots
from shared.deployments.messages import DeploymentTuning
from shared.deployments.runs_table import MachineState, run_store
from shared.messages import Message
from shared.principal import Principal, Role
from shared.safety import restore
from shared.safety.cleanup import clean_expired
from shared.safety.messages import RollbackInput, RollbackRecord, SnapshotInput
from shared.safety.restore import RollbackRefused, usable_point
from shared.safety.restore_points import PointState
from shared.settings import load_settings

bp = df.Blueprint()
log = logging.getLogger(__name__)

ROLLBACK_ORCHESTRATOR = "rollback_machine"
ROLLBACK_SUFFIX = ":rollback"
MAX_JUSTIFICATION_CHARS = 1000


def _now(request: Message) -> datetime:
    return getattr(request, "at", None) or datetime.now(UTC)


# --- activities ---------------------------------------------------------------------------------------


@bp.activity_trigger(input_name="request")
def start_snapshots(request: dict[str, Any]) -> dict[str, Any]:
    parsed = SnapshotInput.model_validate(request)
    return restore.take_snapshots(load_settings(), parsed, _now(parsed)).model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def check_snapshots(request: dict[str, Any]) -> dict[str, Any]:
    parsed = SnapshotInput.model_validate(request)
    return restore.check_snapshots(load_settings(), parsed, _now(parsed)).model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def start_rollback_step(request: dict[str, Any]) -> dict[str, Any]:
    parsed = RollbackInput.model_validate(request)
    return restore.start_rollback(load_settings(), parsed, _now(parsed)).model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def check_rollback_step(request: dict[str, Any]) -> dict[str, Any]:
    parsed = RollbackInput.model_validate(request)
    return restore.check_rollback(load_settings(), parsed, _now(parsed)).model_dump(mode="json")


@bp.activity_trigger(input_name="request")
def record_rollback(request: dict[str, Any]) -> dict[str, int]:
    """The run, the change history, the category's inventory and a notification (rollback_record)."""
    from shared.deployments.rollback_record import record_rollback as record

    return record(load_settings(), RollbackRecord.model_validate(request))


# --- the cleanup timer ----------------------------------------------------------------------------------


@bp.timer_trigger(schedule="%ROLLBACK_CLEANUP_SCHEDULE%", arg_name="timer", run_on_startup=False)
def clean_rollback_points(timer: func.TimerRequest) -> None:
    """Delete the snapshots and replaced disks past their retention, then their restore points."""
    done = clean_expired(load_settings(), datetime.now(UTC))
    log.info("rollback cleanup: %s", done)


# --- a rollback on request ----------------------------------------------------------------------------


class RollbackRequest(Message):
    justification: str = Field(min_length=1, max_length=MAX_JUSTIFICATION_CHARS)


class ManualRollback(Message):
    run_id: str
    resource_id: str
    justification: str
    requested_by: str
    tuning: DeploymentTuning = Field(default_factory=DeploymentTuning)


def rollback_machine(context: df.DurableOrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    asked = ManualRollback.model_validate(context.get_input())
    context.set_custom_status({"stage": "restoring", "machine": asked.resource_id})
    reason = f"rolled back on request by {asked.requested_by}: {asked.justification}"
    restored = yield from restore_from_snapshots(context, asked.run_id, asked.resource_id, reason,
                                                 asked.tuning)
    if isinstance(restored, str):
        context.set_custom_status({"stage": "failed", "error": restored})
        return {"state": "failed", "error": restored}
    yield call_storage(context, "record_rollback", RollbackRecord(
        run_id=asked.run_id, resource_id=asked.resource_id, reason=reason[:1000], manual=True,
        requested_by=asked.requested_by, trigger="manual", restored=restored,
        at=context.current_utc_datetime,
    ).model_dump(mode="json"))  # fmt: skip
    done = {"state": "restored", "restoredFrom": restored.taken_at.isoformat(), "disks": list(restored.disks)}
    context.set_custom_status({"stage": "done", **done})
    return done


bp.orchestration_trigger(context_name="context")(rollback_machine)


@bp.route(route="deployment-runs/{runId}/machines/{machine}/rollback", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
@requires(Role.OPERATOR)
async def roll_back_machine(req: func.HttpRequest, client: df.DurableOrchestrationClient,
                            principal: Principal) -> func.HttpResponse:
    """Restore a machine of a run from the snapshots taken before its install (module docstring)."""
    parsed = read_json(req, RollbackRequest.model_validate)
    if isinstance(parsed, func.HttpResponse):
        return parsed
    run_id = req.route_params.get("runId", "")
    settings = load_settings()
    store = run_store(settings)
    entry = run_machine(store, run_id, req.route_params.get("machine", ""))
    if isinstance(entry, func.HttpResponse):
        return entry
    if str(entry.row.get("State") or "") in (MachineState.QUEUED.value, MachineState.RUNNING.value):
        said = (f"the deployment of {entry.computer_name or entry.key} in run {run_id} has not finished; it "
                "rolls the machine back itself if its checks fail")
        return error_response(409, "DeploymentRunning", said)
    now = datetime.now(UTC)
    try:
        point = usable_point(settings, run_id, entry.resource_id, now)
    except RollbackRefused as refused:
        status = 410 if refused.code == "RestorePointExpired" else 404
        return error_response(status, refused.code, str(refused))
    if point.state in (PointState.RESTORED, PointState.RESTORING):
        said = "was restored" if point.state is PointState.RESTORED else "is being restored"
        return error_response(409, "AlreadyRestored", f"{entry.computer_name or entry.key} {said} from the "
                              f"snapshots of run {run_id}")
    instance = machine_instance_id(run_id, entry.resource_id) + ROLLBACK_SUFFIX
    if await runtime_status(client, instance) in ("Running", "Pending"):
        return error_response(409, "RollbackRunning", f"a rollback of {entry.key} in run {run_id} is running")
    await client.start_new(ROLLBACK_ORCHESTRATOR, instance, ManualRollback(
        run_id=run_id, resource_id=entry.resource_id, justification=parsed.justification,
        requested_by=principal.name).model_dump(mode="json"))  # fmt: skip
    return run_accepted(instance)
