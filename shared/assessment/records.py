"""One machine's assessment as records: normalised missing updates, a summary, and Log Analytics rows.

Pure rules, no I/O. An :class:`AssessmentOutcome` becomes one :class:`UpdateRecord` per missing
update, named and classified as in the legacy ``Update`` table (display classifications,
KB digits without "KB", ``UpdateState`` Needed / Not needed), and a :class:`MachineAssessmentSummary`;
:mod:`shared.assessment.recording` writes them.

Optional updates: the ARM patch API has no "optional" flag. Microsoft publishes its optional,
non-security monthly releases as "... Cumulative Update Preview ..." (Windows release
notes, "optional non-security preview release"), so a Windows update whose title contains the
word "Preview" is optional. Optional updates are counted apart and never make a machine
non-compliant. Linux has no optional updates.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from shared.log_tables import UPDATE, UPDATE_SUMMARY, record_id
from shared.messages import Message
from shared.model.assessment_outcome import (
    AssessmentFailure,
    AssessmentOutcome,
    AvailablePatch,
    Compliance,
    Readiness,
)
from shared.model.classification import (
    REQUIRED_FOR_COMPLIANCE,
    Classification,
    api_classes,
    catch_all,
    read_class,
    to_display,
)
from shared.model.kb import kb_digits
from shared.model.machines import Machine, OsType

OPTIONAL_TITLE_MARKER = re.compile(r"\bPreview\b")
# Table Storage keys may not hold / \ # ? or control characters (Table service data model).
_KEY_FORBIDDEN = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
# Linux distributions as Azure reports them (osName), shown as their vendors name them.
_DISTRO_NAMES = {
    "ubuntu": "Ubuntu",
    "rhel": "Red Hat Enterprise Linux",
    "redhat": "Red Hat Enterprise Linux",
    "sles": "SUSE Linux Enterprise Server",
    "centos": "CentOS",
    "debian": "Debian",
}
_WINDOWS_INFO_URL = "https://support.microsoft.com/help/{kb}"
# Ubuntu's CVE tracker filters by package; other distributions' trackers are per advisory.
_UBUNTU_INFO_URL = "https://ubuntu.com/security/cves?package={package}"


class UpdateState(StrEnum):
    """``UpdateState`` of the legacy ``Update`` table."""

    NEEDED = "Needed"
    NOT_NEEDED = "Not needed"


@dataclass(frozen=True)
class UpdateRecord:
    """One update one machine is missing (or no longer misses), in the legacy ``Update`` vocabulary."""

    resource_id: str
    os_type: OsType
    update_key: str  # stable per gap: "KB<digits>" on Windows, the package name on Linux
    update_id: str  # the patch API's patchId
    title: str
    kb_id: str | None
    package_name: str | None
    package_version: str | None
    product: str
    classification: Classification
    optional: bool
    reboot_behavior: str
    published_date: datetime | None
    assessed_at: datetime  # the assessment that found it missing (or, when Not needed, installed)
    state: UpdateState = UpdateState.NEEDED

    @property
    def more_info_url(self) -> str | None:
        if self.kb_id:
            return _WINDOWS_INFO_URL.format(kb=self.kb_id)
        if self.package_name and self.product.startswith("Ubuntu"):
            return _UBUNTU_INFO_URL.format(package=self.package_name)
        return None


class MachineAssessmentSummary(Message):
    """What the activity returns to the orchestration: counts, never lists."""

    resource_id: str
    readiness: Readiness
    assessed_at: datetime
    compliant: bool | None = None  # None: no assessment data (a failure); False when compliance is Unknown
    compliance: Compliance | None = None  # None: no assessment data (a failure)
    reboot_pending: bool | None = None
    missing_by_classification: dict[str, int] = Field(default_factory=dict)  # display names
    missing_total: int = 0  # optional updates excluded
    optional_missing: int = 0
    counts_only: bool = False  # Arc-enabled servers report counts, no update list
    # The agent cut the list: updates missing beyond it are unknown, so their gaps are left as they were.
    list_truncated: bool = False


# -- normalisation ---------------------------------------------------------------------------


def is_optional(os_type: OsType, title: str) -> bool:
    """Windows optional releases are titled "... Preview ..." (see the module docstring)."""
    return os_type is OsType.WINDOWS and bool(OPTIONAL_TITLE_MARKER.search(title))


def product_name(machine: Machine) -> str:
    """Windows: the OS name ("Windows Server 2019 Datacenter"); Linux: distribution and version."""
    if machine.os_type is OsType.WINDOWS:
        return machine.os_name
    distro = _DISTRO_NAMES.get(machine.os_name.strip().lower(), machine.os_name.strip())
    return f"{distro} {machine.os_version}".strip()


def update_key(os_type: OsType, patch: AvailablePatch) -> str:
    """The key of a gap: the KB on Windows, the package name on Linux (a newer version of a
    missing package is the same gap). Falls back to the patch id, made key-safe."""
    if os_type is OsType.WINDOWS:
        kb = kb_digits(patch.kb_id)
        if kb:
            return f"KB{kb}"
        return "id-" + record_id(patch.patch_id)
    return _KEY_FORBIDDEN.sub("_", patch.name.strip()) or "id-" + record_id(patch.patch_id)


def update_records(machine: Machine, outcome: AssessmentOutcome, assessed_at: datetime) -> list[UpdateRecord]:
    """One "Needed" record per distinct missing update; none for count-only (Arc) outcomes.

    Two patches with one key (the same package listed twice) make one record: the first.
    """
    records: dict[str, UpdateRecord] = {}
    product = product_name(machine)
    for patch in outcome.patches or ():
        key = update_key(machine.os_type, patch)
        if key in records:
            continue
        windows = machine.os_type is OsType.WINDOWS
        records[key] = UpdateRecord(
            resource_id=machine.resource_id,
            os_type=machine.os_type,
            update_key=key,
            update_id=patch.patch_id,
            title=patch.name,
            kb_id=kb_digits(patch.kb_id) if windows else None,
            package_name=None if windows else patch.name,
            package_version=None if windows else patch.version,
            product=product,
            classification=to_display(machine.os_type, patch.classifications),
            optional=is_optional(machine.os_type, patch.name),
            reboot_behavior=patch.reboot_behavior,
            published_date=patch.published_date,
            assessed_at=assessed_at,
        )
    return list(records.values())


def record_from_entity(entity: Mapping[str, Any], closed_at: datetime) -> UpdateRecord:
    """A ``MachineUpdates`` entity the inventory closed, as a "Not needed" record."""
    return UpdateRecord(
        resource_id=entity["ResourceId"],
        os_type=OsType(entity["OsType"]),
        update_key=entity["RowKey"],
        update_id=entity.get("UpdateId", ""),
        title=entity.get("Title", ""),
        kb_id=entity.get("KBID") or None,
        package_name=entity.get("PackageName") or None,
        package_version=entity.get("PackageVersion") or None,
        product=entity.get("Product", ""),
        classification=Classification(entity["Classification"]),
        optional=bool(entity.get("Optional")),
        reboot_behavior=entity.get("RebootBehavior", "Unknown"),
        published_date=entity.get("PublishedDate"),
        assessed_at=closed_at,
        state=UpdateState.NOT_NEEDED,
    )


# Linux distributions whose updates Azure's agent classifies (apt's security pockets, yum and zypper
# updateinfo). Others, CentOS first, have no classification data in their repositories (legacy Update
# Management's documentation of update classifications), so every update is "Other" and a scan with
# nothing critical or security says nothing about security there.
_CLASSIFYING_DISTROS = re.compile(r"^\s*(ubuntu|debian|rhel|redhat|red hat|sles|suse|oracle)", re.IGNORECASE)


def publishes_no_classification(machine: Machine, critical_and_security: int, other: int) -> bool:
    """A Linux machine outside the distributions Azure classifies whose scan has updates pending,
    none of them critical or security: its distribution publishes no classification data."""
    return (machine.os_type is OsType.LINUX and critical_and_security == 0 and other > 0
            and not _CLASSIFYING_DISTROS.match(machine.os_name))


def summarize(
    machine: Machine,
    outcome: AssessmentOutcome,
    records: Iterable[UpdateRecord],
    assessed_at: datetime,
    required: frozenset[Classification] = REQUIRED_FOR_COMPLIANCE,
) -> MachineAssessmentSummary:
    """Counts by display classification, and the verdict (:func:`compliance`)."""
    counts: Counter[Classification] = Counter({c: 0 for c in api_classes(machine.os_type).values()})
    optional = 0
    counts_only = outcome.patches is None
    if counts_only:
        counts.update(_arc_counts(machine.os_type, outcome))
    else:
        for record in records:
            if record.optional:
                optional += 1
            else:
                counts[record.classification] += 1
        # A truncated list: what the totals count beyond it is missing too (the counts are the truth),
        # critical-and-security under Security as with Arc's totals, the rest under the catch-all.
        critical, other = unlisted_counts(machine.os_type, outcome)
        counts[Classification.SECURITY] += critical
        counts[catch_all(machine.os_type)] += other
    verdict = compliance(machine, counts, required)
    return MachineAssessmentSummary(
        resource_id=machine.resource_id,
        readiness=Readiness.READY,
        assessed_at=assessed_at,
        compliant=verdict.compliant,
        compliance=verdict,
        reboot_pending=outcome.reboot_pending,
        missing_by_classification={c.value: n for c, n in counts.items()},
        missing_total=sum(counts.values()),
        optional_missing=optional,
        counts_only=counts_only,
        list_truncated=bool(outcome.truncated) and not counts_only,
    )


def compliance(
    machine: Machine, counts: Mapping[Classification, int], required: frozenset[Classification]
) -> Compliance:
    """NonCompliant when anything in ``required`` is missing. Otherwise Compliant, unless ``required``
    asks for critical or security updates of a distribution that publishes no classification data
    (:func:`publishes_no_classification`): there, nothing missing under those names proves nothing."""
    if any(counts.get(c, 0) for c in required):
        return Compliance.NON_COMPLIANT
    urgent = counts.get(Classification.CRITICAL, 0) + counts.get(Classification.SECURITY, 0)
    other = sum(counts.values()) - urgent
    if required & {Classification.CRITICAL, Classification.SECURITY} and publishes_no_classification(
        machine, urgent, other
    ):
        return Compliance.UNKNOWN
    return Compliance.COMPLIANT


def _arc_counts(os_type: OsType, outcome: AssessmentOutcome) -> Counter[Classification]:
    # Arc's count object has the same fields for both systems (Windows' eight and "other"):
    # a non-zero count outside the machine's own classes goes to its catch-all class.
    counts: Counter[Classification] = Counter()
    for name, count in outcome.counts_by_classification.items():
        if count:
            counts[read_class(os_type, name)] += count
    if not outcome.counts_by_classification:
        # Only the two totals: critical and security cannot be told apart, so the pair is
        # counted as security (it makes the machine non-compliant either way).
        counts[Classification.SECURITY] += outcome.critical_and_security_count
        counts[catch_all(os_type)] += outcome.other_count
    return counts


def unlisted_counts(os_type: OsType, outcome: AssessmentOutcome) -> tuple[int, int]:
    """(critical-and-security, other) updates a truncated list leaves out: the result's totals less
    what the list shows. Zero for a complete list, and for counts-only (Arc) outcomes."""
    if not outcome.truncated or outcome.patches is None:
        return 0, 0
    urgent = {Classification.CRITICAL, Classification.SECURITY}
    listed_urgent = sum(1 for p in outcome.patches if to_display(os_type, p.classifications) in urgent)
    listed_other = len(outcome.patches) - listed_urgent
    return (
        max(0, outcome.critical_and_security_count - listed_urgent),
        max(0, outcome.other_count - listed_other),
    )


def failure_summary(machine: Machine, failure: AssessmentFailure, at: datetime) -> MachineAssessmentSummary:
    return MachineAssessmentSummary(
        resource_id=machine.resource_id, readiness=failure.readiness, assessed_at=at
    )


# -- Log Analytics rows ----------------------------------------------------------------------


def _machine_columns(machine: Machine) -> dict[str, Any]:
    return {
        "Computer": machine.computer_name,
        "ComputerEnvironment": machine.environment.value,
        "OSType": machine.os_type.value,
        "OSName": machine.os_name,
        "OSVersion": machine.os_version,
        "SourceComputerId": machine.key,
        "ResourceId": machine.resource_id,
        "SubscriptionId": machine.subscription_id,
        "ResourceGroup": machine.resource_group,
    }


def update_rows(machine: Machine, records: Iterable[UpdateRecord], run_id: str) -> list[dict[str, Any]]:
    """``Update_CL`` rows; the RecordId depends only on the run, machine, update and time."""
    base = _machine_columns(machine)
    return [
        base
        | {
            "TimeGenerated": r.assessed_at,
            "RecordId": record_id(
                UPDATE.name, run_id, machine.resource_id, r.update_key, r.assessed_at.isoformat()
            ),
            "UpdateTitle": r.title,
            "KBID": r.kb_id,
            "PackageName": r.package_name,
            "PackageVersion": r.package_version,
            "Product": r.product,
            "Classification": r.classification.value,
            "UpdateState": r.state.value,
            "Optional": r.optional,
            "RebootBehavior": r.reboot_behavior,
            "PublishedDate": r.published_date,
            "UpdateID": r.update_id,
            "AssessmentRunId": run_id,
        }
        for r in records
    ]


def summary_row(
    machine: Machine, summary: MachineAssessmentSummary, run_id: str, last_error: str = ""
) -> dict[str, Any]:
    """``UpdateSummary_CL`` row; counts, Compliant and Compliance stay empty when the assessment failed."""
    row = _machine_columns(machine) | {
        "TimeGenerated": summary.assessed_at,
        "RecordId": record_id(
            UPDATE_SUMMARY.name, run_id, machine.resource_id, summary.assessed_at.isoformat()
        ),
        "Readiness": summary.readiness.value,
        "LastError": last_error,
        "AssessmentRunId": run_id,
    }
    if summary.compliance is None:
        return row
    counts = summary.missing_by_classification
    critical = counts.get(Classification.CRITICAL.value, 0)
    security = counts.get(Classification.SECURITY.value, 0)
    return row | {
        "CriticalUpdatesMissing": critical,
        "SecurityUpdatesMissing": security,
        "OtherUpdatesMissing": summary.missing_total - critical - security,
        "TotalUpdatesMissing": summary.missing_total,
        "OptionalUpdatesMissing": summary.optional_missing,
        "RestartPending": summary.reboot_pending,
        "LastAssessedTime": summary.assessed_at,
        "Compliant": summary.compliance.compliant,
        "Compliance": summary.compliance.value,
    }


def outcome_error(outcome: AssessmentOutcome) -> str:
    if not (outcome.error_code or outcome.error_message):
        return ""
    return f"{outcome.error_code or 'Warning'}: {outcome.error_message or ''}".strip()
