"""The Resource Graph stand-in's data: the tables ``resources``, ``patchassessmentresources`` and
``patchinstallationresources`` in an in-memory DuckDB, queried with KQL (:mod:`local.kql`).

Every table has the columns Resource Graph's tables have ("Access Azure Update Manager operations data
using Azure Resource Graph", log structure: id, name, type, tenantId, kind, location, resourceGroup,
subscriptionId, managedBy, sku, plan, properties, tags, identity, zones, extendedLocation); the bags
(``properties``, ``tags``, ...) are JSON, so ``properties.patchName`` and ``tostring(properties.kbId)``
work as in Resource Graph. ``type`` is kept in lower case, as Resource Graph writes it.

What a query sees is what Resource Graph would show the caller: only the rows of the subscriptions of
the request, assessments of the last 7 days and installations of the last 30 (by the row's
``lastModifiedDateTime``, on the stand-in's clock). The data lives as long as the process, like the ARM
simulation that fills it (through :mod:`local.resourcegraph.rows`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from local.clock import Clock, RealClock
from local.kql import KqlQueryError, KqlRows, run_kql

RESOURCES = "resources"
PATCH_ASSESSMENTS = "patchassessmentresources"
PATCH_INSTALLATIONS = "patchinstallationresources"
TABLES = (RESOURCES, PATCH_ASSESSMENTS, PATCH_INSTALLATIONS)
_BAGS = ("sku", "plan", "properties", "tags", "identity", "zones", "extendedLocation")
COLUMNS: tuple[tuple[str, str], ...] = (
    *((name, "VARCHAR") for name in (
        "id", "name", "type", "tenantId", "kind", "location", "resourceGroup", "subscriptionId", "managedBy",
    )),
    *((name, "JSON") for name in _BAGS),
)  # fmt: skip
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
# Beside the visible columns, each table keeps two indexed keys that no query sees: the id in lower case
# (an upsert replaces by it) and the prefix a replace_under wrote the row under (a machine's latest
# assessment is replaced by it). Without them every write scanned the whole table: a machine's
# assessment cost twice as much at 10,000 machines as at 1,000.
_KEY_COLUMNS: tuple[tuple[str, str], ...] = (("_key", "VARCHAR"), ("_owner", "VARCHAR"))
_KEY = len(COLUMNS)  # where a prepared row's lower-case id is
_VISIBLE = ", ".join(f'"{name}"' for name in COLUMN_NAMES)
# "You can view the most recent update assessment history for the last 7 days and update installations
# history for the last 30 days" (same page).
RETENTION = {PATCH_ASSESSMENTS: timedelta(days=7), PATCH_INSTALLATIONS: timedelta(days=30)}
# A query result is held whole while it is paged; past this the stand-in refuses it rather than
# guess which rows Resource Graph would keep (its own result limits are not published).
MAX_RESULT_ROWS = 1_000_000


class RowRejected(ValueError):
    """A row the store cannot hold: unknown table or column, no id."""


class ResourceGraphStore:
    """The three tables, upserted by id and queried with KQL."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or RealClock()
        self._lock = threading.Lock()
        self._db: duckdb.DuckDBPyConnection | None = duckdb.connect(":memory:")
        with self._connect() as con:
            columns = ", ".join(f'"{name}" {kind}' for name, kind in (*COLUMNS, *_KEY_COLUMNS))
            for table in TABLES:
                con.execute(f"CREATE TABLE {_stored(table)} ({columns})")
                for key, _ in _KEY_COLUMNS:
                    con.execute(f"CREATE INDEX {table}{key} ON {_stored(table)} ({key})")
                # What KQL sees (its translator reads the columns of ``table``): the visible columns only.
                con.execute(f"CREATE VIEW {table} AS SELECT {_VISIBLE} FROM {_stored(table)}")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- writing -------------------------------------------------------------------------------

    def upsert(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert ``rows``, replacing any row of the same id (ids compare case-insensitively)."""
        prepared = [_prepare(table, row, index) for index, row in enumerate(rows)]
        if table == PATCH_ASSESSMENTS:  # its rows are a machine's latest assessment: replace_under
            raise RowRejected(f"{table} holds each machine's latest assessment: write it with put_assessment")
        keys = [row[_KEY] for row in prepared]
        return self._write(table, prepared, "_key IN (SELECT UNNEST(?::VARCHAR[]))", keys)

    def replace_under(self, table: str, id_prefix: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Drop every row whose id starts with ``id_prefix`` (any case), then insert ``rows``, whose ids must
        start with it: how a new ``patchAssessmentResults/latest`` replaces the previous one with all its
        patches."""
        owner = id_prefix.lower()
        prepared = [_prepare(table, row, index, owner) for index, row in enumerate(rows)]
        for index, row in enumerate(prepared):
            if not row[_KEY].startswith(owner):
                raise RowRejected(f"row {index} of {table}: id {row[0]!r} is not under {id_prefix!r}")
        return self._write(table, prepared, "_owner = ?", owner)

    def _write(self, table: str, prepared: list[list[Any]], doomed: str, parameter: Any) -> int:
        """Delete the rows ``doomed`` picks, then insert, in one transaction (a query sees the old rows or
        the new) and one statement each: a column of values per column, as a list. ``doomed`` reads an
        indexed key column (_KEY_COLUMNS), so a write costs the same whatever the size of the table."""
        names = (*COLUMNS, *_KEY_COLUMNS)
        columns = [[row[i] for row in prepared] for i in range(len(names))]
        selects = ", ".join(f'UNNEST(?::{kind}[]) AS "{name}"' for name, kind in names)
        with self._connect() as con:
            con.execute("BEGIN")
            try:
                con.execute(f"DELETE FROM {_stored(table)} WHERE {doomed}", [parameter])
                if prepared:
                    con.execute(f"INSERT INTO {_stored(table)} SELECT {selects}", columns)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        return len(prepared)

    def put_assessment(self, machine_id: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """A machine's latest assessment: its summary row and one row per patch, replacing the last."""
        return self.replace_under(PATCH_ASSESSMENTS, f"{machine_id}/patchAssessmentResults/", rows)

    def put_installation(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """One installation run: its summary row and one row per patch (earlier runs stay)."""
        return self.upsert(PATCH_INSTALLATIONS, rows)

    def put_resources(self, rows: Iterable[Mapping[str, Any]]) -> int:
        return self.upsert(RESOURCES, rows)

    # -- reading -------------------------------------------------------------------------------

    def run(self, kql: str, subscriptions: Sequence[str] | None = None) -> KqlRows:
        """``kql`` over what the caller may see: the rows of ``subscriptions`` (None: every subscription,
        a tenant-scope query) within the tables' retention."""
        with self._connect() as con:
            self._restrict(con, subscriptions)
            found = run_kql(con, kql, now=self._clock.now(), max_rows=MAX_RESULT_ROWS)
        if found.truncated:
            raise KqlQueryError(f"the query returns more than {MAX_RESULT_ROWS} rows; narrow it")
        return found

    def query(self, kql: str, subscriptions: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts with the bags decoded, for tests and the CLI (no HTTP)."""
        found = self.run(kql, subscriptions)
        return [object_row(found.columns, row) for row in found.rows]

    # -- internals -----------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of its own for one operation (temporary views stay in it); operations take turns."""
        with self._lock:
            if self._db is None:
                raise RuntimeError("the store is closed")
            con = self._db.cursor()
            try:
                con.execute("SET TimeZone='UTC'")
                yield con
            finally:
                con.close()

    def _restrict(self, con: duckdb.DuckDBPyConnection, subscriptions: Sequence[str] | None) -> None:
        """Shadow each table with a temporary view of what the caller may see (the query text is not
        touched; temporary views win name resolution in this cursor only)."""
        catalog = con.execute("SELECT current_database()").fetchall()[0][0]
        now = self._clock.now().astimezone(UTC).replace(tzinfo=None)
        for table in TABLES:
            # DuckDB takes no parameters in a view's definition: values go in as quoted literals.
            conditions = []
            if subscriptions is not None:
                listed = ", ".join(_sql_string(s.lower()) for s in subscriptions)
                conditions.append(f"list_contains([{listed}]::VARCHAR[], lower(subscriptionId))")
            if table in RETENTION:
                # Rows without a readable time are kept: only a dated row can be too old.
                oldest = _sql_string((now - RETENTION[table]).isoformat() + "Z")
                conditions.append(
                    "coalesce(try_cast(json_extract_string(properties, '$.lastModifiedDateTime') "
                    f"AS TIMESTAMPTZ) >= {oldest}::TIMESTAMPTZ, true)"
                )
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            stored = f'"{catalog}".main.{_stored(table)}'
            con.execute(f"CREATE TEMP VIEW {table} AS SELECT {_VISIBLE} FROM {stored}{where}")


def _stored(table: str) -> str:
    """The DuckDB table that holds ``table``'s rows with their key columns (``table`` is a view of it)."""
    return f"{table}_stored"


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _prepare(table: str, row: Mapping[str, Any], index: int, owner: str | None = None) -> list[Any]:
    """The row's values in column order, then its key columns (lower-case id, ``owner``)."""
    if table not in TABLES:
        raise RowRejected(f"no table {table!r} here (tables: {', '.join(TABLES)})")
    unknown = sorted(set(row) - set(COLUMN_NAMES))
    if unknown:
        raise RowRejected(f"row {index} of {table}: unknown column(s) {', '.join(unknown)}")
    if not isinstance(row.get("id"), str) or not row["id"]:
        raise RowRejected(f"row {index} of {table}: every row needs its id")
    values: list[Any] = []
    for name, _ in COLUMNS:
        value = row.get(name)
        if name == "type" and isinstance(value, str):
            value = value.lower()
        if name in _BAGS:
            value = None if value is None else json.dumps(value, separators=(",", ":"))
        values.append(value)
    return [*values, values[0].lower(), owner]


def object_row(columns: Sequence[tuple[str, str]], row: Sequence[Any]) -> dict[str, Any]:
    """One result row as Resource Graph's objectArray writes it: dynamic values as JSON values,
    datetimes as ISO 8601 UTC text."""
    return {name: wire_value(value, kind) for (name, kind), value in zip(columns, row, strict=True)}


def wire_value(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "dynamic" and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return str(value)
    return value
