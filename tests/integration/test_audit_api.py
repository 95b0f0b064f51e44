"""GET /api/audit through the local host, over assessments recorded into Azurite as the assessment runs record
them, install history as the deployments record it, and approvals as the patch inventory records them."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

import function_app
import functions.audit_api
from local.clock import VirtualClock
from local.functions_host import FunctionsHost
from local.loganalytics import LogAnalyticsStandIn
from shared.assessment.journal import journal_key
from shared.assessment.recording import apply_journal, record_assessment
from shared.azure.log_outbox import log_outbox
from shared.deployments.governed import record_batch
from shared.deployments.results import patch_progress_rows
from shared.fleet.machines_table import MachineInventory
from shared.governance.audit import CSV_COLUMNS, CompliancePageInput
from shared.governance.audit_inputs import record_compliance_page
from shared.governance.categories import validate_category
from shared.governance.categories_table import category_store
from shared.governance.evidence import UNAUTHORIZED
from shared.governance.patch_refs import PatchRef
from shared.governance.patches import Action, PatchState
from shared.governance.patches_table import patch_inventory
from shared.log_tables import UPDATE_RUN_PROGRESS
from shared.model.assessment_outcome import AssessmentOutcome, AvailablePatch
from shared.model.install_outcome import InstallationState, PatchInstallResult
from shared.model.machines import Machine, MachineKind, OsType, PowerState
from shared.principal import Role, encode_principal
from shared.settings import Settings, load_settings
from tests.integration.conftest import SUBSCRIPTION

ALERT_RULES = Path(__file__).resolve().parents[2] / "infra" / "alerts" / "alert-rules.json"
DAY = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
NOW = DAY + timedelta(days=14, hours=9)  # January 15, 12:00 UTC


def jan(n: int) -> datetime:
    return DAY + timedelta(days=n - 1)


def machine(name: str, os_type: OsType) -> Machine:
    return Machine(
        resource_id=f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/"
        f"{name}",
        name=name, computer_name=f"{name}.contoso.com", kind=MachineKind.AZURE_VM,
        subscription_id=SUBSCRIPTION,
        resource_group="rg", location="westeurope", os_type=os_type,
        os_name="Windows Server 2022 Datacenter" if os_type is OsType.WINDOWS else "ubuntu",
        os_version="10.0.20348" if os_type is OsType.WINDOWS else "22.04", power_state=PowerState.RUNNING,
        patch_mode="Manual",
    )  # fmt: skip


def win(kb: str, classification: str) -> AvailablePatch:
    return AvailablePatch(patch_id=f"id-{kb}", name=f"2026-01 Update (KB{kb})",
                          classifications=(classification,), kb_id=kb)


def pkg(name: str, version: str, classification: str) -> AvailablePatch:
    return AvailablePatch(patch_id=f"{name}_{version}", name=name, classifications=(classification,),
                          version=version)


def assess(settings: Settings, vm: Machine, at: datetime, *patches: AvailablePatch) -> None:
    """One machine's scan as its own batch, recorded and applied as the assessment orchestration does."""
    result = AssessmentOutcome(status="Succeeded", activity_id="a", started_at=None, reboot_pending=False,
                               critical_and_security_count=0, other_count=0, patches=patches)
    run_id = f"run-{at:%m%d}-{uuid.uuid4().hex[:6]}"
    journal = journal_key(f"{run_id}-{vm.key}", 0)
    record_assessment(settings, vm, result, at, run_id, journal)
    apply_journal(settings, [journal], at)


