"""Deployment groups: the machines a definition's filter groups and saved searches hold now.

Evaluated once at creation (``evaluateGroupsAt: "create"``, the membership is frozen with the
definition) or at each run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

from azure.core.credentials import TokenCredential

from shared.azure.arm import list_fleet
from shared.azure.log_query import LogQueryError, column_reader
from shared.deployments.definition import MAX_MACHINES, DefinitionError, DeploymentDefinition
from shared.model.machines import Machine, parse_resource_id
from shared.settings import Settings

# The saved-search query must return the machines in this column (as the legacy Update tables do).
RESOURCE_ID_COLUMN = "ResourceId"
# Saved searches look at machines that reported recently: the last day's heartbeats are enough.
SAVED_SEARCH_TIMESPAN = timedelta(days=1)


class GroupEvaluationError(Exception):
    """A group could not be evaluated (a query failed, a subscription could not be listed)."""


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
            f"at most {MAX_MACHINES:,} per deployment",
        )
    return found


def saved_search_runner(settings: Settings, credential: TokenCredential) -> Callable[[str], list[str]]:
    """Run a saved search against the workspace (the client opens only when one is run); its
    ``ResourceId`` column, or :class:`GroupEvaluationError` naming what went wrong."""
    read = column_reader(credential, settings.logs_query_endpoint, settings.log_analytics_workspace_id,
                         RESOURCE_ID_COLUMN, SAVED_SEARCH_TIMESPAN)

    def run(query: str) -> list[str]:
        try:
            return read(query)
        except LogQueryError as error:
            raise GroupEvaluationError(f"saved search: {error}") from error

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


def frozen_members(
    definition: DeploymentDefinition, settings: Settings, credential: TokenCredential
) -> tuple[str, ...] | None:
    """The group membership to store with ``definition``: evaluated now when it says "create",
    None when its groups are evaluated at each run (or it has none)."""
    if definition.targets.evaluate_groups_at != "create" or not definition.targets.groups:
        return None
    fleet = fleet_lister(credential, settings.arm_endpoint, settings.target_subscription_ids)
    query = saved_search_runner(settings, credential)
    return evaluate_groups(definition, fleet, query)
