"""The audit: on a given day, what a machine had installed against what was authorized, what it was missing
and for how long, what was overdue against its category's deadline, and which installs failed.

Pure rules over plain inputs; :mod:`shared.governance.audit_inputs` reads them from the tables.

The day is judged at its end (``as_of``: the end of the UTC day, or now for today), from:

- the machine's assessments up to then (:class:`HistoryPoint`, newest first: the update keys each one
  found missing) and its gaps (:class:`GapFacts`: classification, title, the open or last episode's
  first-seen and closing time). :func:`missing_on` answers what the last assessment up to ``as_of`` found
  missing and since when, walking back through older assessments only as far as an update was missing
  without a break: later assessments change the gaps, never the answer for an earlier day;
- its installs up to then (:class:`InstallFacts`, from the change history the deployments record);
- what was approved for its category on that day (a set of :class:`~shared.governance.patch_refs.PatchRef`);
- its category's deadlines (:func:`shared.governance.categories.deadline_days`).

Findings (:class:`Finding`), one per machine and update:

- ``installed authorized`` / ``installed unauthorized``: the latest install of the update up to then
  succeeded; unauthorized when the deployment recorded it so (an update not approved for the machine's
  category where approval is required);
- ``authorized missing``: approved for the category on that day, and the machine was missing it;
- ``overdue``: missing longer than the category's deadline for its classification, by how many days
  (counted from when the machine was first found missing it, whether or not it was approved since);
- ``failed install`` / ``incomplete install``: the latest attempt up to then failed, or never finished
  (pending when the window closed, not started), and no assessment since has found the update installed.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.fleet.machine_query import MAX_PAGE_SIZE
from shared.governance.categories import UNCATEGORISED, AssetCategory, deadline_days
from shared.governance.evidence import UNAUTHORIZED
from shared.governance.patch_refs import PatchRef
from shared.log_tables import PATCH_COMPLIANCE, record_id
from shared.model.machines import OsType
from shared.model.validation import NAME_PATTERN, NAME_RULE

# The CSV's columns, in order (one row per machine and finding; a machine with no finding gets one row
# with an empty Finding, so every machine asked for appears in the file).
CSV_COLUMNS = (
    "Date", "Computer", "ResourceId", "OSType", "Category", "Ring", "Owner", "OwnerContact", "LastAssessed",
    "Finding", "Update", "Classification", "Title", "MissingSince", "DaysMissing", "DeadlineDays", "DueAt",
    "OverdueDays", "InstallStatus", "InstalledAt", "RunId", "Deployment", "AuthorizedBy",
)  # fmt: skip


class Finding(StrEnum):
    INSTALLED_AUTHORIZED = "installed authorized"
    INSTALLED_UNAUTHORIZED = "installed unauthorized"
    AUTHORIZED_MISSING = "authorized missing"
    OVERDUE = "overdue"
    FAILED_INSTALL = "failed install"
    INCOMPLETE_INSTALL = "incomplete install"


class InstallStatus(StrEnum):
    INSTALLED = "installed"
    FAILED = "failed"
    INCOMPLETE = "incomplete"
    OTHER = "other"  # excluded, not selected: nothing was attempted


# Install statuses as the deployments write them: UpdateRunProgress_CL InstallationStatus ("succeeded",
# "failed", "notStarted") and the API's installationState (Installed, Failed, Pending, Unknown, Excluded,
# NotSelected; AZURE-FACTS "Install result"). Read case-insensitively.
_STATUS_WORDS: dict[str, InstallStatus] = {
    "installed": InstallStatus.INSTALLED,
    "succeeded": InstallStatus.INSTALLED,
    "failed": InstallStatus.FAILED,
    "pending": InstallStatus.INCOMPLETE,
    "notstarted": InstallStatus.INCOMPLETE,
    "unknown": InstallStatus.INCOMPLETE,
    "inprogress": InstallStatus.INCOMPLETE,
}


def install_status(text: str | None) -> InstallStatus:
    return _STATUS_WORDS.get((text or "").replace(" ", "").lower(), InstallStatus.OTHER)


class AuditError(ValueError):
    """A request the audit cannot answer; :attr:`field` names the (first) parameter at fault, :attr:`details`
    every one with its rule."""

    def __init__(self, field_name: str, message: str, details: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message
        self.details: tuple[tuple[str, str], ...] = tuple(details) or ((field_name, message),)


FORMATS = ("json", "csv")
# Machines per page of an audit request: each costs three partition reads, so 200 answer in seconds; at
# most the Machines table's page (shared.fleet.machine_query.MAX_PAGE_SIZE).
DEFAULT_PAGE_SIZE = 200


@dataclass(frozen=True)
class AuditQuery:
    """``GET /api/audit``'s parameters, checked."""

    day: date
    as_of: datetime
    format: str = "json"
    page_size: int = DEFAULT_PAGE_SIZE
    category: str | None = None
    machine: str | None = None
    next_token: str | None = None


