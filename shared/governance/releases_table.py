"""Releases in Table Storage: created once, read by deployments and approvals, never edited.

Table ``Releases``: one partition (a category has a release per patch cycle: hundreds over years, listed
together), RowKey = the name in lower case, so names are unique ignoring case and creation is an insert
that fails on conflict. The entity keeps the release's JSON (split over properties: 1,000 items of about
60 characters fit in a few) and columns for listing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableServiceClient

from shared.azure.tables import ensure_table, is_table_key, join_property, split_property, table_service
from shared.governance.releases import Release
from shared.settings import Settings

RELEASES_TABLE = "Releases"
PARTITION = "release"


class ReleaseExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"a release named {name!r} exists (names are unique ignoring case; releases are immutable)"
        )


class ReleaseNotFound(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"no release named {name!r}")


class ReleaseInUse(Exception):
    """A deployment names the release: deleting it would leave the deployment nothing to install."""

    def __init__(self, name: str, deployments: Iterable[str]) -> None:
        self.deployments = sorted(deployments)
        super().__init__(f"release {name!r} is used by deployment(s) {', '.join(self.deployments)}: "
                         "delete or change them first (a release is deleted only when no deployment "
                         "names it)")


def _entity(release: Release) -> dict[str, Any]:
    text = json.dumps(release.to_json(), separators=(",", ":"))
    return {
        "PartitionKey": PARTITION, "RowKey": release.name.lower(), "Name": release.name,
        "Category": release.category, "ItemCount": len(release.items), "Source": release.source,
        "CreatedBy": release.created_by, "Created": release.created_at, **split_property("Release", text),
    }  # fmt: skip


def _release(entity: Any) -> Release:
    return Release.from_json(json.loads(join_property(entity, "Release")))


class ReleaseStore:
    def __init__(self, service: TableServiceClient) -> None:
        self._service = service
        self._table = service.get_table_client(RELEASES_TABLE)

    def ensure(self) -> None:
        ensure_table(self._service, RELEASES_TABLE)

    def create(self, release: Release) -> Release:
        """Insert; a name taken in any letter case raises :class:`ReleaseExists`."""
        try:
            self._table.create_entity(_entity(release))
        except ResourceExistsError:
            raise ReleaseExists(release.name) from None
        return release

    def get(self, name: str) -> Release:
        if not is_table_key(name):
            raise ReleaseNotFound(name)
        try:
            return _release(self._table.get_entity(PARTITION, name.lower()))
        except ResourceNotFoundError:
            raise ReleaseNotFound(name) from None

    def find(self, name: str) -> Release | None:
        try:
            return self.get(name)
        except ReleaseNotFound:
            return None

    def list(self, category: str | None = None) -> list[Release]:
        """Every release, or ``category``'s (its name ignoring case), by name."""
        entities = self._table.query_entities("PartitionKey eq @p", parameters={"p": PARTITION})
        releases = (_release(e) for e in entities
                    if category is None or str(e.get("Category", "")).lower() == category.lower())
        return sorted(releases, key=lambda r: r.name.lower())

    def delete(self, name: str, used_by: Iterable[str]) -> None:
        """Delete unless ``used_by`` (the deployments naming it) is non-empty (:class:`ReleaseInUse`);
        an unknown name raises :class:`ReleaseNotFound`."""
        self.get(name)
        users = list(used_by)
        if users:
            raise ReleaseInUse(name, users)
        self._table.delete_entity(PARTITION, name.lower())


def release_store(settings: Settings) -> ReleaseStore:
    store = ReleaseStore(table_service(settings))
    store.ensure()
    return store
