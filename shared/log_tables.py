"""The Log Analytics tables this product writes, declared once.

Each :class:`LogTable` names a custom table, the data collection rule stream that
feeds it, and its columns with their Log Analytics types. The app's record types
are checked against these declarations, the local Log Analytics stand-in enforces
them, and the Bicep table and stream declarations are compared with them by tests.

Column names follow the legacy Update Management tables (``Heartbeat``, ``Update``,
``UpdateSummary``, ``UpdateRunProgress``), except where Log Analytics refuses the legacy name
in a custom table: the legacy ``Title`` is ``UpdateTitle`` here. :data:`FUNCTIONS` declares the
workspace functions named after the legacy tables that present the legacy column names again,
so the well-known log searches run unchanged (``Update | ... | project Computer, Title, ...``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ColumnType(StrEnum):
    """Column types of a Log Analytics custom table (DCR stream declaration types)."""

    STRING = "string"
    INT = "int"
    LONG = "long"
    REAL = "real"
    BOOLEAN = "boolean"
    DATETIME = "datetime"
    DYNAMIC = "dynamic"


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType


@dataclass(frozen=True)
class LogTable:
    name: str
    columns: tuple[Column, ...]

    @property
    def stream(self) -> str:
        # DCR stream names for custom tables are "Custom-" + the table name.
        return f"Custom-{self.name}"

    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _cols(*pairs: tuple[str, ColumnType]) -> tuple[Column, ...]:
    return tuple(Column(n, t) for n, t in pairs)


S, B, D, L = ColumnType.STRING, ColumnType.BOOLEAN, ColumnType.DATETIME, ColumnType.LONG
DYN = ColumnType.DYNAMIC

# One row per machine per hour, and one whenever its content changes (shared/fleet/heartbeats.py): the
# onboarding check of the legacy Heartbeat table.
HEARTBEAT = LogTable(
    "Heartbeat_CL",
    _cols(
        ("TimeGenerated", D),
        ("RecordId", S),  # deterministic: a retried upload is recognisable
        ("Computer", S),
        ("SourceComputerId", S),
        ("ResourceId", S),
        ("SubscriptionId", S),
        ("ResourceGroup", S),
        ("ResourceLocation", S),
        ("ResourceProvider", S),
        ("ComputerEnvironment", S),  # Azure | Non-Azure
        ("OSType", S),  # Windows | Linux
        ("OSName", S),
        ("OSVersion", S),
        ("PowerState", S),
        ("PatchMode", S),
        ("Category", S),  # Azure VM | Arc-enabled server
        ("Solutions", S),
        ("Tags", DYN),  # the resource's Azure tags, {name: value}; the production alert reads them
        ("AssetCategory", S),  # the asset category the machine is placed in (shared.governance.categories)
        ("Ring", S),  # its ring within the category; empty when uncategorised
    ),
)

# One row per machine and missing update per assessment (the legacy ``Update`` table), plus one
# "Not needed" row for each update an assessment found installed that the previous one had listed.
UPDATE = LogTable(
    "Update_CL",
    _cols(
        ("TimeGenerated", D),
        ("RecordId", S),
        ("Computer", S),
        ("ComputerEnvironment", S),
        ("OSType", S),
        ("OSName", S),
        ("OSVersion", S),
        ("UpdateTitle", S),  # the legacy Title: a reserved column name in custom tables
        ("KBID", S),  # digits only, as the legacy table and the deployment form's exclusions
        ("PackageName", S),
        ("PackageVersion", S),
        ("Product", S),
        ("Classification", S),  # display names: "Security Updates", ...
        ("UpdateState", S),  # Needed | Not needed
        ("Optional", B),
        ("RebootBehavior", S),
        ("PublishedDate", D),
        ("UpdateID", S),
        ("SourceComputerId", S),
        ("ResourceId", S),
        ("SubscriptionId", S),
        ("ResourceGroup", S),
        ("AssessmentRunId", S),
    ),
)

# One row per machine per assessment or failed assessment (the legacy ``UpdateSummary`` table).
# Counts, Compliant and Compliance are empty on a failure row: a failure says nothing about what is missing.
UPDATE_SUMMARY = LogTable(
    "UpdateSummary_CL",
    _cols(
        ("TimeGenerated", D),
        ("RecordId", S),
        ("Computer", S),
        ("ComputerEnvironment", S),
        ("OSType", S),
        ("OSName", S),
        ("OSVersion", S),
        ("SourceComputerId", S),
        ("ResourceId", S),
        ("SubscriptionId", S),
        ("ResourceGroup", S),
        ("CriticalUpdatesMissing", L),
        ("SecurityUpdatesMissing", L),
        ("OtherUpdatesMissing", L),  # every other non-optional classification
        ("TotalUpdatesMissing", L),  # non-optional only, as the legacy table
        ("OptionalUpdatesMissing", L),
        ("RestartPending", B),
        ("LastAssessedTime", D),
        ("Compliant", B),  # true only when Compliance is Compliant: Unknown is not compliant
        ("Compliance", S),  # Compliant | NonCompliant | Unknown (no classification data to judge by)
        ("Readiness", S),
        ("LastError", S),
        ("AssessmentRunId", S),
    ),
)

# One row per machine and update an update run selected (the legacy ``UpdateRunProgress`` table).
# InstallationStatus is lower case ("succeeded", "failed", "notStarted"), as the seed's run searches
# compare it; the mapping from the API's installationState is in shared/deployments/results.py.
UPDATE_RUN_PROGRESS = LogTable(
    "UpdateRunProgress_CL",
    _cols(
        ("TimeGenerated", D),
        ("RecordId", S),
        ("Computer", S),
        ("ComputerEnvironment", S),
        ("OSType", S),
        ("UpdateTitle", S),  # the legacy Title, as Update_CL
        ("KBID", S),
        ("PackageName", S),
        ("PackageVersion", S),
        ("Classification", S),  # display names, as Update_CL
        ("UpdateRunName", S),  # the deployment's name
        ("UpdateRunId", S),  # the run's id
        ("InstallationStatus", S),
        ("ResourceId", S),
        ("SourceComputerId", S),
        ("StartTime", D),  # the machine's install start: the API gives no per-update times
        ("EndTime", D),
        # Governed patching (shared.deployments.governed.record_batch): false only for an update not
        # approved for the machine's asset category where it requires approval; AuthorizedBy says what
        # approved it (an approval request id, rule:<category>), "not required" or "unauthorized".
        ("Authorized", B),
        ("AuthorizedBy", S),
        ("Release", S),  # the deployment's release (shared.governance.releases); empty when it names none
    ),
)

# One row per machine per update run, with the machine's result: also for machines that never started
# (skipped by the error budget or the window cut-off, cancelled), were not reachable, had nothing to
# install, and for Arc servers (which report counts only, so have no UpdateRunProgress_CL rows).
# Status is the MachineResultStatus value (shared/deployments/results.py); the counts are the machine's last
# install call's, zero for a machine that never installed.
UPDATE_RUN_MACHINE = LogTable(
    "UpdateRunMachine_CL",
    _cols(
        ("TimeGenerated", D),
        ("RecordId", S),  # deterministic from the run and the machine
        ("Computer", S),
        ("ComputerEnvironment", S),
        ("OSType", S),  # empty for a target the discovery did not find
        ("ResourceId", S),
        ("SubscriptionId", S),
        ("SourceComputerId", S),
        ("UpdateRunName", S),  # the deployment's name
        ("UpdateRunId", S),
        ("Status", S),  # succeeded | failed | partially succeeded | window exceeded | not needed | ...
        ("Reason", S),
        ("StartTime", D),  # empty for a machine that never started
        ("EndTime", D),
        ("Installed", L),
        ("FailedUpdates", L),
        ("Pending", L),
        ("Excluded", L),
        ("RebootStatus", S),
        ("ErrorCode", S),
        ("ErrorMessage", S),
        ("Release", S),  # the deployment's release, as UpdateRunProgress_CL; empty when it names none
        # Safe rollouts (shared.safety.policy): "passed", "failed: <check>: <why>", "unhealthy before
        # install" or empty; "restored", "failed", "not possible" or empty; when the restored snapshots
        # were taken. A machine rolled back later on request gets a new row (the latest is its result).
        ("Health", S),
        ("Rollback", S),
        ("RestorePoint", D),
    ),
)

# One row per change of an update's governed state (shared.governance.patches_table): first seen in the
# fleet, each state change per asset category (evidence, request, decision, automatic rule), and each edit
# of its facts. The PatchInventory table keeps the same history forever; this is its searchable copy.
PATCH_INVENTORY = LogTable(
    "PatchInventory_CL",
    _cols(
        ("TimeGenerated", D),  # when the change happened
        ("RecordId", S),  # deterministic from the update and its history row
        ("OSType", S),  # Windows | Linux
        ("PatchKey", S),  # KB5034441 | openssl=3.0.2-0ubuntu1.12 (shared.governance.patch_refs)
        ("KBID", S),  # digits only, as Update_CL
        ("PackageName", S),
        ("PackageVersion", S),
        ("UpdateTitle", S),  # as Update_CL
        ("Classification", S),  # display names, as Update_CL
        ("Product", S),
        ("AssetCategory", S),  # empty for a change of the update itself (first seen, facts edited)
        ("Action", S),  # first seen | edit | test | pass | fail | authorize | approve | reject | defer | ...
        ("FromState", S),  # new | in test | passed | failed | authorized | approved | rejected | deferred
        ("ToState", S),
        ("ChangedBy", S),  # a principal's name, system:evidence, or rule:<category>
        ("Justification", S),  # why (an evidence failure's reason)
        ("RequestId", S),  # the approval request the change belongs to
        ("DeferUntil", D),
    ),
)

# One row per machine per UTC day (shared.governance.audit, the daily compliance timer): the audit of the
# day before, as GET /api/audit?on= answers it. Counts per finding; the overdue ones with the worst delay.
PATCH_COMPLIANCE = LogTable(
    "PatchCompliance_CL",
    _cols(
        ("TimeGenerated", D),  # when the day was audited
        ("RecordId", S),  # deterministic from the machine and the day
        ("AuditDate", D),  # the day audited (00:00 UTC)
        ("Computer", S),
        ("ResourceId", S),
        ("SubscriptionId", S),
        ("SourceComputerId", S),  # the machine key, as Heartbeat_CL
        ("ComputerEnvironment", S),  # Azure | Non-Azure
        ("OSType", S),
        ("AssetCategory", S),  # as Heartbeat_CL; uncategorised when no category takes the machine
        ("Ring", S),
        ("Owner", S),  # the category owner's name
        ("OwnerContact", S),
        ("LastAssessed", D),  # the last assessment up to the day's end; empty when there was none
        ("MissingUpdates", L),  # what that assessment found missing
        ("InstalledAuthorized", L),
        ("InstalledUnauthorized", L),
        ("AuthorizedMissing", L),
        ("Overdue", L),  # missing past the category's deadline for their classification
        ("MaxOverdueDays", L),
        ("FailedInstalls", L),
        ("IncompleteInstalls", L),
    ),
)

TABLES: tuple[LogTable, ...] = (HEARTBEAT, UPDATE, UPDATE_SUMMARY, UPDATE_RUN_PROGRESS, UPDATE_RUN_MACHINE,
                                PATCH_INVENTORY,
                                PATCH_COMPLIANCE)
TABLES_BY_STREAM: dict[str, LogTable] = {t.stream: t for t in TABLES}


@dataclass(frozen=True)
class LogFunction:
    """A workspace function (a saved search with a function alias) presenting ``table`` under a legacy name.

    ``legacy_columns`` pairs each legacy column name with the table's column that holds it; the
    function renames those and passes every other column through unchanged.
    """

    alias: str
    table: LogTable
    legacy_columns: tuple[tuple[str, str], ...] = ()

    @property
    def query(self) -> str:
        if not self.legacy_columns:
            return self.table.name
        renames = ", ".join(f"{legacy} = {column}" for legacy, column in self.legacy_columns)
        return f"{self.table.name}\n| project-rename {renames}"

    def column_names(self) -> tuple[str, ...]:
        legacy = {column: name for name, column in self.legacy_columns}
        return tuple(legacy.get(c, c) for c in self.table.column_names())


# Named after the legacy tables, so the seed's log searches run as written (``Update | where ...``). A
# stored function wins over a table of the same name ("Tables", Kusto documentation), so these also
# shadow the Microsoft ``Update`` / ``UpdateSummary`` / ``UpdateRunProgress`` tables in the workspace,
# which the Log Analytics agent (retired in 2024) filled. Heartbeat gets none: Azure Monitor Agent still
# fills the Microsoft Heartbeat table, which a function of that name would hide.
FUNCTIONS: tuple[LogFunction, ...] = (
    LogFunction("Update", UPDATE, (("Title", "UpdateTitle"),)),
    LogFunction("UpdateSummary", UPDATE_SUMMARY),
    LogFunction("UpdateRunProgress", UPDATE_RUN_PROGRESS, (("Title", "UpdateTitle"),)),
)
# The saved searches' category (the portal's "Legacy category"), under which the functions are listed.
FUNCTION_CATEGORY = "Update Management"

# The data collection rule's name for its one Log Analytics destination; every data flow sends there.
DCR_WORKSPACE_DESTINATION = "workspace"
# The Tables API spells the date-time column type "dateTime"; DCR stream declarations spell it "datetime"
# (Azure Monitor "Tables - Create Or Update" and "Structure of a data collection rule" references).
_TABLES_API_TYPE_NAMES: dict[ColumnType, str] = {ColumnType.DATETIME: "dateTime"}


def bicep_tables() -> dict[str, object]:
    """The tables, stream declarations and data flows as the Bicep templates declare them (plain JSON).

    ``python -m local.infra_gen`` writes this to ``infra/generated/log-tables.json``, which the
    monitoring module loads; a test checks the committed file equals this.
    """
    return {
        "tables": [
            {
                "name": table.name,
                "columns": [
                    {"name": c.name, "type": _TABLES_API_TYPE_NAMES.get(c.type, c.type.value)}
                    for c in table.columns
                ],
            }
            for table in TABLES
        ],
        "streamDeclarations": {
            table.stream: {"columns": [{"name": c.name, "type": c.type.value} for c in table.columns]}
            for table in TABLES
        },
        "dataFlows": [
            {
                "streams": [table.stream],
                "destinations": [DCR_WORKSPACE_DESTINATION],
                "transformKql": "source",
                "outputStream": table.stream,
            }
            for table in TABLES
        ],
    }


def bicep_functions() -> list[dict[str, str]]:
    """The workspace functions as the monitoring module declares them (saved searches, plain JSON).

    ``python -m local.infra_gen`` writes this to ``infra/generated/log-functions.json``.
    """
    return [
        {
            "name": function.alias,
            "functionAlias": function.alias,
            "category": FUNCTION_CATEGORY,
            "displayName": f"{function.alias}: {function.table.name} with the legacy column names",
            "query": function.query,
        }
        for function in FUNCTIONS
    ]


# --- rows ----------------------------------------------------------------------------------------


class RecordShapeError(ValueError):
    pass


def record_id(*parts: str) -> str:
    """Deterministic id for a row, so that a retried upload can be recognised."""
    return hashlib.sha256("|".join(parts).lower().encode()).hexdigest()[:32]


def check_rows(table: LogTable, rows: Sequence[Mapping[str, Any]]) -> None:
    declared = set(table.column_names())
    for index, row in enumerate(rows):
        unknown = sorted(set(row) - declared)
        if unknown:
            raise RecordShapeError(
                f"{table.name} row {index}: column(s) {', '.join(unknown)} are not declared "
                f"in shared/log_tables.py for {table.name}"
            )
