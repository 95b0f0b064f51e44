"""A machine's change history over HTTP: ``GET /api/machines/{machineId}/changes?pageSize=&nextToken=``.

Each update a deployment installed or tried on the machine, newest first, with its run and deployment, its
status, the test evidence behind it and the approval behind it (shared/governance/machine_changes.py).
The machine is named by any of its names (functions.http.find_machine). Readers may ask.
"""

from __future__ import annotations

from datetime import UTC, datetime

import azure.durable_functions as df
import azure.functions as func

from functions.http import error_response, find_machine, json_response, requires
from shared.azure.tables import table_service
from shared.fleet.machines_table import InventoryDirectory, MachineInventory
from shared.fleet.placement import stored_placement
from shared.governance.categories import UNCATEGORISED
from shared.governance.machine_changes import ChangesError, machine_changes, parse_changes_query
from shared.principal import Role
from shared.settings import load_settings

bp = df.Blueprint()


def utc_now() -> datetime:
    """The API's clock (the evidence verdict is judged at it; tests may replace it)."""
    return datetime.now(UTC)


def _bad(error: ChangesError) -> func.HttpResponse:
    return error_response(400, "InvalidParameter", str(error), error.field, [(error.field, error.message)])


@bp.route(route="machines/{machineId}/changes", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def read_machine_changes(req: func.HttpRequest) -> func.HttpResponse:
    """The machine's changes, newest first, a page at a time: follow ``nextToken`` until it is null."""
    try:
        query = parse_changes_query(req.params)
    except ChangesError as error:
        return _bad(error)
    settings = load_settings()
    service = table_service(settings)
    MachineInventory(service).ensure()
    directory = InventoryDirectory(service, settings.target_subscription_ids)
    found = find_machine(directory, req.route_params.get("machineId", ""), directory.where)
    if isinstance(found, func.HttpResponse):
        return found
    try:
        page = machine_changes(settings, found.key, query, utc_now())
    except ChangesError as error:
        return _bad(error)
    category, ring = stored_placement(found.row) or (UNCATEGORISED, None)
    machine = {"id": found.key, "resourceId": found.resource_id or None,
               "computerName": found.computer_name, "category": category, "ring": ring}
    return json_response({"machine": machine, "count": len(page.changes), "changes": page.changes,
                          "nextToken": page.next_token})
