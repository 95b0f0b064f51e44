"""An update version the assessment sees for the first time: its patch inventory record, and the
FirstSeen notification for a critical or security one; nothing for what the catalogue already holds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from shared.assessment.journal import journal_key
from shared.assessment.recording import (
    _new_version_listeners,
    apply_journal,
    listen_for_new_versions,
    record_assessment,
)
from shared.assessment.updates_table import NewVersion
from shared.governance.first_seen import record_new_versions
from shared.governance.notifications import EventType, notification_outbox
from shared.governance.patch_refs import PatchRef
from shared.governance.patches import Action
from shared.governance.patches_table import PatchNotFound, patch_inventory
from shared.model.machines import Machine, OsType
from shared.settings import Settings
from tests.integration.test_assessment_inventory import (  # noqa: F401 - fixtures used by name
    DAY1,
    loganalytics,
    machine,
    outcome,
    pkg,
    settings,
    win,
)


@pytest.fixture
def told(settings) -> Iterator[list[NewVersion]]:  # noqa: F811
    """The app's listener registered (as function_app.py does), and every version it is told of."""
    seen: list[NewVersion] = []

    def spy(_: Settings, versions: list[NewVersion], __: datetime) -> None:
        seen.extend(versions)

    listen_for_new_versions(record_new_versions)
    listen_for_new_versions(spy)
    yield seen
    _new_version_listeners.remove(spy)


def scan(settings: Settings, vm: Machine, at: datetime, *patches) -> None:  # noqa: F811
    run = f"run-fs-{uuid.uuid4().hex[:8]}"
    record_assessment(settings, vm, outcome(*patches), at, run, journal_key(run, 0))
    apply_journal(settings, [journal_key(run, 0)], at)


def first_seen(settings: Settings, ref: PatchRef) -> list[dict]:  # noqa: F811
    return [r for r in notification_outbox(settings).recorded(EventType.UPDATE_FIRST_SEEN)
            if r["Data"]["key"] == ref.key and r["Data"]["osType"] == ref.os_type.value]


def test_a_new_version_gets_its_record_and_a_security_one_its_notification(settings, told):  # noqa: F811
    name, other = f"libfs{uuid.uuid4().hex[:6]}", f"libplain{uuid.uuid4().hex[:6]}"
    security = PatchRef(OsType.LINUX, package=name, version="1.0-1")
    plain = PatchRef(OsType.LINUX, package=other, version="2.0")
    inventory = patch_inventory(settings)

    scan(settings, machine(OsType.LINUX), DAY1, pkg(name, "1.0-1", "Security"), pkg(other, "2.0", "Other"))

    facts = inventory.facts(security)
    assert (facts.classification, facts.first_seen) == ("Security Updates", DAY1)
    assert facts.machines_needing_at_first_seen == 1
    assert inventory.facts(plain).classification == "Other Updates"
    [note] = first_seen(settings, security)
    assert note["Data"] | {"title": None} == {
        "osType": "Linux", "key": f"{name}=1.0-1", "classification": "Security Updates", "machinesNeeding": 1,
        "firstSeen": "2026-01-12T03:00:00Z", "packageName": name, "packageVersion": "1.0-1", "title": None,
        "product": "Ubuntu 22.04"}
    assert note["Subject"] == f"/patches/Linux/{name}=1.0-1"
    assert first_seen(settings, plain) == []  # an "other" update is recorded, not announced

    # Another machine needing the same versions: nothing new, and nothing told.
    told.clear()
    scan(settings, machine(OsType.LINUX), DAY1 + timedelta(hours=1), pkg(name, "1.0-1", "Security"),
         pkg(other, "2.0", "Other"))
    assert told == []
    assert len(first_seen(settings, security)) == 1
    assert [h.action for h in inventory.history(security)] == [Action.FIRST_SEEN]

    # A newer version of the package on a third machine is another update.
    newer = PatchRef(OsType.LINUX, package=name, version="1.1-1")
    with pytest.raises(PatchNotFound):
        inventory.facts(newer)
    scan(settings, machine(OsType.LINUX), DAY1 + timedelta(hours=2), pkg(name, "1.1-1", "Security"))
    assert inventory.facts(newer).machines_needing_at_first_seen == 3
    assert len(first_seen(settings, newer)) == 1


def test_an_unchanged_rescan_tells_nothing(settings, told):  # noqa: F811
    name = f"libsame{uuid.uuid4().hex[:6]}"
    vm = machine(OsType.LINUX)
    scan(settings, vm, DAY1, pkg(name, "5.0", "Critical"))
    assert [v.key for v in told] == [name]
    told.clear()
    scan(settings, vm, DAY1 + timedelta(hours=3), pkg(name, "5.0", "Critical"))
    assert told == []
    ref = PatchRef(OsType.LINUX, package=name, version="5.0")
    assert [r["Data"]["classification"] for r in first_seen(settings, ref)] == ["Critical Updates"]


def test_a_windows_kb_is_recorded_once(settings, told):  # noqa: F811
    kb = str(5_000_000 + uuid.uuid4().int % 999_999)
    vm = machine(OsType.WINDOWS)
    scan(settings, vm, DAY1, win(kb, "Security Updates"))
    ref = PatchRef(OsType.WINDOWS, kb=kb)
    assert patch_inventory(settings).facts(ref).classification == "Security Updates"
    assert [r["Data"]["kbId"] for r in first_seen(settings, ref)] == [kb]
