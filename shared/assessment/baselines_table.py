"""The light check's I/O: the ``LightCheckBaseline`` store, the fleet's listing (ARM), what changed on
the machines (Resource Graph), and the activities' reads and writes.

The machines a check chooses are stored as its assessment run's scope (``AssessmentTargets``,
:func:`shared.assessment.run.store_scope`) with the install each was seen with, so neither the
orchestration's messages nor its history grow with them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient

from shared.assessment.light_check import (
    ACTIVITY_LOOKBACK,
    NO_ACTIVITY,
    AssessmentRecord,
    Baseline,
    BaselineInput,
    ChangedMachines,
    FindChangedInput,
    Observed,
    PatchActivity,
    Reason,
    select,
)
from shared.assessment.run import store_scope, stored_scope
from shared.azure.arm import list_fleet
from shared.azure.credentials import credential_for
from shared.azure.resource_graph import (
    MachinePatchActivity,
    ResourceGraph,
    ResourceGraphError,
    fleet_patch_activity,
    resource_graph,
)
from shared.azure.tables import ensure_table, table_service, upsert_in_batches
from shared.fleet.machines_table import MACHINES_TABLE
from shared.model.machines import machine_key, parse_resource_id
from shared.settings import Settings

logger = logging.getLogger(__name__)

BASELINE_TABLE = "LightCheckBaseline"


def find_changed(settings: Settings, request: FindChangedInput) -> ChangedMachines:
    """List the fleet, ask Resource Graph what changed on it, decide, store the machines to reassess as
    the scope of run ``request.run_id``, and the baselines of machines seen assessed for the first time."""
    service = table_service(settings)
    store = BaselineStore(service)
    store.ensure()
    credential = credential_for(settings)
    machines, failed = list_fleet(credential, settings.arm_endpoint, request.subscription_ids)
    subscriptions = sorted({m.subscription_id for m in machines})
    baselines: dict[str, Baseline] = {}
    records: dict[str, AssessmentRecord] = {}
    for subscription_id in subscriptions:
        baselines |= store.read(subscription_id)
        records |= assessment_records(service, subscription_id)
    activity: dict[str, PatchActivity] | None = {}
    activity_error = ""
    if subscriptions:
        graph = resource_graph(credential, settings.resource_graph_endpoint)
        try:
            activity = patch_activity(graph, subscriptions, request.at - ACTIVITY_LOOKBACK)
        except ResourceGraphError as error:  # the listing's rules still apply: new and started machines
            activity, activity_error = None, str(error)[:500]
            logger.warning("light check %s: Resource Graph not read: %s", request.check_id, error)
    chosen, adopt, changed = select(machines, baselines, records, activity)
    store_scope(settings, request.run_id, (_scope_row(o) for o in chosen))
    store.write((m.resource_id, *(activity or {}).get(m.key, NO_ACTIVITY).install_seen) for m in adopt)
    if changed > len(chosen):
        logger.warning(
            "light check %s: %d machines changed, reassessing the first %d (MAX_REASSESS_PER_CHECK)",
            request.check_id,
            changed,
            len(chosen),
        )
    return ChangedMachines.of(
        chosen, listed=len(machines), changed=changed, adopted=len(adopt), subscriptions_failed=failed,
        activity_error=activity_error,
    )  # fmt: skip


def patch_activity(
    graph: ResourceGraph, subscription_ids: Sequence[str], since: datetime
) -> dict[str, PatchActivity]:
    """Each machine's last installation and last assessment changed after ``since``, VMs and Arc servers
    alike, by machine key: two queries per 100 subscriptions (resource_graph.fleet_patch_activity)."""
    return {
        machine_key(found.machine_id): _patch_activity(found)
        for found in fleet_patch_activity(graph, subscription_ids, since).values()
    }


def _patch_activity(found: MachinePatchActivity) -> PatchActivity:
    installation, assessment = found.installation, found.assessment
    return PatchActivity(
        install_id=installation.installation_id if installation else "",
        install_at=installation.at if installation else None,
        install_status=installation.status if installation else "",
        # No start, no comparison: its end could be the product's own assessment, seen late.
        assessment_started_at=assessment.started_at if assessment else None,
        assessment_status=assessment.status if assessment else "",
    )


def _scope_row(observed: Observed) -> dict[str, Any]:
    return {
        "ResourceId": observed.resource_id,
        "Reason": observed.reason.value,
        "InstallId": observed.install_id,
        "InstallAt": observed.install_at,
    }


def _observed(row: Mapping[str, Any]) -> Observed:
    return Observed(
        resource_id=str(row["ResourceId"]),
        reason=Reason(str(row["Reason"])),
        install_id=str(row.get("InstallId") or ""),
        install_at=str(row.get("InstallAt") or ""),
    )


def chosen_machines(settings: Settings, run_id: str) -> list[Observed]:
    """The machines a check stored as the scope of its assessment run ``run_id``."""
    return [_observed(row) for row in stored_scope(settings, run_id)]


def record_baseline(settings: Settings, request: BaselineInput) -> int:
    """Store the install each machine was seen with, for the chosen machines ``request.run_id`` assessed.

    A machine whose assessment failed keeps its old baseline (or none) and is chosen again."""
    service = table_service(settings)
    store = BaselineStore(service)
    store.ensure()
    machines = service.get_table_client(MACHINES_TABLE)
    chosen = chosen_machines(settings, request.run_id)
    assessed = [m for m in chosen if _last_run(machines, m.resource_id) == request.run_id]
    return store.write((m.resource_id, m.install_id, m.install_at) for m in assessed)


def _last_run(machines: TableClient, resource_id: str) -> str:
    ref = parse_resource_id(resource_id)
    try:
        entity = machines.get_entity(
            ref.subscription_id, machine_key(resource_id), select=["LastAssessmentRun"]
        )
    except ResourceNotFoundError:
        return ""
    return str(entity.get("LastAssessmentRun") or "")


def assessment_records(service: TableServiceClient, subscription_id: str) -> dict[str, AssessmentRecord]:
    """The assessment columns of a subscription's ``Machines`` rows, by machine key (one query)."""
    table = service.get_table_client(MACHINES_TABLE)
    try:
        entities = list(
            table.query_entities(
                "PartitionKey eq @pk",
                parameters={"pk": subscription_id},
                select=["RowKey", "LastAssessed", "Readiness", "LastErrorAt"],
            )
        )
    except ResourceNotFoundError:  # nothing discovered or assessed yet
        return {}
    return {str(e["RowKey"]): _record(e) for e in entities}


