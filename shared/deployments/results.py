"""What an install means for one machine of an update run: its result status and its
``UpdateRunProgress_CL`` rows.

Machine result status, from an :class:`InstallOutcome` (:func:`machine_result_status`), first rule
that applies:

1. failed patches (or a failed reboot) and at least one patch installed -> ``partially succeeded``;
2. failed patches (or a failed reboot), nothing installed -> ``failed``;
3. the result ``status`` is ``Failed`` with no failed patch (the agent reported an error) -> ``failed``;
4. the window ran out (``maintenanceWindowExceeded`` or patches left ``Pending``) -> ``window exceeded``,
   whether or not some patches went in: failures outrank the window, which only explains the rest;
5. nothing installed and nothing pending -> ``not needed`` (the filters selected nothing);
6. otherwise ``succeeded``.

``skipped``, ``not reachable``, ``cancelled`` and ``rolled back`` are decided by the orchestration (a
machine that never started, an unreachable agent, a cancelled run, a failed health check after which the
machine was restored from its snapshots), never from an install result.

``InstallationStatus`` in ``UpdateRunProgress_CL`` (lower case, as the seed's search compares
``== "failed"``): Installed -> ``succeeded``, Failed -> ``failed``, Pending -> ``notStarted`` (the
window ran out before its turn), Unknown -> ``unknown``. Only updates the run selected get a row:
Excluded and NotSelected updates were never part of the run, and a row for them would make the
seed's "machines updated in this run" search count machines the run did not touch. An Arc server's
install result has counts only: its per-update results come from Resource Graph
(:mod:`shared.deployments.arc_results`), and until Resource Graph has them it has no per-update rows.

``UpdateRunMachine_CL`` (:func:`run_machine_row`) has one row per machine of a run with its result
status, whatever it was: the machines that never started or had nothing to install are there too.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from shared.log_tables import UPDATE_RUN_MACHINE, UPDATE_RUN_PROGRESS, record_id
from shared.model.classification import to_display
from shared.model.install_outcome import InstallationState, InstallOutcome, PatchInstallResult
from shared.model.machines import Environment, Machine, MachineKind, OsType, machine_key, parse_resource_id


class MachineResultStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIALLY_SUCCEEDED = "partially succeeded"
    WINDOW_EXCEEDED = "window exceeded"
    NOT_NEEDED = "not needed"
    # Decided by the orchestration, not from an install result:
    SKIPPED = "skipped"
    NOT_REACHABLE = "not reachable"
    CANCELLED = "cancelled"
    # A health check failed after the install and the machine was restored from its pre-patch snapshots
    # (shared.safety): charged to the error budget like a failure.
    ROLLED_BACK = "rolled back"


_ROW_STATUS: dict[InstallationState, str] = {
    InstallationState.INSTALLED: "succeeded",
    InstallationState.FAILED: "failed",
    InstallationState.PENDING: "notStarted",
    InstallationState.UNKNOWN: "unknown",
}
# The API's rebootStatus value for a reboot that did not happen as asked.
_REBOOT_FAILED = "Failed"


def machine_result_status(outcome: InstallOutcome, installed_before: int = 0) -> MachineResultStatus:
    """The machine's result per the rules in the module docstring. ``installed_before`` counts what
    earlier install calls of the same run installed on the machine (a capped first call), so that
    the result is the machine's and not only the last call's."""
    installed = installed_before + outcome.installed
    failed = outcome.failed > 0 or outcome.reboot_status == _REBOOT_FAILED
    if failed:
        return MachineResultStatus.PARTIALLY_SUCCEEDED if installed else MachineResultStatus.FAILED
    if outcome.status == "Failed":
        return MachineResultStatus.FAILED
    if outcome.maintenance_window_exceeded or outcome.pending:
        return MachineResultStatus.WINDOW_EXCEEDED
    if not installed:
        return MachineResultStatus.NOT_NEEDED
    return MachineResultStatus.SUCCEEDED


def installation_status(state: InstallationState) -> str | None:
    """The legacy ``InstallationStatus`` for a patch, or None for updates the run did not select."""
    return _ROW_STATUS.get(state)


def run_progress_rows(
    machine: Machine, outcome: InstallOutcome, deployment_name: str, run_id: str, at: datetime,
    *, release: str | None = None,
) -> list[dict[str, Any]]:
    """``UpdateRunProgress_CL`` rows; RecordId depends on the run, machine and patch only, so a
    retried upload of the same run writes the same ids. ``release``: the deployment's release name
    (``Release``; empty when it installs by classification or approvedOnly)."""
    patches = outcome.patches or ()
    return patch_progress_rows(machine, patches, outcome.started_at, deployment_name, run_id, at,
                               release=release)


def patch_progress_rows(
    machine: Machine, patches: Iterable[PatchInstallResult], started_at: datetime | None,
    deployment_name: str, run_id: str, at: datetime, *, release: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`run_progress_rows` from an install's patches and start time (an Arc server's, read from
    Resource Graph after the install step)."""
    base = {
        "Computer": machine.computer_name,
        "ComputerEnvironment": machine.environment.value,
        "OSType": machine.os_type.value,
        "UpdateRunName": deployment_name,
        "UpdateRunId": run_id,
        "Release": release or "",
        "ResourceId": machine.resource_id,
        "SourceComputerId": machine.key,
        "StartTime": started_at,
        "EndTime": at,
        # Filled at the batch's end from the machine's category and its approvals (governed.record_batch).
        "Authorized": None,
        "AuthorizedBy": None,
    }
    rows = []
    for patch in patches:
        status = installation_status(patch.state)
        if status is None:
            continue
        rows.append(base | _patch_columns(machine.os_type, patch) | {
            "TimeGenerated": at,
            "RecordId": record_id(UPDATE_RUN_PROGRESS.name, run_id, machine.resource_id, patch.patch_id),
            "InstallationStatus": status,
        })  # fmt: skip
    return rows


