"""The audit over HTTP: ``GET /api/audit?on=YYYY-MM-DD&category=&machine=&format=json|csv``, paged by
``pageSize`` and ``nextToken``.

What each machine had installed against what was authorized on that day, what it was missing and for how
long, what was overdue against its category's deadline, and which installs failed or never finished
(shared/governance/audit.py has the rules, audit_inputs.py the reads). Readers may ask.
"""

from __future__ import annotations

from datetime import UTC, datetime

import azure.durable_functions as df
import azure.functions as func

from functions.http import error_response, find_machine, json_response, requires
from shared.azure.tables import table_service
from shared.fleet.machines_table import InventoryDirectory, MachineInventory
from shared.governance.audit import AuditError, parse_audit_query, summary, to_csv
from shared.governance.audit_inputs import audit_reader
from shared.principal import Role
from shared.settings import load_settings

bp = df.Blueprint()

# Excel reads a CSV as the system's ANSI code page unless it starts with a UTF-8 byte order mark.
UTF8_BOM = "\ufeff"


def utc_now() -> datetime:
    """The API's clock (tests replace it with the local host's virtual clock)."""
    return datetime.now(UTC)


@bp.route(route="audit", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def read_audit(req: func.HttpRequest) -> func.HttpResponse:
    """One machine (``machine``, by any of its names), a category's machines (``category``) or the fleet's,
    on ``on`` (default today, UTC): findings per machine, as JSON or as CSV (one row per machine and finding).
    Machines come a page at a time: follow ``nextToken`` (in the body, or the ``X-Next-Token`` header of a
    CSV) until it is null."""
    try:
        query = parse_audit_query(req.params, utc_now())
    except AuditError as error:
        return error_response(400, "InvalidParameter", str(error), error.field, error.details)
    settings = load_settings()
    service = table_service(settings)
    MachineInventory(service).ensure()
    reader = audit_reader(settings, service)
    category = query.category
    if category is not None and not reader.category_exists(category):
        return error_response(404, "CategoryNotFound", f"there is no asset category {category!r}", "category")
    if query.machine:
        directory = InventoryDirectory(service, settings.target_subscription_ids)
        found = find_machine(directory, query.machine, directory.where)
        if isinstance(found, func.HttpResponse):
            return found
        audits = [reader.machine(found.row, query.day, query.as_of)]
        audits = [a for a in audits if category is None or a.category.name.lower() == category.lower()]
        next_token = None
    else:
        try:
            page = reader.page(query.day, query.as_of, category, query.page_size, query.next_token)
        except AuditError as error:
            return error_response(400, "InvalidParameter", str(error), error.field, error.details)
        audits, next_token = page.audits, page.next_token
    if query.format == "csv":
        headers = {"Content-Disposition": f'attachment; filename="audit-{query.day.isoformat()}.csv"'}
        if next_token:
            headers["X-Next-Token"] = next_token
        return func.HttpResponse(UTF8_BOM + to_csv(audits), status_code=200, headers=headers,
                                 mimetype="text/csv", charset="utf-8")
    return json_response({
        "on": query.day.isoformat(), "asOf": query.as_of.isoformat(), "category": category,
        "summary": summary(audits), "machines": [a.to_json() for a in audits], "nextToken": next_token,
    })  # fmt: skip