@pytest.fixture
def fleet(app_settings, monkeypatch) -> dict[str, Any]:
    """Two machines of a category of their own (Azurite is shared by the session), a month of history:

    - web (Windows): KB A (critical) missing from Jan 1, installed by Jan 12, missing again from Jan 14;
      KB B (security) missing from Jan 1 throughout; approved for the category on Jan 5.
    - db (Linux): openssl missing from Jan 1, installed on Jan 11 without approval; a failed curl install.
    """
    monkeypatch.setattr(functions.audit_api, "utc_now", lambda: NOW)
    settings = load_settings()
    service = TableServiceClient.from_connection_string(app_settings["STORAGE_CONNECTION_STRING"])
    tag = uuid.uuid4().hex[:8]
    name = f"audit-{tag}"
    category_store(settings).create(validate_category({
        "name": name, "criticality": 2, "owner": {"name": "Web team", "contact": "web@contoso.com"},
        "membership": {"tags": {"audit": tag}}, "deadlines": {"critical": 7, "security": 14},
        "rings": [{"name": "test", "membership": {"tags": {"ring": "test"}}}, {"name": "production"}],
    }), DAY)  # fmt: skip
    web, db = machine(f"web-{tag}", OsType.WINDOWS), machine(f"db-{tag}", OsType.LINUX)
    inventory = MachineInventory(service)
    inventory.ensure()
    placed = {"AssetCategory": name, "Ring": "production"}
    inventory.record([web, db], DAY - timedelta(hours=1), extra={web.key: placed, db.key: placed})

    kb_a, kb_b = str(7_100_000 + int(tag[:4], 16)), str(7_200_000 + int(tag[:4], 16))
    for n in range(1, 12):
        assess(settings, web, jan(n), win(kb_a, "Critical"), win(kb_b, "Security"))
    assess(settings, web, jan(12), win(kb_b, "Security"))
    assess(settings, web, jan(14), win(kb_a, "Critical"), win(kb_b, "Security"))
    assess(settings, db, jan(1), pkg("openssl", "3.0.2-0ubuntu1.12", "Security"),
           pkg("curl", "7.81.0-1ubuntu1.15", "Security"))
    assess(settings, db, jan(12), pkg("curl", "7.81.0-1ubuntu1.15", "Security"))

    patches = patch_inventory(settings)
    ref_b = PatchRef(OsType.WINDOWS, kb=kb_b)
    patches.record_evidence_result(ref_b, name, PatchState.IN_TEST, None, jan(3))
    patches.record_evidence_result(ref_b, name, PatchState.PASSED, None, jan(4))
    patches.change(ref_b, name, Action.AUTHORIZE, "olga", jan(5), "fit for web", roles=[Role.OPERATOR],
                   request_id="req-1")
    patches.change(ref_b, name, Action.APPROVE, "anna", jan(5) + timedelta(hours=1),
                   "tested on the test ring", roles=[Role.APPROVER], request_id="req-1")

    # db's run, recorded as a deployment batch records it: UpdateRunProgress_CL rows with Authorized, and
    # MachineChanges (shared.deployments.governed.record_batch); openssl was never approved for the category.
    installed = [
        PatchInstallResult("openssl_3.0.2", "openssl", ("Security",), InstallationState.INSTALLED,
                           version="3.0.2-0ubuntu1.12"),
        PatchInstallResult("curl_7.81.0", "curl", ("Security",), InstallationState.FAILED,
                           version="7.81.0-1ubuntu1.15"),
    ]  # fmt: skip
    progress = patch_progress_rows(db, installed, jan(11), "db-monthly", "run-db-1", jan(11))
    record_batch(settings, progress, [], jan(11))
    log_outbox(settings).put(UPDATE_RUN_PROGRESS, progress, jan(11))
    return {"category": name, "web": web, "db": db, "kb_a": f"KB{kb_a}", "kb_b": f"KB{kb_b}",
            "settings": settings}


@pytest.fixture
def reader(app_settings) -> FunctionsHost:
    return FunctionsHost(function_app.app, signed_in_principal=encode_principal("rita", [Role.READER]))


def get(host: FunctionsHost, query: str) -> Any:
    response = host.request("GET", f"/api/audit?{query}")
    assert response.status_code == 200, response.get_body()
    return json.loads(response.get_body())


def findings(machine: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(f["finding"], f["update"]): f for f in machine["findings"]}


