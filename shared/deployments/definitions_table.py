"""Update deployment definitions in Table Storage, and the group membership frozen at creation.

Table ``Deployments``: one partition (a few hundred definitions at most, always listed together),
RowKey = the name in lower case, so names are unique case-insensitively and creation is an insert
that fails on conflict. Each entity keeps the definition's JSON, the machines its groups held when
it was created (``evaluateGroupsAt: "create"``), and a few columns for listing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode
from azure.monitor.query import LogsQueryClient

from shared.azure.arm import list_fleet
from shared.azure.tables import join_property, split_property
from shared.deployments.definition import MAX_MACHINES, DefinitionError, DeploymentDefinition
from shared.model.machines import Machine, parse_resource_id
from shared.settings import Settings

DEPLOYMENTS_TABLE = "Deployments"
PARTITION = "deployment"
# The saved-search query must return the machines in this column (as the legacy Update tables do).
RESOURCE_ID_COLUMN = "ResourceId"
# Saved searches look at machines that reported recently: the last day's heartbeats are enough.
SAVED_SEARCH_TIMESPAN = timedelta(days=1)


class DeploymentExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"a deployment named {name!r} exists (names are unique ignoring case)")


class DeploymentNotFound(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"no deployment named {name!r}")


class EditConflict(Exception):
    """The deployment changed since the ETag the edit was based on."""


class GroupEvaluationError(Exception):
    """A group could not be evaluated (a query failed, a subscription could not be listed)."""


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


# --- group evaluation ------------------------------------------------------------------------------


def evaluate_groups(
    definition: DeploymentDefinition,
    fleet: Callable[[], Sequence[Machine]],
    run_query: Callable[[str], Sequence[str]],
) -> tuple[str, ...]:
    """The machines the definition's groups hold now (explicit machines excluded), in a stable order.

    The fleet is listed once, and only if a filter group needs it. The total with the explicit
    machines is held to :data:`MAX_MACHINES`, so a group that grew too big is refused at creation.
    """
    os_type = definition.operating_system
    members: dict[str, None] = {}
    machines: Sequence[Machine] | None = None
    for index, group in enumerate(definition.targets.groups):
        if group.saved_search is not None:
            for resource_id in run_query(group.saved_search.query):
                try:
                    parse_resource_id(resource_id)
                except ValueError as error:
                    raise DefinitionError(f"targets.groups.{index}.savedSearch.query", str(error)) from None
                members.setdefault(resource_id, None)
        else:
            machines = fleet() if machines is None else machines
            for machine in group.scope().filter(machines):
                if machine.os_type is os_type:
                    members.setdefault(machine.resource_id, None)
    explicit = {m.lower() for m in definition.targets.machines}
    found = tuple(m for m in members if m.lower() not in explicit)
    if len(found) + len(explicit) > MAX_MACHINES:
        raise DefinitionError(
            "targets.groups",
            f"the groups hold {len(found)} machines besides the {len(explicit)} listed; "
            f"at most {MAX_MACHINES} per deployment (the Update Management limit)",
        )
    return found


def saved_search_runner(client: Any, workspace_id: str) -> Callable[[str], list[str]]:
    """Run a saved search through azure-monitor-query's ``LogsQueryClient``; its ``ResourceId`` column."""

    def run(query: str) -> list[str]:
        try:
            result = client.query_workspace(workspace_id, query, timespan=SAVED_SEARCH_TIMESPAN)
        except HttpResponseError as error:
            raise GroupEvaluationError(f"the saved search failed: {error.message}") from error
        tables = getattr(result, "tables", None)
        if not tables:
            raise GroupEvaluationError(f"the saved search returned no table (status {result.status})")
        table = tables[0]
        if RESOURCE_ID_COLUMN not in table.columns:
            raise GroupEvaluationError(
                f"the saved search must return a {RESOURCE_ID_COLUMN} column; it returned "
                + ", ".join(table.columns)
            )
        column = list(table.columns).index(RESOURCE_ID_COLUMN)
        return [str(row[column]) for row in table.rows if row[column]]

    return run


