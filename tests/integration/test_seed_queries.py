"""The legacy Update Management sample log searches, as the seed writes them, answered from rows the
recorder wrote, through the real LogsQueryClient against the Log Analytics stand-in. ``Update`` is the
workspace function over ``Update_CL`` (shared/log_tables.py FUNCTIONS) that presents ``UpdateTitle``
as the legacy ``Title``.

The "error events" search reads the legacy ``Event`` table (Windows event log entries). This
product does not collect event logs, so ``Event_CL`` is declared here, by the test, and filled
with rows the test writes: what is checked is that the ``Update`` half of the query selects
the right computers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.monitor.ingestion import LogsIngestionClient
from azure.monitor.query import LogsQueryClient, LogsQueryResult

from local.clock import VirtualClock
from local.loganalytics import LogAnalyticsStandIn
from local.tls import LocalTls
from shared.assessment.journal import journal_key
from shared.assessment.recording import apply_journal, record_assessment
from shared.azure.credentials import EmulatorCredential
from shared.log_tables import TABLES, Column, ColumnType, LogTable
from shared.model.classification import REQUIRED_FOR_COMPLIANCE, Classification
from shared.model.machines import Machine, OsType
from tests.integration.test_assessment_inventory import (  # noqa: F401 - fixtures used by name
    DAY1,
    DCR,
    NOW,
    WORKSPACE,
    machine,
    outcome,
    pkg,
    send_queued_rows,
    settings,
    win,
)

S, D, L = ColumnType.STRING, ColumnType.DATETIME, ColumnType.LONG
EVENT = LogTable(
    "Event_CL",
    tuple(
        Column(n, t)
        for n, t in (
            ("TimeGenerated", D),
            ("Computer", S),
            ("EventLevelName", S),
            ("EventID", L),
            ("Source", S),
        )
    ),
)
PREVIEW = "2026-01 Cumulative Update Preview for Windows Server 2022 (KB7900003)"


@dataclass(frozen=True)
class Missing:
    title: str
    kb: str | None
    classification: Classification
    optional: bool = False


# The fleet: what each machine misses, in the terms the queries use. Patches are built from it.
FLEET: dict[str, tuple[OsType, list[Missing]]] = {
    "winA": (
        OsType.WINDOWS,
        [
            Missing("2026-01 Security Update (KB7900001)", "7900001", Classification.SECURITY),
            Missing("2026-01 Servicing Stack Update (KB7900002)", "7900002", Classification.CRITICAL),
            Missing(PREVIEW, "7900003", Classification.SECURITY, optional=True),
            Missing("Feature update tools (KB7900004)", "7900004", Classification.TOOLS),
        ],
    ),
    "winB": (OsType.WINDOWS, [Missing(PREVIEW, "7900003", Classification.SECURITY, optional=True)]),
    "linA": (
        OsType.LINUX,
        [Missing("openssl", None, Classification.SECURITY), Missing("vim", None, Classification.OTHER)],
    ),
    "linB": (OsType.LINUX, [Missing("libc6", None, Classification.CRITICAL)]),
    "linC": (OsType.LINUX, [Missing("vim", None, Classification.OTHER)]),
}
_API = {
    Classification.SECURITY: "Security",
    Classification.CRITICAL: "Critical",
    Classification.TOOLS: "Tools",
    Classification.OTHER: "Other",
}


@pytest.fixture
def loganalytics(tls: LocalTls) -> Iterator[LogAnalyticsStandIn]:
    with LogAnalyticsStandIn(
        None,
        tls,
        workspace_id=WORKSPACE,
        dcr_immutable_id=DCR,
        tables=(*TABLES, EVENT),
        clock=VirtualClock(NOW),
    ) as running:
        yield running


@pytest.fixture
def fleet(settings) -> dict[str, Machine]:  # noqa: F811 - the imported fixture
    machines = {}
    # A run id of its own: the outbox (in the session's Azurite) keeps each RecordId once, and this
    # test's Log Analytics is new, so the rows must be new ones.
    run_id = f"run-seed-{uuid.uuid4().hex[:8]}"
    for name, (os_type, missing) in FLEET.items():
        vm = machine(os_type, name=f"{name}-seed")
        patches = [
            win(m.kb, _API[m.classification], title=m.title)
            if m.kb
            else pkg(m.title, "1.0", _API[m.classification])
            for m in missing
        ]
        record_assessment(settings, vm, outcome(*patches), DAY1, run_id, journal_key(run_id, 0))
        machines[name] = vm
    apply_journal(settings, [journal_key(run_id, 0)], DAY1)  # the batch's end
    send_queued_rows(settings)  # the rows reach Log Analytics through the outbox, as after a batch
    return machines


@pytest.fixture
def logs(loganalytics: LogAnalyticsStandIn, tls: LocalTls) -> Iterator[LogsQueryClient]:
    client = LogsQueryClient(
        EmulatorCredential(), endpoint=loganalytics.base_url + "/v1", connection_verify=str(tls.ca_file)
    )
    yield client
    client.close()


def run(logs: LogsQueryClient, kql: str) -> list[dict[str, Any]]:
    result = logs.query_workspace(WORKSPACE, kql, timespan=None)
    assert isinstance(result, LogsQueryResult), result
    table = result.tables[0]
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def required_missing(fleet: dict[str, Machine], os_filter: OsType | None = None) -> set[tuple[str, str]]:
    return {
        (fleet[name].computer_name, m.title)
        for name, (os_type, missing) in FLEET.items()
        for m in missing
        if not m.optional and os_filter in (None, os_type)
    }


NEEDED = 'Update | where UpdateState == "Needed" and Optional == false'


def test_all_computers_with_missing_updates(logs, fleet):
    rows = run(logs, f"{NEEDED} | project Computer, Title, KBID, Classification, PublishedDate")

    assert {(r["Computer"], r["Title"]) for r in rows} == required_missing(fleet)
    assert len(rows) == len(required_missing(fleet))
    assert fleet["winB"].computer_name not in {r["Computer"] for r in rows}  # optional only: compliant
    by_title = {r["Title"]: r for r in rows}
    assert by_title["2026-01 Security Update (KB7900001)"]["KBID"] == "7900001"
    assert by_title["2026-01 Security Update (KB7900001)"]["Classification"] == "Security Updates"


@pytest.mark.parametrize(
    ("clause", "os_type"), [('OSType != "Linux"', OsType.WINDOWS), ('OSType == "Linux"', OsType.LINUX)]
)
def test_all_computers_with_missing_updates_limited_to_one_os(logs, fleet, clause, os_type):
    rows = run(
        logs, f"{NEEDED} | where {clause} | project Computer, Title, KBID, Classification, PublishedDate"
    )

    assert {(r["Computer"], r["Title"]) for r in rows} == required_missing(fleet, os_type)


def test_missing_updates_for_one_computer(logs, fleet):
    computer = fleet["winA"].computer_name
    rows = run(
        logs,
        f'{NEEDED} | where Computer == "{computer}" | project Computer, Title, KBID, Product, PublishedDate',
    )

    expected = {m.title for m in FLEET["winA"][1] if not m.optional}
    assert {r["Title"] for r in rows} == expected
    assert {r["Product"] for r in rows} == {fleet["winA"].os_name}
    assert all(r["PublishedDate"] is not None for r in rows)


def test_distinct_missing_updates_across_all_computers(logs, fleet):
    rows = run(logs, f"{NEEDED} | distinct Title")

    assert sorted(r["Title"] for r in rows) == sorted({title for _, title in required_missing(fleet)})


def test_linux_machines_with_critical_or_security_updates_available(logs, fleet):
    rows = run(
        logs,
        'Update | where OSType == "Linux" '
        '| where UpdateState != "Not needed" and (Classification == "Critical Updates" '
        'or Classification == "Security Updates") | summarize AggregatedValue = count() by Computer',
    )

    expected = {
        fleet[name].computer_name: sum(1 for m in missing if m.classification in REQUIRED_FOR_COMPLIANCE)
        for name, (os_type, missing) in FLEET.items()
        if os_type is OsType.LINUX
    }
    assert {r["Computer"]: r["AggregatedValue"] for r in rows} == {c: n for c, n in expected.items() if n}


def test_error_events_for_machines_missing_critical_or_security_updates(
    logs,
    fleet,
    loganalytics,
    tls,
):
    events = [
        {
            "TimeGenerated": NOW.isoformat(),
            "Computer": vm.computer_name,
            "EventLevelName": level,
            "EventID": 1001,
            "Source": "Service Control Manager",
        }
        for vm in fleet.values()
        for level in ("error", "warning")
    ]
    ingest = LogsIngestionClient(
        loganalytics.base_url, EmulatorCredential(), connection_verify=str(tls.ca_file)
    )
    ingest.upload(DCR, EVENT.stream, events)
    ingest.close()

    rows = run(
        logs,
        'Event_CL | where EventLevelName == "error" and Computer in ((Update '
        '| where (Classification == "Security Updates" or Classification == "Critical Updates") '
        '| where UpdateState == "Needed" and Optional == false | distinct Computer)) | project Computer',
    )

    expected = {
        fleet[name].computer_name
        for name, (_, missing) in FLEET.items()
        if any(m.classification in REQUIRED_FOR_COMPLIANCE and not m.optional for m in missing)
    }
    assert sorted(r["Computer"] for r in rows) == sorted(expected)
    assert fleet["winB"].computer_name not in expected  # its only security update is optional
