"""The read API of update-deployment runs over the app's HTTP functions, with run data in Azurite.

The runs are written the way the activities write them (RunStore: create, resolve, claim, finish;
RunLogStore: each step's output), so these tests need no orchestration; the last one runs the real
``deployment_run`` orchestrator on the local Durable runner for GET /api/runs/{id}'s link.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

import function_app
from local.clock import VirtualClock
from local.durable import DurableRunner
from local.functions_host import FunctionsHost
from shared.deployments.definition import DeploymentDefinition, validate_definition
from shared.deployments.definitions_table import deployment_store
from shared.deployments.messages import DeploymentRunInput
from shared.deployments.outputs import RunLogStore
from shared.deployments.results import MachineResultStatus
from shared.deployments.runs_table import MachineOutcomeRecord, MachineTarget, RunState, RunStore, run_store
from shared.model.install_outcome import InstallationState, InstallOutcome, PatchInstallResult
from shared.model.machines import OsType, machine_key
from shared.principal import Role, encode_principal
from shared.settings import load_settings
from tests.unit.test_deployment_definition import vm, windows

START = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
RUN_LOGS_CONTAINER = "run-logs"  # the RUN_LOGS_CONTAINER setting's default, which app_settings keeps
SUCCEEDED, FAILED, SKIPPED = (MachineResultStatus.SUCCEEDED, MachineResultStatus.FAILED,
                              MachineResultStatus.SKIPPED)


def body_of(response) -> Any:
    return json.loads(response.get_body())


@pytest.fixture
def reader(app_settings) -> FunctionsHost:
    return FunctionsHost(function_app.app, signed_in_principal=encode_principal("rita", [Role.READER]))


@pytest.fixture
def runs(app_settings) -> RunStore:
    return run_store(load_settings())


def definition(name: str | None = None) -> DeploymentDefinition:
    """A Windows deployment of its own (Azurite is shared by the session) that starts three at a time."""
    return validate_definition({**windows(), "name": name or f"runs-api-{uuid.uuid4().hex[:8]}",
                                "rollout": {"maxConcurrent": 3, "errorBudget": 3}})


def patch(patch_id: str, name: str, state: InstallationState, kb: str) -> PatchInstallResult:
    return PatchInstallResult(patch_id, name, ("Security",), state, kb_id=kb)


def install(installed: int, failed: int, pending: int,
            patches: tuple[PatchInstallResult, ...] | None) -> dict[str, Any]:
    """An install output as _keep_output stores it: asdict(InstallOutcome) through JSON."""
    outcome = InstallOutcome("Succeeded" if not failed else "Failed", "activity-1", "NotNeeded", False,
                             installed, failed, pending, 0, 0, START, patches)
    return json.loads(json.dumps(asdict(outcome), default=str))


SCAN = {"status": "Succeeded", "patches": [{"patch_id": "p-a", "name": "Cumulative update"}]}
CUMULATIVE = patch("p-a", "Cumulative update", InstallationState.INSTALLED, "5034441")
DEFENDER_PENDING = patch("p-b", "Defender update", InstallationState.PENDING, "2267602")
DEFENDER = patch("p-b", "Defender update", InstallationState.INSTALLED, "2267602")
BROKEN = patch("p-c", "Servicing stack", InstallationState.FAILED, "5034439")


@dataclass(frozen=True)
class StoredRun:
    run_id: str
    deployment: str
    keys: dict[str, str]  # computer name -> machine key
    outputs: dict[tuple[str, str], dict[str, Any]]  # (computer, step) -> stored document


@pytest.fixture(scope="module")
def stored_run(azurite) -> StoredRun:
    """app01 succeeded over two install calls, app02 failed, arc01 (Arc: counts only) succeeded,
    app03 waits for a slot, gone01 was never found. Written once for the module (the tests only read);
    the stores are those the app opens with app_settings: same Azurite, default run-logs container."""
    runs = RunStore(TableServiceClient.from_connection_string(azurite.connection_string))
    runs.ensure()
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    logs = RunLogStore(blobs, RUN_LOGS_CONTAINER)
    logs.ensure()
    run_id = f"deploy-runs-api-{uuid.uuid4().hex[:8]}"
    defined = definition()
    assert runs.create_run(run_id, defined, "schedule", START, occurrence=START)
    computers = ("app01", "app02", "arc01", "app03")
    machines = {c: vm(c, OsType.WINDOWS).resource_id for c in (*computers, "gone01")}
    keys = {c: machine_key(r) for c, r in machines.items()}
    targets = [MachineTarget(keys[c], machines[c], c, 0) for c in computers]
    gone = MachineTarget(keys["gone01"], machines["gone01"], "gone01", -1)
    runs.resolve(run_id, START, targets, [(gone, MachineOutcomeRecord(SKIPPED, "machine not found"))])
    claim = runs.claim(run_id, [machines[c] for c in computers], {machines[c]: keys[c] for c in computers},
                       START)
    assert claim.start == tuple(machines[c] for c in computers[:3])

    outputs = {
        ("app01", "prescan"): SCAN,
        ("app01", "install1"): install(1, 0, 1, (CUMULATIVE, DEFENDER_PENDING)),
        ("app01", "install2"): install(1, 0, 0, (DEFENDER,)),
        ("app01", "postscan"): {"status": "Succeeded", "patches": []},
        ("app02", "prescan"): SCAN,
        ("app02", "install1"): install(0, 1, 0, (BROKEN,)),
        ("arc01", "install1"): install(3, 0, 0, None),
    }
    for (computer, step), document in outputs.items():
        logs.put(run_id, keys[computer], step, document)
        written = [s for c, s in outputs if c == computer]
        runs.update_machine(run_id, keys[computer], {"Outputs": json.dumps(written)})
    finished = START + timedelta(minutes=42)
    runs.finish_machine(run_id, keys["app01"], MachineOutcomeRecord(SUCCEEDED, installed=2), finished)
    runs.finish_machine(run_id, keys["app02"], MachineOutcomeRecord(
        FAILED, "install: failed", failed=1, error_code="InstallFailed", hint="see the install output"),
        finished)  # fmt: skip
    runs.finish_machine(run_id, keys["arc01"], MachineOutcomeRecord(SUCCEEDED, installed=3), finished)
    return StoredRun(run_id, defined.name, keys, outputs)


# --- GET /api/deployment-runs/{runId} ---------------------------------------------------------------


def test_a_run_lists_its_machines_with_links(reader, stored_run):
    response = reader.request("GET", f"/api/deployment-runs/{stored_run.run_id}")
    assert response.status_code == 200, response.get_body()
    run = body_of(response)
    assert (run["runId"], run["deployment"]) == (stored_run.run_id, stored_run.deployment)
    assert run["state"] == "running" and run["machineCount"] == 5 and run["count"] == 5
    assert (run["results"]["succeeded"], run["results"]["failed"], run["results"]["skipped"]) == (2, 1, 1)
    by_computer = {m["computer"]: m for m in run["machines"]}
    assert {c: m["status"] for c, m in by_computer.items()} == {
        "app01": "succeeded", "app02": "failed", "app03": "queued", "arc01": "succeeded", "gone01": "skipped",
    }  # fmt: skip
    app01 = by_computer["app01"]
    assert app01["link"] == f"/api/deployment-runs/{stored_run.run_id}/machines/{stored_run.keys['app01']}"
    assert app01["duration"] == "PT0H42M0S" and app01["installed"] == 2
    assert by_computer["app02"]["errorCode"] == "InstallFailed"
    assert by_computer["gone01"]["reason"] == "machine not found"


@pytest.mark.parametrize(("status", "computers"), [
    ("failed", ["app02"]),
    ("queued", ["app03"]),
    ("running", []),
    ("succeeded,skipped", ["app01", "arc01", "gone01"]),
    ("Partially%20Succeeded", []),
    ("NotReachable,FAILED", ["app02"]),
])  # fmt: skip
def test_machines_filtered_by_status(reader, stored_run, status, computers):
    response = reader.request("GET", f"/api/deployment-runs/{stored_run.run_id}?status={status}")
    assert response.status_code == 200, response.get_body()
    run = body_of(response)
    assert sorted(m["computer"] for m in run["machines"]) == computers
    assert run["count"] == len(computers) and run["machineCount"] == 5


@pytest.mark.parametrize("status", ["bogus", "failed,", "finished"])
def test_an_unknown_status_filter_is_a_400_naming_status(reader, stored_run, status):
    response = reader.request("GET", f"/api/deployment-runs/{stored_run.run_id}?status={status}")
    assert response.status_code == 400
    error = body_of(response)["error"]
    assert error["field"] == "status" and "partially succeeded" in error["message"]


def test_an_unknown_run_is_a_404(reader, app_settings):
    unknown = "/api/deployment-runs/deploy-nothing-here"
    for path in (unknown, f"{unknown}/machines/k", f"{unknown}/machines/k/outputs/prescan"):
        response = reader.request("GET", path)
        assert response.status_code == 404, path
        assert body_of(response)["error"]["code"] == "RunNotFound"


# --- GET /api/deployment-runs/{runId}/machines/{machine} ---------------------------------------------


def machine_path(stored: StoredRun, computer: str) -> str:
    return f"/api/deployment-runs/{stored.run_id}/machines/{stored.keys[computer]}"


def test_a_machine_shows_the_updates_of_both_install_calls_and_its_outputs(reader, stored_run):
    response = reader.request("GET", machine_path(stored_run, "app01"))
    assert response.status_code == 200, response.get_body()
    machine = body_of(response)
    assert machine["status"] == "succeeded" and machine["computer"] == "app01"
    assert machine["updatesAvailable"] is True
    # The first call left the Defender update pending; the second installed it.
    assert machine["updates"] == [
        {"patchId": "p-a", "name": "Cumulative update", "kbId": "5034441", "version": None,
         "classifications": ["Security"], "installationState": "Installed"},
        {"patchId": "p-b", "name": "Defender update", "kbId": "2267602", "version": None,
         "classifications": ["Security"], "installationState": "Installed"},
    ]  # fmt: skip
    base = machine_path(stored_run, "app01")
    steps = ("prescan", "install1", "install2", "postscan")
    assert machine["outputs"] == [{"step": step, "link": f"{base}/outputs/{step}"} for step in steps]


def test_a_failed_machine_lists_the_failed_update(reader, stored_run):
    machine = body_of(reader.request("GET", machine_path(stored_run, "app02")))
    assert machine["status"] == "failed" and machine["hint"] == "see the install output"
    updates = [(u["name"], u["installationState"]) for u in machine["updates"]]
    assert updates == [("Servicing stack", "Failed")]


def test_an_arc_server_has_counts_but_no_update_list(reader, stored_run):
    machine = body_of(reader.request("GET", machine_path(stored_run, "arc01")))
    assert machine["installed"] == 3
    assert machine["updatesAvailable"] is False and machine["updates"] == []
    assert [o["step"] for o in machine["outputs"]] == ["install1"]


def test_a_machine_that_never_installed_has_no_updates_and_no_outputs(reader, stored_run):
    machine = body_of(reader.request("GET", machine_path(stored_run, "app03")))
    assert machine["status"] == "queued"
    assert machine["updatesAvailable"] is False and machine["updates"] == [] and machine["outputs"] == []


def test_an_unknown_machine_is_a_404(reader, stored_run):
    for path in (f"/api/deployment-runs/{stored_run.run_id}/machines/0123abcd",
                 f"/api/deployment-runs/{stored_run.run_id}/machines/0123abcd/outputs/prescan"):
        response = reader.request("GET", path)
        assert response.status_code == 404, path
        error = body_of(response)["error"]
        assert error["code"] == "MachineNotFound" and "0123abcd" in error["message"]


def test_a_run_machine_answers_to_its_computer_name_and_resource_id(reader, stored_run):
    resource_id = vm("app01", OsType.WINDOWS).resource_id
    base = f"/api/deployment-runs/{stored_run.run_id}/machines"
    for name in ("APP01", "app01", quote(resource_id, safe="")):
        response = reader.request("GET", f"{base}/{name}")
        assert response.status_code == 200, (name, response.get_body())
        shown = body_of(response)
        assert (shown["machine"], shown["computer"]) == (stored_run.keys["app01"], "app01")
        assert shown["link"] == machine_path(stored_run, "app01")  # links use the key
        assert shown["durationText"] == "42 min 0 s" and shown["duration"] == "PT0H42M0S"
    output = reader.request("GET", f"{base}/App01/outputs/install2")
    assert output.status_code == 200 and body_of(output) == stored_run.outputs[("app01", "install2")]
    # gone01 has a row in the run (skipped) though it is in no inventory: found by its name too.
    assert body_of(reader.request("GET", f"{base}/gone01"))["status"] == "skipped"


# --- GET .../outputs/{step} ----------------------------------------------------------------------------


@pytest.mark.parametrize(("computer", "step"),
                         [("app01", "prescan"), ("app01", "install2"), ("arc01", "install1")])
def test_a_step_output_is_served_as_stored(reader, stored_run, computer, step):
    response = reader.request("GET", f"{machine_path(stored_run, computer)}/outputs/{step}")
    assert response.status_code == 200, response.get_body()
    assert body_of(response) == stored_run.outputs[(computer, step)]


@pytest.mark.parametrize(("computer", "step"), [("app03", "prescan"), ("app01", "install3"), ("app01", "..")])
def test_a_missing_step_output_is_a_404_naming_the_step(reader, stored_run, computer, step):
    response = reader.request("GET", f"{machine_path(stored_run, computer)}/outputs/{step}")
    assert response.status_code == 404
    error = body_of(response)["error"]
    assert error["code"] == "RunLogNotFound" and error["field"] == "step" and repr(step) in error["message"]


# --- GET /api/deployments/{name}/runs ----------------------------------------------------------------


@pytest.fixture
def three_runs(runs) -> tuple[str, list[str]]:
    """Three runs of a deployment that is not (or no longer) stored, oldest first."""
    defined = definition()
    run_ids = []
    for day in range(3):
        occurrence = START + timedelta(days=day)
        run_id = f"deploy-{defined.name}-{occurrence:%Y%m%dT%H%MZ}"
        assert runs.create_run(run_id, defined, "schedule", occurrence, occurrence=occurrence)
        run_ids.append(run_id)
    return defined.name, run_ids


def test_a_deployments_runs_newest_first_with_top(reader, three_runs):
    name, run_ids = three_runs
    response = reader.request("GET", f"/api/deployments/{name}/runs")
    assert response.status_code == 200, response.get_body()
    listed = body_of(response)
    assert [r["runId"] for r in listed["runs"]] == run_ids[::-1]
    assert listed["count"] == 3 and listed["total"] == 3
    assert listed["runs"][0]["link"] == f"/api/deployment-runs/{run_ids[2]}"
    assert listed["runs"][0]["state"] == "queued" and listed["runs"][0]["occurrence"].startswith("2026-03-12")

    top = body_of(reader.request("GET", f"/api/deployments/{name.upper()}/runs?top=2"))
    assert [r["runId"] for r in top["runs"]] == run_ids[:0:-1] and top["total"] == 3


@pytest.mark.parametrize("top", ["0", "101", "ten", "-1", "2.5"])
def test_a_bad_top_is_a_400_naming_top(reader, three_runs, top):
    response = reader.request("GET", f"/api/deployments/{three_runs[0]}/runs?top={top}")
    assert response.status_code == 400
    assert body_of(response)["error"]["field"] == "top"


def test_an_unknown_deployment_without_runs_is_a_404_but_a_stored_one_lists_none(reader, app_settings):
    response = reader.request("GET", "/api/deployments/never-defined-here/runs")
    assert response.status_code == 404 and body_of(response)["error"]["code"] == "DeploymentNotFound"

    defined = definition()
    deployment_store(load_settings()).create(defined, None, START)
    listed = body_of(reader.request("GET", f"/api/deployments/{defined.name}/runs"))
    assert listed == {"deployment": defined.name, "count": 0, "total": 0, "runs": []}


def test_reading_runs_needs_a_signed_in_reader(app_settings, stored_run):
    anonymous = FunctionsHost(function_app.app)
    app01 = machine_path(stored_run, "app01")
    run = f"/api/deployment-runs/{stored_run.run_id}"
    for path in (run, f"/api/deployments/{stored_run.deployment}/runs", app01, f"{app01}/outputs/prescan"):
        assert anonymous.request("GET", path).status_code == 401, path
    nobody = FunctionsHost(function_app.app, signed_in_principal=encode_principal("nemo", []))
    assert nobody.request("GET", f"/api/deployment-runs/{stored_run.run_id}").status_code == 403


# --- GET /api/runs/{runId} of a deployment run --------------------------------------------------------


@pytest.fixture
def durable(app_settings) -> Iterator[DurableRunner]:
    with DurableRunner(function_app.app, VirtualClock(START), task_hub="TestHub") as running:
        yield running


def test_the_run_status_links_to_the_runs_details(durable, runs):
    """A missed occurrence resolves to no machines, so the real orchestrator finishes without ARM."""
    defined = definition()
    run_id = f"deploy-{defined.name}-{START:%Y%m%dT%H%MZ}"
    runs.create_run(run_id, defined, "schedule", START, occurrence=START, state=RunState.MISSED,
                    reason="the scheduler did not run")
    payload = DeploymentRunInput(run_id=run_id, deployment=defined.name, trigger="schedule")
    durable.start_new("deployment_run", run_id, payload.model_dump(mode="json"))
    durable.wait_for_completion(run_id, timeout=20)
    host = FunctionsHost(function_app.app, durable.client_binding_json,
                         signed_in_principal=encode_principal("rita", [Role.READER]))
    status = body_of(host.request("GET", f"/api/runs/{run_id}"))
    assert status["kind"] == "deployment_run" and status["status"] == "Completed"
    assert status["details"] == f"/api/deployment-runs/{run_id}"
    details = body_of(host.request("GET", status["details"]))
    assert details["state"] == "missed" and details["stopReason"] == "the scheduler did not run"
    assert details["machines"] == []
