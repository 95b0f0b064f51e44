"""Small things a user sees (issue 15): one-line refusals from ``python -m local query``, and the
workbook's result chart drawing ``succeeded`` green."""

from __future__ import annotations

import pytest

from local.loganalytics.query_errors import refusal_line
from local.workbook.model import WorkbookError, load_workbook, parse_workbook
from shared.deployments.results import MachineResultStatus

UNKNOWN_TABLE = ('Catalog Error: Table with name Updates does not exist!\nDid you mean "Update_CL"?\n\n'
                 'LINE 1: WITH _s0 AS (SELECT * FROM "Updates"),\n                                   ^^^^')
UNKNOWN_COLUMN = ('Binder Error: Referenced column "Nope" not found in FROM clause!\n'
                  'Candidate bindings: "Computer", "OSType"\n\nLINE 5: ...')


def test_an_unknown_table_is_one_line_with_the_engine_suggestion_and_the_tables():
    line = refusal_line("Updates | take 1", UNKNOWN_TABLE)
    assert "\n" not in line and line.startswith("query refused: Catalog Error: Table with name Updates")
    assert 'Did you mean "Update_CL"?' in line and "Update_CL" in line and "workspace functions" in line


def test_a_wrong_column_on_the_legacy_name_points_at_the_table_and_the_function():
    line = refusal_line("Update | where Nope == 1", UNKNOWN_COLUMN)
    assert "\n" not in line and 'Candidate bindings: "Computer", "OSType"' in line
    assert "workspace function over Update_CL" in line and "query Update_CL" in line


def test_a_legacy_name_without_a_function_points_at_its_custom_table():
    line = refusal_line("Heartbeat | take 1", "Catalog Error: Table with name Heartbeat does not exist!")
    assert line.endswith("(hint: the table is Heartbeat_CL here)")


def test_a_syntax_error_is_one_line_without_a_hint():
    line = refusal_line("Update_CL | take", "could not parse KQL at 1:10: mismatched input '|'")
    assert line == "query refused: could not parse KQL at 1:10: mismatched input '|'"


def test_the_result_chart_colours_each_result_and_succeeded_green():
    chart = next(item for item in load_workbook().query_items() if item.name == "run-results-chart")
    colours = dict(chart.series_colours)
    assert colours["succeeded"] == "green" and colours["failed"] == "redBright"
    assert set(colours) == {s.value for s in MachineResultStatus}


def test_series_colours_must_be_a_list():
    document = {"version": "Notebook/1.0", "items": [{"type": 3, "name": "q", "content": {
        "version": "KqlItem/1.0", "query": "T", "queryType": 0, "visualization": "piechart",
        "chartSettings": {"seriesLabelSettings": {"succeeded": "green"}}}}]}
    with pytest.raises(WorkbookError, match="seriesLabelSettings"):
        parse_workbook(document)