def _record(entity: Mapping[str, Any]) -> AssessmentRecord:
    last, failed = entity.get("LastAssessed"), entity.get("LastErrorAt")
    return AssessmentRecord(
        last_assessed=last if isinstance(last, datetime) else None,
        readiness=str(entity.get("Readiness") or ""),
        failed_at=failed if isinstance(failed, datetime) else None,
    )


class BaselineStore:
    """Table ``LightCheckBaseline``: PartitionKey subscription id, RowKey machine key (as ``Machines``),
    the installation activity id and last-modified time seen. It is written only for machines whose
    light-check assessment succeeded, so a failed one is picked up again by the next check."""

    def __init__(self, service: TableServiceClient) -> None:
        self._service = service
        self._table = service.get_table_client(BASELINE_TABLE)

    def ensure(self) -> None:
        ensure_table(self._service, BASELINE_TABLE)

    def read(self, subscription_id: str) -> dict[str, Baseline]:
        entities = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": subscription_id})
        return {
            str(e["RowKey"]): Baseline(str(e.get("InstallId") or ""), str(e.get("InstallAt") or ""))
            for e in entities
        }

    def write(self, seen: Iterable[tuple[str, str, str]]) -> int:
        """Upsert (resource id, installation activity id, last-modified time) rows; idempotent."""
        return upsert_in_batches(self._table, _baseline_entities(seen))


def _baseline_entities(seen: Iterable[tuple[str, str, str]]) -> Iterator[dict[str, Any]]:
    for resource_id, install_id, install_at in seen:
        yield {
            "PartitionKey": parse_resource_id(resource_id).subscription_id,
            "RowKey": machine_key(resource_id),
            "ResourceId": resource_id,
            "InstallId": install_id,
            "InstallAt": install_at,
        }
