"""Resource Graph rows as the product reads them (``shared/azure/resource_graph.py``), against the
fixtures of Azure Update Manager's documented row shapes (``tests/fixtures/azure/resource_graph_*.json``),
and the Resource Graph stand-in's rows (``local/resourcegraph/rows.py``) against the same fixtures."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from local.arm.fleet import parse_fleet
from local.arm.simulation import Simulation
from local.clock import VirtualClock
from local.resourcegraph.rows import assessment_rows, installation_rows
from shared.azure.resource_graph import (
    DEFAULT_THROTTLE_WAIT_SECONDS,
    GROUP_SIZE,
    MAX_THROTTLED_ATTEMPTS,
    QuotaGate,
    ResourceGraph,
    ResourceGraphError,
    _resets_after_seconds,
    assessed_patch,
    assessment_patches_query,
    fleet_patch_activity,
    installation_patches,
    installation_patches_query,
    installed_patch,
    kql_string,
    last_assessment,
    last_installation,
    latest_assessment_patches,
    latest_assessments,
    machine_id_of,
    summaries_query,
)
from shared.model.install_outcome import InstallationState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
SUB = "11111111-1111-4111-8111-111111111111"
VM = f"/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.Compute/virtualMachines/win-01"
ARC = f"/subscriptions/{SUB}/resourceGroups/rg-dc1/providers/Microsoft.HybridCompute/machines/ubu-arc-01"
VM_RUN = "6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
ARC_RUN = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


def rows(name: str) -> list[dict[str, Any]]:
    body = json.loads((FIXTURES / f"{name}.json").read_text())
    assert body.pop("_source")
    assert body["count"] == len(body["data"]) and body["resultTruncated"] == "false"
    return list(body["data"])


ASSESSMENT = rows("resource_graph_patch_assessment")
INSTALLATION = rows("resource_graph_patch_installation")


# -- the product's parsers against the fixtures ------------------------------------------------------


def test_the_latest_assessment_gives_each_patch_of_vms_and_arc_servers():
    patches = [p for p in map(assessed_patch, ASSESSMENT) if p is not None]
    assert [(p.machine_id, p.patch.name.split(" ")[0]) for p in patches] == [
        (VM, "Definition"), (VM, "2026-02"), (ARC, "openssl"), (ARC, "tzdata"),
    ]
    definition, cumulative, openssl, _ = patches
    assert definition.patch.patch_id == "35428702-5784-4ba4-a6e0-5222258b5411"
    assert definition.patch.kb_id == "2267602" and definition.patch.version is None
    assert definition.patch.classifications == ("Definition Updates",)  # Windows Update's names, kept as is
    assert definition.patch.reboot_behavior == "NeverReboots"
    assert definition.patch.published_date == datetime(2018, 11, 7, tzinfo=UTC)
    assert cumulative.patch.classifications == ("Security Updates",)
    assert openssl.patch.version == "3.0.2-0ubuntu1.15" and openssl.patch.kb_id is None
    assert openssl.patch.published_date is None  # none for Linux updates
    assert openssl.last_modified == datetime(2026, 2, 10, 2, 11, 30, tzinfo=UTC)


def test_an_assessment_summary_is_the_machines_last_assessment():
    summaries = [s for s in map(last_assessment, ASSESSMENT) if s is not None]
    assert [(s.machine_id, s.status) for s in summaries] == [(VM, "Succeeded"), (ARC, "Succeeded")]
    assert summaries[0].assessment_id == "a4e0f4f4-4b7c-4c5e-9d3c-5b1f0c1d2e01"
    assert summaries[0].at == datetime(2026, 2, 10, 2, 3, 45, 283026, tzinfo=UTC)
    assert [assessed_patch(r) for r in ASSESSMENT if "softwarepatches" not in r["type"]] == [None, None]


def test_an_installation_gives_each_patch_with_its_installation_state():
    patches = [p for p in map(installed_patch, INSTALLATION) if p is not None]
    assert [(p.machine_id, p.installation_id, p.patch.state) for p in patches] == [
        (VM, VM_RUN, InstallationState.INSTALLED),
        (VM, VM_RUN, InstallationState.FAILED),
        (VM, VM_RUN, InstallationState.NOT_SELECTED),
        (ARC, ARC_RUN, InstallationState.INSTALLED),
        (ARC, ARC_RUN, InstallationState.PENDING),
    ]
    assert patches[0].patch.kb_id == "5034770" and patches[3].patch.version == "3.0.2-0ubuntu1.15"
    assert patches[4].patch.classifications == ("Other",)


def test_an_installation_summary_is_a_run_with_its_status():
    runs = [r for r in map(last_installation, INSTALLATION) if r is not None]
    assert [(r.machine_id, r.installation_id, r.status, r.started_by) for r in runs] == [
        (VM, VM_RUN, "Failed", "User"), (ARC, ARC_RUN, "CompletedWithWarnings", "User"),
    ]
    assert runs[1].at == datetime(2026, 2, 11, 4, 55, tzinfo=UTC)


def test_a_row_is_read_whatever_the_spelling_the_documentation_and_the_rows_disagree_on():
    row = dict(ASSESSMENT[2])
    props = {k: v for k, v in row["properties"].items() if k != "kbId"}
    row["properties"] = json.dumps(props | {"Kbid": "KB5034770", "classifications": "Security Updates"})
    patch = assessed_patch(row)
    assert patch is not None
    assert patch.patch.kb_id == "5034770" and patch.patch.classifications == ("Security Updates",)


def test_placeholders_and_rows_of_other_kinds_are_not_patches():
    placeholder = dict(ASSESSMENT[4], name="Truncated_patch_list_id")
    assert assessed_patch(placeholder) is None
    vm_resource = {"id": VM, "name": "win-01", "type": "microsoft.compute/virtualmachines", "properties": {}}
    for parse in (assessed_patch, installed_patch, last_assessment, last_installation):
        assert parse(vm_resource) is None
    assert installed_patch(ASSESSMENT[1]) is None  # an assessment's patch is no installation's
    assert assessed_patch(INSTALLATION[1]) is None
    assert machine_id_of(f"{VM.upper()}/PATCHINSTALLATIONRESULTS/x") == VM.upper()


# -- the product's queries ------------------------------------------------------------------------------


class FakeGraph:
    """Answers each query with the fixture rows of the table it names (the parsers pick their rows)."""

    def __init__(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        self.tables = tables
        self.calls: list[tuple[str, list[str]]] = []

    def rows(self, kql: str, subscriptions: Sequence[str]) -> Iterator[dict[str, Any]]:
        self.calls.append((kql, list(subscriptions)))
        yield from self.tables[kql.split(" ", 1)[0]]


def test_the_fleet_activity_is_each_machines_latest_assessment_and_installation():
    older = dict(INSTALLATION[0], id=f"{VM}/patchInstallationResults/older", name="older")
    older["properties"] = dict(older["properties"], installationActivityId="older", status="Succeeded",
                               lastModifiedDateTime="2026-02-01T03:00:00Z")  # fmt: skip
    graph = FakeGraph({
        "patchassessmentresources": ASSESSMENT,
        "patchinstallationresources": [older, *INSTALLATION],
    })  # fmt: skip
    activity = fleet_patch_activity(graph, [SUB.upper(), SUB])  # type: ignore[arg-type]
    assert list(activity) == sorted([ARC.lower(), VM.lower()])
    vm = activity[VM.lower()]
    assert vm.machine_id == VM
    assert vm.installation is not None and vm.installation.installation_id == VM_RUN
    assert vm.installation.status == "Failed"
    assert vm.assessment is not None
    assert vm.assessment.at == datetime(2026, 2, 10, 2, 3, 45, 283026, tzinfo=UTC)
    # One query per table for the one subscription (named twice); only summary rows are asked for.
    assert [(kql.split(" ")[0], subs) for kql, subs in graph.calls] == [
        ("patchassessmentresources", [SUB]), ("patchinstallationresources", [SUB]),
    ]
    assert all("type !has 'softwarepatches'" in kql and "project id" in kql for kql, _ in graph.calls)


def test_since_asks_only_for_what_changed_after_it():
    query = summaries_query("patchinstallationresources", datetime(2026, 2, 11, 3, 0, tzinfo=UTC))
    assert "todatetime(properties.lastModifiedDateTime) > datetime(2026-02-11T03:00:00.000000Z)" in query


def test_patches_of_many_machines_are_asked_for_in_groups_over_their_own_subscriptions():
    other = "33333333-3333-4333-8333-333333333333"
    machines = [VM.replace("win-01", f"vm-{i:03d}") for i in range(GROUP_SIZE)] + [ARC.replace(SUB, other)]
    graph = FakeGraph({"patchassessmentresources": ASSESSMENT})
    found = latest_assessment_patches(graph, [*machines, machines[0].upper()])  # type: ignore[arg-type]
    assert len(graph.calls) == 2
    assert graph.calls[0][1] == [SUB] and graph.calls[1][1] == [other]
    assert f"in~ ({kql_string(machines[0].lower())}, " in graph.calls[0][0]
    assert "project id, name, type, properties" in graph.calls[0][0]
    assert len(found) == 8  # each call answered with the fixture's four patches
    with pytest.raises(ValueError, match="not a virtual machine or Arc-enabled server"):
        latest_assessment_patches(graph, ["/subscriptions/x/resourceGroups/rg"])  # type: ignore[arg-type]


def test_latest_assessments_of_many_machines_are_asked_for_in_groups_and_every_machine_answered():
    other = "33333333-3333-4333-8333-333333333333"
    machines = [ARC.replace("ubu-arc-01", f"arc-{i:03d}") for i in range(GROUP_SIZE - 1)]
    machines += [ARC.upper(), VM.replace(SUB, other)]
    graph = FakeGraph({"patchassessmentresources": ASSESSMENT})
    found = latest_assessments(graph, [*machines, machines[0].upper()])  # type: ignore[arg-type]
    assert len(graph.calls) == 2  # GROUP_SIZE machines, then the one left, over their own subscriptions
    assert graph.calls[0][1] == [SUB] and graph.calls[1][1] == [other]
    latest = kql_string(f"{ARC}/patchAssessmentResults/latest".lower())
    assert f", {latest})" in graph.calls[0][0] and "project id, name, type, properties" in graph.calls[0][0]
    assert len(found) == GROUP_SIZE + 1
    arc = found[ARC.lower()]  # the fixture's rows answered for this machine; none for the others
    assert arc.summary is not None and [p.patch.name for p in arc.patches] == ["openssl", "tzdata"]
    assert found[machines[0].lower()].summary is None and found[machines[0].lower()].patches == ()


def test_one_installation_is_asked_for_by_its_rows_id():
    query = installation_patches_query(VM, VM_RUN)
    prefix = f"{VM.lower()}/patchinstallationresults/{VM_RUN}/softwarepatches/"
    assert f"tolower(id) startswith '{prefix}'" in query
    graph = FakeGraph({"patchinstallationresources": INSTALLATION})
    found = installation_patches(graph, VM, VM_RUN)  # type: ignore[arg-type]
    assert graph.calls[0][1] == [SUB] and len(found) == 5


def test_kql_strings_are_escaped():
    assert kql_string("it's a \\ path") == "'it\\'s a \\\\ path'"
    assert kql_string(VM.lower()) in assessment_patches_query([VM])


# -- the quota --------------------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_no_query_is_sent_while_the_quota_is_spent():
    time = FakeTime()
    gate = QuotaGate(clock=time.clock, sleep=time.sleep)
    gate.observe({"x-ms-user-quota-remaining": "3", "x-ms-user-quota-resets-after": "00:00:04"})
    assert gate.wait_turn() == 0 and time.slept == []
    gate.observe({"X-Ms-User-Quota-Remaining": "0", "X-Ms-User-Quota-Resets-After": "00:00:03"})
    time.now += 1
    assert gate.wait_turn() == 2.0 and time.slept == [2.0]
    assert gate.wait_turn() == 0  # a new window
    gate.observe({"Content-Type": "application/json"})  # an answer without the headers changes nothing
    assert gate.wait_turn() == 0


def test_a_reset_too_far_away_fails_the_query_as_transient():
    time = FakeTime()
    gate = QuotaGate(clock=time.clock, sleep=time.sleep, max_wait_seconds=10)
    gate.observe({"x-ms-user-quota-remaining": "0", "x-ms-user-quota-resets-after": "00:01:00"})
    with pytest.raises(ResourceGraphError, match="resets in 60 s") as caught:
        gate.wait_turn()
    assert caught.value.transient and caught.value.status == 429 and time.slept == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:00:03", 3.0), ("00:01:05", 65.0), ("1.00:00:00", 86400.0), ("00:00:00.5", 0.5), ("3", None),
     ("", None), (None, None)],
)
def test_resets_after_is_read_as_a_timespan(text: str | None, seconds: float | None):
    assert _resets_after_seconds(text) == seconds


def test_the_throttled_fixture_asks_for_its_wait():
    errors = json.loads((FIXTURES / "resource_graph_errors.json").read_text())
    time = FakeTime()
    gate = QuotaGate(clock=time.clock, sleep=time.sleep)
    gate.observe(errors["throttled"]["headers"])
    assert gate.wait_turn() == 3.0


# -- the stand-in's rows against the same fixtures -----------------------------------------------------

OPTIONAL = {"errorDetails", "maintenanceRunId"}  # absent when there is no error / no maintenance run


def _machine(name: str, group: str, kind: str, os: tuple[str, str, str], updates: list[str]) -> Any:
    return {
        "subscription": SUB, "resourceGroup": group, "name": name, "kind": kind, "osType": os[0],
        "osName": os[1], "osVersion": os[2], "location": "westeurope", "availableUpdates": updates,
    }  # fmt: skip


def _fleet_states() -> tuple[Any, Any]:
    """The simulation's state of a Windows VM and an Ubuntu Arc server (the fixtures' two machines)."""
    windows = ("Windows", "Windows Server 2019 Datacenter", "10.0.17763.5329")
    machines = [
        _machine("win-01", "rg-app", "azure-vm", windows, ["KB5034768", "KB2267602"]),
        _machine("ubu-arc-01", "rg-dc1", "arc-server", ("Linux", "ubuntu", "22.04"), ["openssl", "tzdata"]),
    ]
    fleet = parse_fleet({"subscriptions": [{"id": SUB}], "machines": machines})
    simulation = Simulation(fleet, VirtualClock())
    return simulation.machine(VM), simulation.machine(ARC)


def _written(state: Any, states: Sequence[str], status: str, at: datetime) -> list[dict[str, Any]]:
    """What the stand-in writes for an assessment and an installation of ``state``'s updates."""
    assessed = assessment_rows(
        state.spec, state.available, assessment_id="a1", started=at, finished=at + timedelta(minutes=3),
        reboot_pending=False,
    )  # fmt: skip
    ran = installation_rows(
        state.spec, list(zip(state.available, states, strict=True)), installation_id="r1", started=at,
        finished=at + timedelta(minutes=9), status=status, reboot_status="NotNeeded", window_exceeded=False,
    )  # fmt: skip
    return assessed + ran