def parse_audit_query(params: Mapping[str, str], now: datetime) -> AuditQuery:
    """The query string's parameters, or an :class:`AuditError` naming every one at fault."""
    problems: list[tuple[str, str]] = []
    day, as_of = now.astimezone(UTC).date(), now
    if params.get("on"):
        try:
            day = date.fromisoformat(params["on"])
        except ValueError:
            problems.append(("on", "must be a date like 2026-01-31"))
        else:
            try:
                as_of = audit_moment(day, now)
            except AuditError as error:
                problems.append((error.field, error.message))
    output = (params.get("format") or "json").lower()
    if output not in FORMATS:
        problems.append(("format", f"must be one of {', '.join(FORMATS)}"))
    page_size = params.get("pageSize") or str(DEFAULT_PAGE_SIZE)
    if not page_size.isdigit() or not 1 <= int(page_size) <= MAX_PAGE_SIZE:
        problems.append(("pageSize", f"must be a whole number from 1 to {MAX_PAGE_SIZE}"))
    category = params.get("category") or None
    if category is not None and category.lower() != UNCATEGORISED and not NAME_PATTERN.match(category):
        problems.append(("category", NAME_RULE))
    if problems:
        raise AuditError(*problems[0], problems)
    return AuditQuery(day, as_of, output, int(page_size), category, params.get("machine") or None,
                      params.get("nextToken") or None)


