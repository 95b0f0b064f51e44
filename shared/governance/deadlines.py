"""Deadline warnings: which updates a category's machines are still missing with the category's deadline
for them coming up within :data:`DEADLINE_WARNING_DAYS` (the ``PatchManagement.Deadline.Approaching``
notification; shared.governance.deadline_warnings sends it).

Pure rules over the daily audit (shared.governance.audit ``MachineAudit.due``: each missing update and
when its deadline falls, first found missing plus the category's days for its classification):

- a machine's update warns when ``as_of < due <= as_of + DEADLINE_WARNING_DAYS``: not yet overdue (the
  audit's ``overdue`` finding, the workbook and the deadline-breach alert cover those), due soon;
- only machines placed in a category: deadlines are a category's policy with an owner to tell; an
  uncategorised machine's overdue updates show in the audit;
- one warning per category and update (its exact version: ``PatchRef``), with the earliest deadline of
  its machines, how many of them are due within the window, and their ids. Its dedup key names the
  category, the update and the deadline's date, so the daily run announces it once: the next day's run
  finds the same earliest deadline and raises nothing; once those machines are patched or overdue, a
  later deadline of other machines in the window is announced anew.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.governance.audit import DueUpdate, MachineAudit
from shared.governance.categories import UNCATEGORISED
from shared.governance.patch_refs import PatchRef, PatchRefError, parse_patch_ref
from shared.model.machines import OsType

# Warn two days ahead. The compliance timer runs once a day, so every deadline inside the window is
# seen by two runs (a run that fails or fires late still warns in time); two days leave a working day
# to schedule a deployment in a maintenance window before the deadline; and it is well under the
# shortest default deadline (critical: 7 days, shared.governance.categories), so an update is not
# announced as urgent the day it first appears (a category may set deadlines as short as 1 day: then
# the first daily run after first sight warns).
DEADLINE_WARNING_DAYS = 2
# Machines a warning keeps the ids of (the count is of all; matches the notification's list).
MAX_WARNING_MACHINES = 100


@dataclass(frozen=True)
class DeadlineWarning:
    """One category's machines missing one update whose deadline falls within the window."""

    category: str
    ref: PatchRef
    classification: str
    title: str
    deadline: datetime  # the earliest deadline among the machines
    machines_missing: int
    machines: tuple[str, ...] = ()  # resource ids, sorted, at most MAX_WARNING_MACHINES

    @property
    def dedup_key(self) -> str:
        return f"Deadline.Approaching|{self.category}|{self.ref.table_key}|{self.deadline.date().isoformat()}"

    def days_left(self, as_of: datetime) -> int:
        """Whole days from ``as_of`` to the deadline, rounded down (0: due within a day)."""
        return max(0, math.floor((self.deadline - as_of) / timedelta(days=1)))


def due_soon(due: DueUpdate, as_of: datetime, days: int = DEADLINE_WARNING_DAYS) -> bool:
    """Whether ``due`` falls within the warning window after ``as_of`` (not overdue yet)."""
    return as_of < due.due <= as_of + timedelta(days=days)


def ref_of_due(os_type: OsType, due: DueUpdate) -> PatchRef | None:
    """The exact update a gap names: ``KB<digits>`` on Windows, ``name=version`` on Linux; None when it
    names none (a Linux gap without its version, a Windows update without a KB)."""
    text = due.update_key if os_type is OsType.WINDOWS else f"{due.update_key}={due.version}"
    if os_type is OsType.LINUX and not due.version:
        return None
    try:
        return parse_patch_ref(os_type, text)
    except PatchRefError:
        return None


def warnings_of(audits: Iterable[MachineAudit], as_of: datetime,
                days: int = DEADLINE_WARNING_DAYS) -> list[DeadlineWarning]:
    """The warnings of ``audits`` (a page of the fleet), per category and update."""
    found: dict[tuple[str, str], list[tuple[DueUpdate, str]]] = {}
    refs: dict[tuple[str, str], tuple[str, PatchRef]] = {}
    for audit in audits:
        category = audit.category.name
        if category == UNCATEGORISED or audit.machine.category == UNCATEGORISED:
            continue
        for due in audit.due:
            if not due_soon(due, as_of, days):
                continue
            ref = ref_of_due(audit.machine.os_type, due)
            if ref is None:
                continue
            key = (category.lower(), ref.table_key)
            refs.setdefault(key, (category, ref))
            found.setdefault(key, []).append((due, audit.machine.resource_id))
    return sorted((_warning(*refs[key], dues) for key, dues in found.items()),
                  key=lambda w: (w.deadline, w.category.lower(), w.ref.table_key))


def _warning(category: str, ref: PatchRef, dues: list[tuple[DueUpdate, str]]) -> DeadlineWarning:
    first = min(dues, key=lambda d: d[0].due)[0]
    machines = sorted({resource_id for _, resource_id in dues}, key=str.lower)
    return DeadlineWarning(
        category=category, ref=ref, classification=first.classification or next(
            (d.classification for d, _ in dues if d.classification), ""),
        title=first.title or next((d.title for d, _ in dues if d.title), ""), deadline=first.due,
        machines_missing=len(machines), machines=tuple(machines[:MAX_WARNING_MACHINES]),
    )  # fmt: skip


def merge(parts: Iterable[DeadlineWarning]) -> list[DeadlineWarning]:
    """The warnings of the whole fleet from each page's (pages hold different machines: counts add up)."""
    merged: dict[tuple[str, str], DeadlineWarning] = {}
    for part in parts:
        key = (part.category.lower(), part.ref.table_key)
        held = merged.get(key)
        if held is None:
            merged[key] = part
            continue
        earlier = part if part.deadline < held.deadline else held
        machines = sorted({*held.machines, *part.machines}, key=str.lower)[:MAX_WARNING_MACHINES]
        merged[key] = DeadlineWarning(
            category=held.category, ref=held.ref, classification=earlier.classification or held.classification
            or part.classification, title=earlier.title or held.title or part.title,
            deadline=earlier.deadline, machines_missing=held.machines_missing + part.machines_missing,
            machines=tuple(machines),
        )  # fmt: skip
    return sorted(merged.values(), key=lambda w: (w.deadline, w.category.lower(), w.ref.table_key))
