"""An update version seen in the fleet for the first time: its patch inventory record, and for a critical or
security update the ``PatchManagement.Update.FirstSeen`` notification.

The assessment tells of the versions its catalogue did not hold when it applies a batch's journal
(shared.assessment.recording ``listen_for_new_versions``; registered in function_app.py), so this costs
nothing for an update already known: the catalogue comparison happens where the catalogue is read anyway,
and a version seen again (machines offered different versions, a retried application) is one create that
finds its row there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from shared.governance.categories import DeadlineGroup, classification_group
from shared.governance.notifications import EventType, Notification, NotificationError, notify
from shared.governance.patch_refs import PatchRef, PatchRefError, ref_of_row
from shared.governance.patches import PatchFacts
from shared.governance.patches_table import PatchInventory, patch_inventory
from shared.settings import Settings

log = logging.getLogger(__name__)

# The groups whose first sight is announced (issue 13: "a new critical or security update first seen").
ANNOUNCED = frozenset({DeadlineGroup.CRITICAL, DeadlineGroup.SECURITY})


class SeenVersion(Protocol):
    """What the assessment tells of a version (shared.assessment.updates_table.NewVersion)."""

    @property
    def os_type(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def fields(self) -> Mapping[str, Any]: ...

    @property
    def machines_needing(self) -> int: ...


def first_seen_facts(version: SeenVersion, at: datetime) -> PatchFacts | None:
    """The update's facts from its catalogue fields; None when they name no exact version (a Windows
    update without a KB, a Linux one without a version: nothing to govern)."""
    try:
        ref = ref_of_row(version.os_type, version.fields)
    except (PatchRefError, ValueError):
        return None
    if ref is None:
        return None
    fields = version.fields
    return PatchFacts(
        ref, title=_text(fields.get("Title")), classification=_text(fields.get("Classification")),
        product=_text(fields.get("Product")), first_seen=at,
        machines_needing_at_first_seen=max(0, int(version.machines_needing)),
    )


def first_seen_notification(facts: PatchFacts) -> Notification | None:
    """The FirstSeen notification of a critical or security update; None for any other."""
    ref: PatchRef = facts.ref
    if classification_group(ref.os_type, facts.classification or "") not in ANNOUNCED:
        return None
    data = {
        "osType": ref.os_type.value, "key": ref.key, "classification": facts.classification,
        "machinesNeeding": facts.machines_needing_at_first_seen or 0, "firstSeen": facts.first_seen,
        "title": facts.title, "product": facts.product, "kbId": ref.kb,
        "packageName": ref.package, "packageVersion": ref.version,
    }  # fmt: skip
    return Notification(EventType.UPDATE_FIRST_SEEN, f"/patches/{ref.os_type.value}/{ref.key}",
                        {k: v for k, v in data.items() if v is not None},
                        dedup_key=f"Update.FirstSeen|{ref.table_key}")


def record_new_versions(settings: Settings, versions: Sequence[SeenVersion], at: datetime,
                        inventory: PatchInventory | None = None) -> int:
    """Create the record of each version not in the inventory yet and announce the critical and security
    ones; returns how many were new. Idempotent: a version recorded before is left as it is."""
    created = 0
    store = inventory
    for version in versions:
        facts = first_seen_facts(version, at)
        if facts is None:
            continue
        store = store or patch_inventory(settings)
        if not store.record_first_seen(facts):
            continue
        created += 1
        try:
            notification = first_seen_notification(facts)
        except NotificationError as error:  # a fact the schema refuses: the record stands, say why
            log.error("no FirstSeen notification for %s: %s", facts.ref.key, error)
            continue
        if notification is not None:
            notify(settings, notification, at)
    return created


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None

