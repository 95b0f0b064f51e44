"""Asset categories in Table Storage, their saved searches' last members, and the fleet's placement.

Table ``AssetCategories``:

- partition ``category``, RowKey = the name in lower case (names unique ignoring case; creation is an
  insert that fails on conflict): the category's JSON and a few columns for listing. A category too long
  for its entity (thousands of machine ids) keeps its JSON in rows of partition ``category|<name>``
  (shared.azure.tables.store_text), as deployments do;
- partition ``search``, RowKey = :func:`~shared.governance.categories.membership_key`: the resource ids
  a category's (or ring's) saved search last returned, the query they answer and when. They are what
  placement reads: a discovery pass runs each saved search once (:func:`refresh_searches`), a category
  created or edited runs its own; a search that fails keeps its last members (and says why), so one
  failing query never moves machines out of their category.

Placement (``AssetCategory`` and ``Ring`` on each Machines entity, shared.fleet.placement) is written by
discovery through :func:`fleet_placer`, and for the whole fleet by :func:`place_fleet` when a category is
created, edited or deleted: one read of the Machines table (the placement columns only) and a merge of
the rows whose placement changed, in transactions of 100 per subscription.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode

from shared.azure.log_query import LogQueryError, column_reader
from shared.azure.tables import (
    delete_text_rows,
    ensure_table,
    is_table_key,
    read_text,
    store_text,
    table_service,
    write_text_rows,
)
from shared.fleet.machines_table import MACHINE_COLUMNS, MachineInventory, machine_of_entity
from shared.fleet.placement import ASSET_CATEGORY, RING, MachinePlacement, Placer, stored_placement
from shared.governance.categories import (
    MAX_CATEGORIES,
    AssetCategory,
    SearchUnavailable,
    categorise,
    saved_searches,
    stored_category,
)
from shared.model.machines import Machine
from shared.settings import Settings

CATEGORIES_TABLE = "AssetCategories"
PARTITION = "category"
SEARCH_PARTITION = "search"
# As deployment groups' saved searches (shared.deployments.groups): the query returns the machines in a
# ResourceId column (as the legacy Update tables do) and looks at the last day of records.
RESOURCE_ID_COLUMN = "ResourceId"
SAVED_SEARCH_TIMESPAN = timedelta(days=1)
# The text of a failed search's error kept on its row: enough to read the reason, far below a property.
MAX_ERROR_CHARS = 2000

log = logging.getLogger(__name__)


class CategoryExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"a category named {name!r} exists (names are unique ignoring case)")


class CategoryNotFound(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"no category named {name!r}")


class CategoryLimit(Exception):
    def __init__(self) -> None:
        super().__init__(f"at most {MAX_CATEGORIES} categories; delete one or widen an existing one")


class EditConflict(Exception):
    """The category changed since the ETag the edit (or delete) was based on."""


@dataclass(frozen=True)
class StoredCategory:
    category: AssetCategory
    etag: str
    created: datetime
    modified: datetime

    def to_json(self) -> dict[str, Any]:
        return self.category.to_json() | {"created": self.created.isoformat(),
                                          "modified": self.modified.isoformat()}


def _entity(category: AssetCategory, created: datetime,
            modified: datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The entity, and the rows its long JSON needs written first."""
    entity: dict[str, Any] = {
        "PartitionKey": PARTITION,
        "RowKey": category.name.lower(),
        "Name": category.name,
        "Priority": category.priority,
        "PatchOrder": category.patch_order,
        "Criticality": category.criticality,
        "RequiresApproval": category.requires_approval,
        "Created": created,
        "Modified": modified,
    }
    text = json.dumps(category.to_json(), separators=(",", ":"))
    properties, rows = store_text("Definition", text, f"{PARTITION}|{category.name.lower()}", "definition|")
    return entity | properties, rows


