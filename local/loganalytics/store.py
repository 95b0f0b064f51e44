"""The Log Analytics stand-in's storage: one DuckDB database, one table per declared log table.

Rows are checked against the declarations of :mod:`shared.log_tables` and converted to
DuckDB values before anything is written, so a request is stored whole or not at all,
as the Logs Ingestion API does. KQL runs through ``duckdb-kql``, which refuses what it
cannot translate rather than answering wrongly. A table declaration Log Analytics would refuse
(a reserved or malformed column name) is refused here too, and the workspace functions of
:mod:`shared.log_tables` run where a query names them, as stored functions do in Log Analytics.

File locking: DuckDB lets one process write a file, or any number read it, never both.
A file-backed store therefore opens the file for each operation and closes it straight
after, so an idle server holds no lock and ``python -m local query`` (read-only) can
open the file while the server runs or after it stops. A store opened read-only never
writes. An in-memory store (tests) keeps one database for its lifetime.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from duckdb_kql.stored_functions import ResolvedFunctions, parse_functions

from local.clock import Clock, RealClock
from local.kql import KqlQueryError as KqlQueryError  # re-exported: callers catch it from this module
from local.kql import run_kql
from shared.log_tables import FUNCTIONS, TABLES, ColumnType, LogFunction, LogTable

# Log Analytics query API: at most 500,000 rows per result ("Azure Monitor service limits",
# Log queries); past it the service returns the first rows and a partial-result error.
MAX_QUERY_ROWS = 500_000
# Every Log Analytics table has TimeGenerated; the query API's timespan filters on it.
TIME_COLUMN = "TimeGenerated"

DUCKDB_TYPES: dict[ColumnType, str] = {
    ColumnType.STRING: "VARCHAR",
    ColumnType.INT: "INTEGER",
    ColumnType.LONG: "BIGINT",
    ColumnType.REAL: "DOUBLE",
    ColumnType.BOOLEAN: "BOOLEAN",
    ColumnType.DATETIME: "TIMESTAMP",  # naive, always UTC: the connection's TimeZone is UTC
    ColumnType.DYNAMIC: "JSON",
}
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)

# Column names a custom table may not declare, and the shape of one it may: "Add or delete tables and
# columns in Azure Monitor Logs" (column name rules) and "Logs Ingestion API in Azure Monitor" (supported
# tables), MicrosoftDocs/azure-monitor-docs. Case is not documented, so any case is refused here.
RESERVED_COLUMN_NAMES = frozenset(
    {
        "id",
        "BilledSize",
        "IsBillable",
        "InvalidTimeGenerated",
        "TenantId",
        "Title",
        "Type",
        "UniqueId",
        "_ItemId",
        "_ResourceGroup",
        "_ResourceId",
        "_SubscriptionId",
        "_TimeReceived",
    }
)
_RESERVED_FOLDED = frozenset(n.casefold() for n in RESERVED_COLUMN_NAMES)
_COLUMN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{1,44}")
# A function name "may not include a space or any special characters ... may not start with an
# underscore" ("Functions in Azure Monitor log queries", MicrosoftDocs/azure-monitor-docs).
_FUNCTION_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class RowRejected(ValueError):
    """A row does not fit its table's declaration; the message names row, column and rule."""


class TableRejected(ValueError):
    """A table or function declaration Log Analytics would refuse; the message names it and the rule."""


class StoreBusy(RuntimeError):
    """Another process holds the DuckDB file (DuckDB allows one writer or many readers)."""


@dataclass(frozen=True)
class TimeRange:
    """A query timespan, ``start`` inclusive and ``end`` exclusive, both timezone-aware."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("TimeRange bounds must be timezone-aware")
        if self.end < self.start:
            raise ValueError(f"timespan end {self.end.isoformat()} is before start {self.start.isoformat()}")


@dataclass(frozen=True)
class QueryResult:
    """A query's answer: columns as (name, KQL type), rows in order, and whether it was cut at the limit."""

    columns: tuple[tuple[str, str], ...]
    rows: list[tuple[Any, ...]]
    truncated: bool = False

    def as_dicts(self) -> list[dict[str, Any]]:
        """Rows keyed by column name; datetimes come back timezone-aware UTC."""
        names = [name for name, _ in self.columns]
        return [{name: _aware(value) for name, value in zip(names, row, strict=True)} for row in self.rows]


