"""Update deployment definitions in Table Storage, with the group membership frozen at creation.

Table ``Deployments``: one partition (a few hundred definitions at most, always listed together),
RowKey = the name in lower case, so names are unique case-insensitively and creation is an insert
that fails on conflict. Each entity keeps the definition's JSON, the machines its groups held when
it was created (``evaluateGroupsAt: "create"``), and a few columns for listing. A definition or a
membership too long for the entity (thousands of resource ids) is kept in rows of its own, in the
partition ``deployment|{name in lower case}`` (shared.azure.tables.store_text), written before the entity
that points at them and deleted after it no longer does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode

from shared.azure.tables import (
    delete_text_rows,
    ensure_table,
    read_text,
    store_text,
    table_service,
    write_text_rows,
)
from shared.deployments.definition import DeploymentDefinition, stored_definition, stored_members
from shared.settings import Settings

DEPLOYMENTS_TABLE = "Deployments"
PARTITION = "deployment"


class DeploymentExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"a deployment named {name!r} exists (names are unique ignoring case)")


class DeploymentNotFound(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"no deployment named {name!r}")


class EditConflict(Exception):
    """The deployment changed since the ETag the edit was based on."""


@dataclass(frozen=True)
class StoredDeployment:
    definition: DeploymentDefinition
    # Resource ids the groups held at creation; None when groups are evaluated at each run.
    frozen_members: tuple[str, ...] | None
    etag: str
    created: datetime
    modified: datetime

    def to_json(self) -> dict[str, Any]:
        body = self.definition.to_json()
        body["frozenGroupMembers"] = list(self.frozen_members) if self.frozen_members is not None else None
        body["created"] = self.created.isoformat()
        body["modified"] = self.modified.isoformat()
        return body


# --- storage ---------------------------------------------------------------------------------------


# The properties whose text may be spilled to rows of their own.
_TEXTS = ("Definition", "Members")


def _entity(stored_name: str, definition: DeploymentDefinition, members: Iterable[str] | None,
            created: datetime, modified: datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The entity, and the rows its long texts need written first."""
    entity: dict[str, Any] = {
        "PartitionKey": PARTITION,
        "RowKey": stored_name.lower(),
        "Name": definition.name,
        "OperatingSystem": definition.operating_system.value,
        "EvaluateGroupsAt": definition.targets.evaluate_groups_at,
        "MachineCount": len(definition.targets.machines),
        "GroupCount": len(definition.targets.groups),
        "Created": created,
        "Modified": modified,
        "HasFrozenMembers": members is not None,
    }
    partition = f"{PARTITION}|{stored_name.lower()}"
    rows: list[dict[str, Any]] = []
    texts = {"Definition": json.dumps(definition.to_json(), separators=(",", ":")),
             "Members": json.dumps(list(members or ()), separators=(",", ":"))}
    for prefix, text in texts.items():
        properties, spilled = store_text(prefix, text, partition, f"{prefix.lower()}|")
        entity.update(properties)
        rows += spilled
    return entity, rows


class DeploymentStore:
    def __init__(self, service: TableServiceClient) -> None:
        self._service = service
        self._table = service.get_table_client(DEPLOYMENTS_TABLE)

    def ensure(self) -> None:
        ensure_table(self._service, DEPLOYMENTS_TABLE)

    def create(self, definition: DeploymentDefinition, members: Iterable[str] | None,
               now: datetime) -> StoredDeployment:
        """Insert; a name taken in any letter case raises :class:`DeploymentExists`."""
        entity, rows = _entity(definition.name, definition, members, now, now)
        write_text_rows(self._table, rows)  # named by their text: a losing racer rewrites the same rows
        try:
            self._table.create_entity(entity)
        except ResourceExistsError:
            # Keep the rows the existing deployment points at (the same text has the same rows).
            self._forget_texts(entity, keep=dict(self._table.get_entity(PARTITION, definition.name.lower())))
            raise DeploymentExists(definition.name) from None
        return self.get(definition.name)

    def get(self, name: str) -> StoredDeployment:
        try:
            return self._stored(self._table.get_entity(PARTITION, name.lower()))
        except ResourceNotFoundError:
            raise DeploymentNotFound(name) from None

    def list(self) -> list[StoredDeployment]:
        entities = self._table.query_entities("PartitionKey eq @p", parameters={"p": PARTITION})
        return sorted((self._stored(e) for e in entities), key=lambda d: d.definition.name.lower())

    def _stored(self, entity: Any) -> StoredDeployment:
        data = dict(entity)
        definition = stored_definition(read_text(self._table, data, "Definition"))
        members = None
        if data.get("HasFrozenMembers"):
            members = stored_members(read_text(self._table, data, "Members"))
        etag = entity.metadata["etag"]
        return StoredDeployment(definition, members, etag, data["Created"], data["Modified"])

    def replace(self, current: StoredDeployment, definition: DeploymentDefinition,
                members: Iterable[str] | None, etag: str, now: datetime) -> StoredDeployment:
        """Replace ``current`` if it still has ``etag``; otherwise :class:`EditConflict`.

        The ETag is the caller's ``If-Match`` when given, else the one read just before: either
        way, an edit never overwrites a change it did not see.
        """
        entity, rows = _entity(current.definition.name, definition, members, current.created, now)
        write_text_rows(self._table, rows)
        try:
            before = self._table.get_entity(PARTITION, current.definition.name.lower())
            self._table.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except ResourceNotFoundError:
            raise DeploymentNotFound(current.definition.name) from None
        except HttpResponseError as error:
            if error.status_code == 412:
                name = current.definition.name
                raise EditConflict(f"deployment {name!r} changed since ETag {etag}") from None
            raise
        self._forget_texts(before, keep=entity)
        return self.get(definition.name)

    def delete(self, name: str) -> None:
        """Delete; an unknown name raises :class:`DeploymentNotFound` (the SDK's delete would not)."""
        try:
            entity = self._table.get_entity(PARTITION, name.lower())
        except ResourceNotFoundError:
            raise DeploymentNotFound(name) from None
        self._table.delete_entity(PARTITION, name.lower())
        self._forget_texts(entity, keep={})

    def _forget_texts(self, old: Any, keep: dict[str, Any]) -> None:
        """Delete the rows of ``old``'s spilled texts that ``keep`` does not point at too."""
        for prefix in _TEXTS:
            if old.get(f"{prefix}Key") != keep.get(f"{prefix}Key"):
                delete_text_rows(self._table, old, prefix)


def deployment_store(settings: Settings) -> DeploymentStore:
    store = DeploymentStore(table_service(settings))
    store.ensure()
    return store