def end_of_day(day: date) -> datetime:
    """The last millisecond of ``day`` (UTC): the moment a day is judged at."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC) - timedelta(milliseconds=1)


def audit_moment(day: date, now: datetime) -> datetime:
    """When ``day`` is judged: its end, or ``now`` for today; a day after today is refused."""
    if day > now.astimezone(UTC).date():
        raise AuditError("on", f"{day.isoformat()} is in the future: the audit answers for today or earlier")
    return min(end_of_day(day), now.astimezone(UTC))


# --- inputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryPoint:
    """One recorded assessment: when, and the update keys it found missing (None when it had only counts,
    as an Arc server's without its update list: it says nothing about which updates)."""

    assessed_at: datetime
    keys: frozenset[str] | None


@dataclass(frozen=True)
class GapFacts:
    """A machine's gap for one update key, as the inventory keeps it now (its open or its last episode)."""

    update_key: str
    classification: str = ""
    title: str = ""
    first_seen: datetime | None = None
    closed_at: datetime | None = None  # NoLongerNeededSince; None while open
    version: str = ""  # a Linux package's version the gap names (PackageVersion); "" on Windows

    def open_at(self, moment: datetime) -> bool:
        return (self.first_seen is not None and self.first_seen <= moment
                and (self.closed_at is None or self.closed_at > moment))


@dataclass(frozen=True)
class MissingUpdate:
    update_key: str
    since: datetime
    classification: str = ""
    title: str = ""
    version: str = ""  # as GapFacts.version


@dataclass(frozen=True)
class MissingOn:
    """What the last assessment up to a moment found missing; ``assessed_at`` None when there was none."""

    assessed_at: datetime | None
    updates: tuple[MissingUpdate, ...] = ()

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(u.update_key for u in self.updates)


@dataclass(frozen=True)
class InstallFacts:
    """One install attempt of one update on a machine (a MachineChanges row)."""

    ref: PatchRef
    at: datetime
    status: str  # as recorded; read by :func:`install_status`
    run_id: str = ""
    deployment: str = ""
    authorized_by: str = ""  # an approval request id, a rule, or UNAUTHORIZED
    title: str = ""
    classification: str = ""


@dataclass(frozen=True)
class MachineFacts:
    key: str
    resource_id: str
    computer: str
    os_type: OsType
    category: str = UNCATEGORISED
    ring: str = ""
    subscription_id: str = ""
    environment: str = ""  # Azure | Non-Azure


@dataclass(frozen=True)
class CategoryFacts:
    """What the audit needs of a category: owner, approval rule and deadlines (days per classification)."""

    name: str = UNCATEGORISED
    owner: str = ""
    contact: str = ""
    requires_approval: bool = False
    deadline: Callable[[OsType, str], int] = field(
        default=lambda os_type, classification: deadline_days(None, os_type, classification)
    )


def category_facts(category: AssetCategory | None) -> CategoryFacts:
    """A category's facts; None (uncategorised, or a category deleted since) has the default deadlines
    and no owner."""
    if category is None:
        return CategoryFacts()
    owner = category.owner
    return CategoryFacts(
        name=category.name, owner=owner.name if owner else "", contact=(owner.contact or "") if owner else "",
        requires_approval=category.requires_approval,
        deadline=lambda os_type, classification: deadline_days(category, os_type, classification),
    )  # fmt: skip


# --- what was missing on a day ------------------------------------------------------------------------


def missing_on(as_of: datetime, history: Iterable[HistoryPoint], gaps: Mapping[str, GapFacts]) -> MissingOn:
    """What the last assessment at or before ``as_of`` found missing, each update with the start of the
    unbroken run of assessments that found it missing.

    ``history`` is newest first and is read lazily, only as far back as needed: a gap whose current (or
    last) episode covers ``as_of`` gives its start at once; any other key (a gap closed and reopened since)
    is followed back through older assessments. An assessment with only counts says nothing about keys:
    the newest one stands for the gaps open then (it left them as they were); older ones are stepped over.
    """
    points = (p for p in history if p.assessed_at <= as_of)
    latest = next(points, None)
    if latest is None:
        return MissingOn(None)
    if latest.keys is None:
        updates = [_missing(g.update_key, g.first_seen, gaps) for g in gaps.values()
                   if g.open_at(as_of) and g.first_seen is not None]
        return MissingOn(latest.assessed_at, tuple(sorted(updates, key=lambda u: u.update_key)))
    since: dict[str, datetime] = {}
    unresolved: dict[str, datetime] = {}
    for key in latest.keys:
        gap = gaps.get(key)
        if gap is not None and gap.first_seen is not None and gap.open_at(as_of):
            since[key] = gap.first_seen
        else:
            unresolved[key] = latest.assessed_at
    while unresolved:
        point = next(points, None)
        if point is None:
            break
        if point.keys is None:
            continue
        for key in list(unresolved):
            if key in point.keys:
                unresolved[key] = point.assessed_at
            else:
                since[key] = unresolved.pop(key)
    since.update(unresolved)
    updates = [_missing(key, at, gaps) for key, at in since.items()]
    return MissingOn(latest.assessed_at, tuple(sorted(updates, key=lambda u: u.update_key)))


def _missing(key: str, since: datetime, gaps: Mapping[str, GapFacts]) -> MissingUpdate:
    gap = gaps.get(key)
    return MissingUpdate(key, since, gap.classification if gap else "", gap.title if gap else "",
                         gap.version if gap else "")


# --- the findings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FindingRow:
    kind: Finding
    update: str  # the patch key (KB5034441, openssl=3.0.2-0ubuntu1.12) where known, else the update key
    classification: str = ""
    title: str = ""
    missing_since: datetime | None = None
    days_missing: int | None = None
    deadline_days: int | None = None
    due_at: datetime | None = None
    overdue_days: int | None = None
    install_status: str = ""
    installed_at: datetime | None = None  # when the install (or the failed attempt) was
    run_id: str = ""
    deployment: str = ""
    authorized_by: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "finding": self.kind.value, "update": self.update, "classification": self.classification or None,
            "title": self.title or None, "missingSince": _iso(self.missing_since),
            "daysMissing": self.days_missing, "deadlineDays": self.deadline_days, "dueAt": _iso(self.due_at),
            "overdueDays": self.overdue_days, "installStatus": self.install_status or None,
            "installedAt": _iso(self.installed_at), "runId": self.run_id or None,
            "deployment": self.deployment or None, "authorizedBy": self.authorized_by or None,
        }  # fmt: skip


@dataclass(frozen=True)
class DueUpdate:
    """An update the machine was missing, and when its category's deadline for it falls (``due``: first
    found missing plus the deadline's days), overdue or not (shared.governance.deadlines warns of these)."""

    update_key: str
    version: str
    classification: str
    title: str
    since: datetime
    due: datetime