class LogStore:
    """Declared log tables in DuckDB: validated inserts and KQL queries.

    ``functions`` are the workspace functions a query may call by name; by default those of
    :data:`shared.log_tables.FUNCTIONS` whose table is declared here. A query naming one runs its
    body, as Log Analytics expands a stored function where it is called.
    """

    def __init__(
        self,
        db_path: Path | None,
        tables: Sequence[LogTable] = TABLES,
        *,
        functions: Sequence[LogFunction] | None = None,
        clock: Clock | None = None,
        read_only: bool = False,
        row_limit: int = MAX_QUERY_ROWS,
    ) -> None:
        if read_only and db_path is None:
            raise ValueError("a read-only store needs a db_path: an in-memory database starts empty")
        if row_limit < 1:
            raise ValueError(f"row_limit must be at least 1, got {row_limit}")
        for table in tables:
            check_table_declaration(table)
        if functions is None:
            functions = [f for f in FUNCTIONS if f.table.name in {t.name for t in tables}]
        self._functions = stored_functions(functions, tables)
        self._path = db_path
        self._tables = {t.name: t for t in tables}
        self._by_stream = {t.stream: t for t in tables}
        self._clock: Clock = clock or RealClock()
        self._read_only = read_only
        self._row_limit = row_limit
        self._lock = threading.Lock()
        self._memory = duckdb.connect(":memory:") if db_path is None else None
        if not read_only:
            self._create_tables()

    @classmethod
    def open_read_only(cls, db_path: Path, tables: Sequence[LogTable] = TABLES,
                       clock: Clock | None = None) -> LogStore:
        """For the CLI: reads a file a server wrote, without taking DuckDB's writer lock."""
        return cls(db_path, tables, read_only=True, clock=clock)

    @property
    def tables(self) -> tuple[LogTable, ...]:
        return tuple(self._tables.values())

    @property
    def row_limit(self) -> int:
        return self._row_limit

    def table_for_stream(self, stream: str) -> LogTable | None:
        return self._by_stream.get(stream)

    def close(self) -> None:
        with self._lock:
            if self._memory is not None:
                self._memory.close()
                self._memory = None

    # -- ingestion -------------------------------------------------------------------------

    def insert(self, table: LogTable, rows: Sequence[Mapping[str, Any]]) -> int:
        """Validate every row, then write them all in one statement (all or nothing)."""
        if self._read_only:
            raise PermissionError("this store was opened read-only")
        converted = prepare_rows(table, rows, self._clock.now())
        if not converted:
            return 0
        names = table.column_names()
        columns = [[row[i] for row in converted] for i in range(len(names))]
        selects = ", ".join(f"UNNEST(?::{DUCKDB_TYPES[c.type]}[]) AS {_quote(c.name)}" for c in table.columns)
        sql = f"INSERT INTO {_quote(table.name)} ({', '.join(map(_quote, names))}) SELECT {selects}"
        with self._connect() as con:
            con.execute(sql, columns)
        return len(converted)

    # -- queries ---------------------------------------------------------------------------

    def run(self, kql: str, timespan: TimeRange | None = None) -> QueryResult:
        """Run ``kql``; with a timespan, every table is seen filtered on TimeGenerated as the service does."""
        with self._connect() as con:
            if timespan is not None:
                self._restrict_to(con, timespan)
            found = run_kql(
                con, kql, now=self._clock.now(), max_rows=self._row_limit, functions=self._functions
            )
        return QueryResult(found.columns, found.rows, found.truncated)

    def query(self, kql: str, timespan: TimeRange | None = None) -> list[dict[str, Any]]:
        """Rows as dicts, for the local CLI and tests that need no HTTP."""
        return self.run(kql, timespan).as_dicts()

    # -- internals -------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one operation; operations in this process take turns."""
        with self._lock:
            if self._memory is not None:
                con = self._memory.cursor()
            elif self._path is None:
                raise RuntimeError("the store is closed")
            else:
                con = self._open_file(self._path)
            try:
                con.execute("SET TimeZone='UTC'")
                yield con
            finally:
                con.close()

    def _open_file(self, path: Path) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(path), read_only=self._read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreBusy(f"{path} is in use by another process: {exc}") from exc
            raise

    def _create_tables(self) -> None:
        """Create missing tables; add columns a declaration gained since the file was written and drop
        those it lost, as a table PUT with the whole schema does in Azure ("Add or delete tables and
        columns in Azure Monitor Logs")."""
        with self._connect() as con:
            for table in self._tables.values():
                columns = ", ".join(f"{_quote(c.name)} {DUCKDB_TYPES[c.type]}" for c in table.columns)
                con.execute(f"CREATE TABLE IF NOT EXISTS {_quote(table.name)} ({columns})")
                existing = {
                    row[0]
                    for row in con.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = 'main' AND table_name = ?",
                        [table.name],
                    ).fetchall()
                }
                for column in table.columns:
                    if column.name not in existing:
                        con.execute(
                            f"ALTER TABLE {_quote(table.name)} ADD COLUMN "
                            f"{_quote(column.name)} {DUCKDB_TYPES[column.type]}"
                        )
                for name in sorted(existing - set(table.column_names())):
                    con.execute(f"ALTER TABLE {_quote(table.name)} DROP COLUMN {_quote(name)}")

    def _restrict_to(self, con: duckdb.DuckDBPyConnection, span: TimeRange) -> None:
        """Shadow each table with a temporary view of its rows inside ``span``.

        Temporary views live in this connection only and win name resolution over the
        tables, so the query text is untouched and ``let``/``datatable`` data is not
        filtered (as in Log Analytics, where the timespan applies to tables).
        """
        catalog = con.execute("SELECT current_database()").fetchall()[0][0]
        start, end = _naive_utc(span.start), _naive_utc(span.end)
        for table in self._tables.values():
            if TIME_COLUMN not in table.column_names():
                continue
            con.execute(
                f"CREATE TEMP VIEW {_quote(table.name)} AS SELECT * FROM "
                f"{_quote(catalog)}.main.{_quote(table.name)} WHERE {_quote(TIME_COLUMN)} >= "
                f"TIMESTAMP '{start.isoformat(sep=' ')}' AND {_quote(TIME_COLUMN)} < "
                f"TIMESTAMP '{end.isoformat(sep=' ')}'"
            )


