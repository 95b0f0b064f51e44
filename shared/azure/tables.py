"""Table Storage: the service client from settings, tables made sure of, batched upserts, and long text
split over properties.

In Azure the app reaches storage with its managed identity (shared-key access is off
on the account); the connection string is only for the local storage emulator.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
import threading
from collections import OrderedDict
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
# What a PartitionKey or RowKey may not hold, and its size (Table service data model: "/", "\\", "#",
# "?", the control characters U+0000-U+001F and U+007F-U+009F; at most 1 KiB).
_NOT_IN_KEYS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
MAX_KEY_CHARS = 512  # 1 KiB of UTF-16


class SharedTableService(TableServiceClient):
    """A service client whose :meth:`get_table_client` answers one client per table, each with a pipeline
    of its own, built once under a lock.

    azure-data-tables' own ``get_table_client`` builds a new Pipeline over the service's policy objects,
    and azure-core's Pipeline re-links those shared objects' ``next`` as it is built: a request another
    thread is sending through them meanwhile can reach a policy runner whose ``next`` is not set yet
    (``AttributeError: '_SansIOHTTPPolicyRunner' object has no attribute 'next'``, seen with activities
    running in threads in the 10,000-machine bench). Azure Functions runs a worker's activities in threads
    too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tables: dict[str, TableClient] = {}
        self._tables_lock = threading.Lock()

    def get_table_client(self, table_name: str, **kwargs: Any) -> TableClient:
        if kwargs:  # options for one caller: a client of its own, as the SDK gives
            return TableClient(self.url, table_name, credential=self.credential, **kwargs)
        with self._tables_lock:
            table = self._tables.get(table_name.lower())
            if table is None:
                table = TableClient(self.url, table_name, credential=self.credential,
                                    api_version=self.api_version)
                self._tables[table_name.lower()] = table
            return table


def is_table_key(value: str) -> bool:
    """Whether ``value`` can be a PartitionKey or RowKey: a lookup by anything else is refused by the
    service (Azurite answers 500), so a name that cannot be a key names nothing."""
    return 0 < len(value) <= MAX_KEY_CHARS and _NOT_IN_KEYS.search(value) is None


def encode_page_token(continuation: Any) -> str | None:
    """A Table query's continuation as the API hands it out (URL-safe base64 of its JSON); None at the end."""
    if not continuation:
        return None
    return base64.urlsafe_b64encode(json.dumps(continuation, sort_keys=True).encode()).decode()


def decode_page_token(token: str | None) -> Any:
    """The continuation :func:`encode_page_token` made (None for none); ValueError for anything else, which
    the API answers with a 400 naming ``nextToken``."""
    if not token:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error) as error:
        raise ValueError("nextToken is not a token this API issued") from error
    if not isinstance(decoded, dict) or not all(isinstance(k, str) and isinstance(v, str | None)
                                                for k, v in decoded.items()):
        raise ValueError("nextToken is not a token this API issued")
    return decoded


