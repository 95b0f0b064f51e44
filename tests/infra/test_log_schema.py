"""One schema in three places: shared/log_tables.py, the Bicep tables and DCR streams, the local stand-in.

The Bicep loads infra/generated/log-tables.json (written by ``python -m local.infra_gen`` from
shared/log_tables.py); these tests check the file is current, that it says what TABLES says when read
independently, that the monitoring module uses it whole, and that the local Log Analytics stand-in
creates the same tables with the same columns.
"""

import json

from local.infra_gen import LOG_TABLES_JSON, render_log_tables
from local.loganalytics.store import LogStore
from shared.log_tables import DCR_WORKSPACE_DESTINATION, TABLES, ColumnType
from tests.infra.bicep import expr, module, one

# The Tables API's column type names, by DCR stream type name (which ColumnType uses).
_TABLES_API_TYPE = {t.value: t.value for t in ColumnType} | {"datetime": "dateTime"}
# KQL names the boolean type "bool" in query results; "boolean" is its synonym.
_KQL_SYNONYM = {"boolean": "bool"}


def _generated() -> dict:
    return json.loads(LOG_TABLES_JSON.read_text())


def test_generated_file_is_current():
    assert LOG_TABLES_JSON.read_text() == render_log_tables(), (
        f"{LOG_TABLES_JSON.name} is out of date: run python -m local.infra_gen"
    )


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
