"""Compliance Unknown end to end: a CentOS machine (every update "Other") assessed against critical and
security updates is Unknown in the Machines table, the assessment history, the UpdateSummary_CL row,
the machines API and the run's counts; an Ubuntu machine with the same kind of scan stays Compliant."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from azure.data.tables import TableServiceClient

import function_app
from local.azurite import Azurite
from local.clock import VirtualClock
from local.functions_host import FunctionsHost
from local.loganalytics import LogAnalyticsStandIn
from local.tls import LocalTls
from shared.assessment.journal import journal_key
from shared.assessment.messages import AssessmentCounts
from shared.assessment.recording import apply_journal, record_assessment
from shared.assessment.run import result_from_summary
from shared.assessment.updates_table import UpdateInventory
from shared.azure.log_outbox import log_outbox
from shared.fleet.machines_table import MachineInventory
from shared.model.assessment_outcome import AssessmentOutcome, AvailablePatch
from shared.model.machines import Machine, MachineKind, OsType, PowerState
from shared.principal import Role, encode_principal
from shared.settings import Settings, load_settings
from tests.integration.conftest import SUBSCRIPTION

WORKSPACE = "00000000-0000-4000-8000-0000000000cc"
DCR = "dcr-00000000000000000000000000000ccc"
AT = datetime(2026, 1, 12, 3, 0, tzinfo=UTC)



@pytest.fixture
def loganalytics(tls: LocalTls) -> Iterator[LogAnalyticsStandIn]:
    with LogAnalyticsStandIn(None, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR,
                             clock=VirtualClock(AT)) as running:
        yield running


@pytest.fixture
def settings(app_settings: dict[str, str], azurite: Azurite, loganalytics: LogAnalyticsStandIn, tls: LocalTls,
             monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    return load_settings(app_settings | {
        "STORAGE_CONNECTION_STRING": azurite.connection_string,
        "LOGS_INGESTION_ENDPOINT": loganalytics.base_url,
        "LOGS_DCR_IMMUTABLE_ID": DCR,
        "LOG_ANALYTICS_WORKSPACE_ID": WORKSPACE,
        "LOGS_QUERY_ENDPOINT": loganalytics.base_url + "/v1",
        "COMPLIANCE_CLASSIFICATIONS": "Critical Updates,Security Updates",
    })


def linux(name: str, os_name: str, version: str) -> Machine:
    return Machine(
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}",
        name, name, MachineKind.AZURE_VM, SUBSCRIPTION, "rg", "westeurope", OsType.LINUX, os_name, version,
        PowerState.RUNNING, "ImageDefault",
    )


def other_only(*packages: str) -> AssessmentOutcome:
    """What the agent reports where nothing is classified: every update "Other"."""
    patches = tuple(AvailablePatch(f"{p}_1", p, ("Other",), version="1") for p in packages)
    return AssessmentOutcome("Succeeded", "activity", AT, False, 0, len(patches), patches)


def test_a_centos_machine_is_unknown_everywhere_and_an_ubuntu_machine_is_unaffected(
    settings: Settings, azurite: Azurite, loganalytics: LogAnalyticsStandIn
):
    suffix = uuid.uuid4().hex[:8]  # the Azurite of the session is shared with other tests
    centos = linux(f"centos-{suffix}", "centos", "7.9.2009")
    ubuntu = linux(f"ubuntu-{suffix}", "ubuntu", "22.04")
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    machines = MachineInventory(service)
    machines.ensure()
    machines.record([centos, ubuntu], AT)

    journal = journal_key(f"run-{suffix}", 0)
    summaries = {m.name: record_assessment(settings, m, other_only("kernel", "tzdata"), AT, "run-1", journal)
                 for m in (centos, ubuntu)}
    apply_journal(settings, [journal], AT)  # what the batch does at its end
    report = log_outbox(settings).send_pending("test", AT)
    assert not report.errors, report

    # Table: the Machines entity and the assessment history.
    expected = {centos.name: ("Unknown", False), ubuntu.name: ("Compliant", True)}
    history = UpdateInventory(service)
    for machine in (centos, ubuntu):
        entity = machines.get(machine.resource_id)
        assert entity is not None
        assert (entity["Compliance"], entity["Compliant"]) == expected[machine.name]
        latest = next(history.history(machine.key))
        assert (latest["Compliance"], latest["Compliant"]) == expected[machine.name]

    # The UpdateSummary_CL rows.
    rows = loganalytics.query(
        f"UpdateSummary_CL | where Computer endswith '{suffix}' | project Computer, Compliance, Compliant"
    )
    assert {r["Computer"]: (r["Compliance"], r["Compliant"]) for r in rows} == expected

    # The machines API: the list, its compliance filter, and the detail with its assessments.
    host = FunctionsHost(function_app.app, signed_in_principal=encode_principal("r", [Role.READER]))

    def get(path: str) -> dict:
        response = host.request("GET", path)
        assert response.status_code == 200, response.get_body()
        return json.loads(response.get_body())

    everything = get("/api/machines?os=Linux&pageSize=1000")["machines"]
    listed = {m["computerName"]: (m["compliance"], m["compliant"])
              for m in everything if m["computerName"] in expected}
    assert listed == expected
    unknown = {m["computerName"] for m in get("/api/machines?compliance=unknown&pageSize=1000")["machines"]}
    assert centos.name in unknown and ubuntu.name not in unknown
    detail = get(f"/api/machines/{centos.key}")
    assert (detail["compliance"], detail["compliant"]) == ("Unknown", False)
    assert detail["assessments"][0]["compliance"] == "Unknown"
    bad = host.request("GET", "/api/machines?compliance=maybe")
    assert bad.status_code == 400 and json.loads(bad.get_body())["error"]["field"] == "compliance"

    # The run's counts.
    counts = [AssessmentCounts.of(result_from_summary(s)) for s in summaries.values()]
    total = counts[0].plus(counts[1])
    assert (total.compliant, total.non_compliant, total.compliance_unknown) == (1, 0, 1)
