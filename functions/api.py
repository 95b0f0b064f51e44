"""The HTTP API: health, on-demand discovery, run status, and the machine inventory."""

from __future__ import annotations

import json
import uuid
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from pydantic import BaseModel, ConfigDict, ValidationError

from functions.http import error_response, json_response, require_role
from shared.credentials import credential_for
from shared.inventory import MachineInventory
from shared.messages import DiscoveryRunInput
from shared.principal import Role
from shared.settings import SettingsError, load_settings
from shared.storage import table_service

bp = df.Blueprint()

# Durable run ids the API hands out start with these; anything else is not ours to show.
_RUN_PREFIXES = ("discovery-",)
_MACHINE_FILTERS = {
    "os": "OsType", "environment": "Environment", "support": "Support", "powerState": "PowerState",
}


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
    return json_response({"runId": instance_id, "status": f"/api/runs/{instance_id}"}, 202,
                         headers={"Location": f"/api/runs/{instance_id}"})


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
    return json_response(
        {
            "runId": run_id,
            "kind": status.name,
            "status": status.runtime_status.value,
            "progress": status.custom_status,
            "result": status.output,
            "createdTime": status.created_time,
            "lastUpdatedTime": status.last_updated_time,
        }
    )


@bp.route(route="machines", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def list_machines(req: func.HttpRequest) -> func.HttpResponse:
    allowed = require_role(req, Role.READER)
    if isinstance(allowed, func.HttpResponse):
        return allowed
    unknown = sorted(set(req.params) - set(_MACHINE_FILTERS))
    if unknown:
        return error_response(
            400, "InvalidFilter",
            f"unknown filter {unknown[0]!r}; accepted: {', '.join(sorted(_MACHINE_FILTERS))}", unknown[0],
        )
    settings = load_settings()
    inventory = MachineInventory(table_service(settings, credential_for(settings)))
    wanted = {_MACHINE_FILTERS[k]: v.lower() for k, v in req.params.items()}
    machines: list[dict[str, Any]] = [
        _public_machine(entity)
        for entity in inventory.all()
        if all(str(entity.get(col, "")).lower() == value for col, value in wanted.items())
    ]
    machines.sort(key=lambda m: (m["computerName"] or "").lower())
    return json_response({"count": len(machines), "machines": machines})


def _public_machine(entity: dict[str, Any]) -> dict[str, Any]:
    return {
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
    }
