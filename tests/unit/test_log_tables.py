"""The product's log tables and workspace functions are declarations Log Analytics accepts."""

from __future__ import annotations

import pytest

from local.loganalytics.store import RESERVED_COLUMN_NAMES, check_table_declaration, stored_functions
from shared.log_tables import FUNCTIONS, TABLES, LogTable


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_no_table_declares_a_reserved_column_name(table: LogTable):
    reserved = {name.casefold() for name in RESERVED_COLUMN_NAMES}
    used = [c.name for c in table.columns if c.name.casefold() in reserved]
    assert not used, f"{table.name} declares the reserved column name(s) {used}: Log Analytics refuses them"
    check_table_declaration(table)  # and every other column-name rule the stand-in checks


def test_the_legacy_title_is_presented_by_the_functions_over_update_title():
    assert {f.alias: f.column_names().count("Title") for f in FUNCTIONS} == {
        "Update": 1,
        "UpdateSummary": 0,
        "UpdateRunProgress": 1,
    }
    for function in FUNCTIONS:
        assert function.table in TABLES
        assert all(column in function.table.column_names() for _, column in function.legacy_columns)


def test_function_aliases_are_names_log_analytics_accepts_and_no_table_has():
    stored_functions(FUNCTIONS, TABLES)  # raises on an alias Log Analytics refuses
    assert not {f.alias for f in FUNCTIONS} & {t.name for t in TABLES}
