"""Resource Graph rows from what the ARM simulation knows: the shapes Azure Update Manager writes.

Shapes from "Access Azure Update Manager operations data using Azure Resource Graph" (log structure and
the properties of ``patchassessmentresults``, ``patchassessmentresults/softwarepatches``,
``patchinstallationresults`` and ``patchinstallationresults/softwarepatches``) and "Sample queries"
(MicrosoftDocs/azure-docs articles/update-manager/query-logs.md, sample-query-logs.md); the fixtures
``tests/fixtures/azure/resource-graph-*.json`` hold one of each and the tests compare these rows with them.

* assessment: ``<machine>/patchAssessmentResults/latest`` (name: the assessment's id) and one
  ``<machine>/patchAssessmentResults/latest/softwarePatches/<patch>`` row per available update;
* installation: ``<machine>/patchInstallationResults/<run>`` (name: the run's id) and one
  ``<machine>/patchInstallationResults/<run>/softwarePatches/<patch>`` row per update the run considered,
  with its ``installationState``.

Azure VMs and Arc-enabled servers alike: Resource Graph has the per-patch lists of both, where an Arc
server's own ``assessPatches`` result has counts only. :class:`ResourceGraphFeed` is what the simulation
calls when an operation finishes (see the module's ``__init__`` for the calls).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from local.arm.catalogue import Update, WindowsUpdate
from local.arm.fleet import Machine
from local.arm.simulation import STARTED_BY_PLATFORM as STARTED_BY_PLATFORM  # who started it: startedBy
from local.arm.simulation import (
    STARTED_BY_USER,
    InstallOutcome,
    MachineState,
    arc_counts,
    iso,
    patch_wire,
)
from local.resourcegraph.store import ResourceGraphStore

# The tenant every local row belongs to (Resource Graph fills tenantId; the stand-ins have one tenant).
LOCAL_TENANT_ID = "00000000-0000-4000-8000-0000000000fe"
_TYPES = {"azure-vm": "microsoft.compute/virtualmachines", "arc-server": "microsoft.hybridcompute/machines"}


def _base(machine: Machine, row_id: str, name: str, kind: str, tenant_id: str) -> dict[str, Any]:
    """The columns every row has; the ones the documentation leaves "blank for future use" stay empty."""
    return {
        "id": row_id,
        "name": name,
        "type": kind,
        "tenantId": tenant_id,
        "kind": "",
        "location": machine.location,
        "resourceGroup": machine.resource_group.lower(),
        "subscriptionId": machine.subscription.lower(),
        "managedBy": "",
        "sku": None,
        "plan": None,
        "tags": None,
        "identity": None,
        "zones": None,
        "extendedLocation": None,
    }


def _patch_properties(update: Update, modified: datetime) -> dict[str, Any]:
    wire = patch_wire(update)
    properties: dict[str, Any] = {
        "patchName": wire["name"],
        "classifications": wire["classifications"],
        "rebootRequired": update.requires_reboot,
        "rebootBehavior": update.reboot_behavior,
        # null when the package manager gives none (Linux), as the documentation says.
        "publishedDateTime": iso(update.published_date) if update.published_date else None,
        "lastModifiedDateTime": iso(modified),
    }
    if isinstance(update, WindowsUpdate):
        properties["kbId"] = wire["kbId"]
    else:
        properties["version"] = wire["version"]
    return properties


def assessment_rows(
    machine: Machine,
    available: Sequence[Update],
    *,
    assessment_id: str,
    started: datetime,
    finished: datetime,
    reboot_pending: bool,
    started_by: str = STARTED_BY_USER,
    tenant_id: str = LOCAL_TENANT_ID,
) -> list[dict[str, Any]]:
    """A finished assessment: the summary row and one row per available update."""
    kind = _TYPES[machine.kind]
    latest = f"{machine.resource_id}/patchAssessmentResults/latest"
    summary = _base(machine, latest, assessment_id, f"{kind}/patchassessmentresults", tenant_id)
    summary["properties"] = {
        # status is not in the documented table; public queries read it (properties.status).
        "status": "Succeeded",
        "rebootPending": reboot_pending,
        "patchServiceUsed": machine.os_profile.patch_service,
        "osType": machine.os_type,
        "startDateTime": iso(started),
        "lastModifiedDateTime": iso(finished),
        "startedBy": started_by,
        "availablePatchCountByClassification": arc_counts(list(available)),
    }
    rows = [summary]
    for update in available:
        patch = patch_wire(update)["patchId"]
        row_type = f"{kind}/patchassessmentresults/softwarepatches"
        row = _base(machine, f"{latest}/softwarePatches/{patch}", patch, row_type, tenant_id)
        row["properties"] = _patch_properties(update, finished)
        rows.append(row)
    return rows


def installation_rows(
    machine: Machine,
    states: Iterable[tuple[Update, str]],
    *,
    installation_id: str,
    started: datetime,
    finished: datetime,
    status: str,
    reboot_status: str,
    window_exceeded: bool,
    error: dict[str, Any] | None = None,
    started_by: str = STARTED_BY_USER,
    tenant_id: str = LOCAL_TENANT_ID,
) -> list[dict[str, Any]]:
    """A finished installation run: the summary row and one row per update with its installationState
    (Installed, Failed, Pending, NotSelected, Excluded)."""
    states = list(states)
    kind = _TYPES[machine.kind]
    run = f"{machine.resource_id}/patchInstallationResults/{installation_id}"
    counts = {state: sum(1 for _, s in states if s == state) for _, state in states}
    summary = _base(machine, run, installation_id, f"{kind}/patchinstallationresults", tenant_id)
    summary["properties"] = {
        "installationActivityId": installation_id,
        "maintenanceWindowExceeded": window_exceeded,
        "lastModifiedDateTime": iso(finished),
        "notSelectedPatchCount": counts.get("NotSelected", 0),
        "installedPatchCount": counts.get("Installed", 0),
        "excludedPatchCount": counts.get("Excluded", 0),
        "pendingPatchCount": counts.get("Pending", 0),
        "patchServiceUsed": machine.os_profile.patch_service,
        "failedPatchCount": counts.get("Failed", 0),
        "startDateTime": iso(started),
        "rebootStatus": reboot_status,
        "startedBy": started_by,
        "status": status,
        "osType": machine.os_type,
        **({"errorDetails": error} if error else {}),
    }
    rows = [summary]
    for update, state in states:
        patch = patch_wire(update)["patchId"]
        row_type = f"{kind}/patchinstallationresults/softwarepatches"
        row = _base(machine, f"{run}/softwarePatches/{patch}", patch, row_type, tenant_id)
        row["properties"] = _patch_properties(update, finished) | {"installationState": state}
        rows.append(row)
    return rows


def machine_row(machine: Machine, power_state: str = "", tenant_id: str = LOCAL_TENANT_ID) -> dict[str, Any]:
    """The machine in the ``resources`` table: a few properties of its ARM resource."""
    row = _base(machine, machine.resource_id, machine.name, _TYPES[machine.kind], tenant_id)
    row["tags"] = dict(machine.tags)
    state = power_state or machine.power_state
    if machine.kind == "azure-vm":
        row["properties"] = {
            "osProfile": {"computerName": machine.host_name},
            "storageProfile": {"osDisk": {"osType": machine.os_type}},
            # "properties.extended.instanceView.powerState.code" ("Understanding the Azure Resource
            # Graph query language", extended properties).
            "extended": {"instanceView": {"powerState": {"code": f"PowerState/{state}"}}},
        }
    else:
        # As the ARM stand-in's Arc resource has them: osName the family, osSku the product.
        row["properties"] = {
            "osName": machine.os_type.lower(),
            "osSku": machine.os_name,
            "osType": machine.os_type.lower(),
            "osVersion": machine.os_version,
            "status": "Connected" if state == "running" else "Disconnected",
        }
    return row


class ResourceGraphFeed:
    """What the ARM simulation tells Resource Graph: machines, finished assessments and installations."""

    def __init__(self, store: ResourceGraphStore, tenant_id: str = LOCAL_TENANT_ID) -> None:
        self.store = store
        self.tenant_id = tenant_id

    def machines_added(self, machines: Iterable[Machine]) -> None:
        self.store.put_resources(machine_row(m, tenant_id=self.tenant_id) for m in machines)

    def machine_changed(self, state: MachineState) -> None:
        """A machine stopped, deallocated or started: its resource row with the power state it has now."""
        self.store.put_resources([machine_row(state.spec, state.power_state, self.tenant_id)])

    def assessment_finished(
        self, state: MachineState, assessment_id: str, start: datetime, end: datetime,
        started_by: str = STARTED_BY_USER,
    ) -> None:
        """After the simulation recorded an assessment: the machine's latest assessment, replaced."""
        rows = assessment_rows(
            state.spec, state.available, assessment_id=assessment_id, started=start, finished=end,
            reboot_pending=state.reboot_pending, started_by=started_by, tenant_id=self.tenant_id,
        )  # fmt: skip
        self.store.put_assessment(state.spec.resource_id, rows)

    def installation_finished(
        self, state: MachineState, outcome: InstallOutcome, installation_id: str, start: datetime,
        end: datetime, started_by: str = STARTED_BY_USER,
    ) -> None:
        """After the simulation applied an install and rewrote the machine's installation summary (whose
        ``error`` becomes ``errorDetails``): the run's rows, kept beside the earlier runs."""
        error = (state.installation_summary or {}).get("error")
        rows = installation_rows(
            state.spec, outcome.states, installation_id=installation_id, started=start, finished=end,
            status=outcome.status, reboot_status=outcome.reboot_status,
            window_exceeded=outcome.window_exceeded, error=error, started_by=started_by,
            tenant_id=self.tenant_id,
        )  # fmt: skip
        self.store.put_installation(rows)