def fleet_lister(
    credential: TokenCredential, arm_endpoint: str, subscription_ids: Sequence[str]
) -> Callable[[], list[Machine]]:
    """List the fleet through ARM; a subscription that cannot be listed fails the evaluation,
    because a membership frozen from part of the fleet would be silently wrong."""

    def listing() -> list[Machine]:
        machines, failed = list_fleet(credential, arm_endpoint, subscription_ids)
        if failed:
            raise GroupEvaluationError(f"could not list the machines of subscriptions {', '.join(failed)}")
        return machines

    return listing


# --- storage ---------------------------------------------------------------------------------------


def _entity(stored_name: str, definition: DeploymentDefinition, members: Iterable[str] | None,
            created: datetime, modified: datetime) -> dict[str, Any]:
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
    entity.update(split_property("Definition", json.dumps(definition.to_json(), separators=(",", ":"))))
    entity.update(split_property("Members", json.dumps(list(members or ()), separators=(",", ":"))))
    return entity


def _stored(entity: Any) -> StoredDeployment:
    data = dict(entity)
    definition = DeploymentDefinition.model_validate(json.loads(join_property(data, "Definition")))
    members = tuple(json.loads(join_property(data, "Members"))) if data.get("HasFrozenMembers") else None
    return StoredDeployment(definition, members, entity.metadata["etag"], data["Created"], data["Modified"])


class DeploymentStore:
    def __init__(self, service: TableServiceClient) -> None:
        self._table = service.get_table_client(DEPLOYMENTS_TABLE)

    def ensure(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self._table.create_table()

    def create(self, definition: DeploymentDefinition, members: Iterable[str] | None,
               now: datetime) -> StoredDeployment:
        """Insert; a name taken in any letter case raises :class:`DeploymentExists`."""
        try:
            self._table.create_entity(_entity(definition.name, definition, members, now, now))
        except ResourceExistsError:
            raise DeploymentExists(definition.name) from None
        return self.get(definition.name)

    def get(self, name: str) -> StoredDeployment:
        try:
            return _stored(self._table.get_entity(PARTITION, name.lower()))
        except ResourceNotFoundError:
            raise DeploymentNotFound(name) from None

    def list(self) -> list[StoredDeployment]:
        entities = self._table.query_entities("PartitionKey eq @p", parameters={"p": PARTITION})
        return sorted((_stored(e) for e in entities), key=lambda d: d.definition.name.lower())

    def replace(self, current: StoredDeployment, definition: DeploymentDefinition,
                members: Iterable[str] | None, etag: str, now: datetime) -> StoredDeployment:
        """Replace ``current`` if it still has ``etag``; otherwise :class:`EditConflict`.

        The ETag is the caller's ``If-Match`` when given, else the one read just before: either
        way, an edit never overwrites a change it did not see.
        """
        entity = _entity(current.definition.name, definition, members, current.created, now)
        try:
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
        return self.get(definition.name)

    def delete(self, name: str) -> None:
        """Delete; an unknown name raises :class:`DeploymentNotFound` (the SDK's delete would not)."""
        self.get(name)
        self._table.delete_entity(PARTITION, name.lower())


def frozen_members(
    definition: DeploymentDefinition, settings: Settings, credential: TokenCredential
) -> tuple[str, ...] | None:
    """The group membership to store with ``definition``: evaluated now when it says "create",
    None when its groups are evaluated at each run (or it has none)."""
    if definition.targets.evaluate_groups_at != "create" or not definition.targets.groups:
        return None
    fleet = fleet_lister(credential, settings.arm_endpoint, settings.target_subscription_ids)
    query = _lazy_query(settings, credential)
    return evaluate_groups(definition, fleet, query)


def _lazy_query(settings: Settings, credential: TokenCredential) -> Callable[[str], list[str]]:
    """A saved-search runner that opens its LogsQueryClient only when a saved search is run."""

    def run(query: str) -> list[str]:
        with LogsQueryClient(credential, endpoint=settings.logs_query_endpoint) as client:
            return saved_search_runner(client, settings.log_analytics_workspace_id)(query)

    return run
