"""Releases, deployments by release, test evidence and the approval rule (pure rules, no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from local.arm.simulation import mask_matches as agent_mask_matches
from shared.deployments.definition import DefinitionError, DeploymentDefinition, validate_definition
from shared.deployments.install import InstallParameterError, install_parameters, install_request
from shared.deployments.selection import selected_patches, with_install_lists
from shared.governance.enforcement import (
    APPROVAL_RULE,
    approved_install_lists,
    enforcement_problems,
)
from shared.governance.evidence import (
    EvidenceRecord,
    EvidenceState,
    Outcome,
    authorized_by,
    records_of_rows,
    verdict,
)
from shared.governance.patch_refs import PatchRef, parse_patch_ref
from shared.governance.releases import (
    HELD_REASON,
    Release,
    ReleaseError,
    frozen_ring_items,
    held_packages,
    install_lists,
    parse_release_request,
)
from shared.model.assessment_outcome import AvailablePatch
from shared.model.machines import OsType

SUB = "11111111-1111-4111-8111-111111111111"
VM = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/app01"
AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LINUX, WINDOWS = OsType.LINUX, OsType.WINDOWS


def ref(os_type: OsType, key: str) -> PatchRef:
    return parse_patch_ref(os_type, key)


def release(*keys: tuple[OsType, str], category: str = "web") -> Release:
    return Release(name="web-2026-12", category=category, description="", created_by="ops@contoso.com",
                   created_at=AT, source="items", items=tuple(ref(o, k) for o, k in keys))


BASELINE = release((LINUX, "openssl=3.0.2-0ubuntu1.12"), (LINUX, "curl=7.81.0-1ubuntu1.15"),
                   (WINDOWS, "KB5034441"), (WINDOWS, "KB5034439"))


def definition(os_type: OsType = LINUX, **extra: Any) -> DeploymentDefinition:
    body: dict[str, Any] = {
        "name": "web-production",
        "operatingSystem": os_type.value,
        "targets": {"machines": [VM]},
        "release": BASELINE.name,
        "schedule": {"startTime": "2026-12-20T22:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 120,
    }
    return validate_definition({k: v for k, v in (body | extra).items() if v is not None})


# --- the release model ------------------------------------------------------------------------------


def test_a_release_request_lists_every_bad_field():
    with pytest.raises(ReleaseError) as caught:
        parse_release_request({"name": "web 1", "category": "web", "color": "red",
                               "items": [{"osType": "Linux", "key": "openssl"},
                                         {"osType": "Windows", "key": "KB5034441"}]})
    fields = [field for field, _ in caught.value.details]
    assert fields == ["name", "items.0", "color"]
    assert "name=version" in dict(caught.value.details)["items.0"]


def test_a_release_is_built_one_way():
    with pytest.raises(ReleaseError, match="exclude each other"):
        parse_release_request({"name": "r", "category": "web", "from": "passed",
                               "items": [{"osType": "Windows", "key": "KB5034441"}]})
    with pytest.raises(ReleaseError, match="needs the ring"):
        parse_release_request({"name": "r", "category": "web", "from": "ring"})
    ring = parse_release_request({"name": "r", "category": "web", "from": "ring", "ring": "test",
                                  "at": "2026-12-01T12:00:00Z"})
    assert ring.source == "ring" and ring.at == AT


def test_a_release_installs_one_version_of_a_package_and_each_update_once():
    with pytest.raises(ReleaseError) as caught:
        release((LINUX, "openssl=3.0.2-0ubuntu1.12"), (LINUX, "openssl=3.0.2-0ubuntu1.13"),
                (WINDOWS, "KB5034441"), (WINDOWS, "5034441"))
    messages = dict(caught.value.details)
    assert "one exact version" in messages["items.1"] and "listed twice" in messages["items.3"]
    with pytest.raises(ReleaseError, match="at least one"):
        release()


def test_a_release_round_trips_through_its_json():
    assert Release.from_json(BASELINE.to_json()) == BASELINE


def test_a_ring_is_frozen_at_the_versions_installed_by_then():
    early, late = AT - timedelta(days=2), AT + timedelta(hours=1)
    installs = [(ref(LINUX, "openssl=3.0.2-0ubuntu1.10"), early),
                (ref(LINUX, "openssl=3.0.2-0ubuntu1.12"), AT),
                (ref(LINUX, "openssl=3.0.2-0ubuntu1.13"), late), (ref(WINDOWS, "KB5034441"), early)]
    assert [r.key for r in frozen_ring_items(installs, AT)] == ["openssl=3.0.2-0ubuntu1.12", "KB5034441"]


# --- deployments by release -------------------------------------------------------------------------


def test_a_deployment_of_a_release_needs_no_classification_and_takes_none():
    assert definition().classifications == [] and definition().release == BASELINE.name
    with pytest.raises(DefinitionError) as caught:
        definition(classifications=["Security"], packagesToInclude=["openssl"])
    assert {field for field, _ in caught.value.details} == {"classifications", "packagesToInclude"}
    with pytest.raises(DefinitionError) as caught:
        definition(release=None)
    assert caught.value.field == "classifications"
    with pytest.raises(DefinitionError) as caught:
        definition(approvedOnly=True)
    assert caught.value.field == "approvedOnly"
    assert definition(release=None, approvedOnly=True).approved_only


def test_targets_may_be_a_category_and_ring():
    targets = definition(targets={"categories": [{"category": "web", "ring": "test"}]}).targets
    assert targets.categories is not None and targets.categories[0].ring == "test"
    with pytest.raises(DefinitionError) as caught:
        definition(targets={"categories": [{"category": "web/1"}]})
    assert caught.value.field == "targets.categories.0.category"


def test_windows_install_of_a_release_names_exactly_its_kbs():
    lists = install_lists(BASELINE, WINDOWS)
    request = install_request(definition(WINDOWS), WINDOWS, timedelta(hours=1), governed=lists,
                              exclude_kbs=["5034439", "890830"])
    assert request.classifications == ()
    assert request.kb_numbers_to_include == ("5034441", "5034439")
    # An optional KB the release names is not excluded; another optional one is.
    assert request.kb_numbers_to_exclude == ("890830",)
    body = install_parameters(definition(WINDOWS), WINDOWS, timedelta(hours=1), governed=lists).as_dict()
    assert body["windowsParameters"]["kbNumbersToInclude"] == ["5034441", "5034439"]
    assert "classificationsToInclude" not in body["windowsParameters"] or not body["windowsParameters"][
        "classificationsToInclude"]


def test_linux_install_of_a_release_pins_each_package_to_its_tested_version():
    lists = install_lists(BASELINE, LINUX)
    body = install_parameters(definition(), LINUX, timedelta(hours=1), governed=lists).as_dict()
    params = body["linuxParameters"]
    assert params["packageNameMasksToInclude"] == ["openssl=3.0.2-0ubuntu1.12", "curl=7.81.0-1ubuntu1.15"]
    assert not params.get("classificationsToInclude")


def test_an_install_naming_nothing_is_refused():
    # With no classification and no inclusion, Azure's Linux agent would install everything.
    empty = install_lists(release((WINDOWS, "KB5034441")), LINUX)
    with pytest.raises(InstallParameterError) as caught:
        install_request(definition(), LINUX, timedelta(hours=1), governed=empty)
    assert caught.value.field == "release"


def test_a_newer_version_offered_is_held_not_installed():
    offered = [AvailablePatch("1", "openssl", ("Security",), version="3.0.2-0ubuntu1.13"),
               AvailablePatch("2", "curl", ("Security",), version="7.81.0-1ubuntu1.15"),
               AvailablePatch("3", "bash", ("Security",), version="5.1-6ubuntu1.1")]
    selecting = with_install_lists(definition(), install_lists(BASELINE, LINUX))
    assert [p.name for p in selected_patches(selecting, offered)] == ["curl"]
    # The ARM stand-in's agent rule agrees (Azure/LinuxPatchExtension PackageFilter matches the version).
    masks = install_lists(BASELINE, LINUX).packages_to_include
    taken = [p.name for p in offered if any(agent_mask_matches(m, p.name, p.version) for m in masks)]
    assert taken == ["curl"]
    held = held_packages(BASELINE.items, {str(p.name): str(p.version) for p in offered})
    assert [str(h) for h in held] == ["openssl: offered 3.0.2-0ubuntu1.13, tested 3.0.2-0ubuntu1.12"]
    assert HELD_REASON == "held: version not tested"


# --- test evidence ----------------------------------------------------------------------------------

OPENSSL = ref(LINUX, "openssl=3.0.2-0ubuntu1.12")


def record(machine: str, outcome: Outcome, hours: float, reason: str = "") -> EvidenceRecord:
    return EvidenceRecord(OPENSSL, machine, outcome, AT + timedelta(hours=hours), "run-1", reason)


def test_an_update_passes_after_k_installs_and_the_bake_time():
    records = [record("m1", Outcome.INSTALLED, 0), record("m2", Outcome.INSTALLED, 2)]
    assert verdict(records[:1], 2, 24, AT + timedelta(days=9)).state is EvidenceState.IN_TEST
    baking = verdict(records, 2, 24, AT + timedelta(hours=25))
    assert baking.state is EvidenceState.IN_TEST and baking.baked_since == AT + timedelta(hours=2)
    passed = verdict(records, 2, 24, AT + timedelta(hours=26))
    assert passed.state is EvidenceState.PASSED and passed.installed == 2


def test_an_update_fails_at_the_first_failure_with_its_reason():
    records = [record("m1", Outcome.INSTALLED, 0), record("m2", Outcome.FAILED, 1, "dpkg error 100"),
               record("m3", Outcome.FAILED, 2, "later")]
    failed = verdict(records, 1, 0, AT + timedelta(days=1))
    assert failed.state is EvidenceState.FAILED and failed.failed == 2
    assert "m2" in failed.reason and "dpkg error 100" in failed.reason
    # A machine's latest record counts: reinstalled after the fix, m2 no longer fails; m3 still does.
    retried = [*records, record("m2", Outcome.INSTALLED, 3)]
    still = verdict(retried, 1, 0, AT + timedelta(days=1))
    assert still.state is EvidenceState.FAILED and still.failed == 1 and "m3" in still.reason
    fixed = verdict([*records[:2], record("m2", Outcome.INSTALLED, 3)], 1, 0, AT + timedelta(days=1))
    assert fixed.state is EvidenceState.PASSED and fixed.installed == 2


def test_evidence_comes_from_the_progress_rows():
    rows = [{"SourceComputerId": "k1", "OSType": "Linux", "PackageName": "openssl",
             "PackageVersion": "3.0.2-0ubuntu1.12", "InstallationStatus": "succeeded"},
            {"SourceComputerId": "k2", "OSType": "Windows", "KBID": "5034441",
             "InstallationStatus": "failed"},
            {"SourceComputerId": "k2", "OSType": "Windows", "KBID": "5034439",
             "InstallationStatus": "notStarted"}]
    found = records_of_rows({}, rows, "run-1", AT, {"k2": "0x80070005"})
    assert [(r.ref.key, r.outcome, r.reason) for r in found] == [
        ("openssl=3.0.2-0ubuntu1.12", Outcome.INSTALLED, ""), ("KB5034441", Outcome.FAILED, "0x80070005")]


def test_an_install_is_authorized_by_its_approval_or_recorded_unauthorized():
    assert authorized_by(True, "req-7") == "req-7"
    assert authorized_by(True, None) == "unauthorized"
    assert authorized_by(False, None) == "not required"


# --- the approval rule ------------------------------------------------------------------------------


def approved_for(*refs: PatchRef):
    return lambda category: set(refs)


def test_a_category_requiring_approval_needs_an_approved_release_or_approved_only():
    refused = enforcement_problems(["web"], None, None, False, approved_for())
    assert len(refused) == 1 and refused[0].field == "release"
    assert refused[0].message.startswith(APPROVAL_RULE)
    assert enforcement_problems(["web"], None, None, True, approved_for()) == []
    assert enforcement_problems([], None, None, False, approved_for()) == []
    assert enforcement_problems(["web"], BASELINE.name, BASELINE, False, approved_for(*BASELINE.items)) == []


def test_a_release_of_another_category_or_not_fully_approved_is_refused():
    other = enforcement_problems(["db"], BASELINE.name, BASELINE, False, approved_for(*BASELINE.items))
    assert "category 'web'" in other[0].message and "'db'" in other[0].message
    partial = enforcement_problems(["web"], BASELINE.name, BASELINE, False, approved_for(*BASELINE.items[:2]))
    assert "2 item(s)" in partial[0].message and "KB5034441" in partial[0].message
    missing = enforcement_problems(["web"], "gone", None, False, approved_for())
    assert missing[0].message == "no release named 'gone'"


def test_approved_only_installs_every_approved_version_by_name():
    approved = [ref(LINUX, "openssl=3.0.2-0ubuntu1.12"), ref(LINUX, "openssl=3.0.2-0ubuntu1.13"),
                ref(WINDOWS, "KB5034441")]
    assert approved_install_lists(approved, LINUX).packages_to_include == (
        "openssl=3.0.2-0ubuntu1.12", "openssl=3.0.2-0ubuntu1.13")
    assert approved_install_lists(approved, WINDOWS).kb_numbers_to_include == ("5034441",)
