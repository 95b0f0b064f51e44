"""The Log Analytics stand-in, driven through the real azure-monitor-ingestion and -query clients."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.monitor.ingestion import LogsIngestionClient
from azure.monitor.query import LogsQueryClient, LogsQueryPartialResult, LogsQueryResult, LogsQueryStatus

from local.clock import VirtualClock
from local.loganalytics import LogAnalyticsStandIn, LogStore
from local.loganalytics.store import StoreBusy, TableRejected
from local.tls import LocalTls
from shared.azure.log_ingestion import LogSink
from shared.log_tables import HEARTBEAT, Column, ColumnType, LogTable

REPO_ROOT = Path(__file__).resolve().parents[2]
# The Logs Ingestion API's error shape and its one error on record (source in the file's _source).
INGESTION_ERRORS = json.loads((REPO_ROOT / "tests/fixtures/azure/logs_ingestion_errors.json").read_text())
WORKSPACE = "00000000-0000-4000-8000-0000000000aa"
DCR = "dcr-00000000000000000000000000000aaa"
NOW = datetime(2026, 1, 13, 2, 0, tzinfo=UTC)
S, B, D, L = ColumnType.STRING, ColumnType.BOOLEAN, ColumnType.DATETIME, ColumnType.LONG
UPDATE = LogTable(
    "Update_CL",
    tuple(
        Column(n, t)
        for n, t in (
            ("TimeGenerated", D),
            ("Computer", S),
            ("UpdateTitle", S),
            ("KBID", S),
            ("Classification", S),
            ("UpdateState", S),
            ("Optional", B),
            ("OSType", S),
            ("PublishedDate", D),
            ("SizeBytes", L),
        )
    ),
)


class FakeCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("test-token", int(time.time()) + 3600)



@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(NOW)


@pytest.fixture
def server(tls: LocalTls, clock: VirtualClock) -> Iterator[LogAnalyticsStandIn]:
    with LogAnalyticsStandIn(
        None, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR, tables=(UPDATE, HEARTBEAT), clock=clock
    ) as running:
        yield running


@pytest.fixture
def ingest(server: LogAnalyticsStandIn, tls: LocalTls) -> Iterator[LogsIngestionClient]:
    client = LogsIngestionClient(server.base_url, FakeCredential(), connection_verify=str(tls.ca_file))
    yield client
    client.close()


@pytest.fixture
def logs(server: LogAnalyticsStandIn, tls: LocalTls) -> Iterator[LogsQueryClient]:
    client = LogsQueryClient(
        FakeCredential(), endpoint=server.base_url + "/v1", connection_verify=str(tls.ca_file)
    )
    yield client
    client.close()


def update(
    computer: str, kb: str, *, state: str = "Needed", hours_ago: float = 1, **extra: Any
) -> dict[str, Any]:
    row = {
        "TimeGenerated": (NOW - timedelta(hours=hours_ago)).isoformat(),
        "Computer": computer,
        "UpdateTitle": f"Update {kb}",
        "KBID": kb,
        "Classification": "Security Updates" if kb.endswith("1") else "Critical Updates",
        "UpdateState": state,
        "Optional": False,
        "OSType": "Windows",
        "PublishedDate": "2025-12-09T00:00:00Z",
    }
    return row | extra


def rows_of(result: Any) -> list[dict[str, Any]]:
    assert isinstance(result, LogsQueryResult), result
    table = result.tables[0]
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def run(logs: LogsQueryClient, kql: str, timespan: Any = None) -> list[dict[str, Any]]:
    return rows_of(logs.query_workspace(WORKSPACE, kql, timespan=timespan))


SAMPLE = [
    update("web1", "KB501", hours_ago=3),
    update("web1", "KB501", state="Installed", hours_ago=1),
    update("web1", "KB502", hours_ago=1),
    update("db1", "KB501", hours_ago=2),
    update("db1", "KB503", hours_ago=2, Optional=True),
]


# -- ingestion ---------------------------------------------------------------------------------


def test_uploaded_rows_come_back_with_their_types(ingest, logs):
    ingest.upload(DCR, UPDATE.stream, [update("web1", "KB501", SizeBytes=2**40)])

    result = logs.query_workspace(WORKSPACE, "Update_CL", timespan=None)

    table = result.tables[0]
    assert table.name == "PrimaryResult"
    types = dict(zip(table.columns, table.columns_types, strict=True))
    assert types == {
        "TimeGenerated": "datetime",
        "Computer": "string",
        "UpdateTitle": "string",
        "KBID": "string",
        "Classification": "string",
        "UpdateState": "string",
        "Optional": "bool",
        "OSType": "string",
        "PublishedDate": "datetime",
        "SizeBytes": "long",
    }
    [row] = rows_of(result)
    assert row["TimeGenerated"] == NOW - timedelta(hours=1)  # a datetime object, UTC
    assert row["PublishedDate"] == datetime(2025, 12, 9, tzinfo=UTC)
    assert row["Optional"] is False
    assert row["SizeBytes"] == 2**40


def test_an_undeclared_column_rejects_the_whole_request(server, ingest, logs):
    batch = [update("web1", "KB501"), update("web1", "KB502", Colour="blue")]

    with pytest.raises(HttpResponseError) as failure:
        ingest.upload(DCR, UPDATE.stream, batch)

    assert failure.value.status_code == 400
    assert "Colour" in str(failure.value.message)
    assert UPDATE.stream in str(failure.value.message)
    assert run(logs, "Update_CL | count") == [{"Count": 0}]
    assert server.counters.rejected_requests == 1


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("Optional", "yes", "boolean"),
        ("TimeGenerated", "last tuesday", "datetime"),
        ("SizeBytes", 1.5, "long"),
    ],
)
def test_a_value_of_the_wrong_type_is_rejected_naming_row_column_and_type(
    ingest, logs, column, value, expected
):
    with pytest.raises(HttpResponseError) as failure:
        ingest.upload(
            DCR, UPDATE.stream, [update("web1", "KB501"), update("web1", "KB502", **{column: value})]
        )

    message = str(failure.value.message)
    assert "row 1" in message and column in message and expected in message
    assert run(logs, "Update_CL | count") == [{"Count": 0}]


def test_a_missing_time_generated_is_the_ingestion_time(ingest, logs, clock):
    row = update("web1", "KB501")
    del row["TimeGenerated"]
    clock.advance(timedelta(minutes=7))

    ingest.upload(DCR, UPDATE.stream, [row])

    assert run(logs, "Update_CL | project TimeGenerated") == [{"TimeGenerated": NOW + timedelta(minutes=7)}]


def test_unknown_stream_and_rule_are_404(ingest):
    with pytest.raises(ResourceNotFoundError, match="Custom-Nope_CL"):
        ingest.upload(DCR, "Custom-Nope_CL", [update("web1", "KB501")])
    with pytest.raises(ResourceNotFoundError, match="dcr-ffff"):
        ingest.upload("dcr-ffff", UPDATE.stream, [update("web1", "KB501")])


def test_requests_without_a_bearer_token_are_401(server, tls):
    ingest_url = f"{server.base_url}/dataCollectionRules/{DCR}/streams/{UPDATE.stream}?api-version=2023-01-01"
    query_url = f"{server.base_url}/v1/workspaces/{WORKSPACE}/query"
    for url, body in ((ingest_url, []), (query_url, {"query": "Update_CL"})):
        answer = requests.post(url, json=body, verify=str(tls.ca_file), timeout=5)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "AuthenticationFailed"


def test_more_than_a_megabyte_is_split_by_the_sdk_and_every_row_lands(server, ingest, logs):
    rows = [update(f"vm{i:05}", f"KB{i:07}", UpdateTitle="x" * 400) for i in range(5_000)]  # about 2.5 MB

    ingest.upload(DCR, UPDATE.stream, rows)

    assert server.counters.ingestion_requests >= 3
    assert server.counters.rows_ingested == 5_000
    assert run(logs, "Update_CL | summarize dcount(Computer)") == [{"dcount_Computer": 5_000}]


def test_a_single_call_over_one_megabyte_is_413(ingest, logs):
    body = json.dumps([update(f"vm{i}", "KB1", UpdateTitle="x" * 500) for i in range(3_000)]).encode()

    with pytest.raises(HttpResponseError) as failure:
        ingest.upload(DCR, UPDATE.stream, io.BytesIO(body))  # a stream is sent as-is, not split

    assert failure.value.status_code == 413
    example = INGESTION_ERRORS["examples"]["contentTooLarge"]
    assert failure.value.status_code == example["status"]
    assert failure.value.error is not None and failure.value.error.code == example["body"]["error"]["code"]
    assert failure.value.error.message.startswith(example["body"]["error"]["message"])
    assert failure.value.response.headers["x-ms-error-code"] == example["headers"]["x-ms-error-code"]
    assert run(logs, "Update_CL | count") == [{"Count": 0}]


def test_every_ingestion_error_has_the_documented_shape(server):
    shape = INGESTION_ERRORS["shape"]
    auth = {"Authorization": "Bearer t"}
    stream = f"/dataCollectionRules/{DCR}/streams/{UPDATE.stream}"
    other_rule = f"/dataCollectionRules/dcr-x/streams/{UPDATE.stream}"
    other_stream = f"/dataCollectionRules/{DCR}/streams/Custom-X_CL"
    server.throttle_next(1)
    replies = {
        "throttled": server.handle("POST", stream, auth, b"[]"),
        "unknown rule": server.handle("POST", other_rule, auth, b"[]"),
        "unknown stream": server.handle("POST", other_stream, auth, b"[]"),
        "not json": server.handle("POST", stream, auth, b"{"),
        "undeclared column": server.handle("POST", stream, auth, json.dumps([{"Colour": "blue"}]).encode()),
        "too large": server.handle("POST", stream, auth, b"[" + b" " * (1024 * 1024) + b"]"),
    }
    for name, reply in replies.items():
        assert reply.status >= 400, name
        assert set(shape["body"]["required"]) <= set(reply.body) <= set(shape["body"]["allowed"]), name
        error = reply.body["error"]
        assert set(shape["error"]["required"]) <= set(error) <= set(shape["error"]["allowed"]), name
        assert all(isinstance(error[k], str) and error[k] for k in shape["error"]["required"]), name
        assert reply.headers and reply.headers[shape["errorCodeHeader"]] == error["code"], name


def test_429_retry_after_is_honoured_by_the_sdk(server, ingest, logs):
    server.throttle_next(1, retry_after_seconds=1)
    started = time.monotonic()

    ingest.upload(DCR, UPDATE.stream, SAMPLE)

    assert time.monotonic() - started >= 1
    assert server.counters.throttled_requests == 1
    assert server.counters.ingestion_requests == 2
    assert run(logs, "Update_CL | count") == [{"Count": len(SAMPLE)}]


# -- queries -----------------------------------------------------------------------------------


@pytest.fixture
def sample(ingest: LogsIngestionClient) -> None:
    ingest.upload(DCR, UPDATE.stream, SAMPLE)


@pytest.mark.usefixtures("sample")
@pytest.mark.parametrize(
    ("kql", "expected"),
    [
        (
            "Update_CL | where Computer == 'db1' and Optional == true | project KBID",
            [{"KBID": "KB503"}],
        ),
        (
            "Update_CL | summarize Rows = count() by Computer | order by Computer asc",
            [{"Computer": "db1", "Rows": 2}, {"Computer": "web1", "Rows": 3}],
        ),
        (
            "Update_CL | summarize arg_max(TimeGenerated, *) by Computer, KBID "
            "| where UpdateState == 'Needed' | project Computer, KBID | order by Computer asc, KBID asc",
            [
                {"Computer": "db1", "KBID": "KB501"},
                {"Computer": "db1", "KBID": "KB503"},
                {"Computer": "web1", "KBID": "KB502"},
            ],
        ),
        (
            "Update_CL | distinct Classification | order by Classification asc",
            [{"Classification": "Critical Updates"}, {"Classification": "Security Updates"}],
        ),
        (
            "Update_CL | where Computer in ((Update_CL | where KBID == 'KB503' | distinct Computer)) "
            "| summarize n = count()",
            [{"n": 2}],
        ),
        (
            "Update_CL | top 1 by TimeGenerated asc | project Computer, KBID",
            [{"Computer": "web1", "KBID": "KB501"}],
        ),
        ("Update_CL | where TimeGenerated > ago(90m) | summarize n = count()", [{"n": 2}]),
    ],
    ids=[
        "where-project",
        "summarize-count-by",
        "arg_max",
        "distinct",
        "in-subquery",
        "top",
        "ago-virtual-clock",
    ],
)
def test_kql_through_the_query_client(logs, kql, expected):
    assert run(logs, kql) == expected


@pytest.mark.usefixtures("sample")
def test_a_bad_query_raises_with_the_engine_message(logs):
    with pytest.raises(HttpResponseError) as failure:
        logs.query_workspace(WORKSPACE, "Update_CL | where NoSuchColumn == 1", timespan=None)
    assert failure.value.status_code == 400
    assert "NoSuchColumn" in str(failure.value.message)

    with pytest.raises(HttpResponseError, match="could not parse KQL"):
        logs.query_workspace(WORKSPACE, "Update_CL | wherex", timespan=None)


@pytest.mark.usefixtures("sample")
def test_the_update_function_presents_the_legacy_title_to_the_query_client(logs):
    """The seed's "distinct missing updates" search as written: ``Update`` runs the function's body."""
    rows = run(logs, 'Update | where UpdateState == "Needed" and Optional == false | distinct Title')
    assert sorted(r["Title"] for r in rows) == ["Update KB501", "Update KB502"]
    with pytest.raises(HttpResponseError) as failure:
        logs.query_workspace(WORKSPACE, "Update_CL | project Title", timespan=None)
    assert failure.value.status_code == 400


def test_a_table_declaring_a_reserved_column_is_refused_as_log_analytics_does(tls):
    legacy = LogTable("Update_CL", (Column("TimeGenerated", D), Column("Title", S)))

    with pytest.raises(TableRejected, match="Title is a reserved column name"):
        LogAnalyticsStandIn(None, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR, tables=(legacy,))


def test_an_unknown_workspace_is_404(logs):
    with pytest.raises(HttpResponseError) as failure:
        logs.query_workspace("11111111-1111-4111-8111-111111111111", "Update_CL", timespan=None)
    assert failure.value.status_code == 404


@pytest.mark.usefixtures("sample")
def test_the_timespan_limits_every_table_read(logs):
    last_90_minutes = run(
        logs, "Update_CL | project KBID | order by KBID asc", timespan=timedelta(minutes=90)
    )
    assert last_90_minutes == [{"KBID": "KB501"}, {"KBID": "KB502"}]

    window = (NOW - timedelta(hours=2, minutes=30), NOW - timedelta(hours=1, minutes=30))
    # The subquery is limited too: web1's rows fall outside the window.
    kql = (
        "Update_CL | where Computer in ((Update_CL | distinct Computer)) | summarize n = count() by Computer"
    )
    assert run(logs, kql, timespan=window) == [{"Computer": "db1", "n": 2}]


@pytest.mark.usefixtures("sample")
def test_past_the_row_limit_the_result_is_partial(tls, clock, ingest):
    with LogAnalyticsStandIn(
        None, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR, tables=(UPDATE,), clock=clock, row_limit=3
    ) as small:
        client = LogsIngestionClient(small.base_url, FakeCredential(), connection_verify=str(tls.ca_file))
        client.upload(DCR, UPDATE.stream, SAMPLE)
        query = LogsQueryClient(
            FakeCredential(), endpoint=small.base_url + "/v1", connection_verify=str(tls.ca_file)
        )

        result = query.query_workspace(WORKSPACE, "Update_CL", timespan=None)

    assert isinstance(result, LogsQueryPartialResult)
    assert len(result.partial_data[0].rows) == 3
    assert "record count limit 3" in result.partial_error.message


@pytest.mark.usefixtures("sample")
def test_query_batch_answers_each_query_in_order(logs):
    from azure.monitor.query import LogsBatchQuery

    results = logs.query_batch(
        [
            LogsBatchQuery(WORKSPACE, "Update_CL | summarize n = count()", timespan=None),
            LogsBatchQuery(WORKSPACE, "Update_CL | wherex", timespan=None),
            LogsBatchQuery(WORKSPACE, "Update_CL | summarize n = count()", timespan=timedelta(minutes=90)),
        ]
    )

    assert [r.status for r in results] == [
        LogsQueryStatus.SUCCESS,
        LogsQueryStatus.FAILURE,
        LogsQueryStatus.SUCCESS,
    ]
    assert rows_of(results[0]) == [{"n": 5}]
    assert "could not parse KQL" in results[1].message
    assert rows_of(results[2]) == [{"n": 2}]


# -- the real schema, the app's adapter, persistence -------------------------------------------


def heartbeat(computer: str, os_type: str, environment: str, at: datetime) -> dict[str, Any]:
    row: dict[str, Any] = {c: f"{c}-{computer}" for c in HEARTBEAT.column_names()}
    return row | {
        "TimeGenerated": at,
        "Computer": computer,
        "SourceComputerId": computer,
        "OSType": os_type,
        "ComputerEnvironment": environment,
    }


def test_heartbeats_sent_by_the_app_adapter_answer_the_onboarding_query(server, logs, tls, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))  # as the local host does for the app
    sink = LogSink(FakeCredential(), server.base_url, DCR)
    sink.send(
        HEARTBEAT,
        [
            heartbeat("web1", "Windows", "Azure", NOW - timedelta(minutes=30)),
            heartbeat("web1", "Windows", "Azure", NOW - timedelta(minutes=15)),
            heartbeat("db1", "Linux", "Non-Azure", NOW - timedelta(minutes=15)),
        ],
    )

    kql = (
        "Heartbeat_CL | summarize arg_max(TimeGenerated, *) by SourceComputerId "
        "| summarize Machines = count() by OSType, ComputerEnvironment | order by OSType asc"
    )
    expected = [
        {"OSType": "Linux", "ComputerEnvironment": "Non-Azure", "Machines": 1},
        {"OSType": "Windows", "ComputerEnvironment": "Azure", "Machines": 1},
    ]
    assert run(logs, kql, timespan=timedelta(hours=1)) == expected
    assert server.query(kql) == expected  # the direct path the local CLI uses


def test_a_db_file_survives_a_restart_and_another_process_can_read_it(tls, clock, tmp_path):
    db = tmp_path / "loganalytics.duckdb"
    with LogAnalyticsStandIn(
        db, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR, tables=(UPDATE,)
    ) as first:
        client = LogsIngestionClient(first.base_url, FakeCredential(), connection_verify=str(tls.ca_file))
        client.upload(DCR, UPDATE.stream, SAMPLE)

    with LogAnalyticsStandIn(
        db, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR, tables=(UPDATE,)
    ) as second:
        assert second.query("Update_CL | count") == [{"Count": len(SAMPLE)}]
        # While the second server runs (idle), another process opens the file read-only.
        script = (
            "import sys; from pathlib import Path; from local.loganalytics.store import LogStore; "
            "print(LogStore.open_read_only(Path(sys.argv[1])).query('Update_CL | count')[0]['Count'])"
        )
        reader = subprocess.run(
            [sys.executable, "-c", script, str(db)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
        )
        assert reader.returncode == 0, reader.stderr
        assert reader.stdout.strip() == str(len(SAMPLE))

    assert LogStore.open_read_only(db, (UPDATE,)).query("Update_CL | distinct Computer | count") == [
        {"Count": 2}
    ]


def test_while_another_process_writes_the_file_ingestion_is_503_and_retried_later(tls, tmp_path):
    db = tmp_path / "loganalytics.duckdb"
    with LogAnalyticsStandIn(
        db, tls, workspace_id=WORKSPACE, dcr_immutable_id=DCR, tables=(UPDATE,)
    ) as standin:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_WRITE_LOCK, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            body = json.dumps(SAMPLE).encode()
            path = f"/dataCollectionRules/{DCR}/streams/{UPDATE.stream}"
            reply = standin.handle("POST", path, {"Authorization": "Bearer t"}, body)
            assert reply.status == 503
            assert reply.headers is not None and reply.headers["Retry-After"] == "1"
            with pytest.raises(StoreBusy):
                LogStore.open_read_only(db, (UPDATE,)).query("Update_CL | count")
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)
        assert standin.handle("POST", path, {"Authorization": "Bearer t"}, body).status == 204


HOLD_WRITE_LOCK = (
    "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); sys.stdin.read()"
)
