"""Read API over the inventory: the machine list, one machine in detail, the fleet's missing updates."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from azure.data.tables import TableServiceClient

from functions.http import error_response, find_machine, json_response, machine_not_found, requires
from shared.assessment.updates_table import UpdateInventory
from shared.assessment.views import (
    ViewError,
    compliance_of,
    machine_detail,
    machines_needing,
    missing_updates,
)
from shared.azure.tables import table_service
from shared.fleet.machine_names import MachineNotFound
from shared.fleet.machine_query import MachineQuery, QueryError, parse_machine_query
from shared.fleet.machines_table import InventoryDirectory, MachineInventory
from shared.fleet.placement import ASSET_CATEGORY, RING, stored_placement
from shared.governance.categories import UNCATEGORISED
from shared.governance.categories_table import CategoryNotFound, category_store
from shared.model.machines import OsType
from shared.principal import Role
from shared.settings import load_settings

bp = df.Blueprint()


def _service() -> TableServiceClient:
    """The table service, with the inventory's tables made sure of: before the first discovery and
    assessment wrote them, the read routes answer empty lists, not a storage error."""
    service = table_service(load_settings())
    MachineInventory(service).ensure()
    UpdateInventory(service).ensure()
    return service


@bp.route(route="machines", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def list_machines(req: func.HttpRequest) -> func.HttpResponse:
    """Machines, filtered and paged: ``?os=&environment=&support=&powerState=&readiness=&compliant=
    &compliance=&category=&ring=&tag=key:value&pageSize=&nextToken=``. Follow ``nextToken`` until it is
    null."""
    try:
        query = parse_machine_query(dict(req.params))
    except QueryError as error:
        return error_response(400, "InvalidFilter", str(error), error.field, error.details)
    service = _service()
    spelt = _placement_spelling(query, service)
    if isinstance(spelt, func.HttpResponse):
        return spelt
    query = spelt
    inventory = MachineInventory(service)
    try:
        page = inventory.page(query.equals, query.page_size, query.next_token)
    except ValueError as error:
        return error_response(400, "InvalidFilter", f"nextToken: {error}", "nextToken")
    machines = [_public_machine(e) for e in page.machines if query.matches_tags(e)]
    return json_response({"count": len(machines), "machines": machines, "nextToken": page.next_token})


def _placement_spelling(query: MachineQuery, service: TableServiceClient) -> MachineQuery | func.HttpResponse:
    """The query with ``category`` and ``ring`` spelt as the category spells them (names are unique
    ignoring case; the table compares exactly), or the 400 for a category or ring that does not exist."""
    name = query.equals.get(ASSET_CATEGORY)
    if name is None:
        return query
    if name.lower() == UNCATEGORISED:
        return replace(query, equals=query.equals | {ASSET_CATEGORY: UNCATEGORISED})
    try:
        category = category_store(load_settings(), service).get(name).category
    except CategoryNotFound as error:
        return error_response(400, "InvalidFilter", f"category: {error}", "category")
    equals = query.equals | {ASSET_CATEGORY: category.name}
    ring_name = query.equals.get(RING)
    if ring_name is not None:
        ring = category.ring(ring_name)
        if ring is None:
            rings = ", ".join(r.name for r in category.rings)
            return error_response(400, "InvalidFilter", f"ring: category {category.name!r} has no ring "
                                  f"{ring_name!r}; its rings: {rings}", "ring")
        equals[RING] = ring.name
    return replace(query, equals=equals)


def _placement(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The machine's asset category and ring (``uncategorised`` until a discovery or a category placed it)."""
    category, ring = stored_placement(entity) or (UNCATEGORISED, None)
    return {"category": category, "ring": ring}


def _public_machine(entity: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": entity["RowKey"],  # GET /api/machines/{id} for the detail
        "resourceId": entity.get("ResourceId"),
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
        "compliant": entity.get("Compliant"),  # false when compliance is Unknown
        "compliance": compliance_of(entity),
        "readiness": entity.get("Readiness"),
        "lastError": entity.get("LastError") or None,
        "lastErrorHint": entity.get("LastErrorHint") or None,
        "rebootPending": entity.get("RebootPending"),
    } | _placement(entity)


@bp.route(route="machines/{machineId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def read_machine(req: func.HttpRequest) -> func.HttpResponse:
    """One machine, named by its id, its resource id (URL-encoded) or its computer name: its missing
    updates with the age of each gap, and its recent assessments. ``?on=YYYY-MM-DD`` also answers
    whether it was compliant on that day."""
    on = req.params.get("on")
    try:
        day = date.fromisoformat(on) if on else None
    except ValueError:
        return error_response(400, "InvalidParameter", "on: must be a date like 2026-01-31", "on")
    service = _service()
    directory = InventoryDirectory(service, load_settings().target_subscription_ids)
    found = find_machine(directory, req.route_params.get("machineId", ""), directory.where)
    if isinstance(found, func.HttpResponse):
        return found
    detail = machine_detail(service, found.key, datetime.now(UTC), day, machine=found.row)
    if detail is None:  # deleted between the two reads
        return machine_not_found(MachineNotFound(found.key, directory.where))
    return json_response(detail | _placement(found.row))


@bp.route(route="updates/missing", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def list_missing_updates(req: func.HttpRequest) -> func.HttpResponse:
    """Updates missing anywhere in the fleet, with how many machines need each: ``?os=&classification=``."""
    os_type = req.params.get("os")
    if os_type is not None and os_type.lower() not in {o.value.lower() for o in OsType}:
        return error_response(400, "InvalidParameter", "os: must be Windows or Linux", "os")
    try:
        rows = missing_updates(_service(), os_type, req.params.get("classification"))
    except ViewError as error:
        return error_response(400, "InvalidParameter", str(error), error.field)
    return json_response({"count": len(rows), "updates": rows})


@bp.route(route="updates/{os}/{update}/machines", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def list_machines_needing_update(req: func.HttpRequest) -> func.HttpResponse:
    """The machines that miss one update, each with its asset category and ring: ``?category=`` (a
    category's name in any case, or ``uncategorised``) keeps that category's."""
    os_name = req.route_params.get("os", "")
    canonical = {o.value.lower(): o.value for o in OsType}.get(os_name.lower())
    if canonical is None:
        return error_response(400, "InvalidParameter", "os: must be Windows or Linux", "os")
    service = _service()
    category = req.params.get("category")
    if category is not None:
        spelt = _category_spelling(category, service)
        if isinstance(spelt, func.HttpResponse):
            return spelt
        category = spelt
    machines = machines_needing(service, canonical, req.route_params.get("update", ""),
                                unplaced=UNCATEGORISED, category=category)
    return json_response({"count": len(machines), "machines": machines})


def _category_spelling(name: str, service: TableServiceClient) -> str | func.HttpResponse:
    """``name`` as its category spells it (the table compares exactly), or the 400 naming the parameter."""
    if name.lower() == UNCATEGORISED:
        return UNCATEGORISED
    try:
        return category_store(load_settings(), service).get(name).category.name
    except CategoryNotFound as error:
        return error_response(400, "InvalidParameter", f"category: {error}", "category")
