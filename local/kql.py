"""KQL on DuckDB for the stand-ins that answer KQL (Log Analytics, Resource Graph).

One way to run a query through ``duckdb-kql``: read-only, with the stand-in's clock as ``now()``,
at most a given number of rows, columns named with their KQL types, and one error for whatever the
engine refuses (it refuses what it cannot translate rather than answering wrongly).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import duckdb_kql
from duckdb_kql.stored_functions import ResolvedFunctions
from duckdb_kql.types import kusto_type


class KqlQueryError(ValueError):
    """The engine refused the query (syntax, unsupported construct, unknown table or column)."""


@dataclass(frozen=True)
class KqlRows:
    """A query's columns as (name, KQL type), its first rows, and whether there were more."""

    columns: tuple[tuple[str, str], ...]
    rows: list[tuple[Any, ...]]
    truncated: bool


def run_kql(
    con: duckdb.DuckDBPyConnection,
    kql: str,
    *,
    now: datetime,
    max_rows: int,
    functions: ResolvedFunctions | None = None,
) -> KqlRows:
    """Run ``kql`` on ``con`` (never writing); keep ``max_rows`` rows and say whether more were left."""
    try:
        cursor = duckdb_kql.execute(con, kql, query_now=now, allow_write=False, functions=functions)
        description = cursor.description or []
        rows = cursor.fetchmany(max_rows + 1)
    except (duckdb_kql.KqlError, duckdb.Error) as exc:
        raise KqlQueryError(str(exc)) from exc
    columns = tuple((str(d[0]), kusto_type(d[1])) for d in description)
    return KqlRows(columns, rows[:max_rows], len(rows) > max_rows)
