from dataclasses import replace
from datetime import UTC, datetime

import pytest

from shared.fleet.heartbeats import heartbeat_row
from shared.log_tables import HEARTBEAT, TABLES, RecordShapeError, check_rows, record_id
from shared.model.machines import Machine, MachineKind, OsType, PowerState

MACHINE = Machine(
    "/subscriptions/abc/resourceGroups/rg/providers/Microsoft.HybridCompute/machines/db01", "db01",
    "db01.corp", MachineKind.ARC_SERVER, "abc", "rg", "westeurope", OsType.LINUX, "RHEL", "8.9",
    PowerState.RUNNING, "Manual",
)


def test_heartbeat_rows_fill_exactly_the_declared_columns():
    row = heartbeat_row(MACHINE, datetime(2026, 1, 1, tzinfo=UTC), "run-1")
    assert set(row) == set(HEARTBEAT.column_names())
    assert row["ComputerEnvironment"] == "Non-Azure"
    assert row["ResourceProvider"] == "Microsoft.HybridCompute"


def test_heartbeat_rows_carry_the_machine_tags_as_a_bag():
    tagged = replace(MACHINE, tags={"env": "prod", "owner": "team-db"})
    row = heartbeat_row(tagged, datetime(2026, 1, 1, tzinfo=UTC), "run-1")
    assert row["Tags"] == {"env": "prod", "owner": "team-db"}
    assert heartbeat_row(MACHINE, datetime(2026, 1, 1, tzinfo=UTC), "run-1")["Tags"] == {}


def test_record_ids_are_deterministic_per_run_and_machine():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert heartbeat_row(MACHINE, at, "run-1")["RecordId"] == heartbeat_row(MACHINE, at, "run-1")["RecordId"]
    assert heartbeat_row(MACHINE, at, "run-1")["RecordId"] != heartbeat_row(MACHINE, at, "run-2")["RecordId"]
    assert record_id("A", "b") == record_id("a", "B")


def test_an_undeclared_column_is_refused_before_sending():
    row = heartbeat_row(MACHINE, datetime(2026, 1, 1, tzinfo=UTC), "run-1") | {"Colour": "blue"}
    with pytest.raises(RecordShapeError, match="Colour"):
        check_rows(HEARTBEAT, [row])


def test_streams_follow_the_custom_table_convention():
    for table in TABLES:
        assert table.name.endswith("_CL")
        assert table.stream == f"Custom-{table.name}"
        assert table.column_names()[0] == "TimeGenerated"
