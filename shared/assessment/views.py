"""Read models of the inventory for the API: a machine in detail, and the fleet's missing updates.

Each view reads the table partitions laid out for it (see :mod:`shared.assessment.updates_table`)
and returns plain dicts with the API's field names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from azure.data.tables import TableServiceClient

from shared.assessment.records import UpdateState
from shared.assessment.updates_table import UpdateInventory
from shared.fleet.machines_table import MACHINES_TABLE, MachineInventory
from shared.model.assessment_outcome import Compliance
from shared.model.classification import Classification

# A machine's detail shows its most recent assessments; older ones stay in the table.
HISTORY_SHOWN = 30
_CLASSIFICATION_ORDER = {c.value: i for i, c in enumerate(Classification)}


def compliance_of(entity: dict[str, Any]) -> str | None:
    """An entity's ``Compliance`` (Compliant | NonCompliant | Unknown); None before its first assessment.
    Entities written before the property existed answer by their ``Compliant`` boolean."""
    stored = entity.get("Compliance")
    if stored:
        return str(stored)
    compliant = entity.get("Compliant")
    if compliant is None:
        return None
    return (Compliance.COMPLIANT if compliant else Compliance.NON_COMPLIANT).value


class ViewError(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


def machine_detail(
    service: TableServiceClient, machine_key: str, now: datetime, compliant_on: date | None = None,
    machine: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The machine, what it misses now (with the age of each gap) and its recent assessments.
    ``machine`` is its Machines entity when the caller has read it (shared.fleet.machine_names)."""
    if machine is None:
        machines = service.get_table_client(MACHINES_TABLE)
        found = list(machines.query_entities("RowKey eq @k", parameters={"k": machine_key}))
        if not found:
            return None
        machine = found[0]
    entity = dict(machine)
    updates = UpdateInventory(service)
    needed = UpdateState.NEEDED.value
    # An open gap is still missing as of the machine's last assessment (a scan rewrites only what changed).
    last_assessed = entity.get("LastAssessed")
    missing = [_gap(g, now, last_assessed) for g in updates.machine_updates(machine_key)
               if g.get("State") == needed]
    missing.sort(key=lambda g: (_CLASSIFICATION_ORDER.get(g["classification"], 99), -g["ageDays"]))
    recent = zip(range(HISTORY_SHOWN), updates.history(machine_key), strict=False)
    history = [_assessment(h) for _, h in recent]
    detail: dict[str, Any] = {
        "id": machine_key,
        "resourceId": entity.get("ResourceId"),
        "computerName": entity.get("ComputerName"),
        "osType": entity.get("OsType"),
        "osName": entity.get("OsName"),
        "osVersion": entity.get("OsVersion"),
        "environment": entity.get("Environment"),
        "tags": json.loads(entity.get("Tags") or "{}"),
        "compliant": entity.get("Compliant"),
        "compliance": compliance_of(entity),
        "readiness": entity.get("Readiness"),
        "lastAssessed": entity.get("LastAssessed"),
        "lastError": entity.get("LastError") or None,
        "lastErrorHint": entity.get("LastErrorHint") or None,
        "rebootPending": entity.get("RebootPending"),
        "missingUpdates": missing,
        "assessments": history,
    }
    if compliant_on is not None:
        detail["compliantOn"] = {"day": compliant_on.isoformat(),
                                 "compliant": updates.compliance_on(machine_key, compliant_on)}
    return detail


def missing_updates(
    service: TableServiceClient, os_type: str | None = None, classification: str | None = None
) -> list[dict[str, Any]]:
    """Every update at least one machine misses, most urgent and most widespread first."""
    if classification is not None and classification not in _CLASSIFICATION_ORDER:
        raise ViewError("classification", f"must be one of {', '.join(_CLASSIFICATION_ORDER)}")
    rows = [
        _catalogue_row(e)
        for e in UpdateInventory(service).catalogue()
        if (e.get("MachinesNeeding") or 0) > 0
        and (os_type is None or e.get("OsType", "").lower() == os_type.lower())
        and (classification is None or e.get("Classification") == classification)
    ]
    rows.sort(key=lambda r: (_CLASSIFICATION_ORDER.get(r["classification"], 99), -r["machinesNeeding"]))
    return rows


def machines_needing(service: TableServiceClient, os_type: str, update_key: str, *, unplaced: str,
                     category: str | None = None) -> list[dict[str, Any]]:
    """The machines that miss one update, each with its asset category and ring (``unplaced`` names the
    category of a machine no category placed); with ``category``, only that category's machines.

    Two queries whatever the number of machines: the update's partition of the reverse index, and the
    Machines table's placement columns (a page per 1,000 machines of the fleet, or of the category when
    one is asked for and is not ``unplaced``), joined here; never a read per machine."""
    needing = list(UpdateInventory(service).machines_needing(os_type, update_key))
    if not needing:
        return []
    filtered = category is not None and category != unplaced
    placements = MachineInventory(service).placements(category if filtered else None)
    machines = []
    for entity in needing:
        key = str(entity["RowKey"])
        placed, ring = placements.get(key) or (unplaced, None)
        if category is None or placed == category:
            machines.append({"id": key, "resourceId": entity.get("ResourceId"),
                             "computerName": entity.get("Computer"), "category": placed, "ring": ring})
    return sorted(machines, key=lambda m: str(m["computerName"]).lower())


def _gap(entity: dict[str, Any], now: datetime, last_assessed: Any) -> dict[str, Any]:
    first = entity.get("FirstSeenMissing")
    return {
        "update": entity["RowKey"],
        "title": entity.get("Title"),
        "kbId": entity.get("KBID") or None,
        "package": entity.get("PackageName") or None,
        "version": entity.get("PackageVersion") or None,
        "classification": entity.get("Classification"),
        "optional": entity.get("Optional"),
        "rebootBehavior": entity.get("RebootBehavior"),
        "publishedDate": entity.get("PublishedDate"),
        "firstSeenMissing": first,
        "lastSeenMissing": last_assessed or entity.get("LastSeenMissing"),
        "ageDays": (now - first).days if isinstance(first, datetime) else 0,
        "moreInfo": entity.get("MoreInfoUrl") or None,
    }


def _assessment(entity: dict[str, Any]) -> dict[str, Any]:
    return {
        "assessedAt": entity.get("AssessedAt"),
        "runId": entity.get("RunId"),
        "compliant": entity.get("Compliant"),
        "compliance": compliance_of(entity),
        "missingTotal": entity.get("MissingTotal"),
        "rebootPending": entity.get("RebootPending"),
    }


def _catalogue_row(entity: dict[str, Any]) -> dict[str, Any]:
    return {
        "update": entity["RowKey"],
        "osType": entity.get("OsType"),
        "title": entity.get("Title"),
        "kbId": entity.get("KBID") or None,
        "package": entity.get("PackageName") or None,
        "classification": entity.get("Classification"),
        "optional": entity.get("Optional"),
        "machinesNeeding": entity.get("MachinesNeeding") or 0,
        "publishedDate": entity.get("PublishedDate"),
        "moreInfo": entity.get("MoreInfoUrl") or None,
        "machines": f"/api/updates/{entity.get('OsType')}/{entity['RowKey']}/machines",
    }