@dataclass(frozen=True)
class MachineAudit:
    day: date
    as_of: datetime
    machine: MachineFacts
    category: CategoryFacts
    assessed_at: datetime | None
    missing: int  # updates the last assessment up to then found missing
    findings: tuple[FindingRow, ...]
    due: tuple[DueUpdate, ...] = ()  # each missing update with its deadline

    def count(self, kind: Finding) -> int:
        return sum(1 for f in self.findings if f.kind is kind)

    @property
    def max_overdue_days(self) -> int:
        return max((f.overdue_days or 0 for f in self.findings if f.kind is Finding.OVERDUE), default=0)

    def counts(self) -> dict[str, int]:
        return {kind.value: self.count(kind) for kind in Finding}

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine.key, "resourceId": self.machine.resource_id,
            "computer": self.machine.computer, "osType": self.machine.os_type.value,
            "category": self.category.name, "requiresApproval": self.category.requires_approval,
            "ring": self.machine.ring or None,
            "owner": self.category.owner or None, "ownerContact": self.category.contact or None,
            "lastAssessed": _iso(self.assessed_at), "missing": self.missing, "counts": self.counts(),
            "maxOverdueDays": self.max_overdue_days, "findings": [f.to_json() for f in self.findings],
        }  # fmt: skip


def audit_machine(
    day: date,
    as_of: datetime,
    machine: MachineFacts,
    category: CategoryFacts,
    missing: MissingOn,
    installs: Iterable[InstallFacts],
    approved: Collection[PatchRef],
) -> MachineAudit:
    """Every finding of one machine on ``day``, judged at ``as_of`` (see the module docstring)."""
    latest = _latest_attempts(i for i in installs if i.at <= as_of and i.ref.os_type is machine.os_type)
    missing_keys = missing.keys
    findings: list[FindingRow] = []
    for attempt in latest:
        status = install_status(attempt.status)
        if status is InstallStatus.INSTALLED:
            unauthorized = attempt.authorized_by.strip().lower() == UNAUTHORIZED
            kind = Finding.INSTALLED_UNAUTHORIZED if unauthorized else Finding.INSTALLED_AUTHORIZED
            findings.append(_install_finding(kind, attempt))
        elif status in (InstallStatus.FAILED, InstallStatus.INCOMPLETE):
            found_since = missing.assessed_at is not None and missing.assessed_at > attempt.at
            if found_since and attempt.ref.update_key not in missing_keys:
                continue  # an assessment after the attempt found the update installed
            kind = Finding.FAILED_INSTALL if status is InstallStatus.FAILED else Finding.INCOMPLETE_INSTALL
            findings.append(_install_finding(kind, attempt))
    by_key = {u.update_key: u for u in missing.updates}
    for ref in sorted(approved):
        gap = by_key.get(ref.update_key)
        # A Linux gap names the version the machine is offered: missing a newer version than the approved
        # one (which it may well have installed) is not missing the approved one.
        other_version = gap is not None and bool(ref.version and gap.version) and gap.version != ref.version
        if ref.os_type is machine.os_type and gap is not None and not other_version:
            findings.append(FindingRow(Finding.AUTHORIZED_MISSING, ref.key, gap.classification, gap.title,
                                       gap.since, _whole_days(as_of - gap.since)))
    due_updates: list[DueUpdate] = []
    for gap in missing.updates:
        days = category.deadline(machine.os_type, gap.classification)
        due = gap.since + timedelta(days=days)
        due_updates.append(DueUpdate(gap.update_key, gap.version, gap.classification, gap.title, gap.since,
                                     due))
        if as_of > due:
            findings.append(FindingRow(
                Finding.OVERDUE, gap.update_key, gap.classification, gap.title, gap.since,
                _whole_days(as_of - gap.since), days, due, math.ceil((as_of - due) / timedelta(days=1)),
            ))  # fmt: skip
    order = list(Finding)
    findings.sort(key=lambda f: (order.index(f.kind), f.update))
    return MachineAudit(day, as_of, machine, category, missing.assessed_at, len(missing.updates),
                        tuple(findings), tuple(due_updates))


def _install_finding(kind: Finding, attempt: InstallFacts) -> FindingRow:
    return FindingRow(kind, attempt.ref.key, attempt.classification, attempt.title,
                      install_status=attempt.status, installed_at=attempt.at, run_id=attempt.run_id,
                      deployment=attempt.deployment, authorized_by=attempt.authorized_by)


def _latest_attempts(installs: Iterable[InstallFacts]) -> list[InstallFacts]:
    """The latest attempt per update key (a Linux package's newest version supersedes its older ones)."""
    latest: dict[str, InstallFacts] = {}
    for attempt in installs:
        if install_status(attempt.status) is InstallStatus.OTHER:
            continue
        held = latest.get(attempt.ref.update_key)
        if held is None or attempt.at > held.at:
            latest[attempt.ref.update_key] = attempt
    return sorted(latest.values(), key=lambda a: a.ref.key)


