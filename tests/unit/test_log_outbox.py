"""How the log outbox groups rows: Table transactions and Logs Ingestion calls within their limits."""

from __future__ import annotations

from shared.azure.log_outbox import MAX_CALL_BYTES, _groups
from shared.azure.tables import split_property


def entity(chars: int) -> dict[str, object]:
    return split_property("Row", "x" * chars)


def test_groups_stay_within_the_count_and_the_bytes_and_keep_the_order():
    rows = [entity(40_000) for _ in range(60)]
    calls = list(_groups(rows, len(rows), MAX_CALL_BYTES - 2))
    assert [len(c) for c in calls] == [24, 24, 12]  # 24 rows of 40,001 bytes fit in 1 MB, not 25
    assert [len(c) for c in _groups([entity(10)] * 250, 100, 3_000_000)] == [100, 100, 50]


def test_a_row_alone_over_the_limit_goes_alone():
    rows = [entity(10), entity(2_000_000), entity(10)]
    assert [len(c) for c in _groups(rows, 100, MAX_CALL_BYTES)] == [1, 1, 1]