class CategoryStore:
    def __init__(self, service: TableServiceClient) -> None:
        self._service = service
        self._table = service.get_table_client(CATEGORIES_TABLE)

    def ensure(self) -> None:
        ensure_table(self._service, CATEGORIES_TABLE)

    # --- categories ----------------------------------------------------------------------------------

    def create(self, category: AssetCategory, now: datetime) -> StoredCategory:
        """Insert; a name taken in any letter case raises :class:`CategoryExists`, the
        :data:`MAX_CATEGORIES`-th one :class:`CategoryLimit`."""
        if sum(1 for _ in self._entities(select=["RowKey"])) >= MAX_CATEGORIES:
            raise CategoryLimit()
        entity, rows = _entity(category, now, now)
        write_text_rows(self._table, rows)  # named by their text: a losing racer rewrites the same rows
        try:
            self._table.create_entity(entity)
        except ResourceExistsError:
            raise CategoryExists(category.name) from None
        return self.get(category.name)

    def get(self, name: str) -> StoredCategory:
        if not is_table_key(name):
            raise CategoryNotFound(name)
        try:
            return self._stored(self._table.get_entity(PARTITION, name.lower()))
        except ResourceNotFoundError:
            raise CategoryNotFound(name) from None

    def list(self) -> list[StoredCategory]:
        """Every category, in the order membership is decided (priority, then name)."""
        stored = [self._stored(e) for e in self._entities()]
        return sorted(stored, key=lambda s: (s.category.priority, s.category.name.lower()))

    def categories(self) -> Sequence[AssetCategory]:
        """Every category, in the order membership is decided."""
        return tuple(s.category for s in self.list())

    def _entities(self, select: Sequence[str] | None = None) -> Iterable[Any]:
        return self._table.query_entities("PartitionKey eq @p", parameters={"p": PARTITION},
                                          select=None if select is None else [*select])

    def _stored(self, entity: Any) -> StoredCategory:
        data = dict(entity)
        category = stored_category(read_text(self._table, data, "Definition"))
        return StoredCategory(category, entity.metadata["etag"], data["Created"], data["Modified"])

    def replace(self, current: StoredCategory, category: AssetCategory, etag: str,
                now: datetime) -> StoredCategory:
        """Replace ``current`` if it still has ``etag`` (the caller's If-Match, else the one just read);
        otherwise :class:`EditConflict`."""
        entity, rows = _entity(category, current.created, now)
        write_text_rows(self._table, rows)
        try:
            before = self._table.get_entity(PARTITION, category.name.lower())
            self._table.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except ResourceNotFoundError:
            raise CategoryNotFound(current.category.name) from None
        except HttpResponseError as error:
            if error.status_code == 412:
                raise EditConflict(f"category {current.category.name!r} changed since ETag {etag}") from None
            raise
        self._forget_text(before, keep=entity)
        return self.get(category.name)

    def delete(self, name: str, etag: str | None = None) -> AssetCategory:
        """Delete (if it still has ``etag`` when given); :class:`CategoryNotFound` for an unknown name.
        Its saved searches' members go with it."""
        try:
            entity = self._table.get_entity(PARTITION, name.lower())
        except ResourceNotFoundError:
            raise CategoryNotFound(name) from None
        category = self._stored(entity).category
        try:
            self._table.delete_entity(PARTITION, name.lower(), etag=etag or entity.metadata["etag"],
                                      match_condition=MatchConditions.IfNotModified)
        except ResourceNotFoundError:
            raise CategoryNotFound(name) from None
        except HttpResponseError as error:
            if error.status_code == 412:
                raise EditConflict(f"category {category.name!r} changed since ETag {etag}") from None
            raise
        self._forget_text(entity, keep={})
        for key in saved_searches([category]):
            self._forget_search(key)
        return category

    def _forget_text(self, old: Any, keep: Mapping[str, Any]) -> None:
        if old.get("DefinitionKey") != keep.get("DefinitionKey"):
            delete_text_rows(self._table, old, "Definition")

    # --- saved searches' members ---------------------------------------------------------------------

    def search_members(self, categories: Iterable[AssetCategory]) -> dict[str, set[str]]:
        """The last members of each saved search the categories use, by membership key: only those that
        answer the query the category has now (an edited query's old members are not its members)."""
        wanted = saved_searches(categories)
        found: dict[str, set[str]] = {}
        if not wanted:
            return found
        rows = self._table.query_entities("PartitionKey eq @p", parameters={"p": SEARCH_PARTITION})
        for row in rows:
            data = dict(row)
            key = str(data["RowKey"])
            has_members = "MembersParts" in data or "MembersRows" in data
            if has_members and wanted.get(key) == data.get("Query"):
                found[key] = set(json.loads(read_text(self._table, data, "Members")))
        return found

    def record_search(self, key: str, query: str, now: datetime, members: Sequence[str] | None = None,
                      error: str | None = None) -> None:
        """What a saved search returned (``members``), or why it failed (its last members are kept when
        they answer the same query)."""
        entity: dict[str, Any] = {"PartitionKey": SEARCH_PARTITION, "RowKey": key, "Query": query}
        if members is not None:
            text = json.dumps(sorted({m.lower() for m in members}), separators=(",", ":"))
            properties, rows = store_text("Members", text, f"{SEARCH_PARTITION}|{key}", "members|")
            write_text_rows(self._table, rows)
            entity |= properties | {"EvaluatedAt": now, "Count": len(members), "Error": "", "FailedAt": None}
            try:
                before: Mapping[str, Any] = dict(self._table.get_entity(SEARCH_PARTITION, key))
            except ResourceNotFoundError:
                before = {}
            self._table.upsert_entity({k: v for k, v in entity.items() if v is not None},
                                      mode=UpdateMode.REPLACE)
            if before.get("MembersKey") != entity.get("MembersKey") and before:
                delete_text_rows(self._table, before, "Members")
            return
        try:
            previous = dict(self._table.get_entity(SEARCH_PARTITION, key))
        except ResourceNotFoundError:
            previous = {}
        if previous.get("Query") != query:  # the old members answer another query: drop them
            if previous:
                delete_text_rows(self._table, previous, "Members")
            previous = {}
        kept = {k: v for k, v in previous.items() if k not in ("PartitionKey", "RowKey")}
        failure = {"Error": (error or "failed")[:MAX_ERROR_CHARS], "FailedAt": now}
        self._table.upsert_entity(entity | kept | failure, mode=UpdateMode.REPLACE)

    def _forget_search(self, key: str) -> None:
        try:
            row = dict(self._table.get_entity(SEARCH_PARTITION, key))
        except ResourceNotFoundError:
            return
        self._table.delete_entity(SEARCH_PARTITION, key)
        delete_text_rows(self._table, row, "Members")


