"""Releases over HTTP: create, list, get, delete (`/api/releases`); no edit, a release is immutable.

Reading needs the Reader role, creating and deleting the Operator role. A release is built from explicit
items, from every update that passed testing for its category (``from: "passed"``), or frozen from the
versions a ring's machines had installed at a time (``from: "ring"``). Deleting one that a deployment
names is a 409 listing the deployments.
"""

from __future__ import annotations

from datetime import UTC, datetime

import azure.durable_functions as df
import azure.functions as func

from functions.http import error_response, invalid_fields, json_response, read_json, requires
from shared.deployments.definitions_table import deployment_store
from shared.deployments.governed import build_release, release_users
from shared.governance.categories_table import CategoryNotFound
from shared.governance.releases import ReleaseError, parse_release_request
from shared.governance.releases_table import ReleaseExists, ReleaseInUse, ReleaseNotFound, release_store
from shared.model.validation import NAME_PATTERN
from shared.principal import Principal, Role
from shared.settings import load_settings

bp = df.Blueprint()


def _named(req: func.HttpRequest) -> str | None:
    """The route's release name; None for one no release can have (never sent to the table as a key)."""
    name = req.route_params.get("name", "")
    return name if NAME_PATTERN.match(name) else None


def _not_found(name: str) -> func.HttpResponse:
    return error_response(404, "ReleaseNotFound", f"no release named {name!r}")


@bp.route(route="releases", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.OPERATOR)
def create_release(req: func.HttpRequest, principal: Principal) -> func.HttpResponse:
    request = read_json(req, parse_release_request)
    if isinstance(request, func.HttpResponse):
        return request
    settings = load_settings()
    try:
        release = build_release(settings, request, principal.name, datetime.now(UTC))
        release_store(settings).create(release)
    except ReleaseError as error:
        return invalid_fields(error)
    except CategoryNotFound as error:
        return error_response(400, "InvalidField", f"category: {error}", "category")
    except ReleaseExists as error:
        return error_response(409, "ReleaseExists", str(error), "name")
    return json_response(release.to_json(), 201, headers={"Location": f"/api/releases/{release.name}"})


@bp.route(route="releases", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def list_releases(req: func.HttpRequest) -> func.HttpResponse:
    releases = release_store(load_settings()).list(req.params.get("category") or None)
    return json_response({"count": len(releases), "releases": [r.to_json() for r in releases]})


@bp.route(route="releases/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def read_release(req: func.HttpRequest) -> func.HttpResponse:
    name = _named(req)
    if name is None:
        return _not_found(req.route_params.get("name", ""))
    try:
        return json_response(release_store(load_settings()).get(name).to_json())
    except ReleaseNotFound:
        return _not_found(name)


@bp.route(route="releases/{name}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.OPERATOR)
def delete_release(req: func.HttpRequest) -> func.HttpResponse:
    name = _named(req)
    if name is None:
        return _not_found(req.route_params.get("name", ""))
    settings = load_settings()
    users = release_users((d.definition for d in deployment_store(settings).list()), name)
    try:
        release_store(settings).delete(name, users)
    except ReleaseNotFound:
        return _not_found(name)
    except ReleaseInUse as error:
        return json_response({"error": {"code": "ReleaseInUse", "message": str(error),
                                        "deployments": error.deployments}}, 409)
    return func.HttpResponse(status_code=204)
