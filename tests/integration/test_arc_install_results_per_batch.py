"""Arc-enabled servers' per-update install results read per batch, not per machine: each install step keeps
the counts and notes the installation's id on the machine's row; the batch's end reads every noted
install of its machines with one Resource Graph query (``installation_runs``: ``in~`` over the runs' ids,
paged) and queues their ``UpdateRunProgress_CL`` rows with the others, so that governance (change history,
test evidence) sees each Arc server's updates as it sees a VM's (``shared/deployments/steps.py``
``apply_batch_journal``, ``shared/deployments/arc_results.py``). Through the local host: HTTP ->
orchestrations -> the ARM simulation, which feeds the Resource Graph stand-in (over HTTPS, with its quota).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from local.arm.fleet import parse_fleet
from local.stack import LocalStack
from shared.assessment.journal import APPLIED_ROW, JOURNAL_TABLE, journal_key
from shared.assessment.updates_table import UpdateInventory
from shared.azure.log_outbox import log_outbox
from shared.deployments.outputs import run_log_store
from shared.deployments.runs_table import run_store
from shared.deployments.steps import GRAPH_PENDING_COLUMN, apply_batch_journal
from shared.governance.evidence_table import change_store, evidence_store
from shared.governance.patch_refs import parse_patch_ref
from shared.model.machines import OsType, machine_key
from shared.settings import load_settings
from tests.integration.governance_setup import RUN_TIMEOUT, body, governed_stack, ringed_category

SUB = "66666666-6666-4666-8666-666666666666"
CATEGORY = "arc-batch"
UPDATES = ["openssl", "sudo", "libc6", "tzdata"]
SECURITY_UPDATES = ["libc6", "openssl", "sudo"]  # what a Critical-and-security run installs of UPDATES
ARC_SERVERS = 5  # one batch (DEPLOYMENT_BATCH_SIZE 50)
INSTALL_QUERY = "patchinstallationresources"


def _arc(group: str, name: str, **behaviours: Any) -> dict[str, Any]:
    return {"subscription": SUB, "resourceGroup": group, "name": name, "kind": "arc-server",
            "osType": "Linux", "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope",
            "availableUpdates": UPDATES, "tags": {"ring": "test"}, "behaviours": behaviours}  # fmt: skip


FLEET = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
    _arc("rg-arcb", "arcb-fail-01", failingPatches=["openssl"]),
    *[_arc("rg-arcb", f"arcb-good-{n:02d}") for n in range(1, ARC_SERVERS)],
    _arc("rg-arcl", "arcl-seen-01"),
    _arc("rg-arcl", "arcl-lost-01"),
]})  # fmt: skip


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    category = ringed_category(CATEGORY, "Arc batch", SUB, requiresApproval=True,
                               testEvidence={"minMachines": 1, "bakeHours": 0})
    with governed_stack(FLEET, category) as running:
        yield running


@pytest.fixture
def queries(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The KQL of every query the Resource Graph stand-in answers from now on."""
    assert stack.graph is not None
    seen: list[str] = []
    store = stack.graph.store
    answer = store.run

    def run(kql: str, subscriptions: Any = None) -> Any:
        seen.append(kql)
        return answer(kql, subscriptions)

    monkeypatch.setattr(store, "run", run)
    return seen


