"""The patch inventory over HTTP (`/api/patches`): every update version seen, its state per category, its
history, and the facts operators keep (impact, references, justification).

``GET /api/patches?osType=&category=&state=&classification=`` lists; ``&approvedAt=<time>`` (with
``category``) lists what was approved for the category at that time, read from the history.
``GET /api/patches/{osType}/{key}`` (the key URL-encoded: ``KB5034441``, ``openssl=3.0.2-0ubuntu1.12``)
answers the facts, each category's state and the history, newest first. ``PATCH`` of the same URL
(Operator) edits the facts under the ETag. Reading evaluates the categories' automatic rules first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import unquote

import azure.durable_functions as df
import azure.functions as func

from functions.http import error_response, json_response, read_json, requires
from shared.governance.approvals import evaluate_auto_rules
from shared.governance.patch_refs import PatchRef, PatchRefError, parse_patch_ref
from shared.governance.patches import PatchState, parse_facts_edit
from shared.governance.patches_table import EditConflict, PatchInventory, PatchNotFound, patch_inventory
from shared.model.machines import OsType
from shared.principal import Principal, Role
from shared.settings import load_settings

bp = df.Blueprint()

_STATES = [s.value for s in PatchState]


def _ref(req: func.HttpRequest) -> PatchRef | func.HttpResponse:
    os_name, key = req.route_params.get("osType", ""), unquote(req.route_params.get("key", ""))
    canonical = next((o for o in OsType if o.value.lower() == os_name.lower()), None)
    if canonical is None:
        return error_response(404, "PatchNotFound", f"{os_name!r} is not Windows or Linux")
    try:
        return parse_patch_ref(canonical, key)
    except PatchRefError as error:
        return error_response(404, "PatchNotFound", str(error))


def _detail(inventory: PatchInventory, ref: PatchRef) -> dict[str, object]:
    facts = inventory.facts(ref)
    return facts.to_json() | {
        "categories": [s.to_json() for s in inventory.states(ref)],
        "history": [h.to_json() for h in inventory.history(ref)],
    }


def _not_found(error: PatchNotFound) -> func.HttpResponse:
    return error_response(404, "PatchNotFound", str(error))


@bp.route(route="patches", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def list_patches(req: func.HttpRequest) -> func.HttpResponse:
    params = req.params
    problems = []
    os_type = params.get("osType") or None
    canonical = next((o.value for o in OsType if os_type and o.value.lower() == os_type.lower()), None)
    if os_type and canonical is None:
        problems.append(("osType", "Windows or Linux"))
    state = params.get("state") or None
    if state is not None and state not in _STATES:
        problems.append(("state", f"one of {', '.join(_STATES)}"))
    category = params.get("category") or None
    approved_at: datetime | None = None
    if params.get("approvedAt"):
        try:
            approved_at = datetime.fromisoformat(params["approvedAt"].replace("Z", "+00:00"))
            if approved_at.tzinfo is None:
                raise ValueError
        except ValueError:
            problems.append(("approvedAt", "an ISO 8601 time with its zone, such as 2026-03-01T00:00:00Z"))
        if not category:
            problems.append(("category", "required with approvedAt: approval is per category"))
    if problems:
        field, rule = problems[0]
        return error_response(400, "InvalidField", f"{field}: {rule}", field, problems)
    settings, now = load_settings(), datetime.now(UTC)
    inventory = patch_inventory(settings)
    evaluate_auto_rules(settings, now, only=category, inventory=inventory)
    if approved_at is not None and category:
        refs = sorted(inventory.approved(category, approved_at))
        return json_response({"category": category, "approvedAt": approved_at.isoformat(), "count": len(refs),
                              "patches": [r.to_json() for r in refs]})
    views = inventory.list(canonical, category, PatchState(state) if state else None,
                           params.get("classification") or None)
    listed = [v.to_json() | {"link": f"/api/patches/{v.facts.ref.os_type.value}/{v.facts.ref.key}"}
              for v in views]
    return json_response({"count": len(listed), "patches": listed})


@bp.route(route="patches/{osType}/{key}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def read_patch(req: func.HttpRequest) -> func.HttpResponse:
    ref = _ref(req)
    if isinstance(ref, func.HttpResponse):
        return ref
    settings = load_settings()
    inventory = patch_inventory(settings)
    evaluate_auto_rules(settings, datetime.now(UTC), inventory=inventory)
    try:
        facts = inventory.facts(ref)
        return json_response(_detail(inventory, ref), headers={"ETag": facts.etag or ""})
    except PatchNotFound as error:
        return _not_found(error)


@bp.route(route="patches/{osType}/{key}", methods=["PATCH"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.OPERATOR)
def edit_patch(req: func.HttpRequest, principal: Principal) -> func.HttpResponse:
    """Edit an update's facts (impact, references, justification); the fields given are replaced."""
    ref = _ref(req)
    if isinstance(ref, func.HttpResponse):
        return ref
    edit = read_json(req, parse_facts_edit)
    if isinstance(edit, func.HttpResponse):
        return edit
    inventory = patch_inventory(load_settings())
    try:
        facts = inventory.edit_facts(ref, edit, principal.name, datetime.now(UTC),
                                     req.headers.get("If-Match"))
    except PatchNotFound as error:
        return _not_found(error)
    except EditConflict as error:
        return error_response(412, "EditConflict", str(error))
    return json_response(_detail(inventory, ref), headers={"ETag": facts.etag or ""})

