"""The Log Analytics outbox (shared/azure/log_outbox.py) over Azurite and the Log Analytics stand-in:
rows queued once per RecordId, sent in calls of at most 1 MB, kept through an outage, and never sent
twice, also when a sender dies between the upload and the mark."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from local.azurite import Azurite
from local.clock import VirtualClock
from local.loganalytics import LogAnalyticsStandIn
from local.tls import LocalTls
from shared.azure.log_outbox import CLAIM_TIMEOUT, KEEP_SENT, PENDING, SENDING, SENT, LogOutbox, log_outbox
from shared.log_tables import HEARTBEAT, UPDATE_RUN_MACHINE, LogTable, record_id
from shared.settings import Settings, load_settings

WORKSPACE = "00000000-0000-4000-8000-0000000000bb"
DCR = "dcr-00000000000000000000000000000bbb"
SUBSCRIPTION = "00000000-0000-0000-0000-0000000000bb"
NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)



@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(NOW)


@pytest.fixture
def loganalytics(tls: LocalTls, clock: VirtualClock) -> Iterator[LogAnalyticsStandIn]:
    with LogAnalyticsStandIn(None, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR, clock=clock) as running:
        yield running


@pytest.fixture
def settings(azurite: Azurite, loganalytics: LogAnalyticsStandIn, tls: LocalTls,
             monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    # Each test its own outbox: the table is shared by the Azurite of the session.
    table = TableServiceClient.from_connection_string(azurite.connection_string).create_table_if_not_exists(
        "LogOutbox")
    for entity in table.list_entities(select=["PartitionKey", "RowKey"]):
        table.delete_entity(entity["PartitionKey"], entity["RowKey"])
    return load_settings({
        "DURABLE_TASK_HUB": "OutboxTests", "AZURE_AUTH_MODE": "emulator",
        "TARGET_SUBSCRIPTION_IDS": SUBSCRIPTION, "ARM_ENDPOINT": "http://127.0.0.1:9",
        "STORAGE_CONNECTION_STRING": azurite.connection_string,
        "LOGS_INGESTION_ENDPOINT": loganalytics.base_url, "LOGS_DCR_IMMUTABLE_ID": DCR,
        "LOG_ANALYTICS_WORKSPACE_ID": WORKSPACE, "LOGS_QUERY_ENDPOINT": loganalytics.base_url + "/v1",
    })  # fmt: skip


def machine_rows(count: int, run: str = "run-1", message: str = "") -> list[dict[str, Any]]:
    return [{
        "TimeGenerated": NOW, "RecordId": record_id(run, f"vm-{n:04d}"), "Computer": f"vm-{n:04d}",
        "UpdateRunId": run, "Status": "succeeded", "ErrorMessage": message,
    } for n in range(count)]  # fmt: skip


def copies(loganalytics: LogAnalyticsStandIn, table: LogTable = UPDATE_RUN_MACHINE) -> dict[str, int]:
    rows = loganalytics.query(f"{table.name} | summarize n = count() by RecordId")
    return {r["RecordId"]: r["n"] for r in rows}


def test_a_row_queued_twice_is_sent_once_and_never_queued_again_once_sent(settings, loganalytics):
    outbox = log_outbox(settings)
    assert outbox.put(UPDATE_RUN_MACHINE, machine_rows(150), NOW) == 150
    assert outbox.put(UPDATE_RUN_MACHINE, machine_rows(151), NOW) == 1  # a redelivered activity, one more
    report = outbox.send_pending("attempt-1", NOW)
    assert (report.sent, report.left, report.errors) == (151, 0, [])
    assert outbox.put(UPDATE_RUN_MACHINE, machine_rows(151), NOW) == 0  # redelivered after sending
    assert outbox.send_pending("attempt-2", NOW).sent == 0
    found = copies(loganalytics)
    assert len(found) == 151 and set(found.values()) == {1}
    assert set(outbox.states(UPDATE_RUN_MACHINE).values()) == {SENT}


def test_a_two_hour_outage_delays_the_rows_and_loses_none(settings, loganalytics, clock):
    outbox = log_outbox(settings)
    loganalytics.ingestion_outage_until(NOW + timedelta(hours=2))
    outbox.put(UPDATE_RUN_MACHINE, machine_rows(20), NOW)
    outbox.put(HEARTBEAT, [{"TimeGenerated": NOW, "RecordId": record_id("hb", "1"), "Computer": "vm-1"}], NOW)
    for minutes in range(0, 120, 30):
        clock.advance_to(NOW + timedelta(minutes=minutes))
        report = outbox.send_pending(f"during-{minutes}", clock.now())
        assert report.sent == 0 and report.errors and "503" in report.errors[0]
    assert set(outbox.states(UPDATE_RUN_MACHINE).values()) == {PENDING}  # refused: released, not in doubt
    assert copies(loganalytics) == {}
    clock.advance_to(NOW + timedelta(hours=2, minutes=5))
    assert outbox.send_pending("after", clock.now()).sent == 21
    assert set(copies(loganalytics).values()) == {1} and len(copies(loganalytics)) == 20
    assert len(copies(loganalytics, HEARTBEAT)) == 1


class DiesAfterUpload:
    """A sink whose host dies once the rows are uploaded, before the sender marks them (or before the
    upload when ``before``): the rows stay claimed."""

    def __init__(self, real: Any, before: bool = False) -> None:
        self.real, self.before = real, before

    def send_wire(self, table: LogTable, rows: Sequence[Mapping[str, Any]], **options: Any) -> int:
        if not self.before:
            self.real.send_wire(table, rows, **options)
        raise ConnectionResetError("the host died")


@pytest.mark.parametrize("arrived", [True, False], ids=["uploaded", "not-uploaded"])
def test_rows_left_claimed_by_a_dead_sender_are_looked_up_before_sending_again(settings, loganalytics, clock,
                                                                              arrived):
    app = log_outbox(settings)
    dying = LogOutbox(TableServiceClient.from_connection_string(settings.storage_connection_string or ""),
                      DiesAfterUpload(app._sink, before=not arrived), app._lookup)  # type: ignore[arg-type]
    app.put(UPDATE_RUN_MACHINE, machine_rows(30), NOW)
    report = dying.send_pending("dies", NOW)
    assert report.sent == 0 and "ConnectionResetError" in report.errors[0]
    assert set(app.states(UPDATE_RUN_MACHINE).values()) == {SENDING}
    # Another sender soon after: the claim is live as far as it knows, it leaves the rows alone.
    clock.advance_to(NOW + timedelta(minutes=5))
    assert app.send_pending("soon", clock.now()).left == 30
    clock.advance_to(NOW + CLAIM_TIMEOUT + timedelta(minutes=1))
    report = app.send_pending("later", clock.now())
    assert (report.found, report.sent) == ((30, 0) if arrived else (0, 30))
    found = copies(loganalytics)
    assert len(found) == 30 and set(found.values()) == {1}
    assert set(app.states(UPDATE_RUN_MACHINE).values()) == {SENT}


def test_rows_go_in_calls_of_at_most_1_mb_and_a_long_row_is_split_over_properties(settings, loganalytics):
    outbox = log_outbox(settings)
    # 40 KB messages (under the 64 KB field limit) over the 30,000-character entity property: two parts each.
    rows = machine_rows(60, message="x" * 40_000)
    outbox.put(UPDATE_RUN_MACHINE, rows, NOW)
    before = loganalytics.counters.ingestion_requests
    assert outbox.send_pending("big", NOW).sent == 60
    # 60 rows of 40 KB: 2.4 MB in calls of at most 1 MB (the stand-in refuses more with 413).
    assert loganalytics.counters.ingestion_requests - before == 3
    stored = loganalytics.query("UpdateRunMachine_CL | project n = strlen(ErrorMessage)")
    assert [r["n"] for r in stored] == [40_000] * 60


def test_tombstones_are_kept_for_a_week_then_purged(settings, loganalytics, clock):
    outbox = log_outbox(settings)
    outbox.put(UPDATE_RUN_MACHINE, machine_rows(3), NOW)
    outbox.send_pending("first", NOW)
    assert outbox.purge_sent(NOW + KEEP_SENT - timedelta(minutes=1)) == 0
    assert outbox.put(UPDATE_RUN_MACHINE, machine_rows(3), NOW) == 0  # a late redelivery: still known
    assert outbox.purge_sent(NOW + KEEP_SENT + timedelta(minutes=1)) == 3
    assert outbox.states(UPDATE_RUN_MACHINE) == {}


def test_a_row_log_analytics_refuses_is_set_aside_and_the_others_go(settings, loganalytics):
    outbox = log_outbox(settings)
    rows = machine_rows(10)
    rows[6]["Installed"] = "many"  # not a long: the data collection rule answers 400 InvalidContent
    outbox.put(UPDATE_RUN_MACHINE, rows, NOW)
    report = outbox.send_pending("mixed", NOW)
    assert (report.sent, report.rejected) == (9, 1)
    assert outbox.states(UPDATE_RUN_MACHINE)[rows[6]["RecordId"]] == "rejected"
    assert len(copies(loganalytics)) == 9
    assert outbox.send_pending("again", NOW).sent == 0  # set aside, not tried on every call
