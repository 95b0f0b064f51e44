"""What re-placing the fleet costs when an asset category is created, edited or deleted (Azurite).

Prints figures; asserts nothing. ``POST/PUT/DELETE /api/categories`` re-place every machine of the
Machines table synchronously (shared.governance.categories_table.place_fleet): one read of the
placement columns and a merge of the rows whose placement changed. This measures both cases: every
machine moves (the first category), and none does (an edit that moves nobody).

    .venv/bin/python -m bench.category_placement --machines 2000
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime

from local.azurite import start_azurite
from shared.azure.tables import table_service
from shared.fleet.machines_table import MachineInventory
from shared.governance.categories import validate_category
from shared.governance.categories_table import category_store, place_fleet
from shared.model.machines import Machine, MachineKind, OsType, PowerState
from shared.settings import load_settings

UNREACHABLE = "https://127.0.0.1:9"
ROLES = ("web", "db", "app")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=2000)
    parser.add_argument("--subscriptions", type=int, default=4)
    args = parser.parse_args()
    subscriptions = [str(uuid.uuid4()) for _ in range(args.subscriptions)]
    with start_azurite() as azurite:
        settings = load_settings({
            "DURABLE_TASK_HUB": "BenchHub", "AZURE_AUTH_MODE": "emulator",
            "TARGET_SUBSCRIPTION_IDS": ",".join(subscriptions),
            "STORAGE_CONNECTION_STRING": azurite.connection_string, "ARM_ENDPOINT": UNREACHABLE,
            "LOGS_INGESTION_ENDPOINT": UNREACHABLE, "LOGS_QUERY_ENDPOINT": UNREACHABLE + "/v1",
            "LOGS_DCR_IMMUTABLE_ID": "dcr-00000000000000000000000000000001",
            "LOG_ANALYTICS_WORKSPACE_ID": "00000000-0000-0000-0000-000000000001",
        })
        inventory = MachineInventory(table_service(settings))
        inventory.ensure()
        inventory.record([_machine(i, subscriptions[i % len(subscriptions)]) for i in range(args.machines)],
                         datetime.now(UTC))
        store = category_store(settings)
        for priority, role in enumerate(ROLES[:2]):
            store.create(validate_category({
                "name": role, "criticality": 2, "priority": priority, "membership": {"tags": {"role": role}},
                "rings": [{"name": "test", "membership": {"tags": {"ring": "test"}}}, {"name": "production"}],
            }), datetime.now(UTC))
        for case in ("every machine moves", "no machine moves"):
            started = time.perf_counter()
            report = place_fleet(settings)
            print(f"{case}: {report.machines} machines, {report.changed} rows written, "
                  f"{time.perf_counter() - started:.2f} s; {report.by_category}")


def _machine(index: int, subscription: str) -> Machine:
    name = f"vm{index:05d}"
    return Machine(
        f"/subscriptions/{subscription}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}",
        name, name, MachineKind.AZURE_VM, subscription, "rg", "westeurope", OsType.LINUX, "Ubuntu", "22.04",
        PowerState.RUNNING, "AutomaticByPlatform",
        {"role": ROLES[index % len(ROLES)], "ring": "test" if index % 10 == 0 else "production"},
    )


if __name__ == "__main__":
    main()
