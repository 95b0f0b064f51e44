"""What recording a scan costs as the fleet grows, and what it sends to Log Analytics over a day.

Issue "10,000 machines a cycle": no Table query of the assessment path may read a number of rows that
grows with the fleet, and an unchanged machine sends at most one full state a day while a search of the
last 24 hours still finds every update it misses.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import pytest
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableServiceClient

from local.azurite import Azurite
from shared.assessment.journal import journal_key
from shared.assessment.recording import apply_journal, record_assessment
from shared.assessment.run import MAX_BATCH_PART_CHARS, _target_entities, _targets, batch_targets
from shared.assessment.updates_table import (
    CATALOGUE_TABLE,
    UPDATE_MACHINES_TABLE,
    UpdateInventory,
    catalogue_partition,
)
from shared.azure.log_outbox import OUTBOX_TABLE, log_outbox
from shared.azure.tables import upsert_in_batches
from shared.log_tables import HEARTBEAT, TABLES, record_id
from shared.model.machines import OsType, machine_from_json
from tests.integration.test_assessment_inventory import (  # noqa: F401 - fixtures used by name
    DAY1,
    loganalytics,
    machine,
    outcome,
    pkg,
    send_queued_rows,
    settings,
)


@contextmanager
def table_reads(port: int) -> Iterator[Counter[str]]:
    """Entities each Table request read back, by table, counted at the HTTP layer."""
    counted: Counter[str] = Counter()
    original = RequestsTransport.send

    def send(self: RequestsTransport, request: Any, **kwargs: Any) -> Any:
        response = original(self, request, **kwargs)
        url = urlparse(request.url)
        if url.port == port and request.method == "GET":
            table = url.path.strip("/").split("/")[-1].split("(")[0]
            try:
                body = json.loads(response.body() or b"{}")
            except ValueError:
                body = {}
            counted[table] += len(body.get("value", [])) if "value" in body else 1
        return response

    RequestsTransport.send = send  # type: ignore[method-assign]
    try:
        yield counted
    finally:
        RequestsTransport.send = original  # type: ignore[method-assign]


def _fleet_needing(service: TableServiceClient, package: str, machines: int) -> None:
    """``machines`` other machines already need ``package``: the index and catalogue say so."""
    partition = catalogue_partition(OsType.LINUX.value, package)
    upsert_in_batches(service.get_table_client(UPDATE_MACHINES_TABLE), (
        {"PartitionKey": partition, "RowKey": f"other{i:05d}", "State": "Needed", "ResourceId": f"/x/{i}",
         "Computer": f"other{i}"} for i in range(machines)
    ))  # fmt: skip
    service.get_table_client(CATALOGUE_TABLE).upsert_entity(
        {"PartitionKey": OsType.LINUX.value, "RowKey": package, "MachinesNeeding": machines}
    )


@pytest.mark.parametrize("fleet", [10, 1000])
def test_a_scan_reads_the_same_rows_whatever_the_fleet(settings, azurite: Azurite, fleet: int):  # noqa: F811
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    UpdateInventory(service).ensure()
    package = f"libscale{fleet}"
    _fleet_needing(service, package, fleet)
    vm = machine(OsType.LINUX)
    run = f"run-scale-{fleet}-{vm.key[:8]}"
    port = urlparse(service.url).port
    assert port is not None

    with table_reads(port) as reads:
        scan = outcome(pkg(package, "1.0", "Security"))
        record_assessment(settings, vm, scan, DAY1, run, journal_key(run, 0))
        apply_journal(settings, [journal_key(run, 0)], DAY1)

    needing = next(e for e in UpdateInventory(service).catalogue() if e["RowKey"] == package)
    assert needing["MachinesNeeding"] == fleet + 1  # changed by the batch's delta, not recounted
    assert reads[UPDATE_MACHINES_TABLE] == 0  # the reverse index is written, never counted
    # What the scan read: its own partition, its journal, the catalogue entries of one OS (distinct
    # updates, whatever the number of machines needing them), and the outbox's guard.
    assert sum(reads.values()) < 20, reads


def test_an_unchanged_machine_sends_its_full_state_once_a_day(settings, loganalytics):  # noqa: F811
    vm = machine(OsType.LINUX)
    missing = [pkg(f"libday{i}", "1.0", "Security") for i in range(20)]
    midnight = DAY1.replace(hour=0)
    scans = [midnight + timedelta(hours=3 * n, minutes=5) for n in range(8)]  # every 3 hours, one UTC day
    for n, at in enumerate(scans):
        run = f"run-day-{n}-{vm.key[:8]}"
        record_assessment(settings, vm, outcome(*missing), at, run, journal_key(run, 0))
        apply_journal(settings, [journal_key(run, 0)], at)
    send_queued_rows(settings)

    sent = loganalytics.query(
        f"Update_CL | where Computer == '{vm.computer_name}' | summarize Rows = count() by TimeGenerated"
    )
    assert sent == [{"TimeGenerated": scans[0], "Rows": 20}]  # the day's full state, then nothing
    summaries = loganalytics.query(f"UpdateSummary_CL | where Computer == '{vm.computer_name}' | count")
    assert summaries == [{"Count": 8}]  # every scan says the machine was assessed

    # "Now", as a search of the last day sees it: the latest row per machine and update.
    now = loganalytics.query(
        f"Update_CL | where Computer == '{vm.computer_name}' "
        f"| where TimeGenerated > datetime({(scans[-1] - timedelta(hours=24)).isoformat()}) "
        "| summarize arg_max(TimeGenerated, *) by SourceComputerId, UpdateID "
        "| where UpdateState == 'Needed' | count"
    )
    assert now == [{"Count": 20}]

    # The next day: one gap closed, one opened; the first scan of the day sends the full state again.
    next_day = midnight + timedelta(days=1, minutes=5)
    changed = [*missing[1:], pkg("libnew", "1.0", "Security")]
    run = f"run-day-next-{vm.key[:8]}"
    record_assessment(settings, vm, outcome(*changed), next_day, run, journal_key(run, 0))
    apply_journal(settings, [journal_key(run, 0)], next_day)
    later = next_day + timedelta(hours=3)
    run = f"run-day-later-{vm.key[:8]}"
    record_assessment(settings, vm, outcome(*changed[1:]), later, run, journal_key(run, 0))
    apply_journal(settings, [journal_key(run, 0)], later)
    send_queued_rows(settings)
    rows = loganalytics.query(
        f"Update_CL | where Computer == '{vm.computer_name}' "
        f"and TimeGenerated >= datetime({next_day.isoformat()}) | summarize Rows = count() by TimeGenerated, "
        "UpdateState | order by TimeGenerated asc, UpdateState asc"
    )
    assert rows == [
        {"TimeGenerated": next_day, "UpdateState": "Needed", "Rows": 20},
        {"TimeGenerated": next_day, "UpdateState": "Not needed", "Rows": 1},
        {"TimeGenerated": later, "UpdateState": "Not needed", "Rows": 1},  # only the change
    ]


def test_the_sender_reads_what_waits_never_the_tombstones(settings, azurite: Azurite):  # noqa: F811
    outbox = log_outbox(settings)
    send_queued_rows(settings)  # what earlier tests left
    rows = [{"TimeGenerated": DAY1, "RecordId": record_id("tombstone", str(i)), "Computer": f"vm-{i}"}
            for i in range(500)]
    assert outbox.put(HEARTBEAT, rows, DAY1) == 500
    assert outbox.send_pending("first", DAY1).sent == 500
    port = urlparse(TableServiceClient.from_connection_string(azurite.connection_string).url).port
    assert port is not None

    # Other tests of the session may leave envelopes claimed by a sender that is still "alive": those
    # are read (and left alone); the 500 tombstones are not.
    waiting = sum(len(outbox._envelopes(table)) for table in TABLES)
    with table_reads(port) as reads:
        outbox.send_pending("nothing-waits", DAY1)

    assert reads[OUTBOX_TABLE] == waiting < 500
    assert outbox.put(HEARTBEAT, rows, DAY1) == 0  # and still each row queued once


def test_a_batch_reaches_its_orchestration_in_parts_under_the_spill_size(settings):  # noqa: F811
    run_id = f"run-parts-{uuid.uuid4().hex[:8]}"
    fleet = [replace(machine(OsType.LINUX), tags={"note": "x" * 900}) for _ in range(100)]
    upsert_in_batches(_targets(settings), _target_entities(run_id, fleet, 100))

    parts, after = [], None
    while True:
        part = batch_targets(settings, run_id, 0, after)
        parts.append(part)
        if part.after is None:
            break
        after = part.after

    assert len(parts) > 2 and all(sum(len(m) for m in p.machines) <= MAX_BATCH_PART_CHARS for p in parts)
    read = [machine_from_json(m).resource_id for p in parts for m in p.machines]
    assert sorted(read) == sorted(m.resource_id for m in fleet) and len(set(read)) == 100
