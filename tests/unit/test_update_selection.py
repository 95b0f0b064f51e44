"""Which updates a deployment selects, checked case by case and against the ARM stand-in's own rules."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from azure.mgmt.compute.models import VirtualMachineAssessPatchesResult

from local.arm.catalogue import OS_PROFILES, LinuxPackage, Update, WindowsUpdate, updates_for
from local.arm.simulation import parse_install_request, patch_id, patch_wire, select
from shared.assessment.records import is_optional
from shared.azure.patch_operations import to_outcome
from shared.deployments.definition import DeploymentDefinition, validate_definition
from shared.deployments.install import install_parameters
from shared.deployments.selection import (
    PendingEstimate,
    lacks_classification_data,
    optional_kbs,
    pending_estimate,
    selected_patches,
)
from shared.model.assessment_outcome import AssessmentOutcome, AvailablePatch
from shared.model.machines import Machine, MachineKind, OsType, PowerState

VM = (
    "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/rg"
    "/providers/Microsoft.Compute/virtualMachines/app01"
)


def definition(os_type: OsType, classifications: list[str], **extra: Any) -> DeploymentDefinition:
    body: dict[str, Any] = {
        "name": "nightly",
        "operatingSystem": os_type.value,
        "targets": {"machines": [VM]},
        "classifications": classifications,
        "schedule": {"startTime": "2026-02-01T22:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 120,
    }
    return validate_definition(body | extra)


def kb(kb_id: str | None, title: str, *classes: str) -> AvailablePatch:
    return AvailablePatch(patch_id=f"win-{kb_id}-{title}", name=title, classifications=classes, kb_id=kb_id)


def pkg(name: str, version: str, *classes: str) -> AvailablePatch:
    return AvailablePatch(patch_id=f"{name}_{version}", name=name, classifications=classes, version=version)


CUMULATIVE = kb("5034770", "2024-02 Cumulative Update for Windows Server 2022 (KB5034770)", "Security")
STACK = kb("5034862", "2024-02 Servicing Stack Update for Windows Server 2022 (KB5034862)", "Critical")
PREVIEW = kb("5034278", "2024-01 Cumulative Update Preview for Windows Server 2022 (KB5034278)", "Updates")
MSRT = kb("890830", "Windows Malicious Software Removal Tool x64 - v5.120 (KB890830)", "UpdateRollUp")
SERVICE_PACK = kb("976932", "Windows Server 2008 R2 Service Pack 1 (KB976932)", "ServicePack")
DEFENDER = kb("2267602", "Security Intelligence Update for Microsoft Defender (KB2267602)", "Definition")
SECURITY_AND_UPDATES = kb("5034441", "2024-01 Security Update (WinRE) (KB5034441)", "Updates", "Security")
WINDOWS_PATCHES = (CUMULATIVE, STACK, PREVIEW, MSRT, SERVICE_PACK, DEFENDER)
ALL_WINDOWS = [
    "Critical", "Security", "UpdateRollUp", "FeaturePack", "ServicePack", "Definition", "Tools", "Updates"
]

OPENSSL = pkg("openssl", "1:1.0.2k-26.el7_9", "Security")
KERNEL = pkg("kernel", "3.10.0-1160.108.1.el7", "Security")
GLIBC = pkg("glibc", "2.17-326.el7_9", "Critical")
RELEASE = pkg("redhat-release-server", "7.9-8.el7_9", "Other")
TZDATA = pkg("tzdata", "2024a-1.el7", "Other")
LINUX_PATCHES = (OPENSSL, KERNEL, GLIBC, RELEASE, TZDATA)


@pytest.mark.parametrize(
    ("classifications", "extra", "expected"),
    [
        (["Security"], {}, [CUMULATIVE]),
        (ALL_WINDOWS, {}, [CUMULATIVE, STACK, MSRT, SERVICE_PACK, DEFENDER]),  # never the preview
        (["Updates"], {}, []),  # the preview is the only "Updates" patch, and optional
        (["Security"], {"kbNumbersToInclude": ["KB890830"]}, [CUMULATIVE, MSRT]),  # KB outside the classes
        (["Security"], {"kbNumbersToInclude": ["5034278"]}, [CUMULATIVE, PREVIEW]),  # optional, named by KB
        (["Security"], {"kbNumbersToInclude": ["890830"], "kbNumbersToExclude": ["890830"]}, [CUMULATIVE]),
        (["Critical", "Security"], {"kbNumbersToExclude": ["5034770"]}, [STACK]),
        (["Service Packs", "Definition Updates"], {}, [SERVICE_PACK, DEFENDER]),  # display names work too
    ],
    ids=[
        "security", "all-but-optional", "optional-never-by-class", "kb-include-outside-classes",
        "optional-named-by-kb", "exclude-wins-over-include", "kb-exclude", "display-names",
    ],
)
def test_windows_selection(classifications, extra, expected):
    chosen = definition(OsType.WINDOWS, classifications, **extra)
    assert selected_patches(chosen, WINDOWS_PATCHES) == expected


@pytest.mark.parametrize(
    ("classifications", "extra", "expected"),
    [
        (["Critical and security updates"], {}, [OPENSSL, KERNEL, GLIBC]),
        (["Other updates"], {"packagesToExclude": ["redhat-release-server*"]}, [TZDATA]),
        # The agent installs critical and security as one group: Security alone takes glibc (Critical).
        (["Security"], {}, [OPENSSL, KERNEL, GLIBC]),
        (["Critical"], {}, [OPENSSL, KERNEL, GLIBC]),
        (["Security"], {"packagesToInclude": ["tzdata"]}, [OPENSSL, KERNEL, GLIBC, TZDATA]),
        (["Security"], {"packagesToInclude": ["tz*"], "packagesToExclude": ["tzdata"]},
         [OPENSSL, KERNEL, GLIBC]),
        (["Other"], {"packagesToInclude": ["openssl=1:1.0.2k*"]}, [OPENSSL, RELEASE, TZDATA]),  # pinned
        (["Other"], {"packagesToInclude": ["openssl=3.*"]}, [RELEASE, TZDATA]),  # another version
        # "name_version" was never the agent's form: a name mask that matches no package.
        (["Security"], {"packagesToExclude": ["openssl_1:1.0.2k*"]}, [OPENSSL, KERNEL, GLIBC]),
        (["Critical", "Security"], {"packagesToExclude": ["kerne?", "glib?"]}, [OPENSSL]),
        # Case-sensitive, and a mask is the whole name.
        (["Security"], {"packagesToExclude": ["Kernel*", "kern"]}, [OPENSSL, KERNEL, GLIBC]),
        (["Other"], {"packagesToInclude": ["redhat-release-server=7.9-?.el7_9"]}, [RELEASE, TZDATA]),
        (["Other"], {"packagesToInclude": ["kernel=*"]}, [KERNEL, RELEASE, TZDATA]),
    ],
    ids=[
        "critical-and-security", "exclude-mask-matches-the-bare-name", "security-takes-the-group",
        "critical-takes-the-group", "include-outside-classes", "exclude-wins-over-include",
        "versioned-include", "versioned-include-other-version", "old-underscore-form-matches-nothing",
        "question-mark", "case-sensitive-whole-name", "versioned-include-question-mark",
        "any-version",
    ],
)
def test_linux_selection(classifications, extra, expected):
    chosen = definition(OsType.LINUX, classifications, **extra)
    assert selected_patches(chosen, LINUX_PATCHES) == expected


def test_linux_selection_reads_the_extensions_names_and_architecture_suffixes():
    esm = pkg("imagemagick", "8:6.9.11.60+dfsg-1.3ubuntu0.22.04.3+esm4", "Security-ESM")
    unclassified = pkg("ubuntu-advantage-tools", "31.2~22.04", "Unclassified")
    arch = pkg("kernel.x86_64", "3.10.0-1160.108.1.el7", "Security")
    patches = (esm, unclassified, arch)
    assert selected_patches(definition(OsType.LINUX, ["Security"]), patches) == [esm, arch]
    assert selected_patches(definition(OsType.LINUX, ["Other updates"]), patches) == [unclassified]
    excluded = definition(OsType.LINUX, ["Security"], packagesToExclude=["kernel"])
    assert selected_patches(excluded, patches) == [esm]


def test_windows_selection_reads_windows_update_names():
    # Real results name the classes as Windows Update does; a definition names the request enum.
    security = kb("5034770", "2024-02 Cumulative Update (KB5034770)", "Security Updates")
    defender = kb("2267602", "Security Intelligence Update for Defender (KB2267602)", "Definition Updates")
    rollup = kb("890830", "Windows Malicious Software Removal Tool x64 (KB890830)", "Update Rollups")
    chosen = definition(OsType.WINDOWS, ["Security", "Definition"])
    assert selected_patches(chosen, (security, defender, rollup)) == [security, defender]
    estimate = pending_estimate(chosen, outcome((security, defender, rollup)))
    assert estimate == PendingEstimate(2, False, {"Security": 1, "Definition": 1})


def test_optional_kbs_are_the_preview_releases_once_each():
    no_kb_preview = kb(None, "Feature Update Preview", "Updates")
    assert optional_kbs([*WINDOWS_PATCHES, PREVIEW, no_kb_preview]) == ["5034278"]
    assert optional_kbs(LINUX_PATCHES) == []


# -- agreement with the ARM stand-in -------------------------------------------------------------

STANDIN_DEFINITIONS = [
    (OsType.WINDOWS, ["Security"], {}),
    (OsType.WINDOWS, ALL_WINDOWS, {"kbNumbersToExclude": ["2267602"]}),
    (OsType.WINDOWS, ["Critical"], {"kbNumbersToInclude": ["5034278", "5034204", "890830", "4103720"],
                                    "kbNumbersToExclude": ["4103720"]}),
    (OsType.WINDOWS, ["ServicePack", "Updates"], {}),
    (OsType.LINUX, ["Critical and security updates"], {}),
    (OsType.LINUX, ["Other updates"], {"packagesToExclude": ["redhat-release*", "tz*"]}),
    (OsType.LINUX, ["Security"], {"packagesToInclude": ["tzdata", "zypper", "cloud-init=23.?.3*"],
                                  "packagesToExclude": ["kernel*", "openssl_1:1.0.2k*"]}),
    (OsType.LINUX, ["Critical", "Security", "Other"], {"packagesToExclude": ["lib?sl*", "sud?"]}),
    (OsType.LINUX, ["Other"], {"packagesToInclude": ["openssl=3.0.2-0ubuntu1.15", "timezone", "curl=*esm*"],
                               "packagesToExclude": ["Timezone", "glibc"]}),
    (OsType.LINUX, ["Critical"], {"packagesToInclude": ["ubuntu-advantage-tools=31.2~22.04"]}),
]


def _as_available(update: Update) -> AvailablePatch:
    """The update as the stand-in lists it in a result (Windows Update's class names), read by the
    product's own parser."""
    body = {"status": "Succeeded", "availablePatches": [patch_wire(update)]}
    result = VirtualMachineAssessPatchesResult(body)
    patches = to_outcome(result).patches
    assert patches
    return patches[0]


def _catalogues(os_type: OsType) -> dict[str, list[WindowsUpdate] | list[LinuxPackage]]:
    return {key: updates_for(key) for key, p in OS_PROFILES.items() if p.os_type == os_type.value}


def test_the_standin_marks_optional_exactly_the_updates_the_app_calls_optional():
    for updates in _catalogues(OsType.WINDOWS).values():
        for update in updates:
            assert isinstance(update, WindowsUpdate)
            assert update.optional == is_optional(OsType.WINDOWS, update.title), update.title


@pytest.mark.parametrize(("os_type", "classifications", "extra"), STANDIN_DEFINITIONS)
def test_selection_agrees_with_the_standin_over_its_whole_catalogue(os_type, classifications, extra):
    chosen = definition(os_type, classifications, **extra)
    selected_somewhere = left_out_somewhere = False
    for key, updates in _catalogues(os_type).items():
        patches = [_as_available(u) for u in updates]
        body = install_parameters(chosen, os_type, timedelta(hours=2), exclude_kbs=optional_kbs(patches))
        request = parse_install_request(body.as_dict(), os_type.value)
        standin = {patch_id(u) for u in updates if select(u, request) == "Selected"}
        ours = {p.patch_id for p in selected_patches(chosen, patches)}
        assert ours == standin, key
        selected_somewhere |= bool(ours)
        left_out_somewhere |= len(ours) < len(patches)
    # Each definition both takes and leaves updates, so the comparison is not vacuous.
    assert selected_somewhere and left_out_somewhere


# -- pending estimates ---------------------------------------------------------------------------


def outcome(patches: tuple[AvailablePatch, ...] | None, **counts: Any) -> AssessmentOutcome:
    fields: dict[str, Any] = {"critical_and_security_count": 0, "other_count": 0} | counts
    return AssessmentOutcome("Succeeded", "activity-1", None, False, patches=patches, **fields)


def test_estimate_from_a_patch_list_counts_what_would_be_installed():
    chosen = definition(OsType.WINDOWS, ["Security", "ServicePack", "Updates"])
    estimate = pending_estimate(chosen, outcome((*WINDOWS_PATCHES, SECURITY_AND_UPDATES)))
    # The preview is left out; the Security+Updates patch counts once, under the more urgent class.
    assert estimate == PendingEstimate(3, True, {"Security": 2, "ServicePack": 1}, counts_only=False)


def test_estimate_from_a_patch_list_applies_kb_and_mask_filters():
    windows = definition(OsType.WINDOWS, ["Security"], kbNumbersToInclude=["890830"])
    assert pending_estimate(windows, outcome(WINDOWS_PATCHES)) == PendingEstimate(
        2, False, {"Security": 1, "UpdateRollUp": 1}
    )
    linux = definition(OsType.LINUX, ["Critical and security updates"], packagesToExclude=["kernel"])
    assert pending_estimate(linux, outcome(LINUX_PATCHES)) == PendingEstimate(
        2, False, {"Security": 1, "Critical": 1}
    )


def test_arc_counts_give_an_counts_only_over_the_chosen_classifications():
    counts = {"Security": 3, "Critical": 1, "Updates": 5, "ServicePack": 1}
    chosen = definition(OsType.WINDOWS, ["Critical", "Security"], kbNumbersToExclude=["5034770"])
    estimate = pending_estimate(chosen, outcome(None, counts_by_classification=counts))
    assert estimate == PendingEstimate(4, False, {"Security": 3, "Critical": 1}, counts_only=True)
    with_sp = definition(OsType.WINDOWS, ["ServicePack"])
    assert pending_estimate(with_sp, outcome(None, counts_by_classification=counts)).has_service_pack


def test_arc_counts_outside_the_os_classes_go_to_the_catch_all_class():
    chosen = definition(OsType.LINUX, ["Other updates"])
    estimate = pending_estimate(chosen, outcome(None, counts_by_classification={"Updates": 2, "Other": 1}))
    assert estimate == PendingEstimate(3, False, {"Other": 3}, counts_only=True)


def test_arc_totals_only_count_the_pair_under_the_chosen_one_of_critical_and_security():
    totals = outcome(None, critical_and_security_count=4, other_count=2)
    assert pending_estimate(definition(OsType.LINUX, ["Critical"]), totals) == PendingEstimate(
        4, False, {"Critical": 4}, counts_only=True
    )
    both = definition(OsType.LINUX, ["Critical", "Security", "Other"])
    assert pending_estimate(both, totals) == PendingEstimate(
        6, False, {"Security": 4, "Other": 2}, counts_only=True
    )


def test_nothing_missing_is_an_exact_zero():
    chosen = definition(OsType.WINDOWS, ALL_WINDOWS)
    assert pending_estimate(chosen, outcome(())) == PendingEstimate(0, False, {})


# -- distributions that classify nothing (CentOS: every update "Other") ----------------------------

CENTOS_SCAN = outcome(
    (pkg("centos-release", "7-9.2009.2.el7.centos", "Other"), pkg("tzdata", "2024a-1.el7", "Other")),
    other_count=2,
)


def linux_vm(os_name: str) -> Machine:
    return Machine(VM, "web01", "web01", MachineKind.AZURE_VM, "sub", "rg", "westeurope", OsType.LINUX,
                   os_name, "7.9", PowerState.RUNNING, "Manual", {})


CENTOS, UBUNTU = linux_vm("centos"), linux_vm("ubuntu")


def test_a_critical_and_security_deployment_on_an_unclassified_scan_is_told_apart_from_not_needed():
    critical_security = definition(OsType.LINUX, ["Critical", "Security"])
    assert pending_estimate(critical_security, CENTOS_SCAN).updates == 0
    assert lacks_classification_data(critical_security, CENTOS, CENTOS_SCAN)
    # Anything that could still select updates there, or a scan that does classify, is a plain estimate.
    with_other = definition(OsType.LINUX, ["Critical", "Security", "Other"])
    assert not lacks_classification_data(with_other, CENTOS, CENTOS_SCAN)
    named = definition(OsType.LINUX, ["Critical", "Security"], packagesToInclude=["tzdata"])
    assert not lacks_classification_data(named, CENTOS, CENTOS_SCAN)
    nothing_pending = outcome((), other_count=0)
    assert not lacks_classification_data(critical_security, CENTOS, nothing_pending)
    classified = outcome((pkg("openssl", "1", "Security"), pkg("tzdata", "2", "Other")),
                         critical_and_security_count=1, other_count=1)
    assert not lacks_classification_data(critical_security, CENTOS, classified)
    # Ubuntu classifies (its security pocket): only "Other" pending there really is nothing needed.
    assert not lacks_classification_data(critical_security, UBUNTU, CENTOS_SCAN)
