"""One schema in three places: shared/log_tables.py, the Bicep tables and DCR streams, the local stand-in.

The Bicep loads infra/generated/log-tables.json and log-functions.json (written by
``python -m local.infra_gen`` from shared/log_tables.py); these tests check the files are current, that
they say what TABLES and FUNCTIONS say when read independently, that the monitoring module uses them
whole, and that the local Log Analytics stand-in creates the same tables with the same columns and
expands the same functions to the same columns.
"""

import json

import pytest

from local.infra_gen import LOG_FUNCTIONS_JSON, LOG_TABLES_JSON, render_log_functions, render_log_tables
from local.loganalytics.store import LogStore
from shared.log_tables import DCR_WORKSPACE_DESTINATION, FUNCTIONS, TABLES, ColumnType
from tests.infra.bicep import expr, module, one

# The Tables API's column type names, by DCR stream type name (which ColumnType uses).
_TABLES_API_TYPE = {t.value: t.value for t in ColumnType} | {"datetime": "dateTime"}
# KQL names the boolean type "bool" in query results; "boolean" is its synonym.
_KQL_SYNONYM = {"boolean": "bool"}


def _generated() -> dict:
    return json.loads(LOG_TABLES_JSON.read_text())


def _functions() -> list[dict]:
    return json.loads(LOG_FUNCTIONS_JSON.read_text())


@pytest.mark.parametrize(
    ("path", "render"), [(LOG_TABLES_JSON, render_log_tables), (LOG_FUNCTIONS_JSON, render_log_functions)]
)
def test_generated_file_is_current(path, render):
    assert path.read_text() == render(), f"{path.name} is out of date: run python -m local.infra_gen"


def test_tables_and_streams_declare_what_the_code_declares():
    generated = _generated()
    assert [t["name"] for t in generated["tables"]] == [t.name for t in TABLES]
    for declared, table in zip(generated["tables"], TABLES, strict=True):
        assert [(c["name"], c["type"]) for c in declared["columns"]] == [
            (c.name, _TABLES_API_TYPE[c.type.value]) for c in table.columns
        ], table.name
        stream = generated["streamDeclarations"][table.stream]
        assert [(c["name"], c["type"]) for c in stream["columns"]] == [
            (c.name, c.type.value) for c in table.columns
        ], table.stream
    assert set(generated["streamDeclarations"]) == {t.stream for t in TABLES}


def test_each_stream_flows_to_its_own_table_in_the_workspace():
    flows = _generated()["dataFlows"]
    assert len(flows) == len(TABLES)
    for flow, table in zip(flows, TABLES, strict=True):
        assert flow["streams"] == [table.stream]
        assert flow["outputStream"] == f"Custom-{table.name}"
        assert flow["destinations"] == [DCR_WORKSPACE_DESTINATION]


def test_monitoring_module_uses_the_generated_declarations_whole():
    monitoring = module("monitoring.bicep")
    loaded = expr(monitoring["variables"]["logTables"]["value"])
    assert loaded == "loadJsonContent(../generated/log-tables.json)"
    tables = one("Microsoft.OperationalInsights/workspaces/tables")
    assert tables.loop is not None and expr(tables.loop["detail"]["array_name"]) == "logTables.tables"
    assert expr(tables.config["name"]) == "table.name"
    assert expr(tables.properties["schema"]) == "{name: table.name, columns: table.columns}"
    rule = one("Microsoft.Insights/dataCollectionRules").properties
    assert expr(rule["streamDeclarations"]) == "logTables.streamDeclarations"
    assert expr(rule["dataFlows"]) == "logTables.dataFlows"
    (destination,) = rule["destinations"]["logAnalytics"]
    assert monitoring["variables"][destination["name"]]["value"] == DCR_WORKSPACE_DESTINATION
    assert expr(destination["workspaceResourceId"]) == "workspace.id"


def test_local_stand_in_has_the_same_tables_and_columns_as_the_bicep():
    store = LogStore(None)
    try:
        for stream, declared in _generated()["streamDeclarations"].items():
            result = store.run(f"{stream.removeprefix('Custom-')} | take 0")
            assert list(result.columns) == [
                (c["name"], _KQL_SYNONYM.get(c["type"], c["type"])) for c in declared["columns"]
            ], stream
    finally:
        store.close()


def test_functions_are_named_after_the_legacy_tables_and_rename_only_declared_columns():
    generated = _functions()
    assert [f["functionAlias"] for f in generated] == [f.alias for f in FUNCTIONS]
    assert {f["functionAlias"] for f in generated} == {"Update", "UpdateSummary", "UpdateRunProgress"}
    declared = {t.name: t for t in TABLES}
    for entry, function in zip(generated, FUNCTIONS, strict=True):
        assert entry["name"] == entry["functionAlias"] == function.table.name.removesuffix("_CL")
        assert entry["functionAlias"] not in declared
        source, *steps = [line.strip() for line in entry["query"].split("\n")]
        assert source == function.table.name and source in declared
        renames = {}
        for step in steps:
            assert step.startswith("| project-rename "), entry["query"]
            for pair in step.removeprefix("| project-rename ").split(","):
                legacy, column = (part.strip() for part in pair.split("="))
                renames[legacy] = column
        assert renames == dict(function.legacy_columns)
        assert set(renames.values()) <= set(declared[source].column_names()), entry["name"]
        assert entry["category"] and entry["displayName"]


def test_monitoring_module_deploys_the_generated_functions_whole():
    monitoring = module("monitoring.bicep")
    loaded = expr(monitoring["variables"]["logFunctions"]["value"])
    assert loaded == "loadJsonContent(../generated/log-functions.json)"
    searches = one("Microsoft.OperationalInsights/workspaces/savedSearches")
    assert searches.file.name == "monitoring.bicep"
    assert searches.loop is not None and expr(searches.loop["detail"]["array_name"]) == "logFunctions"
    item = searches.loop["detail"]["item_name"]
    assert searches.config["parent"] == "workspace"
    assert expr(searches.config["name"]) == f"{item}.name"
    assert searches.config["etag"] == "*"  # a redeploy overwrites the function
    assert searches.config["dependsOn"] == ["tables"]
    assert {k: expr(v) for k, v in searches.properties.items()} == {
        "category": f"{item}.category",
        "displayName": f"{item}.displayName",
        "query": f"{item}.query",
        "functionAlias": f"{item}.functionAlias",
        "version": "2",
    }


def test_local_stand_in_expands_the_functions_the_bicep_deploys():
    """Each function called by its alias in the stand-in answers what the deployed query answers."""
    store = LogStore(None)
    try:
        for entry, function in zip(_functions(), FUNCTIONS, strict=True):
            by_alias = store.run(f"{entry['functionAlias']} | take 0").columns
            by_query = store.run(f"{entry['query']}\n| take 0").columns
            assert by_alias == by_query, entry["functionAlias"]
            assert [name for name, _ in by_alias] == list(function.column_names())
    finally:
        store.close()