def table_service(settings: Settings, credential: TokenCredential | None = None) -> TableServiceClient:
    """The account's service client, one per process for the same connection string, or the same
    endpoint and credential (by default the app's, :func:`credential_for`); its table clients are kept
    too (:class:`SharedTableService`)."""
    connection = settings.storage_connection_string
    if connection:
        return shared_client(
            ("tables", connection), lambda: SharedTableService.from_connection_string(connection)
        )
    endpoint = settings.storage_table_endpoint
    assert endpoint  # guaranteed by load_settings
    signer = credential or credential_for(settings)
    return shared_client(
        ("tables", endpoint, signer), lambda: SharedTableService(endpoint=endpoint, credential=signer)
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


# --- text too long for its entity ------------------------------------------------------------------

# An entity holds at most 1 MiB, strings counted as UTF-16 (2 bytes a character), and a transaction at
# most 4 MiB (Azure Table Storage limits). Text up to INLINE_TEXT_CHARS (400 KB) stays in its entity,
# split over properties, so two such texts still fit beside the entity's other columns; longer text,
# such as the 10,000 resource ids of a large deployment (1.5 to 2.7 MB), goes to rows of its own of
# ROW_TEXT_CHARS characters each (about 600 KB).
INLINE_TEXT_CHARS = 200_000
ROW_TEXT_CHARS = 10 * PROPERTY_CHARS
# Spilled text is named by its digest, so the rows of a name never change: a process keeps the last few
# it read (a few MB each at most) instead of reading them again on every read of the owning entity.
_SPILLED_KEPT = 8
_spilled: OrderedDict[tuple[str, str, str], str] = OrderedDict()
_spilled_lock = threading.Lock()


def store_text(
    prefix: str, text: str, partition: str, row_prefix: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``text`` as properties of its owning entity, and the rows to write (:func:`write_text_rows`) before
    the owner.

    Short text is ``split_property(prefix, text)`` and no rows. Longer text goes to rows in
    ``partition`` keyed ``{row_prefix}{digest}|{n:04d}``, and the owner gets ``{prefix}Rows`` (how many),
    ``{prefix}Partition`` and ``{prefix}Key`` (where). Rows named by the text's digest are the same
    whoever writes them, so a retried or racing writer never changes text another owner points at.
    """
    if len(text) <= INLINE_TEXT_CHARS:
        return split_property(prefix, text), []
    key = f"{row_prefix}{hashlib.sha256(text.encode()).hexdigest()[:32]}|"
    rows = [
        {"PartitionKey": partition, "RowKey": f"{key}{n:04d}",
         **split_property("Text", text[start:start + ROW_TEXT_CHARS])}
        for n, start in enumerate(range(0, len(text), ROW_TEXT_CHARS))
    ]  # fmt: skip
    return {f"{prefix}Rows": len(rows), f"{prefix}Partition": partition, f"{prefix}Key": key}, rows


def write_text_rows(table: TableClient, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write :func:`store_text`'s rows, one request each (two rows may pass the 4 MiB of a transaction)."""
    for row in rows:
        table.upsert_entity(dict(row), mode=UpdateMode.REPLACE)


def read_text(table: TableClient, entity: Mapping[str, Any], prefix: str) -> str:
    """The text :func:`store_text` stored for ``entity`` under ``prefix``: inline, or from its rows (read
    once per process). Rows missing (the owner was written without them) raise LookupError."""
    if f"{prefix}Rows" not in entity:
        return join_property(entity, prefix)
    partition, key = str(entity[f"{prefix}Partition"]), str(entity[f"{prefix}Key"])
    where = (table.url, partition, key)
    with _spilled_lock:
        if where in _spilled:
            _spilled.move_to_end(where)
            return _spilled[where]
    rows = sorted(
        table.query_entities("PartitionKey eq @p and RowKey ge @lo and RowKey lt @hi",
                             parameters={"p": partition, "lo": key, "hi": key[:-1] + "}"}),
        key=lambda row: str(row["RowKey"]),
    )  # fmt: skip
    if len(rows) != int(entity[f"{prefix}Rows"]):
        raise LookupError(f"table {table.table_name}: {prefix} of {entity.get('RowKey')!r} has "
                          f"{len(rows)} of its {entity[f'{prefix}Rows']} rows under {partition}/{key}")
    text = "".join(join_property(row, "Text") for row in rows)
    with _spilled_lock:
        _spilled[where] = text
        while len(_spilled) > _SPILLED_KEPT:
            _spilled.popitem(last=False)
    return text


def delete_text_rows(table: TableClient, properties: Mapping[str, Any], prefix: str) -> None:
    """Delete the rows of text :func:`store_text` spilled (nothing for inline text); idempotent."""
    if f"{prefix}Rows" not in properties:
        return
    partition, key = str(properties[f"{prefix}Partition"]), str(properties[f"{prefix}Key"])
    for n in range(int(properties[f"{prefix}Rows"])):
        table.delete_entity(partition, f"{key}{n:04d}")