def rid(group: str, name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{group}/providers/Microsoft.HybridCompute/machines/{name}"


def create_and_run(stack: LocalStack, name: str, group: str) -> str:
    spec = {
        "name": name, "operatingSystem": "Linux",
        "targets": {"groups": [{"filter": {"resourceGroups": [group]}}]},
        "classifications": ["Critical and security updates"],
        "schedule": {"startTime": "2099-01-01T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 180, "rebootSetting": "Never",
    }  # fmt: skip
    created = stack.functions.request("POST", "/api/deployments", body=spec)
    assert created.status_code == 201, created.get_body()
    started = stack.functions.request("POST", f"/api/deployments/{name}/runs")
    assert started.status_code == 202, started.get_body()
    run_id = str(body(started)["runId"])
    final = stack.durable.wait_for_completion(run_id, timeout=RUN_TIMEOUT)
    assert final["runtimeStatus"] == "Completed", final
    return run_id


def progress(stack: LocalStack, run_id: str) -> list[dict[str, Any]]:
    assert not log_outbox(load_settings()).send_pending("test", stack.clock.now()).errors
    return stack.logs.query(
        f'UpdateRunProgress_CL | where UpdateRunId == "{run_id}" | project Computer, KBID, PackageName, '
        "PackageVersion, InstallationStatus, AuthorizedBy, RecordId"
    )


def installs_read(queries: list[str]) -> list[str]:
    return [q for q in queries if q.lstrip().startswith(INSTALL_QUERY)]


def assessments_read(queries: list[str]) -> list[str]:
    return [q for q in queries if q.lstrip().startswith("patchassessmentresources")]


def test_a_batch_of_arc_servers_reads_their_install_results_with_one_query(stack, queries):
    run_id = create_and_run(stack, "arc-batch", "rg-arcb")

    # Each pre-scan reads its machine's list (it decides the install); the install results and the
    # post-scans' lists of the whole batch: one query each, at the batch's end.
    assert len(installs_read(queries)) == 1, installs_read(queries)
    assert len(assessments_read(queries)) == ARC_SERVERS + 1
    read = installs_read(queries)[0]
    assert " in~ (" in read
    assert all(rid("rg-arcb", m).lower() in read for m in ("arcb-fail-01", "arcb-good-01"))
    rows = {r["Computer"]: r for r in run_store(load_settings()).machines(run_id)}
    assert len(rows) == ARC_SERVERS
    failed = rows["arcb-fail-01"]
    assert (failed["State"], failed["FailedUpdates"]) == ("partially succeeded", 1)
    assert all(rows[f"arcb-good-{n:02d}"]["State"] == "succeeded" for n in range(1, ARC_SERVERS))
    assert all(json.loads(row[GRAPH_PENDING_COLUMN]) == {} for row in rows.values())  # every note taken off

    # One UpdateRunProgress_CL row per update the run selected, with what evidence needs, as for a VM.
    logged = progress(stack, run_id)
    assert sorted((r["Computer"], r["PackageName"], r["InstallationStatus"]) for r in logged) == sorted(
        (name, package, "failed" if (name, package) == ("arcb-fail-01", "openssl") else "succeeded")
        for name in rows for package in SECURITY_UPDATES
    )  # fmt: skip
    assert all(r["PackageVersion"] and r["KBID"] in (None, "") for r in logged)
    assert {r["AuthorizedBy"] for r in logged} == {"test ring"}
    # Governance: the test ring's evidence and each machine's change history hold the Arc servers.
    settings = load_settings()
    failing = next(r for r in logged if r["Computer"] == "arcb-fail-01" and r["PackageName"] == "openssl")
    openssl = parse_patch_ref(OsType.LINUX, f"openssl={failing['PackageVersion']}")
    evidence = {r.machine: r.outcome.value for r in evidence_store(settings).records(CATEGORY, openssl)}
    assert evidence == {machine_key(rid("rg-arcb", name)): "failed" if name == "arcb-fail-01" else "installed"
                        for name in rows}
    history = change_store(settings).history(machine_key(rid("rg-arcb", "arcb-good-01")))
    assert {row["Key"].split("=")[0] for row in history} >= set(SECURITY_UPDATES)
    # The post-scan recorded with its list (read at the batch's end): what is left open is what the run
    # did not install (tzdata is Other), and the failed openssl.
    inventory = UpdateInventory(TableServiceClient.from_connection_string(settings.storage_connection_string))
    for name in rows:
        key = machine_key(rid("rg-arcb", name))
        scans = list(inventory.history(key))
        assert len(scans) == 2 and not any(scan.get("CountsOnly") for scan in scans), scans
        gaps = inventory.machine_updates(key)
        needed = {g["RowKey"].split("|")[-1] for g in gaps if g["State"] == "Needed"}
        assert needed == ({"openssl", "tzdata"} if name == "arcb-fail-01" else {"tzdata"}), (name, needed)

    # Applied again: a no-op that reads nothing. Applied again after an application lost before its end
    # (its mark and the notes it took off as they were): one more query, the same rows (RecordIds).
    before = len(installs_read(queries))
    apply_batch_journal(settings, run_id, 0, stack.clock.now())
    assert len(installs_read(queries)) == before
    service = TableServiceClient.from_connection_string(settings.storage_connection_string)
    service.get_table_client(JOURNAL_TABLE).delete_entity(journal_key(run_id, 0), APPLIED_ROW)
    restore_notes(run_id, rows)
    apply_batch_journal(settings, run_id, 0, stack.clock.now())
    assert len(installs_read(queries)) == before + 1
    again = progress(stack, run_id)
    assert len(again) == len(logged) and {r["RecordId"] for r in again} == {r["RecordId"] for r in logged}


class LosingResourceGraph:
    """The Resource Graph feed, but the installs of the machines named never reach it (a run Resource
    Graph does not have by the batch's end)."""

    def __init__(self, feed: Any, lost: set[str]) -> None:
        self._feed = feed
        self._lost = lost

    def __getattr__(self, name: str) -> Any:
        return getattr(self._feed, name)

    def installation_finished(self, state: Any, *args: Any) -> None:
        if state.spec.name not in self._lost:
            self._feed.installation_finished(state, *args)


def test_an_arc_install_resource_graph_does_not_have_stays_counts_only_and_noted(stack, queries, monkeypatch):
    simulation = stack.arm.simulation
    monkeypatch.setattr(simulation, "resource_graph", LosingResourceGraph(simulation.resource_graph,
                                                                          {"arcl-lost-01"}))
    run_id = create_and_run(stack, "arc-lost", "rg-arcl")

    assert len(installs_read(queries)) == 1
    rows = {r["Computer"]: r for r in run_store(load_settings()).machines(run_id)}
    # The machine's result is right (the install's counts); only its per-update rows are missing.
    lost, seen = rows["arcl-lost-01"], rows["arcl-seen-01"]
    assert (lost["State"], lost["Installed"]) == ("succeeded", len(SECURITY_UPDATES))
    assert set(json.loads(lost[GRAPH_PENDING_COLUMN])) == {"install1"}  # still noted
    assert json.loads(seen[GRAPH_PENDING_COLUMN]) == {}
    logged = progress(stack, run_id)
    assert sorted((r["Computer"], r["PackageName"]) for r in logged) == [
        ("arcl-seen-01", package) for package in SECURITY_UPDATES]
    machine_rows = stack.logs.query(
        f'UpdateRunMachine_CL | where UpdateRunId == "{run_id}" | project Computer, Status, Installed')
    installed = ("succeeded", len(SECURITY_UPDATES))
    assert {r["Computer"]: (r["Status"], r["Installed"]) for r in machine_rows} == {
        "arcl-lost-01": installed, "arcl-seen-01": installed}


def restore_notes(run_id: str, rows: dict[str, dict[str, Any]]) -> None:
    """Each machine's note as its install step left it: the installation's id and start from the step's
    output, the time its result was seen."""
    settings = load_settings()
    outputs = run_log_store(settings)
    notes = {}
    for row in rows.values():
        key = machine_key(str(row["ResourceId"]))
        install = outputs.get(run_id, key, "install1")
        started = install.get("started_at")
        started = datetime.fromisoformat(started).isoformat() if started else None
        note = {"installation": install["activity_id"], "startedAt": started,
                "at": row["FinishedAt"].isoformat()}
        notes[key] = {GRAPH_PENDING_COLUMN: json.dumps({"install1": note})}
    run_store(settings).update_machines(run_id, notes)
