"""The machine inventory in Table Storage.

Table ``Machines``: PartitionKey = subscription id (queries are per subscription or
fleet-wide, and a subscription's machines batch together), RowKey = a hash of the
resource id (resource ids contain '/', which keys may not).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableServiceClient

from shared.machines import Machine
from shared.storage import upsert_in_batches

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


class MachineInventory:
    def __init__(self, service: TableServiceClient) -> None:
        self._table = service.get_table_client(MACHINES_TABLE)

    def ensure(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self._table.create_table()

    def record(self, machines: Iterable[Machine], discovered_at: datetime) -> int:
        return upsert_in_batches(self._table, (machine_entity(m, discovered_at) for m in machines))

    def all(self) -> Iterator[dict[str, Any]]:
        yield from self._table.list_entities()
