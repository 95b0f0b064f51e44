"""Deployment runs over HTTP: start one now (stored or inline definition), cancel one, and read them.

Starting and cancelling need the Operator role. Reading needs the Reader role and only reads what
the run's activities wrote: a deployment's runs, one run with its machines, one machine with the
updates its install reported (``shared.deployments.runs_table``), and the stored output of each
step in Blob Storage (``shared.deployments.outputs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, get_args

import azure.durable_functions as df
import azure.functions as func

from functions.deployments import ORCHESTRATOR, adhoc_run_id, run_input
from functions.deployments_api import enforcement_refusal
from functions.durable import runtime_status
from functions.http import error_response, find_machine, json_response, read_json, requires, run_accepted
from shared.deployments.definition import validate_inline_definition
from shared.deployments.definitions_table import DeploymentNotFound, deployment_store
from shared.deployments.messages import Step
from shared.deployments.outputs import RunLogNotFound, run_log_store
from shared.deployments.reconcile import close_lost_run, is_lost
from shared.deployments.results import MachineResultStatus
from shared.deployments.run_machines import RunMachines
from shared.deployments.runs_table import (
    MachineState,
    RunNotFound,
    RunRecord,
    RunState,
    RunStore,
    machine_to_json,
    run_store,
)
from shared.fleet.machine_names import MachineEntry
from shared.model.install_outcome import InstallationState, PatchInstallResult
from shared.principal import Principal, Role
from shared.settings import Settings, load_settings

bp = df.Blueprint()

# A page of a deployment's runs: each run is one Table read, so the page stays small by default and
# is capped where a workbook or a person can still read it (our choice, not an Azure limit).
DEFAULT_RUNS_TOP = 20
MAX_RUNS_TOP = 100
# Steps in the order a machine goes through them (shared.deployments.messages.Step).
STEPS: tuple[str, ...] = get_args(Step)
INSTALL_STEPS = tuple(s for s in STEPS if s.startswith("install"))
# ``?status=`` takes a machine's state: waiting, running, or one of the result statuses.
MACHINE_STATUSES: tuple[str, ...] = (
    *(s.value for s in MachineState), *(s.value for s in MachineResultStatus),
)


class OutputUnreadable(ValueError):
    """A stored install output that does not have the shape of an InstallOutcome."""


def _run_link(run_id: str) -> str:
    return f"/api/deployment-runs/{run_id}"


def _machine_link(run_id: str, machine: str) -> str:
    return f"{_run_link(run_id)}/machines/{machine}"


def _run_not_found(run_id: str) -> func.HttpResponse:
    return error_response(404, "RunNotFound", f"no deployment run {run_id!r}")


def _parse_top(raw: str | None) -> int | None:
    """The page size, or None when ``raw`` is not a whole number from 1 to MAX_RUNS_TOP."""
    if raw is None:
        return DEFAULT_RUNS_TOP
    text = raw.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_RUNS_TOP:
        return None
    return int(text)


def _status_key(value: str) -> str:
    """``Partially Succeeded``, ``partially succeeded`` and ``PartiallySucceeded`` name one status."""
    return value.replace(" ", "").lower()


def _parse_statuses(raw: str | None) -> frozenset[str] | None:
    """The machine states asked for (``?status=failed,not reachable``); empty for no filter, None if bad."""
    if raw is None:
        return frozenset()
    known = {_status_key(s): s for s in MACHINE_STATUSES}
    asked = [_status_key(part) for part in raw.split(",")]
    if not asked or any(a not in known for a in asked):
        return None
    return frozenset(known[a] for a in asked)


def _run_summary(run: RunRecord) -> dict[str, Any]:
    return {**run.to_json(), "link": _run_link(run.run_id)}


def _listed_machine(run_id: str, row: Mapping[str, Any]) -> dict[str, Any]:
    shown = machine_to_json(row)
    return {**shown, "link": _machine_link(run_id, shown["machine"])}


def _store(settings: Settings) -> RunStore:
    return run_store(settings)


def run_machine(store: RunStore, run_id: str, machine: str) -> MachineEntry | func.HttpResponse:
    """The machine's row in the run, named by its key, resource id or computer name, or the 404 naming
    what is missing (the run or the machine), or the 409 listing the machines of an ambiguous name."""
    try:
        store.get_run(run_id)
    except RunNotFound:
        return _run_not_found(run_id)
    machines = RunMachines(store, run_id)
    return find_machine(machines, machine, machines.where)


# --- start now, cancel ---------------------------------------------------------------------------


@bp.route(route="deployments/{name}/runs", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
@requires(Role.OPERATOR)
async def start_deployment_now(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    """Run a stored deployment now; its window opens when the run has resolved its machines."""
    name = req.route_params.get("name", "")
    settings = load_settings()
    try:
        stored = deployment_store(settings).get(name)
    except DeploymentNotFound:
        return error_response(404, "DeploymentNotFound", f"no deployment named {name!r}")
    now = datetime.now(UTC)
    run_id = adhoc_run_id(stored.definition.name, now)
    run_store(settings).create_run(run_id, stored.definition, "http", now, members=stored.frozen_members)
    await client.start_new(ORCHESTRATOR, run_id, run_input(run_id, stored.definition, "http", settings))
    return run_accepted(run_id)


@bp.route(route="deployment-runs", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
@requires(Role.OPERATOR)
async def start_inline_deployment(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    """Run a definition given in the body now, without storing it as a deployment; groups are evaluated
    when the run starts. Its ``schedule`` may be left out (the run starts now either way)."""
    now = datetime.now(UTC)
    definition = read_json(req, lambda body: validate_inline_definition(body, now))
    if isinstance(definition, func.HttpResponse):
        return definition
    settings = load_settings()
    # The approval rule as at a create (checked again when the run starts, as for every run).
    refused = enforcement_refusal(definition, None, settings)
    if refused is not None:
        return refused
    run_id = adhoc_run_id(definition.name, now)
    run_store(settings).create_run(run_id, definition, "http-inline", now)
    await client.start_new(ORCHESTRATOR, run_id, run_input(run_id, definition, "http-inline", settings))
    return run_accepted(run_id)


@bp.route(route="deployment-runs/{runId}/cancel", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
@requires(Role.OPERATOR)
async def cancel_deployment_run(req: func.HttpRequest, client: df.DurableOrchestrationClient,
                                principal: Principal) -> func.HttpResponse:
    """Stop starting machines; those running finish (an install cannot be stopped midway), the rest are
    recorded as cancelled. A run whose orchestration is gone is closed at once (deployments.reconcile)."""
    run_id = req.route_params.get("runId", "")
    settings = load_settings()
    store = run_store(settings)
    try:
        run = store.get_run(run_id)
        if run.state not in (RunState.QUEUED, RunState.RUNNING):
            return error_response(409, "RunFinished", f"run {run_id} is {run.state.value}; nothing to cancel")
        run = store.request_cancel(run_id, principal.name)
        status = await runtime_status(client, run_id)
        if is_lost(run, status, datetime.now(UTC)):
            close_lost_run(settings, run_id, status, datetime.now(UTC))
            run = store.get_run(run_id)
    except RunNotFound:
        return error_response(404, "RunNotFound", f"no deployment run {run_id!r}")
    return json_response(run.to_json(), 202, headers={"Location": f"/api/deployment-runs/{run_id}"})



# --- reading runs ----------------------------------------------------------------------------------


@bp.route(route="deployments/{name}/runs", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def list_deployment_runs(req: func.HttpRequest) -> func.HttpResponse:
    """A deployment's runs, newest first: ``?top=`` (default 20, at most 100). Runs of a deleted
    deployment stay listable."""
    top = _parse_top(req.params.get("top"))
    if top is None:
        message = f"top: must be a whole number from 1 to {MAX_RUNS_TOP}"
        return error_response(400, "InvalidParameter", message, "top")
    name = req.route_params.get("name", "")
    settings = load_settings()
    store = _store(settings)
    run_ids = store.run_ids(name)
    if not run_ids:
        try:
            deployment_store(settings).get(name)
        except DeploymentNotFound:
            message = f"no deployment named {name!r} and no runs of one"
            return error_response(404, "DeploymentNotFound", message)
    runs = []
    for run_id in run_ids[:top]:
        try:
            runs.append(_run_summary(store.get_run(run_id)))
        except RunNotFound:  # indexed, but its row is gone: nothing to show
            continue
    return json_response({"deployment": name, "count": len(runs), "total": len(run_ids), "runs": runs})


@bp.route(route="deployment-runs/{runId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def read_deployment_run(req: func.HttpRequest) -> func.HttpResponse:
    """One run and its machines; ``?status=failed`` (or several, comma-separated) keeps those machines."""
    statuses = _parse_statuses(req.params.get("status"))
    if statuses is None:
        message = f"status: must be one or more (comma-separated) of {', '.join(MACHINE_STATUSES)}"
        return error_response(400, "InvalidParameter", message, "status")
    run_id = req.route_params.get("runId", "")
    store = _store(load_settings())
    try:
        run = store.get_run(run_id)
    except RunNotFound:
        return _run_not_found(run_id)
    machines = [_listed_machine(run_id, row) for row in store.machines(run_id)
                if not statuses or str(row["State"]) in statuses]
    # to_json's "machines" is the number of targets; here "machines" lists them (filtered).
    body = {**_run_summary(run), "machineCount": run.targets, "count": len(machines), "machines": machines}
    return json_response(body)


@bp.route(route="deployment-runs/{runId}/machines/{machine}", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def read_deployment_run_machine(req: func.HttpRequest) -> func.HttpResponse:
    """One machine of a run: its result, the updates its install reported, and links to its step outputs."""
    run_id = req.route_params.get("runId", "")
    settings = load_settings()
    found = run_machine(_store(settings), run_id, req.route_params.get("machine", ""))
    if isinstance(found, func.HttpResponse):
        return found
    machine, row = found.key, found.row
    logs = run_log_store(settings)
    steps = _in_step_order(logs.list_steps(run_id, machine))
    outputs = []
    for step in (s for s in steps if s in INSTALL_STEPS):
        try:
            outputs.append((step, logs.get(run_id, machine, step)))
        except RunLogNotFound:  # removed between the listing and the read
            continue
    try:
        updates = merged_updates(outputs)
    except OutputUnreadable as error:
        return error_response(500, "RunLogUnreadable", str(error))
    link = _machine_link(run_id, machine)
    return json_response({
        **machine_to_json(row), "link": link,
        "updatesAvailable": updates is not None, "updates": updates or [],
        "outputs": [{"step": step, "link": f"{link}/outputs/{step}"} for step in steps],
    })  # fmt: skip


@bp.route(route="deployment-runs/{runId}/machines/{machine}/outputs/{step}", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
@requires(Role.READER)
def read_deployment_run_output(req: func.HttpRequest) -> func.HttpResponse:
    """The document a step stored, as it was stored (an assessment or an install result)."""
    run_id = req.route_params.get("runId", "")
    step = req.route_params.get("step", "")
    settings = load_settings()
    found = run_machine(_store(settings), run_id, req.route_params.get("machine", ""))
    if isinstance(found, func.HttpResponse):
        return found
    machine = found.key
    message = f"machine {machine} of run {run_id} has no output of step {step!r} (steps: {', '.join(STEPS)})"
    missing = error_response(404, "RunLogNotFound", message, "step")
    if step not in STEPS:
        return missing
    try:
        return json_response(run_log_store(settings).get(run_id, machine, step))
    except RunLogNotFound:
        return missing


def _in_step_order(steps: Iterable[str]) -> list[str]:
    order = {step: n for n, step in enumerate(STEPS)}
    return sorted(steps, key=lambda s: (order.get(s, len(order)), s))


def merged_updates(outputs: Iterable[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]] | None:
    """The updates the install calls reported, one entry per patch; a later call's state wins (a second
    call lists what the first left). None when no call listed patches: an Arc server reports counts
    only, and a machine that never installed has no output."""
    merged: dict[str, PatchInstallResult] = {}
    listed = False
    for step, document in outputs:
        patches = document.get("patches")
        if patches is None:
            continue
        if not isinstance(patches, list):
            raise OutputUnreadable(f"{step}: patches must be a list, got {type(patches).__name__}")
        listed = True
        for number, patch in enumerate(patches):
            parsed = _patch(step, number, patch)
            merged[parsed.patch_id] = parsed
    if not listed:
        return None
    return [
        {"patchId": p.patch_id, "name": p.name, "kbId": p.kb_id, "version": p.version,
         "classifications": list(p.classifications), "installationState": p.state.value}
        for p in sorted(merged.values(), key=lambda p: (p.name.lower(), p.patch_id))
    ]  # fmt: skip


def _patch(step: str, number: int, patch: Any) -> PatchInstallResult:
    """One stored patch (``asdict(PatchInstallResult)`` as JSON) read back and checked."""
    where = f"{step}: patches[{number}]"
    if not isinstance(patch, Mapping):
        raise OutputUnreadable(f"{where}: must be an object")
    try:
        return PatchInstallResult(
            patch_id=str(patch["patch_id"]), name=str(patch["name"]),
            classifications=tuple(str(c) for c in patch.get("classifications") or ()),
            state=InstallationState(patch["state"]),
            kb_id=str(patch["kb_id"]) if patch.get("kb_id") else None,
            version=str(patch["version"]) if patch.get("version") else None,
        )  # fmt: skip
    except KeyError as error:
        raise OutputUnreadable(f"{where}: missing {error.args[0]}") from None
    except ValueError as error:
        raise OutputUnreadable(f"{where}.state: {error}") from None