def test_a_past_day_is_audited_as_it_was_though_later_assessments_changed_the_gaps(fleet, reader):
    web = fleet["web"]
    body = get(reader, f"on=2026-01-10&machine={web.computer_name.upper()}")

    [audited] = body["machines"]
    assert (audited["computer"], audited["category"], audited["ring"], audited["owner"]) == (
        web.computer_name, fleet["category"], "production", "Web team")
    found = findings(audited)
    overdue = found["overdue", fleet["kb_a"]]
    # Missing since Jan 1 (the gap now says Jan 14: it was closed on Jan 12 and reopened).
    assert overdue["missingSince"] == "2026-01-01T03:00:00Z"
    assert (overdue["deadlineDays"], overdue["overdueDays"]) == (7, 3)
    assert overdue["dueAt"] == "2026-01-08T03:00:00Z"
    assert ("overdue", fleet["kb_b"]) not in found  # 14 days for security: due Jan 15
    assert found["authorized missing", fleet["kb_b"]]["missingSince"] == "2026-01-01T03:00:00Z"
    assert audited["counts"]["overdue"] == 1 and audited["maxOverdueDays"] == 3

    before_approval = findings(get(reader, f"on=2026-01-04&machine={web.key}")["machines"][0])
    assert ("authorized missing", fleet["kb_b"]) not in before_approval
    between = get(reader, f"on=2026-01-13&machine={web.key}")["machines"][0]
    assert fleet["kb_a"] not in {f["update"] for f in between["findings"]}  # installed then
    today = findings(get(reader, f"on=2026-01-15&machine={web.key}")["machines"][0])
    assert today["overdue", fleet["kb_b"]]["overdueDays"] == 1  # due Jan 15 03:00, judged at 12:00
    assert ("overdue", fleet["kb_a"]) not in today  # missing again since Jan 14 only


def test_a_category_lists_each_machine_with_installs_against_authorization(fleet, reader):
    body = get(reader, f"on=2026-01-12&category={fleet['category']}")

    by_computer = {m["computer"]: m for m in body["machines"]}
    assert set(by_computer) == {fleet["web"].computer_name, fleet["db"].computer_name}
    db = findings(by_computer[fleet["db"].computer_name])
    unauthorized = db["installed unauthorized", "openssl=3.0.2-0ubuntu1.12"]
    assert (unauthorized["runId"], unauthorized["deployment"], unauthorized["authorizedBy"]) == (
        "run-db-1", "db-monthly", UNAUTHORIZED)
    assert db["failed install", "curl=7.81.0-1ubuntu1.15"]["installStatus"] == "failed"
    assert body["summary"]["machines"] == 2
    assert body["summary"]["machinesWith"]["installed unauthorized"] == 1


def test_the_csv_opens_as_a_table_of_machine_and_finding_rows(fleet, reader):
    response = reader.request("GET", f"/api/audit?on=2026-01-11&category={fleet['category']}&format=csv")

    assert response.status_code == 200
    assert response.mimetype == "text/csv" and response.charset == "utf-8"
    assert 'filename="audit-2026-01-11.csv"' in response.headers["Content-Disposition"]
    text = response.get_body().decode("utf-8")
    assert text.startswith("\ufeff") and "\r\n" in text
    rows = list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))
    assert list(rows[0]) == list(CSV_COLUMNS)
    json_body = get(reader, f"on=2026-01-11&category={fleet['category']}")
    assert len(rows) == sum(max(1, len(m["findings"])) for m in json_body["machines"])
    assert {(r["Computer"], r["Finding"], r["Update"]) for r in rows} >= {
        (fleet["db"].computer_name, "installed unauthorized", "openssl=3.0.2-0ubuntu1.12"),
        (fleet["web"].computer_name, "overdue", fleet["kb_a"]),
    }
    assert {r["Date"] for r in rows} == {"2026-01-11"}


@pytest.mark.parametrize(("query", "fields"), [
    ("on=2026-02-30", ["on"]),
    ("on=yesterday&format=xml", ["on", "format"]),
    ("on=2026-01-16", ["on"]),  # the day after today (Jan 15 on the test's clock)
    ("format=pdf", ["format"]),
    ("pageSize=0", ["pageSize"]),
    ("category=web%2F1&format=html", ["format", "category"]),
])  # fmt: skip
def test_bad_parameters_get_400_naming_each_field(fleet, reader, query, fields):
    response = reader.request("GET", f"/api/audit?{query}")
    assert response.status_code == 400
    error = json.loads(response.get_body())["error"]
    assert error["field"] == fields[0] and [d["field"] for d in error["details"]] == fields


def test_unknown_machine_or_category_is_404_and_signing_in_is_required(fleet, reader, app_settings):
    assert reader.request("GET", "/api/audit?machine=no-such-machine").status_code == 404
    missing = reader.request("GET", "/api/audit?category=no-such-category")
    assert missing.status_code == 404 and json.loads(missing.get_body())["error"]["field"] == "category"
    nobody = FunctionsHost(function_app.app, signed_in_principal=encode_principal("eve", []))
    assert nobody.request("GET", "/api/audit").status_code == 403
    operator = FunctionsHost(function_app.app, signed_in_principal=encode_principal("olga", [Role.OPERATOR]))
    assert operator.request("GET", f"/api/audit?category={fleet['category']}").status_code == 200


