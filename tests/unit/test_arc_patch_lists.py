"""Arc-enabled servers' per-update lists from Resource Graph: the queries that read one machine's latest
assessment and one installation run (``shared/azure/resource_graph.py``), answered by the Resource Graph
stand-in's store over the fixtures of Azure Update Manager's row shapes, and the rules that decide when a
list describes the operation just finished (``shared/assessment/arc_patches.py``,
``shared/deployments/arc_results.py``): the ARM result's counts stay the truth, and a list Resource Graph
does not have yet (lag) leaves the outcome counts-only."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from local.clock import VirtualClock
from local.resourcegraph import ResourceGraphStore
from shared.assessment.arc_patches import ListWanted, awaits_list, with_listed_patches
from shared.azure.resource_graph import (
    InstallationRun,
    LastInstallation,
    MachineAssessment,
    installation_run,
    latest_assessment,
    latest_assessments,
)
from shared.deployments.arc_results import finished_patches, needs_patch_results
from shared.model.assessment_outcome import AssessmentOutcome
from shared.model.install_outcome import InstallationState, InstallOutcome

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
SUB = "11111111-1111-4111-8111-111111111111"
VM = f"/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.Compute/virtualMachines/win-01"
ARC = f"/subscriptions/{SUB}/resourceGroups/rg-dc1/providers/Microsoft.HybridCompute/machines/ubu-arc-01"
ARC_ASSESSMENT = "0b9c4f6e-1d2a-4e3b-9c8d-7e6f5a4b3c21"  # the fixture's summary row name
ARC_RUN = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
NOW = datetime(2026, 2, 11, 6, 0, tzinfo=UTC)


def fixture_rows(name: str) -> list[dict[str, Any]]:
    return list(json.loads((FIXTURES / f"{name}.json").read_text())["data"])


class StoreGraph:
    """The product's :class:`ResourceGraph` interface over the stand-in's store (no HTTP), with the
    queries it was asked."""

    def __init__(self, store: ResourceGraphStore) -> None:
        self.store = store
        self.queries: list[str] = []

    def rows(self, kql: str, subscriptions: Sequence[str]) -> Iterator[dict[str, Any]]:
        self.queries.append(kql)
        yield from self.store.query(kql, subscriptions)


@pytest.fixture
def store() -> ResourceGraphStore:
    store = ResourceGraphStore(VirtualClock(NOW))
    assessed = fixture_rows("resource_graph_patch_assessment")
    for machine in (VM, ARC):
        store.put_assessment(machine, [r for r in assessed if r["id"].startswith(machine)])
    store.put_installation(fixture_rows("resource_graph_patch_installation"))
    return store


def arc_outcome(**changes: Any) -> AssessmentOutcome:
    """The Arc assessment of the fixture as its ARM result gives it: counts only (1 security, 1 other)."""
    outcome = AssessmentOutcome(
        status="Succeeded", activity_id=ARC_ASSESSMENT, started_at=datetime(2026, 2, 10, 2, 10, tzinfo=UTC),
        reboot_pending=False, critical_and_security_count=1, other_count=1, patches=None,
        counts_by_classification={"Security": 1, "Other": 1},
    )  # fmt: skip
    return replace(outcome, **changes)


# -- the queries ----------------------------------------------------------------------------------------


def test_one_query_gives_a_machines_latest_assessment_with_its_patches(store: ResourceGraphStore):
    graph = StoreGraph(store)
    found = latest_assessment(graph, ARC.upper())  # type: ignore[arg-type]
    assert len(graph.queries) == 1
    assert found.summary is not None and found.summary.assessment_id == ARC_ASSESSMENT
    assert [p.patch.name for p in found.patches] == ["openssl", "tzdata"]  # the VM's rows are not its
    assert latest_assessment(graph, ARC.replace("ubu-arc-01", "other")).summary is None  # type: ignore[arg-type]


def test_one_query_gives_the_latest_assessments_of_many_machines_as_one_query_each_would(
    store: ResourceGraphStore,
):
    graph = StoreGraph(store)
    absent = ARC.replace("ubu-arc-01", "other")
    found = latest_assessments(graph, [ARC.upper(), VM, absent])  # type: ignore[arg-type]
    assert len(graph.queries) == 1
    for machine in (ARC, VM, absent):
        one = latest_assessment(StoreGraph(store), machine)  # type: ignore[arg-type]
        assert (found[machine.lower()].summary, found[machine.lower()].patches) == (one.summary, one.patches)
    assert found[absent.lower()].summary is None


def test_only_a_finished_arc_assessment_without_a_list_awaits_one_and_its_wait_survives_json():
    assert awaits_list(ARC, arc_outcome())
    assert not awaits_list(VM, arc_outcome())
    assert not awaits_list(ARC, arc_outcome(patches=()))
    assert not awaits_list(ARC, arc_outcome(status="Failed"))
    wanted = ListWanted('{"name": "ubu-arc-01"}', "run-1", arc_outcome())
    assert ListWanted.from_json(json.loads(json.dumps(wanted.to_json()))) == wanted


def test_one_query_gives_an_installation_run_by_the_installs_activity_id(store: ResourceGraphStore):
    graph = StoreGraph(store)
    run = installation_run(graph, ARC, ARC_RUN.upper())  # type: ignore[arg-type]
    assert len(graph.queries) == 1
    assert run.summary is not None and run.summary.status == "CompletedWithWarnings"
    assert [(p.patch.name, p.patch.state) for p in run.patches] == [
        ("openssl", InstallationState.INSTALLED), ("tzdata", InstallationState.PENDING),
    ]


def test_a_run_whose_row_id_is_not_its_activity_id_is_found_by_its_installation_activity_id():
    store = ResourceGraphStore(VirtualClock(NOW))
    # Row ids under "run-0042" while the summary's installationActivityId stays the install's id.
    rows = [r for r in fixture_rows("resource_graph_patch_installation") if r["id"].startswith(ARC)]
    renamed = [dict(r, id=r["id"].replace(ARC_RUN, "run-0042")) for r in rows]
    renamed[0]["name"] = "run-0042"
    assert renamed[0]["properties"]["installationActivityId"] == ARC_RUN
    store.put_installation(renamed)
    graph = StoreGraph(store)
    run = installation_run(graph, ARC, ARC_RUN)  # type: ignore[arg-type]
    assert len(graph.queries) == 3 and run.installation_id == "run-0042"
    assert run.summary is not None and len(run.patches) == 2
    missing = installation_run(graph, ARC, "not-a-run")  # type: ignore[arg-type]
    assert missing.summary is None and missing.patches == ()


# -- which list describes the assessment just finished ----------------------------------------------


@pytest.fixture
def found(store: ResourceGraphStore) -> MachineAssessment:
    return latest_assessment(StoreGraph(store), ARC)  # type: ignore[arg-type]


def test_the_list_of_the_assessment_just_finished_is_taken(found: MachineAssessment):
    completed = with_listed_patches(arc_outcome(activity_id=ARC_ASSESSMENT.upper()), found)
    assert completed.patches is not None and [p.name for p in completed.patches] == ["openssl", "tzdata"]
    assert not completed.truncated
    assert completed.counts_by_classification == {"Security": 1, "Other": 1}  # the counts are kept


def test_a_row_no_older_than_the_assessment_is_taken_if_the_ids_differ(found: MachineAssessment):
    assert with_listed_patches(arc_outcome(activity_id="another-form"), found).patches is not None
    later = arc_outcome(activity_id="another-form", started_at=datetime(2026, 2, 10, 3, 0, tzinfo=UTC))
    assert with_listed_patches(later, found).patches is None  # an older assessment's list: lag


def test_resource_graph_lagging_or_still_running_leaves_the_counts_alone(found: MachineAssessment):
    nothing = MachineAssessment(ARC, None, ())
    assert with_listed_patches(arc_outcome(), nothing) == arc_outcome()
    assert found.summary is not None
    running = replace(found, summary=replace(found.summary, status="InProgress"))
    assert with_listed_patches(arc_outcome(), running).patches is None


def test_the_counts_stay_the_truth_a_short_list_is_truncated_a_long_one_unused(found: MachineAssessment):
    more = with_listed_patches(arc_outcome(critical_and_security_count=5), found)
    assert more.patches is not None and more.truncated  # the summary adds what the list lacks
    assert with_listed_patches(arc_outcome(other_count=0), found).patches is None


# -- an installation run's results ----------------------------------------------------------------------


def test_a_finished_runs_patches_are_taken_a_missing_or_running_one_is_lag(store: ResourceGraphStore):
    run = installation_run(StoreGraph(store), ARC, ARC_RUN)  # type: ignore[arg-type]
    assert [p.state for p in finished_patches(run) or ()] == [InstallationState.INSTALLED,
                                                              InstallationState.PENDING]
    assert finished_patches(InstallationRun(ARC, ARC_RUN, None, ())) is None
    summary = LastInstallation(ARC, ARC_RUN, NOW - timedelta(hours=1), "InProgress", "User")
    assert finished_patches(InstallationRun(ARC, ARC_RUN, summary, run.patches)) is None


def test_only_an_arc_servers_counts_only_install_needs_resource_graph():
    outcome = InstallOutcome(
        status="Succeeded", activity_id=ARC_RUN, reboot_status="NotNeeded", maintenance_window_exceeded=False,
        installed=1, failed=0, pending=1, excluded=0, not_selected=0, started_at=None, patches=None,
    )  # fmt: skip
    assert needs_patch_results(ARC, outcome)
    assert not needs_patch_results(VM, outcome)
    assert not needs_patch_results(ARC, replace(outcome, patches=()))
    assert not needs_patch_results(ARC, replace(outcome, activity_id=""))
