"""Normalisation of assessment outcomes into legacy-style update records, summaries and rows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from shared.assessment.messages import AssessmentCounts, MachineResult
from shared.assessment.records import (
    MachineAssessmentSummary,
    is_optional,
    summarize,
    summary_row,
    update_records,
    update_rows,
)
from shared.assessment.run import result_from_summary
from shared.log_tables import UPDATE, UPDATE_SUMMARY, check_rows, record_id
from shared.model.assessment_outcome import AssessmentOutcome, AvailablePatch, Compliance, Readiness
from shared.model.classification import Classification
from shared.model.machines import Machine, MachineKind, OsType, PowerState

AT = datetime(2026, 1, 13, 2, 0, tzinfo=UTC)
PUBLISHED = datetime(2024, 1, 9, tzinfo=UTC)

WINDOWS = Machine(
    resource_id="/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg/providers/"
    "Microsoft.Compute/virtualMachines/web1",
    name="web1",
    computer_name="web1.contoso.com",
    kind=MachineKind.AZURE_VM,
    subscription_id="00000000-0000-4000-8000-000000000001",
    resource_group="rg",
    location="westeurope",
    os_type=OsType.WINDOWS,
    os_name="Windows Server 2019 Datacenter",
    os_version="10.0.17763.5329",
    power_state=PowerState.RUNNING,
    patch_mode="Manual",
)
LINUX = replace(
    WINDOWS,
    resource_id=WINDOWS.resource_id.replace("web1", "db1"),
    name="db1",
    computer_name="db1",
    os_type=OsType.LINUX,
    os_name="ubuntu",
    os_version="22.04",
)
ARC = replace(
    WINDOWS,
    resource_id="/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg/providers/"
    "Microsoft.HybridCompute/machines/onprem1",
    kind=MachineKind.ARC_SERVER,
    computer_name="onprem1",
)


def win(kb: str, title: str, *classes: str) -> AvailablePatch:
    return AvailablePatch(
        patch_id=f"id-{kb}",
        name=title,
        classifications=classes,
        kb_id=kb,
        reboot_behavior="CanRequestReboot",
        published_date=PUBLISHED,
    )


def pkg(name: str, version: str, *classes: str) -> AvailablePatch:
    return AvailablePatch(patch_id=f"{name}_{version}", name=name, classifications=classes, version=version)


def outcome(*patches: AvailablePatch, reboot: bool = False) -> AssessmentOutcome:
    return AssessmentOutcome(
        status="Succeeded",
        activity_id="a1",
        started_at=AT,
        reboot_pending=reboot,
        critical_and_security_count=0,
        other_count=0,
        patches=patches,
    )


WINDOWS_OUTCOME = outcome(
    win("KB5034127", "2024-01 Cumulative Update for Windows Server 2019 (KB5034127)", "Security"),
    win("5034129", "2024-01 Servicing Stack Update (KB5034129)", "Critical", "Updates"),
    win("KB890830", "Windows Malicious Software Removal Tool (KB890830)", "UpdateRollUp"),
    win("KB5034203", "2024-01 Cumulative Update Preview for Windows Server 2019 (KB5034203)", "Security"),
    reboot=True,
)
LINUX_OUTCOME = outcome(
    pkg("openssl", "3.0.2-0ubuntu1.14", "Security"),
    pkg("libc6", "2.35-0ubuntu3.6", "Critical"),
    pkg("vim", "2:8.2.3995-1ubuntu2.15", "Other"),
)


def by_key(records):
    return {r.update_key: r for r in records}


def test_windows_updates_get_legacy_names_kb_digits_and_the_os_as_product():
    records = by_key(update_records(WINDOWS, WINDOWS_OUTCOME, AT))

    assert set(records) == {"KB5034127", "KB5034129", "KB890830", "KB5034203"}
    assert {k: r.classification for k, r in records.items()} == {
        "KB5034127": Classification.SECURITY,
        "KB5034129": Classification.CRITICAL,  # the most urgent of its classes
        "KB890830": Classification.UPDATE_ROLLUPS,
        "KB5034203": Classification.SECURITY,
    }
    assert {r.kb_id for r in records.values()} == {"5034127", "5034129", "890830", "5034203"}
    assert {r.product for r in records.values()} == {"Windows Server 2019 Datacenter"}
    cumulative = records["KB5034127"]
    assert (cumulative.package_name, cumulative.optional, cumulative.published_date) == (
        None,
        False,
        PUBLISHED,
    )
    assert cumulative.more_info_url == "https://support.microsoft.com/help/5034127"
    assert all(r.state == "Needed" and r.assessed_at == AT for r in records.values())


def test_a_preview_title_is_optional_and_never_counted_as_required():
    records = update_records(WINDOWS, WINDOWS_OUTCOME, AT)
    assert [r.update_key for r in records if r.optional] == ["KB5034203"]

    summary = summarize(WINDOWS, WINDOWS_OUTCOME, records, AT)
    assert summary.optional_missing == 1
    assert summary.missing_by_classification["Security Updates"] == 1  # the preview is not in it
    assert summary.missing_total == 3

    only_preview = outcome(WINDOWS_OUTCOME.patches[3])  # type: ignore[index]
    preview_summary = summarize(WINDOWS, only_preview, update_records(WINDOWS, only_preview, AT), AT)
    assert preview_summary.compliant is True
    assert preview_summary.missing_total == 0


def test_preview_rule_is_a_whole_word_and_windows_only():
    assert is_optional(OsType.WINDOWS, "2024-02 Cumulative Update Preview for .NET Framework")
    assert not is_optional(OsType.WINDOWS, "Previewer add-in update")
    assert not is_optional(OsType.LINUX, "Preview")


def test_linux_packages_are_keyed_by_name_with_version_apart_and_distro_product():
    records = by_key(update_records(LINUX, LINUX_OUTCOME, AT))

    assert set(records) == {"openssl", "libc6", "vim"}
    openssl = records["openssl"]
    assert (openssl.title, openssl.package_name, openssl.package_version) == (
        "openssl",
        "openssl",
        "3.0.2-0ubuntu1.14",
    )
    assert openssl.kb_id is None and not openssl.optional
    assert openssl.product == "Ubuntu 22.04"
    assert records["vim"].classification is Classification.OTHER
    assert records["libc6"].classification is Classification.CRITICAL
    assert openssl.more_info_url == "https://ubuntu.com/security/cves?package=openssl"


def test_the_same_package_listed_twice_is_one_gap():
    twice = outcome(pkg("openssl", "3.0.2-1", "Security"), pkg("openssl", "3.0.2-2", "Security"))
    assert [r.package_version for r in update_records(LINUX, twice, AT)] == ["3.0.2-1"]


def test_missing_security_or_critical_updates_make_a_machine_non_compliant():
    linux = summarize(LINUX, LINUX_OUTCOME, update_records(LINUX, LINUX_OUTCOME, AT), AT)
    assert linux.compliant is False
    assert linux.missing_by_classification == {
        "Critical Updates": 1,
        "Security Updates": 1,
        "Other Updates": 1,
    }
    assert linux.readiness is Readiness.READY and linux.counts_only is False

    other_only = outcome(pkg("vim", "1", "Other"))
    assert summarize(LINUX, other_only, update_records(LINUX, other_only, AT), AT).compliant is True


def test_the_compliance_set_is_configurable():
    records = update_records(LINUX, LINUX_OUTCOME, AT)
    strict = frozenset({Classification.OTHER})
    assert summarize(LINUX, LINUX_OUTCOME, records, AT, required=strict).compliant is False
    no_security_needed = frozenset({Classification.TOOLS})
    assert summarize(LINUX, LINUX_OUTCOME, records, AT, required=no_security_needed).compliant is True


def test_arc_outcomes_have_counts_only_and_no_records():
    arc = AssessmentOutcome(
        status="Succeeded",
        activity_id="a2",
        started_at=AT,
        reboot_pending=False,
        critical_and_security_count=3,
        other_count=4,
        patches=None,
        counts_by_classification={"Critical": 1, "Security": 2, "Updates": 3, "Other": 1, "Tools": 0},
    )

    assert update_records(ARC, arc, AT) == []
    summary = summarize(ARC, arc, [], AT)
    assert summary.counts_only is True
    assert summary.compliant is False
    assert summary.missing_total == 7
    assert summary.missing_by_classification["Updates"] == 4  # Arc's "other" is Windows' "Updates"
    assert summary.missing_by_classification["Tools"] == 0


def test_windows_update_names_from_real_results_are_recorded_with_the_legacy_names():
    # Azure's results carry Windows Update's category names, not the request enum (the Compute REST
    # specification's VirtualMachine_AssessPatches example): "Definition Updates", "Update Rollups".
    real = outcome(
        win("KB5034127", "2024-01 Cumulative Update (KB5034127)", "Security Updates"),
        win("KB2267602", "Security Intelligence Update for Defender (KB2267602)", "Definition Updates"),
        win("KB890830", "Windows Malicious Software Removal Tool (KB890830)", "Update Rollups"),
        win("KB5034862", "2024-02 Servicing Stack Update (KB5034862)", "critical updates"),  # any case
        win("KB5040001", "Contoso - Printer - 1.2.3", "Drivers"),
    )
    records = by_key(update_records(WINDOWS, real, AT))
    assert {k: r.classification for k, r in records.items()} == {
        "KB5034127": Classification.SECURITY,
        "KB2267602": Classification.DEFINITION,
        "KB890830": Classification.UPDATE_ROLLUPS,
        "KB5034862": Classification.CRITICAL,
        "KB5040001": Classification.UPDATES,  # a Windows Update category with no request enum member
    }
    summary = summarize(WINDOWS, real, records.values(), AT)
    assert summary.compliant is False
    assert summary.missing_by_classification["Definition Updates"] == 1
    assert summary.missing_by_classification["Security Updates"] == 1


def test_security_esm_counts_as_security_and_unclassified_as_other():
    ubuntu = outcome(
        pkg("imagemagick", "8:6.9.11.60+dfsg-1.3ubuntu0.22.04.3+esm4", "Security-ESM"),
        pkg("ubuntu-advantage-tools", "31.2~22.04", "Unclassified"),
    )
    records = by_key(update_records(LINUX, ubuntu, AT))
    assert records["imagemagick"].classification is Classification.SECURITY
    assert records["ubuntu-advantage-tools"].classification is Classification.OTHER
    summary = summarize(LINUX, ubuntu, records.values(), AT)
    assert summary.compliant is False
    assert summary.missing_by_classification == {
        "Critical Updates": 0, "Security Updates": 1, "Other Updates": 1,
    }


def test_an_unknown_classification_goes_to_the_catch_all_class_and_is_logged_once(caplog):
    strange = outcome(
        win("KB5034441", "t", "Quantum Updates"),
        win("KB5034442", "u", "Quantum Updates"),
    )
    with caplog.at_level("WARNING", logger="shared.model.classification"):
        records = update_records(WINDOWS, strange, AT)
        update_records(WINDOWS, strange, AT)
    assert {r.classification for r in records} == {Classification.UPDATES}
    assert [m for m in caplog.messages if "Quantum Updates" in m] == [
        "unknown Windows classification 'Quantum Updates' in an Azure result: counted as Updates"
    ]
    linux = update_records(LINUX, outcome(pkg("vim", "9.0", "Whatever")), AT)
    assert linux[0].classification is Classification.OTHER


def test_a_truncated_list_counts_what_the_totals_say():
    # The agent cut the list to two; the totals count 5 critical-and-security and 3 other updates.
    cut = replace(
        outcome(pkg("openssl", "3.0.2-0ubuntu1.15", "Security"), pkg("tzdata", "2024a", "Other")),
        critical_and_security_count=5, other_count=3, truncated=True,
    )
    records = update_records(LINUX, cut, AT)
    assert len(records) == 2  # only what was listed becomes a record
    summary = summarize(LINUX, cut, records, AT)
    assert summary.missing_total == 8
    assert summary.missing_by_classification == {
        "Critical Updates": 0, "Security Updates": 5, "Other Updates": 3,
    }


def test_a_patch_whose_kb_id_is_not_a_kb_number_is_kept_under_its_patch_id():
    records = update_records(WINDOWS, outcome(win("Q12345", "Odd update", "Security")), AT)

    key = "id-" + record_id("id-Q12345")  # win() names the patch "id-<kb>"
    assert [(r.update_key, r.kb_id, r.title) for r in records] == [(key, None, "Odd update")]


def test_rows_match_the_declared_tables_and_their_ids_are_deterministic():
    records = update_records(WINDOWS, WINDOWS_OUTCOME, AT)
    summary = summarize(WINDOWS, WINDOWS_OUTCOME, records, AT)

    rows = update_rows(WINDOWS, records, "run-1")
    check_rows(UPDATE, rows)
    assert [r["RecordId"] for r in rows] == [r["RecordId"] for r in update_rows(WINDOWS, records, "run-1")]
    assert len({r["RecordId"] for r in rows}) == len(rows)
    assert {r["KBID"] for r in rows} == {"5034127", "5034129", "890830", "5034203"}
    assert {r["UpdateState"] for r in rows} == {"Needed"}

    row = summary_row(WINDOWS, summary, "run-1")
    check_rows(UPDATE_SUMMARY, [row])
    assert (row["CriticalUpdatesMissing"], row["SecurityUpdatesMissing"], row["OtherUpdatesMissing"]) == (
        1,
        1,
        1,
    )
    assert (row["TotalUpdatesMissing"], row["OptionalUpdatesMissing"]) == (3, 1)
    assert row["RestartPending"] is True and row["Compliant"] is False


def test_a_failure_summary_row_leaves_counts_and_compliance_empty():
    failed = MachineAssessmentSummary(
        resource_id=WINDOWS.resource_id, readiness=Readiness.FAILED, assessed_at=AT
    )
    row = summary_row(WINDOWS, failed, "run-1", "VMAgentNotReady: agent down")
    check_rows(UPDATE_SUMMARY, [row])
    assert "Compliant" not in row and "TotalUpdatesMissing" not in row
    assert (row["Readiness"], row["LastError"]) == ("Failed", "VMAgentNotReady: agent down")


# -- compliance Unknown: a distribution that publishes no classification data -----------------------

CENTOS = replace(LINUX, os_name="centos", os_version="7.9.2009")
CENTOS_OUTCOME = outcome(pkg("kernel", "3.10.0-1160.108.1", "Other"), pkg("tzdata", "2024a-1", "Other"))
CRITICAL_AND_SECURITY = frozenset({Classification.CRITICAL, Classification.SECURITY})


def test_a_distribution_without_classification_data_is_unknown_not_compliant():
    summary = summarize(CENTOS, CENTOS_OUTCOME, update_records(CENTOS, CENTOS_OUTCOME, AT), AT,
                        required=CRITICAL_AND_SECURITY)
    assert summary.compliance is Compliance.UNKNOWN
    assert summary.compliant is False  # the boolean of older readers: not proven compliant
    row = summary_row(CENTOS, summary, "run-1")
    check_rows(UPDATE_SUMMARY, [row])
    assert (row["Compliance"], row["Compliant"], row["OtherUpdatesMissing"]) == ("Unknown", False, 2)
    result = result_from_summary(summary)  # the run's counts take the recorder's verdict as it is
    assert (result.compliance, result.compliant) == (Compliance.UNKNOWN, False)
    counts = AssessmentCounts.of(result)
    assert (counts.compliant, counts.non_compliant, counts.compliance_unknown) == (0, 0, 1)


def test_machines_with_classification_data_or_other_rules_are_judged_as_before():
    def verdict(machine, assessed, required=CRITICAL_AND_SECURITY):
        records = update_records(machine, assessed, AT)
        return summarize(machine, assessed, records, AT, required=required).compliance

    ubuntu_other_only = outcome(pkg("vim", "1", "Other"))
    assert verdict(LINUX, ubuntu_other_only) is Compliance.COMPLIANT  # Ubuntu classifies: nothing urgent
    assert verdict(LINUX, LINUX_OUTCOME) is Compliance.NON_COMPLIANT
    assert verdict(WINDOWS, WINDOWS_OUTCOME) is Compliance.NON_COMPLIANT
    assert verdict(CENTOS, outcome()) is Compliance.COMPLIANT  # nothing pending at all
    # Other updates count: CentOS is judged by them.
    assert verdict(CENTOS, CENTOS_OUTCOME, frozenset({Classification.OTHER})) is Compliance.NON_COMPLIANT
    # Compliance asks for no critical or security class: the missing classification data does not matter.
    assert verdict(CENTOS, CENTOS_OUTCOME, frozenset({Classification.TOOLS})) is Compliance.COMPLIANT
    counted = [AssessmentCounts.of(result_from_summary(summarize(m, o, update_records(m, o, AT), AT)))
               for m, o in ((LINUX, ubuntu_other_only), (LINUX, LINUX_OUTCOME), (CENTOS, CENTOS_OUTCOME))]
    total = counted[0].plus(counted[1]).plus(counted[2])
    assert (total.compliant, total.non_compliant, total.compliance_unknown) == (1, 1, 1)


def test_a_result_from_before_the_compliance_field_is_counted_by_its_boolean():
    assert AssessmentCounts.of(MachineResult(state="assessed", compliant=True)).compliant == 1
    assert AssessmentCounts.of(MachineResult(state="assessed", compliant=False)).non_compliant == 1
    failed = AssessmentCounts.of(MachineResult(state="failed"))
    assert (failed.compliant, failed.non_compliant, failed.compliance_unknown) == (0, 0, 0)
