"""A local Log Analytics: the Logs Ingestion and Logs Query APIs over HTTPS, stored in DuckDB.

See :mod:`local.loganalytics.server` for the wire formats and
:mod:`local.loganalytics.store` for storage, validation and KQL.
"""

from local.loganalytics.server import Counters, LogAnalyticsStandIn, parse_timespan
from local.loganalytics.store import (
    MAX_QUERY_ROWS,
    KqlQueryError,
    LogStore,
    RowRejected,
    TableRejected,
    TimeRange,
)

__all__ = [
    "MAX_QUERY_ROWS",
    "Counters",
    "KqlQueryError",
    "LogAnalyticsStandIn",
    "LogStore",
    "RowRejected",
    "TableRejected",
    "TimeRange",
    "parse_timespan",
]
