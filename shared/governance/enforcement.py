"""Enforcement: what a deployment may install on machines whose asset category requires approval.

The rule (issue 13, "Enforcement"; named :data:`APPROVAL_RULE` in every refusal): a deployment whose
targets include a category with ``requiresApproval`` must either name a release of that category whose
every item is approved for it, or say ``approvedOnly: true`` (then each machine gets exactly its category's
approved updates, by name). Checked when a definition is created or edited and again when a run starts
(approvals change in between). Whatever installs anyway (an update approved nowhere, through a deployment
of a category that requires nothing) is recorded as unauthorized (shared.governance.evidence.authorized_by).

Pure: the caller reads the categories, the release and the approved sets.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from shared.governance.patch_refs import PatchRef
from shared.governance.releases import InstallLists, Release
from shared.model.machines import OsType

APPROVAL_RULE = "ApprovalRequired"
# A refusal lists this many unapproved items at most (the rest are counted): enough to act on.
MAX_LISTED = 10


@dataclass(frozen=True)
class EnforcementProblem:
    field: str
    message: str


def enforcement_problems(
    required: Collection[str],
    release_name: str | None,
    release: Release | None,
    approved_only: bool,
    approved: Callable[[str], Collection[PatchRef]],
) -> list[EnforcementProblem]:
    """Why a deployment may not run on the categories in ``required`` (those of its targets that require
    approval, by name), empty when it may. ``release`` is the release ``release_name`` names, None when it
    names none or the release does not exist; ``approved(category)`` the updates approved for it now."""
    if not required or approved_only:
        return []
    named = sorted(required, key=str.lower)
    if release_name is None:
        return [EnforcementProblem("release", (
            f"{APPROVAL_RULE}: the targets include asset categor{'y' if len(named) == 1 else 'ies'} "
            f"{', '.join(named)}, which require approval: name a release approved for the category, or say "
            "approvedOnly: true to install only its approved updates"))]
    if release is None:
        return [EnforcementProblem("release", f"no release named {release_name!r}")]
    problems = []
    for category in named:
        if release.category.lower() != category.lower():
            problems.append(EnforcementProblem("release", (
                f"{APPROVAL_RULE}: release {release.name!r} is a baseline of category {release.category!r}, "
                f"and the targets include category {category!r}, which requires approval: target one "
                "category per release, or say approvedOnly: true")))
            continue
        missing = unapproved(release.items, approved(category))
        if missing:
            listed = ", ".join(ref.key for ref in missing[:MAX_LISTED])
            more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
            problems.append(EnforcementProblem("release", (
                f"{APPROVAL_RULE}: category {category!r} requires approval and {len(missing)} item(s) of "
                f"release {release.name!r} are not approved for it: {listed}{more}; request approval of "
                "the release (POST /api/approvals with the release)")))
    return problems


def unapproved(items: Iterable[PatchRef], approved: Collection[PatchRef]) -> list[PatchRef]:
    allowed = set(approved)
    return [ref for ref in items if ref not in allowed]


def approved_install_lists(approved: Iterable[PatchRef], os_type: OsType) -> InstallLists:
    """``approvedOnly``: the install request's lists naming exactly the approved updates of the OS."""
    refs = sorted((ref for ref in approved if ref.os_type is os_type), key=lambda ref: ref.key.lower())
    if os_type is OsType.WINDOWS:
        return InstallLists(kb_numbers_to_include=tuple(str(ref.kb) for ref in refs))
    # Every approved version of a package is its own mask: the agent installs the one version it is
    # offered when any mask names it (PackageFilter matches each mask's version part).
    return InstallLists(packages_to_include=tuple(ref.key for ref in refs))
