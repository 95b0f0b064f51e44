"""The Log Analytics stand-in's store and request handling, without HTTP."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from local.clock import VirtualClock
from local.loganalytics import LogAnalyticsStandIn, LogStore, RowRejected, TimeRange, parse_timespan
from local.loganalytics.server import BadTimespan
from local.loganalytics.store import TableRejected, prepare_rows
from local.tls import LocalTls
from shared.log_tables import Column, ColumnType, LogFunction, LogTable

NOW = datetime(2026, 1, 13, 2, 0, tzinfo=UTC)
T = ColumnType
EVENTS = LogTable(
    "Events_CL",
    (
        Column("TimeGenerated", T.DATETIME),
        Column("Name", T.STRING),
        Column("Count", T.INT),
        Column("Bytes", T.LONG),
        Column("Ratio", T.REAL),
        Column("Ok", T.BOOLEAN),
        Column("Tags", T.DYNAMIC),
    ),
)
LOOKUP = LogTable("Lookup_CL", (Column("Name", T.STRING),))  # no TimeGenerated: never time-filtered


def event(**values: object) -> dict[str, object]:
    return {"TimeGenerated": "2026-01-13T01:00:00Z", "Name": "a"} | values


@pytest.fixture
def store() -> LogStore:
    return LogStore(None, (EVENTS, LOOKUP), clock=VirtualClock(NOW))


def test_values_are_converted_to_the_declared_types():
    [row] = prepare_rows(
        EVENTS,
        [
            event(
                TimeGenerated="2026-01-13T03:00:00+01:00", Count=3, Bytes=2**40, Ratio=1, Ok=True, Tags=["x"]
            )
        ],
        NOW,
    )
    assert row == (datetime(2026, 1, 13, 2, 0), "a", 3, 2**40, 1.0, True, '["x"]')


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("Name", 5, "string"),
        ("Count", 2**31, "int"),
        ("Count", True, "int"),
        ("Bytes", "12", "long"),
        ("Ratio", "0.5", "real"),
        ("Ok", 1, "boolean"),
        ("TimeGenerated", "13/01/2026", "datetime"),
    ],
)
def test_a_wrong_value_names_row_column_and_type(column, value, rule):
    with pytest.raises(RowRejected, match=rf"row 1, column {column}: expected {rule}"):
        prepare_rows(EVENTS, [event(), event(**{column: value})], NOW)


def test_nulls_are_allowed_and_a_missing_time_is_the_ingestion_time():
    [row] = prepare_rows(EVENTS, [{"Name": None}], NOW)
    assert row == (datetime(2026, 1, 13, 2, 0), None, None, None, None, None, None)


def test_timespan_filters_tables_with_time_generated_only(store):
    store.insert(EVENTS, [event(TimeGenerated=f"2026-01-13T0{h}:00:00Z", Name=f"h{h}") for h in range(4)])
    store.insert(LOOKUP, [{"Name": "h1"}, {"Name": "h3"}])
    span = TimeRange(datetime(2026, 1, 13, 1, tzinfo=UTC), datetime(2026, 1, 13, 3, tzinfo=UTC))

    assert store.query("Events_CL | project Name | order by Name asc", span) == [
        {"Name": "h1"},
        {"Name": "h2"},
    ]
    assert store.query("Lookup_CL | count", span) == [{"Count": 2}]
    assert store.query("Events_CL | count") == [{"Count": 4}]


def test_results_report_kql_types_and_dynamic_as_json(store):
    store.insert(EVENTS, [event(Count=1, Bytes=2, Ratio=0.5, Ok=False, Tags={"k": [1]})])
    result = store.run("Events_CL | extend n = Count + 1")
    assert dict(result.columns) == {
        "TimeGenerated": "datetime",
        "Name": "string",
        "Count": "int",
        "Bytes": "long",
        "Ratio": "real",
        "Ok": "bool",
        "Tags": "dynamic",
        "n": "long",
    }
    assert json.loads(result.rows[0][6]) == {"k": [1]}


def test_queries_cannot_write(store):
    with pytest.raises(Exception, match=r"(?i)write|unsupported"):
        store.query(".set-or-replace Events_CL <| datatable(Name: string)['x']")


def test_a_declaration_that_gained_a_column_extends_the_existing_file(tmp_path):
    db = tmp_path / "logs.duckdb"
    LogStore(db, (LogTable("Events_CL", EVENTS.columns[:2]),)).insert(EVENTS, [])
    store = LogStore(db, (EVENTS,))
    store.insert(EVENTS, [event(Ok=True)])
    assert store.query("Events_CL | project Ok") == [{"Ok": True}]


def test_a_declaration_that_lost_a_column_drops_it_from_the_existing_file(tmp_path):
    db = tmp_path / "logs.duckdb"
    LogStore(db, (EVENTS,)).insert(EVENTS, [event(Ok=True)])
    store = LogStore(db, (LogTable("Events_CL", EVENTS.columns[:2]),))
    assert [name for name, _ in store.run("Events_CL").columns] == ["TimeGenerated", "Name"]


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("PT3600.0S", NOW - timedelta(hours=1), NOW),
        ("P1DT2H", NOW - timedelta(days=1, hours=2), NOW),
        (
            "2026-01-12T00:00:00.000Z/2026-01-13T00:00:00.000Z",
            datetime(2026, 1, 12, tzinfo=UTC),
            datetime(2026, 1, 13, tzinfo=UTC),
        ),
        (
            "2026-01-12T00:00:00Z/PT30M",
            datetime(2026, 1, 12, tzinfo=UTC),
            datetime(2026, 1, 12, 0, 30, tzinfo=UTC),
        ),
        (
            "PT1H/2026-01-12T00:00:00",
            datetime(2026, 1, 11, 23, tzinfo=UTC),
            datetime(2026, 1, 12, tzinfo=UTC),
        ),
    ],
)
def test_timespans_as_the_query_api_takes_them(text, start, end):
    assert parse_timespan(text, NOW) == TimeRange(start, end)


@pytest.mark.parametrize(
    "text", ["", "P1M", "yesterday", "2026-01-13T00:00:00Z/2026-01-12T00:00:00Z", "a/b/c"]
)
def test_bad_timespans_are_refused(text):
    with pytest.raises(BadTimespan):
        parse_timespan(text, NOW)


# -- request handling ------------------------------------------------------------------------

DCR = "dcr-00000000000000000000000000000aaa"
AUTH = {"Authorization": "Bearer t"}
PATH = f"/dataCollectionRules/{DCR}/streams/Custom-Events_CL?api-version=2023-01-01"


@pytest.fixture
def standin() -> LogAnalyticsStandIn:
    unused = Path("/nonexistent")  # handle() needs no TLS: the server is never started
    return LogAnalyticsStandIn(
        None,
        LocalTls(unused, unused, unused),
        workspace_id="ws",
        dcr_immutable_id=DCR,
        tables=(EVENTS,),
        clock=VirtualClock(NOW),
    )


def test_gzip_and_plain_json_bodies_are_both_accepted(standin):
    body = json.dumps([event()]).encode()
    assert standin.handle("POST", PATH, AUTH, body).status == 204
    assert (
        standin.handle("POST", PATH, AUTH | {"Content-Encoding": "gzip"}, gzip.compress(body)).status == 204
    )
    assert standin.counters.rows_ingested == 2


@pytest.mark.parametrize(
    ("headers", "body", "status", "fragment"),
    [
        ({}, b"{}", 400, "JSON array"),
        ({}, b"[1]", 400, "not a JSON object"),
        ({"Content-Encoding": "gzip"}, b"not gzip", 400, "gzip"),
        ({"Content-Encoding": "br"}, b"[]", 400, "Content-Encoding br"),
        ({"Content-Encoding": "gzip"}, gzip.compress(b" " * (5 * 1024 * 1024)), 413, "inflates"),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(standin, headers, body, status, fragment):
    reply = standin.handle("POST", PATH, AUTH | headers, body)
    assert reply.status == status
    assert fragment in reply.body["error"]["message"]
    assert standin.counters.rejected_requests == 1


def test_a_query_with_a_bad_timespan_names_the_field(standin):
    reply = standin.handle(
        "POST",
        "/v1/workspaces/ws/query",
        AUTH,
        json.dumps({"query": "Events_CL", "timespan": "soon"}).encode(),
    )
    assert reply.status == 400
    assert "timespan" in reply.body["error"]["message"]


# -- declarations Log Analytics refuses, workspace functions -------------------------------------


@pytest.mark.parametrize(
    "name", ["Title", "id", "Type", "TenantId", "UniqueId", "_ResourceId", "_SubscriptionId", "title"]
)
def test_a_table_declaring_a_reserved_column_name_is_refused(name):
    table = LogTable("Updates_CL", (Column("TimeGenerated", T.DATETIME), Column(name, T.STRING)))

    with pytest.raises(TableRejected, match=rf"Updates_CL: column {name} is a reserved column name"):
        LogStore(None, (table,))


@pytest.mark.parametrize("name", ["2nd", "With space", "Dash-ed", "X", "A" * 46])
def test_a_table_declaring_a_malformed_column_name_is_refused(name):
    table = LogTable("Updates_CL", (Column(name, T.STRING),))

    with pytest.raises(TableRejected, match="must start with a letter"):
        LogStore(None, (table,))


def test_a_query_naming_a_function_runs_its_body_within_the_timespan():
    renamed = LogFunction("Events", EVENTS, (("Title", "Name"),))
    store = LogStore(None, (EVENTS,), functions=[renamed], clock=VirtualClock(NOW))
    store.insert(EVENTS, [event(Name="old", TimeGenerated="2026-01-12T00:00:00Z"), event(Name="new")])

    assert store.query("Events | project Title | order by Title asc") == [{"Title": "new"}, {"Title": "old"}]
    span = TimeRange(NOW - timedelta(hours=2), NOW)
    assert store.query("Events | project Title", span) == [{"Title": "new"}]
    assert store.query("Events_CL | project Name", span) == [{"Name": "new"}]  # the table keeps its names


@pytest.mark.parametrize("alias", ["_Events", "My Events", "Events-1"])
def test_a_function_name_log_analytics_refuses_is_refused(alias):
    with pytest.raises(TableRejected, match="function"):
        LogStore(None, (EVENTS,), functions=[LogFunction(alias, EVENTS)])


def test_a_function_over_an_undeclared_table_is_refused():
    with pytest.raises(TableRejected, match="Lookup_CL is not declared"):
        LogStore(None, (EVENTS,), functions=[LogFunction("Lookup", LOOKUP)])