def category_store(settings: Settings, service: TableServiceClient | None = None) -> CategoryStore:
    store = CategoryStore(service or table_service(settings))
    store.ensure()
    return store


# --- saved searches ------------------------------------------------------------------------------------


def search_runner(settings: Settings, credential: TokenCredential) -> Callable[[str], list[str]]:
    """Run a saved search against the workspace: its ``ResourceId`` column, or LogQueryError."""
    return column_reader(credential, settings.logs_query_endpoint, settings.log_analytics_workspace_id,
                         RESOURCE_ID_COLUMN, SAVED_SEARCH_TIMESPAN)


@dataclass(frozen=True)
class SearchCounts:
    run: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # membership key -> why

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "failed": dict(self.failed)}


def refresh_searches(store: CategoryStore, searches: Mapping[str, str],
                     run_query: Callable[[str], Sequence[str]], now: datetime) -> SearchCounts:
    """Run each saved search once and record its members (or why it failed); never raises for a query."""
    failed: dict[str, str] = {}
    for key, query in searches.items():
        try:
            members = run_query(query)
        except LogQueryError as error:
            log.warning("saved search of category %s failed: %s", key, error)
            failed[key] = str(error)
            store.record_search(key, query, now, error=str(error))
            continue
        store.record_search(key, query, now, members=members)
    return SearchCounts(run=len(searches), failed=failed)