def test_the_fleet_is_audited_a_page_at_a_time(fleet, reader):
    first = get(reader, "on=2026-01-12&pageSize=1")
    assert len(first["machines"]) == 1 and first["nextToken"]
    second = get(reader, f"on=2026-01-12&pageSize=1&nextToken={first['nextToken']}")
    assert second["machines"][0]["machine"] != first["machines"][0]["machine"]
    forged = reader.request("GET", "/api/audit?nextToken=not-a-token")
    assert forged.status_code == 400 and json.loads(forged.get_body())["error"]["field"] == "nextToken"


def test_the_daily_rows_reach_log_analytics_once_per_machine_and_day(fleet, tls, monkeypatch):
    workspace, dcr = "00000000-0000-4000-8000-0000000000cc", "dcr-00000000000000000000000000000ccc"
    with LogAnalyticsStandIn(None, tls, workspace_id=workspace, dcr_immutable_id=dcr,
                             clock=VirtualClock(NOW)) as logs:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
        monkeypatch.setenv("LOGS_INGESTION_ENDPOINT", logs.base_url)
        monkeypatch.setenv("LOGS_QUERY_ENDPOINT", logs.base_url + "/v1")
        monkeypatch.setenv("LOGS_DCR_IMMUTABLE_ID", dcr)
        monkeypatch.setenv("LOG_ANALYTICS_WORKSPACE_ID", workspace)
        settings = load_settings()
        request = CompliancePageInput(day=jan(10).date(), generated_at=jan(11) + timedelta(minutes=30))
        token: str | None = None
        machines = 0
        while True:  # the whole fleet, as the timer's run does, a page at a time
            page = record_compliance_page(settings, request.model_copy(update={"token": token}))
            machines, token = machines + page.machines, page.next_token
            if not token:
                break
        assert machines >= 2
        assert record_compliance_page(settings, request).queued == 0  # a retried page queues nothing again
        report = log_outbox(settings).send_pending("test", NOW)
        assert not report.errors, report

        alerts = {r["name"]: r["query"] for r in json.loads(ALERT_RULES.read_text(encoding="utf-8"))}
        unauthorized = logs.query(alerts["unauthorized-installs"])
        breaches = logs.query(alerts["compliance-deadline-breaches"])
        rows = logs.query(
            f"PatchCompliance_CL | where AssetCategory == '{fleet['category']}' "
            "| project Computer, Ring, Owner, MissingUpdates, AuthorizedMissing, Overdue, MaxOverdueDays, "
            "InstalledUnauthorized, AuditDate | order by Computer asc"
        )
    web, db = fleet["web"].computer_name, fleet["db"].computer_name
    audit_date = datetime(2026, 1, 10, tzinfo=UTC)
    assert sorted(rows, key=lambda r: r["Computer"]) == sorted([
        {"Computer": web, "Ring": "production", "Owner": "Web team", "MissingUpdates": 2,
         "AuthorizedMissing": 1, "Overdue": 1, "MaxOverdueDays": 3, "InstalledUnauthorized": 0,
         "AuditDate": audit_date},
        {"Computer": db, "Ring": "production", "Owner": "Web team", "MissingUpdates": 2,
         "AuthorizedMissing": 0, "Overdue": 0, "MaxOverdueDays": 0, "InstalledUnauthorized": 0,
         "AuditDate": audit_date},
    ], key=lambda r: r["Computer"])  # fmt: skip
    # The alert rules' queries fire on this history: db's unapproved installs, web's overdue update.
    assert {(r["PackageName"], r["InstallationStatus"], r["AuthorizedBy"], r["UpdateRunId"])
            for r in unauthorized if r["Computer"] == db} == {
        ("openssl", "succeeded", UNAUTHORIZED, "run-db-1"), ("curl", "failed", UNAUTHORIZED, "run-db-1")}
    assert [(r["Computer"], r["Overdue"], r["MaxOverdueDays"], r["Owner"]) for r in breaches
            if r["AssetCategory"] == fleet["category"]] == [(web, 1, 3, "Web team")]