def _shape(row: dict[str, Any]) -> tuple[str, bool, frozenset[str], frozenset[str]]:
    """A row's kind (the type after the machine's provider), whether it is a Windows row, its columns and
    its property names (less those present only sometimes)."""
    props = row["properties"]
    windows = props.get("osType") == "Windows" or "kbId" in props
    return row["type"].split("/", 2)[2], windows, frozenset(row), frozenset(set(props) - OPTIONAL)


def test_the_stand_in_writes_the_documented_rows():
    expected = {_shape(r)[:2]: _shape(r) for r in ASSESSMENT + INSTALLATION}
    for state in _fleet_states():
        for row in _written(state, ("Installed", "Failed"), "Failed", datetime(2026, 2, 10, tzinfo=UTC)):
            assert _shape(row) == expected[_shape(row)[:2]], row["id"]
            assert row["type"] == row["type"].lower()


def test_the_product_reads_the_stand_ins_rows_back_as_the_updates_it_was_given():
    at = datetime(2026, 2, 10, 2, 0, tzinfo=UTC)
    for state in _fleet_states():
        written = _written(state, ("Installed", "Pending"), "CompletedWithWarnings", at)
        patches = [p for p in map(assessed_patch, written) if p is not None]
        names = [getattr(u, "title", None) or u.name for u in state.available]
        assert [p.patch.name for p in patches] == names
        assert all(p.machine_id == state.spec.resource_id for p in patches)
        summary = last_assessment(written[0])
        assert summary is not None and summary.at == at + timedelta(minutes=3)
        states = [p.patch.state for p in map(installed_patch, written) if p is not None]
        assert states == [InstallationState.INSTALLED, InstallationState.PENDING]
        run = next(r for r in map(last_installation, written) if r is not None)
        assert (run.installation_id, run.status) == ("r1", "CompletedWithWarnings")
        assert run.at == at + timedelta(minutes=9)


