"""Health and run status over HTTP: ``/api/health`` and ``/api/runs/{runId}`` for any run the API started."""

from __future__ import annotations

import asyncio
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from functions.deployments import ORCHESTRATOR as DEPLOYMENT_RUN_ORCHESTRATOR
from functions.deployments import run_progress
from functions.durable import batch_instance_id
from functions.http import error_response, json_response, requires
from shared.assessment.messages import AssessmentCounts
from shared.deployments.runs_table import run_store
from shared.principal import Role
from shared.settings import SettingsError, load_settings

bp = df.Blueprint()

# Durable run ids the API hands out start with these; anything else is not ours to show.
_RUN_PREFIXES = ("discovery-", "assessment-", "lightcheck-", "deploy-")
ASSESSMENT_RUN_ORCHESTRATOR = "assessment_run"  # functions/assessment.py
# A running assessment's counts add up its batches' statuses: 100 at 10,000 machines in batches of 100
# (issue 12's fleet). Past this many, a status read stays cheap and shows the batches that ended.
MAX_LIVE_BATCH_READS = 200


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness plus a configuration check; names every bad setting, reveals no values."""
    try:
        load_settings()
    except SettingsError as error:
        return json_response({"status": "misconfigured", "problems": error.problems}, 503)
    return json_response({"status": "ok"})


@bp.route(route="runs/{runId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
@requires(Role.READER)
async def read_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
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
        if status.runtime_status is df.OrchestrationRuntimeStatus.Running:
            body["progress"] = _live_progress(run_id, status.custom_status)
    running = status.runtime_status is df.OrchestrationRuntimeStatus.Running
    if status.name == ASSESSMENT_RUN_ORCHESTRATOR and running:
        body["progress"] = await _live_assessment(client, run_id, status.custom_status)
    return json_response(body)


async def _live_assessment(client: df.DurableOrchestrationClient, run_id: str, master_status: Any) -> Any:
    """A running assessment's counts as of each machine that finished: the listing's own counts plus every
    batch's, the finished batches' results and the running ones' custom status (functions/assessment.py
    ``assessment_batch``). The master's status alone moves only when a whole batch ends."""
    if not isinstance(master_status, dict) or master_status.get("stage") != "assessing":
        return master_status
    batches = master_status.get("batches")
    if not isinstance(batches, int) or not 0 < batches <= MAX_LIVE_BATCH_READS:
        return master_status
    try:
        listing = AssessmentCounts(
            not_assessable=int(master_status.get("not_assessable", 0)),
            unsupported=int(master_status.get("unsupported", 0)),
        )
        reads = (client.get_status(batch_instance_id(run_id, n)) for n in range(batches))
        statuses = await asyncio.gather(*reads)
    except Exception:  # noqa: BLE001 - the task hub away for a moment: the master's status is still an answer
        return master_status
    total = listing.model_copy(update={"machines": listing.not_assessable + listing.unsupported})
    for status in statuses:
        if status is None or status.runtime_status is None:
            continue
        done = status.runtime_status is df.OrchestrationRuntimeStatus.Completed
        counts = status.output if done else status.custom_status
        if isinstance(counts, dict):
            total = total.plus(AssessmentCounts.model_validate(counts))
    return {**master_status, **total.model_dump(mode="json")}


def _live_progress(run_id: str, master_status: Any) -> Any:
    """A running deployment's counters as its row has them now, as /api/deployment-runs/{id} shows them
    (the master's status has only the batches that ended); the master's status if the row is unreadable."""
    try:
        record = run_store(load_settings()).get_run(run_id)
    except Exception:  # noqa: BLE001 - storage away: what the orchestration knows is still an answer
        return master_status
    batches = master_status if isinstance(master_status, dict) else {}
    return {**batches, **run_progress(record.to_json()), "stage": "running"}
