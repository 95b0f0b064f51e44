"""Many Arc installs' results in one Resource Graph query (``shared/azure/resource_graph.py``
``installation_runs``, read at a deployment batch's end): the query names every run, a group holds at
most ``GROUP_SIZE`` machines, every page is read through ``$skipToken``, and each run is answered as
``installation_run`` (one query per run) answers it, over the Resource Graph stand-in's store and the
fixture of Azure Update Manager's installation rows."""

from __future__ import annotations

import copy
import json
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from local.clock import VirtualClock
from local.resourcegraph import ResourceGraphStore
from shared.azure.resource_graph import (
    GROUP_SIZE,
    QuotaGate,
    ResourceGraph,
    installation_run,
    installation_runs,
    installation_runs_query,
    kql_string,
)
from shared.deployments.arc_results import finished_patches
from shared.model.install_outcome import InstallationState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
SUB = "11111111-1111-4111-8111-111111111111"
OTHER = "33333333-3333-4333-8333-333333333333"
ARC = f"/subscriptions/{SUB}/resourceGroups/rg-dc1/providers/Microsoft.HybridCompute/machines/ubu-arc-01"
ARC_RUN = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
NOW = datetime(2026, 2, 11, 6, 0, tzinfo=UTC)
FIXTURE = [r for r in json.loads((FIXTURES / "resource_graph_patch_installation.json").read_text())["data"]
           if r["id"].startswith(ARC)]  # the Arc run: its summary, openssl installed, tzdata pending


def arc(n: int, subscription: str = SUB) -> str:
    return ARC.replace("ubu-arc-01", f"arc-{n:03d}").replace(SUB, subscription)


def run_of(machine: str, n: int) -> str:
    return f"{n:08d}-0000-4000-8000-{zlib.crc32(machine.encode()):012d}"


def run_rows(machine: str, run: str, row_run: str | None = None) -> list[dict[str, Any]]:
    """The fixture's Arc run as ``machine``'s run ``run`` (its rows kept under ``row_run`` when given)."""
    rows = copy.deepcopy(FIXTURE)
    for row in rows:
        row["id"] = row["id"].replace(ARC, machine).replace(ARC_RUN, row_run or run)
        row["subscriptionId"] = machine.split("/")[2]
        if row["type"].endswith("patchinstallationresults"):
            row["name"] = row_run or run
            row["properties"]["installationActivityId"] = run
    return rows


class StoreGraph:
    """The product's :class:`ResourceGraph` interface over the stand-in's store (no HTTP), with the
    queries it was asked and their subscriptions."""

    def __init__(self, store: ResourceGraphStore) -> None:
        self.store = store
        self.calls: list[tuple[str, list[str]]] = []

    def rows(self, kql: str, subscriptions: Sequence[str]) -> Iterator[dict[str, Any]]:
        self.calls.append((kql, list(subscriptions)))
        yield from self.store.query(kql, subscriptions)


@pytest.fixture
def store() -> Iterator[ResourceGraphStore]:
    store = ResourceGraphStore(VirtualClock(NOW))
    yield store
    store.close()


def test_the_query_names_every_run_in_lower_case_and_their_installation_activity_ids():
    query = installation_runs_query([(ARC, ARC_RUN.upper()), (arc(1), "run-2")])
    listed = f"{kql_string(f'{ARC}/patchInstallationResults/{ARC_RUN}'.lower())}, "
    assert query.startswith("patchinstallationresources | extend installationRun = ")
    assert f"where installationRun in~ ({listed}" in query
    assert f"tostring(properties.installationActivityId) in~ ('{ARC_RUN.lower()}', 'run-2')" in query
    assert query.endswith("| project id, name, type, properties | order by id asc")  # pageable: it has ids
    assert "installationActivityId" not in installation_runs_query([(ARC, ARC_RUN)], by_activity=False)