# --- placement -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacementReport:
    """What re-placing the fleet did and cost: machines read, rows written, time taken."""

    machines: int
    changed: int
    kept: int  # machines whose placement needs a saved search that has no result: left as they were
    by_category: dict[str, int]
    searches: SearchCounts
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"machines": self.machines, "changed": self.changed, "kept": self.kept,
                "byCategory": self.by_category, "searches": self.searches.to_json(),
                "seconds": round(self.seconds, 3)}


def place_fleet(settings: Settings, changed: Iterable[AssetCategory] = (),
                credential: TokenCredential | None = None,
                service: TableServiceClient | None = None, now: datetime | None = None) -> PlacementReport:
    """Re-place every machine of the Machines table after a category was created, edited or deleted.

    The saved searches of the ``changed`` categories are run first (the others' last members are used);
    then one read of the Machines table (the columns placement needs) and a merge of the rows whose
    placement changed. For the 10,000 machines of a large fleet that is 10 pages read and at most 100
    transactions written: on Azurite 1 s when no machine moves, 28 s when every one does (the first
    category over a fleet never placed; bench/category_placement.py)."""
    started = time.monotonic()
    service = service or table_service(settings)
    store = category_store(settings, service)
    categories = store.categories()
    searches = SearchCounts()
    wanted = saved_searches(changed)
    if wanted:
        if credential is None:
            raise ValueError("a credential is needed to run the saved searches of the changed categories")
        searches = refresh_searches(store, wanted, search_runner(settings, credential),
                                    now or datetime.now(UTC))
    members = store.search_members(categories)
    inventory = MachineInventory(service)
    inventory.ensure()
    writes: list[dict[str, Any]] = []
    counted: Counter[str] = Counter()
    machines = kept = 0
    for entity in inventory.columns((*MACHINE_COLUMNS, ASSET_CATEGORY, RING)):
        if not entity.get("ResourceId") or not entity.get("OsType"):
            continue  # not a discovered machine's row
        try:
            found = machine_of_entity(entity)
        except (KeyError, ValueError) as error:  # a row discovery did not write: placed by none
            log.warning("machine row %s/%s cannot be placed: %s",
                        entity["PartitionKey"], entity["RowKey"], error)
            continue
        machines += 1
        stored = stored_placement(entity)
        try:
            placed = categorise(found, categories, members)
        except SearchUnavailable:  # a saved search it may be in has no result: it stays where it was
            kept += 1
            counted.update([stored[0]] if stored else [])
            continue
        placement = (placed.category, placed.ring)
        counted[placement[0]] += 1
        if placement != stored:
            writes.append({"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"],
                           ASSET_CATEGORY: placement[0], RING: placement[1] or ""})
    written = inventory.merge(writes)
    return PlacementReport(machines, written, kept, dict(sorted(counted.items())), searches,
                           time.monotonic() - started)


def fleet_placer(settings: Settings, service: TableServiceClient | None = None) -> Placer:
    """Discovery's placer: the categories and their saved searches' last members, read once; a machine
    whose placement needs a search without result keeps its stored placement (or gets none)."""
    service = service or table_service(settings)
    store = category_store(settings, service)
    categories = store.categories()
    members = store.search_members(categories)
    inventory = MachineInventory(service)

    def placements(machines: Sequence[Machine]) -> dict[str, MachinePlacement]:
        found: dict[str, MachinePlacement] = {}
        for machine in machines:
            try:
                placement = categorise(machine, categories, members)
            except SearchUnavailable:
                entity = inventory.get(machine.resource_id)  # rare: a search never ran or was edited
                stored = stored_placement(entity) if entity else None
                if stored is not None:
                    found[machine.key] = stored
                continue
            found[machine.key] = (placement.category, placement.ring)
        return found

    return placements


def refresh_all_searches(settings: Settings, credential: TokenCredential, now: datetime) -> SearchCounts:
    """A discovery pass's first step: every category's saved searches, run once."""
    store = category_store(settings)
    searches = saved_searches(store.categories())
    if not searches:
        return SearchCounts()
    return refresh_searches(store, searches, search_runner(settings, credential), now)

