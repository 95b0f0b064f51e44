"""Deadline warnings' rules: the window, one warning per category and update with the earliest deadline
and the machines due, the pages merged, the notification's data and its dedup key."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from shared.governance.audit import (
    CategoryFacts,
    MachineFacts,
    MissingOn,
    MissingUpdate,
    audit_machine,
    category_facts,
    end_of_day,
)
from shared.governance.categories import UNCATEGORISED, validate_category
from shared.governance.deadline_warnings import deadline_notification
from shared.governance.deadlines import (
    DEADLINE_WARNING_DAYS,
    MAX_WARNING_MACHINES,
    DeadlineWarning,
    merge,
    warnings_of,
)
from shared.governance.notifications import EventType
from shared.governance.patch_refs import PatchRef
from shared.model.machines import OsType

DAY = date(2026, 3, 1)
AS_OF = end_of_day(DAY)
VMS = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines"
WEB = category_facts(validate_category({
    "name": "web", "criticality": 1, "owner": {"name": "Web team", "contact": "web@contoso.com"},
    "membership": {"tags": {"role": "web"}}, "deadlines": {"critical": 7, "security": 14, "other": 60},
}))  # fmt: skip


def machine(n: int, os_type: OsType = OsType.LINUX, category: str = "web") -> MachineFacts:
    return MachineFacts(f"k{n}", f"{VMS}/vm{n:03d}", f"vm{n:03d}", os_type, category, "production")


def audit(m: MachineFacts, *missing: MissingUpdate, category: CategoryFacts = WEB):
    return audit_machine(DAY, AS_OF, m, category, MissingOn(AS_OF - timedelta(hours=1), tuple(missing)), [],
                         [])


def sudo(since: datetime, version: str = "1.9.9-1ubuntu2.4") -> MissingUpdate:
    return MissingUpdate("sudo", since, "Security", "sudo security update", version)


def due_in(days: float, deadline_days: int = 14) -> datetime:
    """The first-seen time that puts the deadline ``days`` after AS_OF."""
    return AS_OF + timedelta(days=days) - timedelta(days=deadline_days)


def test_only_deadlines_within_the_window_and_not_yet_passed_warn():
    assert DEADLINE_WARNING_DAYS == 2
    cases = {1: due_in(0.5), 2: due_in(DEADLINE_WARNING_DAYS), 3: due_in(DEADLINE_WARNING_DAYS + 0.01),
             4: due_in(0), 5: due_in(-1)}  # fmt: skip
    found = warnings_of([audit(machine(n), sudo(since)) for n, since in cases.items()], AS_OF)
    assert len(found) == 1
    warning = found[0]
    assert warning.machines == (f"{VMS}/vm001", f"{VMS}/vm002")  # vm003 later, vm004 due now, vm005 overdue
    assert warning.machines_missing == 2 and warning.deadline == AS_OF + timedelta(days=0.5)
    assert warning.ref == PatchRef(OsType.LINUX, package="sudo", version="1.9.9-1ubuntu2.4")


def test_deadlines_follow_the_categorys_days_per_classification():
    critical = MissingUpdate("KB5034441", due_in(1, deadline_days=7), "Critical Updates", "CU")
    other = MissingUpdate("KB5000001", due_in(1, deadline_days=7), "Updates", "other")  # due in 54 days
    found = warnings_of([audit(machine(1, OsType.WINDOWS), critical, other)], AS_OF)
    assert [(w.ref.key, w.classification) for w in found] == [("KB5034441", "Critical Updates")]


def test_uncategorised_machines_and_updates_without_an_exact_version_do_not_warn():
    stray = audit(machine(1, category=UNCATEGORISED), sudo(due_in(1)), category=CategoryFacts())
    unversioned = audit(machine(2), sudo(due_in(1), version=""))
    assert warnings_of([stray, unversioned], AS_OF) == []


def test_one_warning_per_category_and_update_with_the_earliest_deadline_across_pages():
    page_one = warnings_of([audit(machine(n), sudo(due_in(1.5))) for n in range(3)], AS_OF)
    page_two = warnings_of([audit(machine(n), sudo(due_in(0.25))) for n in range(3, 5)], AS_OF)
    merged = merge([*page_one, *page_two])
    assert len(merged) == 1
    assert merged[0].machines_missing == 5 and merged[0].deadline == AS_OF + timedelta(days=0.25)
    assert len(merged[0].machines) == 5
    many = warnings_of([audit(machine(n), sudo(due_in(1))) for n in range(MAX_WARNING_MACHINES + 20)], AS_OF)
    assert many[0].machines_missing == MAX_WARNING_MACHINES + 20
    assert len(many[0].machines) == MAX_WARNING_MACHINES


def test_the_notification_follows_the_schema_and_its_key_names_category_update_and_due_date():
    warning = warnings_of([audit(machine(1), sudo(due_in(1.5)))], AS_OF)[0]
    notification = deadline_notification(warning, AS_OF)
    assert notification.type is EventType.DEADLINE_APPROACHING
    assert notification.subject == "/categories/web/patches/Linux/sudo=1.9.9-1ubuntu2.4"
    assert notification.dedup_key == "Deadline.Approaching|web|Linux|sudo=1.9.9-1ubuntu2.4|2026-03-03"
    assert notification.data == {
        "category": "web", "osType": "Linux", "key": "sudo=1.9.9-1ubuntu2.4", "classification": "Security",
        "deadline": "2026-03-03T11:59:59.999000Z", "daysLeft": 1, "machinesMissing": 1,
        "title": "sudo security update", "machines": [f"{VMS}/vm001"],
    }  # fmt: skip
    # The next day's run finds the same earliest deadline: the same key (sent once).
    next_day = warnings_of([audit(machine(1), sudo(due_in(1.5)))], AS_OF + timedelta(days=1))
    assert deadline_notification(next_day[0], AS_OF + timedelta(days=1)).dedup_key == notification.dedup_key


def test_days_left_round_down():
    ref = PatchRef(OsType.WINDOWS, kb="5034441")
    warning = DeadlineWarning("web", ref, "Security Updates", "", AS_OF + timedelta(hours=47), 1)
    assert warning.days_left(AS_OF) == 1
    assert warning.days_left(AS_OF + timedelta(hours=47)) == 0
