"""The machine inventory in Table Storage.

Table ``Machines``: PartitionKey = subscription id (queries are per subscription or
fleet-wide, and a subscription's machines batch together), RowKey = a hash of the
resource id (resource ids contain '/', which keys may not).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient

from shared.azure.tables import decode_page_token, encode_page_token, ensure_table, upsert_in_batches
from shared.fleet.heartbeats import HEARTBEAT_FINGERPRINT, LAST_HEARTBEAT_AT, LastHeartbeat, last_heartbeat
from shared.fleet.machine_names import MachineEntry
from shared.fleet.machine_query import MAX_PAGE_SIZE
from shared.fleet.placement import ASSET_CATEGORY, RING, MachinePlacement, stored_placement
from shared.model.machines import Machine, MachineKind, OsType, PowerState, machine_key, parse_resource_id

MACHINES_TABLE = "Machines"


def machine_entity(machine: Machine, discovered_at: datetime) -> dict[str, Any]:
    verdict = machine.support
    return {
        "PartitionKey": machine.subscription_id,
        "RowKey": machine.key,
        "ResourceId": machine.resource_id,
        "Name": machine.name,
        "ComputerName": machine.computer_name,
        "Kind": machine.kind.value,
        "ResourceGroup": machine.resource_group,
        "Location": machine.location,
        "Environment": machine.environment.value,
        "OsType": machine.os_type.value,
        "OsName": machine.os_name,
        "OsVersion": machine.os_version,
        "PowerState": machine.power_state.value,
        "PatchMode": machine.patch_mode,
        "Support": verdict.support.value,
        "SupportReason": verdict.reason,
        "NotReachableReason": machine.reachable_reason,
        "Tags": json.dumps(machine.tags, sort_keys=True),
        "LastDiscovered": discovered_at,
    }


# What machine_of_entity reads: what placing a machine in its asset category needs (the image is not
# kept on the entity).
MACHINE_COLUMNS = (
    "PartitionKey", "RowKey", "ResourceId", "Name", "ComputerName", "Kind", "ResourceGroup", "Location",
    "OsType", "OsName", "OsVersion", "PowerState", "PatchMode", "Tags",
)


def machine_of_entity(entity: Mapping[str, Any]) -> Machine:
    """The machine a Machines entity (:func:`machine_entity`) records, as discovery last saw it."""
    return Machine(
        resource_id=str(entity["ResourceId"]),
        name=str(entity.get("Name") or ""),
        computer_name=str(entity.get("ComputerName") or ""),
        kind=MachineKind(entity.get("Kind") or MachineKind.AZURE_VM.value),
        subscription_id=str(entity["PartitionKey"]),
        resource_group=str(entity.get("ResourceGroup") or ""),
        location=str(entity.get("Location") or ""),
        os_type=OsType(entity["OsType"]),
        os_name=str(entity.get("OsName") or ""),
        os_version=str(entity.get("OsVersion") or ""),
        power_state=PowerState(entity.get("PowerState") or PowerState.UNKNOWN.value),
        patch_mode=str(entity.get("PatchMode") or ""),
        tags=json.loads(entity.get("Tags") or "{}"),
    )


class MachineInventory:
    def __init__(self, service: TableServiceClient) -> None:
        self._service = service
        self._table = service.get_table_client(MACHINES_TABLE)

    def ensure(self) -> None:
        ensure_table(self._service, MACHINES_TABLE)

    def record(
        self, machines: Iterable[Machine], discovered_at: datetime,
        extra: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> int:
        """Upsert (merge) each machine's entity, with ``extra`` properties by machine key (a heartbeat's)."""
        extra = extra or {}
        return upsert_in_batches(
            self._table, (machine_entity(m, discovered_at) | dict(extra.get(m.key, {})) for m in machines)
        )

    def last_heartbeats(self, subscription_id: str) -> dict[str, LastHeartbeat]:
        """The last heartbeat of each machine of a subscription, by machine key: one partition query
        (a page per 1,000 machines), not a read per machine."""
        entities = self._table.query_entities(
            "PartitionKey eq @p", parameters={"p": subscription_id},
            select=["RowKey", LAST_HEARTBEAT_AT, HEARTBEAT_FINGERPRINT],
        )
        found = ((str(e["RowKey"]), last_heartbeat(dict(e))) for e in entities)
        return {key: last for key, last in found if last is not None}

    def all(self) -> Iterator[dict[str, Any]]:
        yield from self._table.list_entities()

    def columns(self, names: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Every machine's entity, only the properties ``names`` (pages of MAX_PAGE_SIZE)."""
        for entity in self._table.list_entities(select=list(names), results_per_page=MAX_PAGE_SIZE):
            yield dict(entity)

    def placements(self, category: str | None = None) -> dict[str, MachinePlacement | None]:
        """Each machine's placement by machine key (None before any was written): one query of the table,
        its placement columns only, a page per MAX_PAGE_SIZE machines. With ``category``, only the
        machines placed in it (filtered by the table service: the pages are that category's)."""
        names = ["RowKey", ASSET_CATEGORY, RING]
        entities = (
            self._table.query_entities(f"{ASSET_CATEGORY} eq @c", parameters={"c": category}, select=names,
                                       results_per_page=MAX_PAGE_SIZE)
            if category is not None
            else self._table.list_entities(select=names, results_per_page=MAX_PAGE_SIZE)
        )
        return {str(e["RowKey"]): stored_placement(e) for e in entities}

    def merge(self, properties: Iterable[Mapping[str, Any]]) -> int:
        """Merge ``properties`` (each with PartitionKey and RowKey) into existing machines' entities."""
        return upsert_in_batches(self._table, properties)

    def get(self, resource_id: str) -> dict[str, Any] | None:
        ref = parse_resource_id(resource_id)
        try:
            return dict(self._table.get_entity(ref.subscription_id, machine_key(resource_id)))
        except ResourceNotFoundError:
            return None

    def page(self, equals: Mapping[str, str | bool], page_size: int, token: str | None) -> MachinePage:
        """One page of machines whose properties equal ``equals`` (filtered by the table service).

        The continuation is Table Storage's own, made opaque for the API's ``nextToken``.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page size must be 1 to {MAX_PAGE_SIZE}")
        names = {f"p{i}": value for i, value in enumerate(equals.values())}
        odata = " and ".join(f"{column} eq @p{i}" for i, column in enumerate(equals))
        pages = (
            self._table.query_entities(odata, parameters=names, results_per_page=page_size)
            if odata
            else self._table.list_entities(results_per_page=page_size)
        ).by_page(continuation_token=decode_page_token(token))
        entities = [dict(e) for e in next(pages, [])]
        return MachinePage(entities, encode_page_token(getattr(pages, "continuation_token", None)))


class InventoryDirectory:
    """The inventory as a :class:`~shared.fleet.machine_names.MachineDirectory`: a key is a point read in
    each managed subscription (the partitions discovery writes); a name reads the table once, keys and
    names only."""

    where = "the inventory"

    def __init__(self, service: TableServiceClient, subscriptions: Iterable[str]) -> None:
        self._table = service.get_table_client(MACHINES_TABLE)
        self._subscriptions = tuple(dict.fromkeys(s.lower() for s in subscriptions))

    def by_key(self, key: str) -> MachineEntry | None:
        for subscription in self._subscriptions:
            try:
                return _entry(dict(self._table.get_entity(subscription, key)))
            except ResourceNotFoundError:
                continue
        return None

    def entries(self) -> Iterator[MachineEntry]:
        names = ["PartitionKey", "RowKey", "ResourceId", "ComputerName"]
        for entity in self._table.list_entities(select=names, results_per_page=MAX_PAGE_SIZE):
            yield _entry(dict(entity))

    def complete(self, entry: MachineEntry) -> MachineEntry:
        return _entry(dict(self._table.get_entity(entry.row["PartitionKey"], entry.key)))


def _entry(entity: dict[str, Any]) -> MachineEntry:
    return MachineEntry(str(entity["RowKey"]), str(entity.get("ResourceId") or ""),
                        entity.get("ComputerName") or None, entity)


@dataclass(frozen=True)
class MachinePage:
    machines: list[dict[str, Any]]
    next_token: str | None