def _patch_columns(os_type: OsType, patch: PatchInstallResult) -> dict[str, Any]:
    linux = os_type is OsType.LINUX
    return {
        "UpdateTitle": patch.name,
        "KBID": None if linux else patch.kb_id,
        "PackageName": patch.name if linux else None,
        "PackageVersion": patch.version if linux else None,
        "Classification": to_display(os_type, patch.classifications).value,
    }


class MachineRunOutcome(Protocol):
    """What a run recorded for a machine (``runs_table.MachineOutcomeRecord`` has this shape)."""

    @property
    def status(self) -> MachineResultStatus: ...
    @property
    def reason(self) -> str: ...
    @property
    def installed(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def excluded(self) -> int: ...
    @property
    def reboot_status(self) -> str: ...
    @property
    def error_code(self) -> str: ...
    @property
    def error_message(self) -> str: ...


# ErrorMessage is kept as the run's machine row keeps it (shared.deployments.runs_table cuts it at 4,000).
_MAX_ERROR_MESSAGE = 4000


def run_machine_row(run_id: str, deployment_name: str, resource_id: str, computer: str,
                    os_type: OsType | None, outcome: MachineRunOutcome, started_at: datetime | None,
                    finished_at: datetime, *, release: str | None = None, health: str = "",
                    rollback: str = "", restore_point: datetime | None = None) -> dict[str, Any]:
    """The ``UpdateRunMachine_CL`` row of one machine of a run.

    ``os_type`` is None for a target the discovery did not find; ``started_at`` is None for a machine
    that never started; ``release`` is the deployment's release name (empty without one). RecordId
    depends on the run and the machine only, so the row of a retried activity has the same id.
    """
    ref = parse_resource_id(resource_id)
    environment = Environment.AZURE if ref.kind is MachineKind.AZURE_VM else Environment.NON_AZURE
    return {
        "TimeGenerated": finished_at,
        "RecordId": record_id(UPDATE_RUN_MACHINE.name, run_id, resource_id),
        "Computer": computer,
        "ComputerEnvironment": environment.value,
        "OSType": os_type.value if os_type else None,
        "ResourceId": resource_id,
        "SubscriptionId": ref.subscription_id,
        "SourceComputerId": machine_key(resource_id),
        "UpdateRunName": deployment_name,
        "UpdateRunId": run_id,
        "Release": release or "",
        "Status": outcome.status.value,
        "Reason": outcome.reason,
        "StartTime": started_at,
        "EndTime": finished_at,
        "Installed": outcome.installed,
        "FailedUpdates": outcome.failed,
        "Pending": outcome.pending,
        "Excluded": outcome.excluded,
        "RebootStatus": outcome.reboot_status,
        "ErrorCode": outcome.error_code,
        "ErrorMessage": outcome.error_message[:_MAX_ERROR_MESSAGE],
        "Health": health,
        "Rollback": rollback,
        "RestorePoint": restore_point,
    }
