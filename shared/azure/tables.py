"""Table Storage: the service client from settings, tables made sure of, batched upserts, and long text
split over properties.

In Azure the app reaches storage with its managed identity (shared-key access is off
on the account); the connection string is only for the local storage emulator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError, UpdateMode

from shared.azure.clients import once, shared_client
from shared.azure.credentials import credential_for
from shared.settings import Settings

# A Table string property holds at most 64 KiB (32K UTF-16 characters); longer text is split over
# numbered properties (1,000 resource ids of about 150 characters need five).
PROPERTY_CHARS = 30_000
# A table transaction holds at most 100 entities, all with one PartitionKey
# (Azure Table Storage limits; Azurite does not enforce them, so we do).
MAX_TRANSACTION_ENTITIES = 100


def table_service(settings: Settings, credential: TokenCredential | None = None) -> TableServiceClient:
    """The account's service client, one per process for the same connection string, or the same
    endpoint and credential (by default the app's, :func:`credential_for`)."""
    connection = settings.storage_connection_string
    if connection:
        return shared_client(
            ("tables", connection), lambda: TableServiceClient.from_connection_string(connection)
        )
    endpoint = settings.storage_table_endpoint
    assert endpoint  # guaranteed by load_settings
    signer = credential or credential_for(settings)
    return shared_client(
        ("tables", endpoint, signer), lambda: TableServiceClient(endpoint=endpoint, credential=signer)
    )


def ensure_table(service: TableServiceClient, name: str) -> TableClient:
    """The client of table ``name``, created first if it is missing. The service is asked once per
    process and account (table names are case-insensitive); every store and activity calls this."""
    table = service.get_table_client(name)
    once(("table", service.url, name.lower()), lambda: _create_table(table))
    return table


def _create_table(table: TableClient) -> None:
    with contextlib.suppress(ResourceExistsError):
        table.create_table()


def upsert_in_batches(
    table: TableClient, entities: Iterable[Mapping[str, Any]], mode: UpdateMode = UpdateMode.MERGE
) -> int:
    """Upsert entities in transactions of at most 100 per partition; returns how many were written.

    MERGE keeps properties other writers set on the same entity; REPLACE is for entities
    that must lose a property (the SDK leaves ``None`` values out, so a merge cannot drop one).
    Each transaction is atomic; a failure raises naming the partition, and the
    entities already committed stay (upserts are idempotent, so a retry is safe).
    """
    by_partition: dict[str, list[Mapping[str, Any]]] = {}
    for entity in entities:
        by_partition.setdefault(str(entity["PartitionKey"]), []).append(entity)
    written = 0
    for partition, items in by_partition.items():
        iterator = iter(items)
        while chunk := list(islice(iterator, MAX_TRANSACTION_ENTITIES)):
            try:
                table.submit_transaction([("upsert", dict(e), {"mode": mode}) for e in chunk])
            except TableTransactionError as error:
                raise RuntimeError(
                    f"table {table.table_name}: transaction for partition {partition!r} failed: {error}"
                ) from error
            written += len(chunk)
    return written


def split_property(prefix: str, text: str) -> dict[str, Any]:
    """``text`` as properties ``{prefix}0``, ``{prefix}1``, ... and ``{prefix}Parts`` (see PROPERTY_CHARS)."""
    parts = [text[i:i + PROPERTY_CHARS] for i in range(0, len(text), PROPERTY_CHARS)] or [""]
    entity: dict[str, Any] = {f"{prefix}{n}": part for n, part in enumerate(parts)}
    entity[f"{prefix}Parts"] = len(parts)
    return entity


def join_property(entity: Mapping[str, Any], prefix: str) -> str:
    """The text :func:`split_property` stored under ``prefix``."""
    return "".join(str(entity[f"{prefix}{n}"]) for n in range(int(entity[f"{prefix}Parts"])))