# -- declarations ----------------------------------------------------------------------------


def check_table_declaration(table: LogTable) -> None:
    """Refuse a table Log Analytics would not create: a reserved or malformed column name."""
    for column in table.columns:
        if column.name.casefold() in _RESERVED_FOLDED:
            raise TableRejected(
                f"table {table.name}: column {column.name} is a reserved column name in Log Analytics "
                f"(reserved: {', '.join(sorted(RESERVED_COLUMN_NAMES))})"
            )
        if not _COLUMN_NAME.fullmatch(column.name):
            raise TableRejected(
                f"table {table.name}: column name {column.name!r} must start with a letter, hold only "
                "letters, digits and underscores, and be 2 to 45 characters long"
            )


def stored_functions(functions: Sequence[LogFunction], tables: Sequence[LogTable]) -> ResolvedFunctions:
    """The functions as the KQL engine's stored functions, after the checks Log Analytics makes."""
    definitions = []
    for function in functions:
        if not _FUNCTION_ALIAS.fullmatch(function.alias):
            raise TableRejected(
                f"function {function.alias!r}: a function name starts with a letter and holds only "
                "letters, digits and underscores"
            )
        if function.table.name not in {t.name for t in tables}:
            raise TableRejected(f"function {function.alias}: its table {function.table.name} is not declared")
        definitions.append(f"function {function.alias}() {{ {function.query} }}")
    resolved = parse_functions(definitions)
    return resolved if resolved is not None else {}


# -- row validation --------------------------------------------------------------------------


def prepare_rows(
    table: LogTable, rows: Sequence[Mapping[str, Any]], ingested_at: datetime
) -> list[tuple[Any, ...]]:
    """Check every row against ``table`` and convert it to DuckDB values, in declaration order.

    A missing TimeGenerated is set to the ingestion time: in Azure the DCR's default
    transform (``source``) keeps an absent TimeGenerated empty and the workspace fills it
    with the time the record was received.
    """
    declared = {c.name: c for c in table.columns}
    prepared: list[tuple[Any, ...]] = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            kind = type(row).__name__
            raise RowRejected(f"row {index} of stream {table.stream} is a {kind}, not a JSON object")
        unknown = sorted(set(row) - set(declared))
        if unknown:
            raise RowRejected(
                f"row {index}: column(s) {', '.join(unknown)} not declared for stream {table.stream} "
                f"(table {table.name})"
            )
        values = []
        for column in table.columns:
            value = row.get(column.name)
            if value is None and column.name == TIME_COLUMN:
                value = ingested_at
            values.append(_convert(value, column.type, index, column.name))
        prepared.append(tuple(values))
    return prepared


def _convert(value: Any, kind: ColumnType, index: int, name: str) -> Any:
    if value is None:
        return None

    def reject(rule: str) -> RowRejected:
        shown = json.dumps(value, default=str)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return RowRejected(f"row {index}, column {name}: expected {kind.value} ({rule}), got {shown}")

    if kind is ColumnType.STRING:
        if not isinstance(value, str):
            raise reject("a JSON string")
        return value
    if kind in (ColumnType.INT, ColumnType.LONG):
        low, high = _INT32 if kind is ColumnType.INT else _INT64
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise reject(f"a whole number from {low} to {high}")
        return value
    if kind is ColumnType.REAL:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise reject("a finite number")
        return float(value)
    if kind is ColumnType.BOOLEAN:
        if not isinstance(value, bool):
            raise reject("JSON true or false")
        return value
    if kind is ColumnType.DATETIME:
        return _naive_utc(_parse_datetime(value, reject))
    # dynamic: any JSON value, kept as its JSON text
    return json.dumps(value, separators=(",", ":"))


def _parse_datetime(value: Any, reject: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise reject("an ISO 8601 date and time such as 2026-01-13T02:00:00Z") from None
    else:
        raise reject("an ISO 8601 date and time string")
    # No offset means UTC, as Log Analytics reads it.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _aware(value: Any) -> Any:
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
