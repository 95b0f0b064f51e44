"""Asset categories over HTTP: create, list, get, edit, delete (`/api/categories`).

Reading needs the Reader role, writing the Operator role. Every invalid field is a 400 naming the field
(all of them at once); nothing is stored from an invalid request. Edits and deletes carry an ETag: the
request's ``If-Match`` when given, else the one read just before the write.

A write re-places the fleet at once (synchronously, bounded by the Machines table: one read of the
placement columns and a merge of the rows that changed) and answers what that did and cost under
``placement``; the saved searches of the category written are run first. Heartbeat_CL shows the new
placement from the next discovery pass.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from azure.core.exceptions import AzureError

from functions.http import error_response, json_response, read_json, requires
from shared.azure.credentials import credential_for
from shared.deployments.definitions_table import deployment_store
from shared.governance.approvals_table import RequestState, approval_store
from shared.governance.categories import AssetCategory, saved_searches, validate_category
from shared.governance.categories_table import (
    CategoryExists,
    CategoryLimit,
    CategoryNotFound,
    EditConflict,
    StoredCategory,
    category_store,
    place_fleet,
)
from shared.governance.releases_table import release_store
from shared.principal import Role
from shared.settings import Settings, load_settings

bp = df.Blueprint()
log = logging.getLogger(__name__)


def _view(stored: StoredCategory) -> dict[str, Any]:
    name = stored.category.name
    return stored.to_json() | {"testRing": stored.category.test_ring,
                               "machines": f"/api/machines?category={name}"}


def _placement(settings: Settings, changed: list[AssetCategory]) -> dict[str, Any]:
    """Re-place the fleet; a failure is reported (the category is stored: the next discovery places)."""
    try:
        credential = credential_for(settings) if saved_searches(changed) else None
        return place_fleet(settings, changed, credential).to_json()
    except (AzureError, RuntimeError) as error:
        log.error("re-placing the fleet after a category change failed: %s", error, exc_info=error)
        return {"error": f"the fleet was not re-placed ({type(error).__name__}); the next discovery pass "
                         "places every machine"}


def _written(stored: StoredCategory, placement: dict[str, Any] | None,
             status: int = 200) -> func.HttpResponse:
    headers = {"ETag": stored.etag}
    if status == 201:
        headers["Location"] = f"/api/categories/{stored.category.name}"
    return json_response(_view(stored) | {"placement": placement}, status, headers=headers)


def _not_found(name: str) -> func.HttpResponse:
    return error_response(404, "CategoryNotFound", f"no category named {name!r}")


def _conflict(error: EditConflict) -> func.HttpResponse:
    return error_response(412, "EditConflict", f"{error}; read it again and reapply the edit")


@bp.route(route="categories", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.OPERATOR)
def create_category(req: func.HttpRequest) -> func.HttpResponse:
    category = read_json(req, validate_category)
    if isinstance(category, func.HttpResponse):
        return category
    settings = load_settings()
    try:
        stored = category_store(settings).create(category, datetime.now(UTC))
    except CategoryExists as error:
        return error_response(409, "CategoryExists", str(error), "name")
    except CategoryLimit as error:
        return error_response(409, "CategoryLimit", str(error))
    return _written(stored, _placement(settings, [category]), 201)


@bp.route(route="categories", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def list_categories(req: func.HttpRequest) -> func.HttpResponse:
    """Every category, in the order membership is decided (priority, then name)."""
    views = [_view(s) for s in category_store(load_settings()).list()]
    return json_response({"count": len(views), "categories": views})


@bp.route(route="categories/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def read_category(req: func.HttpRequest) -> func.HttpResponse:
    name = req.route_params.get("name", "")
    try:
        stored = category_store(load_settings()).get(name)
    except CategoryNotFound:
        return _not_found(name)
    return json_response(_view(stored), headers={"ETag": stored.etag})


@bp.route(route="categories/{name}", methods=["PUT"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.OPERATOR)
def edit_category(req: func.HttpRequest) -> func.HttpResponse:
    """Replace a category; the fleet is re-placed when its membership, rings or priority changed."""
    name = req.route_params.get("name", "")
    category = read_json(req, validate_category)
    if isinstance(category, func.HttpResponse):
        return category
    if category.name.lower() != name.lower():
        message = f"name: must be {name!r} as in the URL; to rename, create a new one and delete this one"
        return error_response(400, "InvalidField", message, "name")
    settings = load_settings()
    store = category_store(settings)
    try:
        current = store.get(name)
        stored = store.replace(current, category, req.headers.get("If-Match") or current.etag,
                               datetime.now(UTC))
    except CategoryNotFound:
        return _not_found(name)
    except EditConflict as error:
        return _conflict(error)
    before = current.category
    moves = (before.membership, before.rings, before.priority) != (
        category.membership, category.rings, category.priority)
    return _written(stored, _placement(settings, [category]) if moves else None)


def _users(settings: Settings, category: str) -> dict[str, list[str]]:
    """What still names ``category``: its releases, its approval requests awaiting a decision, and the
    deployments whose ``targets.categories`` name it. Each is one partition read (Releases,
    ApprovalRequests and Deployments are small, one partition each), never a scan of the fleet."""
    lower = category.lower()
    waiting = (RequestState.PENDING, RequestState.DEFERRED)
    return {
        "releases": [r.name for r in release_store(settings).list(category)],
        "approvalRequests": [r.request_id for r in approval_store(settings).list(waiting)
                             if r.category.lower() == lower],
        "deployments": [d.definition.name for d in deployment_store(settings).list()
                        if any(t.category.lower() == lower for t in d.definition.targets.categories or ())],
    }


@bp.route(route="categories/{name}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.OPERATOR)
def delete_category(req: func.HttpRequest) -> func.HttpResponse:
    """Delete; its machines are re-placed (in the next matching category, or uncategorised). Refused
    (409 ``CategoryInUse``, listing them) while releases, approval requests awaiting a decision or
    deployments name it."""
    name = req.route_params.get("name", "")
    settings = load_settings()
    store = category_store(settings)
    try:
        category = store.get(name).category.name
    except CategoryNotFound:
        return _not_found(name)
    users = _users(settings, category)
    if any(users.values()):
        named = "; ".join(f"{kind}: {', '.join(found)}" for kind, found in users.items() if found)
        message = (f"category {category!r} is still named by {named}; delete the deployments and releases "
                   "and have the waiting requests decided first")
        return json_response({"error": {"code": "CategoryInUse", "message": message, **users}}, 409)
    try:
        deleted = store.delete(name, req.headers.get("If-Match") or None)
    except CategoryNotFound:
        return _not_found(name)
    except EditConflict as error:
        return _conflict(error)
    return json_response({"deleted": deleted.name, "placement": _placement(settings, [])})