class ThrottledClient:
    """A Resource Graph client that answers 429 ``throttled`` times, then a page."""

    def __init__(self, throttled: int) -> None:
        self.throttled, self.calls = throttled, 0

    def resources(self, request: Any, raw_response_hook: Any = None) -> Any:
        self.calls += 1
        if self.calls <= self.throttled:
            error = HttpResponseError(message="(RateLimiting) throttled")
            error.status_code = 429
            raise error
        return type("Page", (), {"data": [{"id": "x"}], "skip_token": None, "result_truncated": "false",
                                 "total_records": 1})()  # fmt: skip


def test_a_429_without_quota_headers_is_resent_after_a_window_and_given_up_on_in_the_end():
    time = FakeTime()
    client = ThrottledClient(throttled=2)
    graph = ResourceGraph(client, QuotaGate(clock=time.clock, sleep=time.sleep))  # type: ignore[arg-type]
    assert list(graph.rows("resources | project id", [SUB])) == [{"id": "x"}]
    assert client.calls == 3 and time.slept == [DEFAULT_THROTTLE_WAIT_SECONDS] * 2
    stubborn = ThrottledClient(throttled=MAX_THROTTLED_ATTEMPTS)
    graph = ResourceGraph(stubborn, QuotaGate(clock=time.clock, sleep=time.sleep))  # type: ignore[arg-type]
    with pytest.raises(ResourceGraphError, match="HTTP 429") as caught:
        list(graph.rows("resources | project id", [SUB]))
    assert caught.value.transient and stubborn.calls == MAX_THROTTLED_ATTEMPTS