def _whole_days(span: timedelta) -> int:
    return max(0, span // timedelta(days=1))


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


# --- summaries and the CSV ----------------------------------------------------------------------------


def summary(audits: Sequence[MachineAudit]) -> dict[str, Any]:
    """Counts over machines (a category's, the fleet's): findings by kind, machines with any of each."""
    counts: Counter[str] = Counter()
    machines_with: Counter[str] = Counter()
    for audit in audits:
        for kind in Finding:
            found = audit.count(kind)
            counts[kind.value] += found
            machines_with[kind.value] += 1 if found else 0
    return {
        "machines": len(audits),
        "notAssessed": sum(1 for a in audits if a.assessed_at is None),
        "findings": {kind.value: counts[kind.value] for kind in Finding},
        "machinesWith": {kind.value: machines_with[kind.value] for kind in Finding},
        "maxOverdueDays": max((a.max_overdue_days for a in audits), default=0),
    }


def compliance_row(audit: MachineAudit, generated_at: datetime) -> dict[str, Any]:
    """The machine's ``PatchCompliance_CL`` row for the audited day, as of ``generated_at``: one per machine,
    day and run. The timer's runs are generated at the schedule slot, so a firing again, or late, queues
    the same RecordId, which the outbox keeps once; a run of the day so far (``make run``) has its own."""
    m, c = audit.machine, audit.category
    return {
        "TimeGenerated": generated_at,
        "RecordId": record_id(PATCH_COMPLIANCE.name, m.key, audit.day.isoformat(), generated_at.isoformat()),
        "AuditDate": datetime.combine(audit.day, time(0), tzinfo=UTC),
        "Computer": m.computer, "ResourceId": m.resource_id, "SubscriptionId": m.subscription_id,
        "SourceComputerId": m.key, "ComputerEnvironment": m.environment, "OSType": m.os_type.value,
        "AssetCategory": c.name, "Ring": m.ring, "Owner": c.owner, "OwnerContact": c.contact,
        "LastAssessed": audit.assessed_at, "MissingUpdates": audit.missing,
        "InstalledAuthorized": audit.count(Finding.INSTALLED_AUTHORIZED),
        "InstalledUnauthorized": audit.count(Finding.INSTALLED_UNAUTHORIZED),
        "AuthorizedMissing": audit.count(Finding.AUTHORIZED_MISSING),
        "Overdue": audit.count(Finding.OVERDUE), "MaxOverdueDays": audit.max_overdue_days,
        "FailedInstalls": audit.count(Finding.FAILED_INSTALL),
        "IncompleteInstalls": audit.count(Finding.INCOMPLETE_INSTALL),
    }  # fmt: skip


def to_csv(audits: Iterable[MachineAudit]) -> str:
    """The audit as CSV (RFC 4180: CRLF line ends, a field quoted when it holds a comma, a quote or a line
    break, quotes doubled), a header row of :data:`CSV_COLUMNS` first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_COLUMNS)
    writer.writerows([_inert(cell) for cell in row] for row in csv_rows(audits))
    return buffer.getvalue()


# A spreadsheet reads a cell starting with one of these as a formula (OWASP "CSV Injection"): a title or
# a name that does is written with a leading apostrophe, which Excel shows as text and hides.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _inert(cell: str) -> str:
    return f"'{cell}" if cell.startswith(_FORMULA_STARTS) else cell


def csv_rows(audits: Iterable[MachineAudit]) -> Iterable[list[str]]:
    """The CSV's data rows (columns :data:`CSV_COLUMNS`): one per machine and finding."""
    for audit in audits:
        m, c = audit.machine, audit.category
        machine_cells = [audit.day.isoformat(), m.computer, m.resource_id, m.os_type.value, c.name, m.ring,
                         c.owner, c.contact, _cell(audit.assessed_at)]
        if not audit.findings:
            yield [*machine_cells, *[""] * (len(CSV_COLUMNS) - len(machine_cells))]
        for f in audit.findings:
            yield [
                *machine_cells, f.kind.value, f.update, f.classification, f.title, _cell(f.missing_since),
                _cell(f.days_missing), _cell(f.deadline_days), _cell(f.due_at), _cell(f.overdue_days),
                f.install_status, _cell(f.installed_at), f.run_id, f.deployment, f.authorized_by,
            ]  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


# --- the daily compliance rows: messages between the timer's orchestration and its activity -------------


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComplianceRunInput(_Message):
    day: date  # the UTC day audited
    generated_at: datetime  # the rows' TimeGenerated: the schedule slot that audits the day


class CompliancePageInput(ComplianceRunInput):
    token: str | None = None  # the Machines table's continuation; None for the first page


class CompliancePageResult(_Message):
    machines: int
    queued: int  # rows new to the outbox (a retried page queues none again)
    overdue_machines: int
    unauthorized_machines: int
    next_token: str | None
