"""The HTTP API: health, on-demand discovery, run status, and the machine inventory."""

from __future__ import annotations

import json
import uuid
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from pydantic import BaseModel, ConfigDict, ValidationError

from functions.deployments import ORCHESTRATOR as DEPLOYMENT_RUN_ORCHESTRATOR
from functions.http import error_response, json_response, require_role, run_accepted
from shared.azure.credentials import credential_for
from shared.azure.tables import table_service
from shared.fleet.machine_query import QueryError, parse_machine_query
from shared.fleet.machines_table import MachineInventory
from shared.fleet.messages import DiscoveryRunInput
from shared.principal import Role
from shared.settings import SettingsError, load_settings

bp = df.Blueprint()

# Durable run ids the API hands out start with these; anything else is not ours to show.
_RUN_PREFIXES = ("discovery-", "assessment-", "lightcheck-", "deploy-")


class StartDiscoveryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subscriptionIds: list[str] | None = None


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness plus a configuration check; names every bad setting, reveals no values."""
    try:
        load_settings()
    except SettingsError as error:
        return json_response({"status": "misconfigured", "problems": error.problems}, 503)
    return json_response({"status": "ok"})


@bp.route(route="discoveries", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
async def start_discovery(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    allowed = require_role(req, Role.OPERATOR)
    if isinstance(allowed, func.HttpResponse):
        return allowed
    settings = load_settings()
    try:
        body = StartDiscoveryBody.model_validate(json.loads(req.get_body() or b"{}"))
    except json.JSONDecodeError as error:
        return error_response(400, "InvalidJson", f"request body is not JSON: {error}")
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        return error_response(400, "InvalidField", f"{field}: {first['msg']}", field)
    requested = tuple(s.lower() for s in (body.subscriptionIds or settings.target_subscription_ids))
    outside = sorted(set(requested) - set(settings.target_subscription_ids))
    if outside:
        return error_response(
            400, "InvalidField",
            f"subscriptionIds: {', '.join(outside)} not in TARGET_SUBSCRIPTION_IDS", "subscriptionIds",
        )
    run = DiscoveryRunInput(subscription_ids=requested, trigger="http")
    instance_id = await client.start_new(
        "fleet_discovery_run", f"discovery-adhoc-{uuid.uuid4().hex}", run.model_dump(mode="json")
    )
    return run_accepted(instance_id)


@bp.route(route="runs/{runId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
async def read_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    allowed = require_role(req, Role.READER)
    if isinstance(allowed, func.HttpResponse):
        return allowed
    run_id = req.route_params.get("runId", "")
    if not run_id.startswith(_RUN_PREFIXES):
        return error_response(404, "RunNotFound", f"no run {run_id!r}")
    status = await client.get_status(run_id)
    if not status or status.runtime_status is None:
        return error_response(404, "RunNotFound", f"no run {run_id!r}")
    body: dict[str, Any] = {
        "runId": run_id,
        "kind": status.name,
        "status": status.runtime_status.value,
        "progress": status.custom_status,
        "result": status.output,
        "createdTime": status.created_time,
        "lastUpdatedTime": status.last_updated_time,
    }
    # An update-deployment run (not one of its batch or machine sub-orchestrations, which share the
    # prefix) has its machines and results at /api/deployment-runs/{id}.
    if status.name == DEPLOYMENT_RUN_ORCHESTRATOR:
        body["details"] = f"/api/deployment-runs/{run_id}"
    return json_response(body)


@bp.route(route="machines", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def list_machines(req: func.HttpRequest) -> func.HttpResponse:
    """Machines, filtered and paged: ``?os=&environment=&support=&powerState=&readiness=&compliant=
    &tag=key:value&pageSize=&nextToken=``. Follow ``nextToken`` until it is null."""
    allowed = require_role(req, Role.READER)
    if isinstance(allowed, func.HttpResponse):
        return allowed
    try:
        query = parse_machine_query(dict(req.params))
    except QueryError as error:
        return error_response(400, "InvalidFilter", str(error), error.field)
    settings = load_settings()
    inventory = MachineInventory(table_service(settings, credential_for(settings)))
    try:
        page = inventory.page(query.equals, query.page_size, query.next_token)
    except ValueError as error:
        return error_response(400, "InvalidFilter", f"nextToken: {error}", "nextToken")
    machines = [_public_machine(e) for e in page.machines if query.matches_tags(e)]
    return json_response({"count": len(machines), "machines": machines, "nextToken": page.next_token})


def _public_machine(entity: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": entity["RowKey"],  # GET /api/machines/{id} for the detail
        "resourceId": entity["ResourceId"],
        "computerName": entity.get("ComputerName"),
        "environment": entity.get("Environment"),
        "osType": entity.get("OsType"),
        "osName": entity.get("OsName"),
        "osVersion": entity.get("OsVersion"),
        "powerState": entity.get("PowerState"),
        "patchMode": entity.get("PatchMode"),
        "support": entity.get("Support"),
        "supportReason": entity.get("SupportReason") or None,
        "notReachableReason": entity.get("NotReachableReason") or None,
        "tags": json.loads(entity.get("Tags") or "{}"),
        "lastDiscovered": entity.get("LastDiscovered"),
        # Written by assessments (absent until the machine's first one).
        "lastAssessed": entity.get("LastAssessed"),
        "compliant": entity.get("Compliant"),
        "readiness": entity.get("Readiness"),
        "lastError": entity.get("LastError") or None,
        "lastErrorHint": entity.get("LastErrorHint") or None,
        "rebootPending": entity.get("RebootPending"),
    }
