"""Health checks of a machine's deployment (issue 14): the activities a machine's orchestration polls
(functions/safe_rollout.py), and the route a test system posts its verdict to.

``start_health_check`` answers ``{"token": ...}`` while the check runs on the machine (a Run Command, an
agent not ready yet) and the final ``{"result": ...}`` at once when it can (a log query, an agent already
ready); ``check_health_check`` answers ``in_progress`` until the result. A transient Azure error raises (the
orchestration retries with backoff); a permanent one is the check's failure, with Azure's message.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from functions.deployment_runs_api import run_machine
from functions.durable import machine_instance_id
from functions.http import error_response, json_response, read_json, requires
from shared.azure.credentials import credential_for
from shared.azure.patch_operations import PermanentArmError
from shared.deployments.runs_table import MachineState, run_store
from shared.model.machines import parse_resource_id
from shared.principal import Principal, Role
from shared.safety.checks import (
    VERDICT_EVENT,
    CheckResult,
    HealthCheckAnswer,
    HealthCheckInput,
    Verdict,
    result,
)
from shared.safety.policy import AgentReadyCheck, CommandCheck, LogQueryCheck
from shared.safety.probes import HealthProbes, run_command_name, run_log_check
from shared.settings import load_settings

bp = df.Blueprint()

_AGENT_TOKEN = "agent"


def _probes(request: HealthCheckInput) -> HealthProbes:
    settings = load_settings()
    subscription = parse_resource_id(request.resource_id).subscription_id
    return HealthProbes(credential_for(settings), settings.arm_endpoint, subscription)


def _answer(found: CheckResult | None, token: str | None = None) -> dict[str, Any]:
    if found is None:
        return HealthCheckAnswer(token=token, in_progress=True).model_dump(mode="json")
    return HealthCheckAnswer(result=found).model_dump(mode="json")


def _agent(request: HealthCheckInput, check: AgentReadyCheck, at: datetime) -> CheckResult | None:
    ready, why = _probes(request).agent_ready(request.resource_id)
    return result(check, True, why, at) if ready else None


@bp.activity_trigger(input_name="request")
def start_health_check(request: dict[str, Any]) -> dict[str, Any]:
    parsed = HealthCheckInput.model_validate(request)
    at, check = parsed.at or datetime.now(UTC), parsed.check
    try:
        if isinstance(check, AgentReadyCheck):
            found = _agent(parsed, check, at)
            return _answer(found, None if found else _AGENT_TOKEN)
        if isinstance(check, CommandCheck):
            name = run_command_name(parsed.run_id, check.name, parsed.phase)
            token = _probes(parsed).start_command(parsed.resource_id, parsed.os_type, check, name)
            return _answer(None, token)
        if isinstance(check, LogQueryCheck):
            settings = load_settings()
            lookback = timedelta(minutes=check.lookback_minutes)
            since = parsed.since if parsed.phase == "after" else at - lookback
            return _answer(run_log_check(credential_for(settings), settings.logs_query_endpoint,
                                         settings.log_analytics_workspace_id, check, parsed.resource_id,
                                         parsed.computer, since, at))
    except PermanentArmError as error:
        return _answer(result(check, False, f"{error.failure.code}: {error.failure.message}", at))
    return _answer(result(check, False, f"a {check.type} check is not run by an activity", at))


@bp.activity_trigger(input_name="request")
def check_health_check(request: dict[str, Any]) -> dict[str, Any]:
    parsed = HealthCheckInput.model_validate(request)
    at, check, token = parsed.at or datetime.now(UTC), parsed.check, parsed.token or ""
    try:
        if isinstance(check, AgentReadyCheck):
            return _answer(_agent(parsed, check, at), _AGENT_TOKEN)
        if isinstance(check, CommandCheck):
            return _answer(_probes(parsed).check_command(parsed.resource_id, token, check, at), token)
    except PermanentArmError as error:
        return _answer(result(check, False, f"{error.failure.code}: {error.failure.message}", at))
    return _answer(result(check, False, f"a {check.type} check has nothing to wait for", at))


# --- the verdict route ---------------------------------------------------------------------------------


@bp.route(route="deployment-runs/{runId}/machines/{machine}/verdict", methods=["POST"],
          auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
@requires(Role.OPERATOR)
async def post_verdict(req: func.HttpRequest, client: df.DurableOrchestrationClient,
                       principal: Principal) -> func.HttpResponse:
    """A test system's verdict on a machine of a run whose safety policy waits for one: ``{"result":
    "pass" | "fail", "reason": "...", "check": "<verdict check name>"?}``. 202 once handed to the machine's
    deployment; 404 for an unknown run or machine; 409 ``NotWaitingForVerdict`` when the machine's
    deployment is not running (finished, or not started)."""
    parsed = read_json(req, Verdict.model_validate)
    if isinstance(parsed, func.HttpResponse):
        return parsed
    run_id = req.route_params.get("runId", "")
    store = run_store(load_settings())
    entry = run_machine(store, run_id, req.route_params.get("machine", ""))
    if isinstance(entry, func.HttpResponse):
        return entry
    state = str(entry.row.get("State") or "") if entry.row else ""
    instance = machine_instance_id(run_id, entry.resource_id)
    status = await client.get_status(instance)
    running = getattr(status, "runtime_status", None)
    if state != MachineState.RUNNING.value or running is None or running.name not in ("Running", "Pending"):
        said = (f"the deployment of {entry.computer_name or entry.key} in run {run_id} is {state or 'gone'}; "
                "a verdict is taken only while its deployment runs")
        return error_response(409, "NotWaitingForVerdict", said)
    await client.raise_event(instance, VERDICT_EVENT, parsed.model_dump(mode="json"))
    return json_response({"runId": run_id, "machine": entry.key, "verdict": parsed.result,
                          "by": principal.name}, 202)