def test_many_runs_are_answered_with_one_query_as_one_query_per_run_would(store):
    machines = [arc(n) for n in range(12)]
    for n, machine in enumerate(machines):
        store.put_installation(run_rows(machine, run_of(machine, 1)))
        if n % 3 == 0:  # a second install call of the same deployment
            store.put_installation(run_rows(machine, run_of(machine, 2)))
    asked = [(m, run_of(m, 1)) for m in machines] + [(m, run_of(m, 2)) for m in machines[::3]]
    lagging = (arc(99), "not-there-yet")
    graph = StoreGraph(store)
    found = installation_runs(graph, [*asked, lagging, (machines[0].upper(), run_of(machines[0], 1).upper())])
    assert len(graph.calls) == 1 and graph.calls[0][1] == [SUB]
    assert len(found) == len(asked) + 1  # the pair asked twice (in another case) is answered once
    for machine, run in asked:
        one = installation_run(StoreGraph(store), machine, run)  # type: ignore[arg-type]
        assert found[(machine.lower(), run.lower())] == one
        assert [(p.patch.name, p.patch.state) for p in found[(machine.lower(), run.lower())].patches] == [
            ("openssl", InstallationState.INSTALLED), ("tzdata", InstallationState.PENDING)]
    nothing = found[(lagging[0].lower(), lagging[1])]
    assert nothing.summary is None and nothing.patches == () and finished_patches(nothing) is None


def test_a_group_holds_at_most_group_size_machines_over_their_own_subscriptions(store):
    machines = [arc(n) for n in range(GROUP_SIZE)] + [arc(500, OTHER)]
    runs = [(m, run_of(m, k)) for m in machines for k in (1, 2)]  # two installs each: 2 * GROUP_SIZE + 2 runs
    for machine, run in runs:
        store.put_installation(run_rows(machine, run))
    graph = StoreGraph(store)
    found = installation_runs(graph, runs)
    assert [subscriptions for _, subscriptions in graph.calls] == [[SUB], [OTHER]]
    # A machine's runs are asked for together: the first group is GROUP_SIZE machines' 2 runs each.
    assert graph.calls[0][0].count("/patchinstallationresults/") == 2 * GROUP_SIZE
    assert all(finished_patches(found[(m.lower(), r.lower())]) for m, r in runs)


def test_a_run_kept_under_another_id_costs_one_more_query_for_its_group_and_lag_none(store):
    renamed, plain = arc(1), arc(2)
    store.put_installation(run_rows(renamed, "activity-1", row_run="run-0042"))
    store.put_installation(run_rows(plain, "activity-2"))
    graph = StoreGraph(store)
    found = installation_runs(graph, [(renamed, "activity-1"), (plain, "activity-2"), (arc(3), "lagging")])
    assert len(graph.calls) == 2
    assert "installationActivityId" not in graph.calls[1][0] and "/run-0042'" in graph.calls[1][0]
    run = found[(renamed.lower(), "activity-1")]
    assert run.installation_id == "run-0042" and run.summary is not None and len(run.patches) == 2
    assert run == installation_run(StoreGraph(store), renamed, "activity-1")  # type: ignore[arg-type]
    assert found[(arc(3).lower(), "lagging")].summary is None


class PagingClient:
    """A Resource Graph client over the store that answers ``page_rows`` rows a page with a ``$skipToken``
    for the next, as Resource Graph pages a query that projects ``id``."""

    def __init__(self, store: ResourceGraphStore, page_rows: int) -> None:
        self.store, self.page_rows = store, page_rows
        self.requests: list[Any] = []

    def resources(self, request: Any, raw_response_hook: Any = None) -> Any:
        self.requests.append(request)
        rows = self.store.query(request.query, request.subscriptions)
        offset = int(request.options.skip_token or 0)
        page = rows[offset:offset + self.page_rows]
        more = offset + len(page) < len(rows)
        return type("Page", (), {"data": page, "skip_token": str(offset + len(page)) if more else None,
                                 "result_truncated": "false", "total_records": len(rows)})()  # fmt: skip


def test_every_page_of_the_answer_is_read_through_the_skip_token(store):
    machines = [arc(n) for n in range(20)]
    for machine in machines:
        store.put_installation(run_rows(machine, run_of(machine, 1)))
    client = PagingClient(store, page_rows=7)  # 20 runs of 3 rows: 60 rows, 9 pages
    graph = ResourceGraph(client, QuotaGate())  # type: ignore[arg-type]
    found = installation_runs(graph, [(m, run_of(m, 1)) for m in machines])
    assert len(client.requests) == 9
    assert [r.options.skip_token for r in client.requests] == [None, *(str(7 * n) for n in range(1, 9))]
    assert len({r.query for r in client.requests}) == 1  # the same query, page after page
    assert all(len(run.patches) == 2 and run.summary is not None for run in found.values())
