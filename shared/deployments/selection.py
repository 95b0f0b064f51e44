"""Which of a machine's missing updates a deployment would install, worked out before installing.

The install call itself decides (``installPatches`` filters on the machine); this module predicts
that decision from a pre-scan assessment, to show what a run will do and to find the optional
KBs the install request must exclude. The rules are those of ``installPatches`` as built by
:func:`shared.deployments.install.install_request`, and the ARM stand-in (``local/arm/simulation.py``)
applies the same ones; a unit test runs both over the stand-in catalogue so they cannot drift.

- An exclusion always wins: a KB in ``kbNumbersToExclude`` (Windows) or a package matching a
  ``packagesToExclude`` mask (Linux) is never selected.
- Windows: a KB in ``kbNumbersToInclude`` is selected whatever its classification. Optional
  updates (see :func:`shared.assessment.recording.is_optional`) are otherwise left out, because
  the orchestration passes their KBs as ``exclude_kbs``; one named in ``kbNumbersToInclude`` is
  selected, as ``install_request`` then drops it from the exclusions.
- Linux: a package is selected when one of its classifications is chosen or it matches a
  ``packagesToInclude`` mask.
- Anything else is selected when one of its classifications is among the definition's.

Package masks use ``*`` (any run of characters, also none) and ``?`` (one character), are
case-sensitive and match the whole package name or, for a mask naming a version,
``name_version`` (``openssl_1:1.0.2k*``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shared.assessment.records import is_optional
from shared.deployments.definition import DeploymentDefinition
from shared.model.assessment_outcome import AssessmentOutcome, AvailablePatch
from shared.model.classification import api_classes, to_display
from shared.model.machines import OsType

SERVICE_PACK = "ServicePack"  # the patch API's classification name (AZURE-FACTS, classification enums)
# With only the two totals, critical and security updates cannot be told apart.
_CRITICAL_OR_SECURITY = ("Security", "Critical")


@dataclass(frozen=True)
class PendingEstimate:
    """How many updates a deployment would install on one machine, by API classification.

    ``counts_only`` is True when the assessment gave counts only (Arc servers). The estimate is then
    an upper bound for the chosen classifications, reported as counted: KB exclusions, package
    exclude masks and the optional-update rule cannot be applied to counts. Updates named only by
    KB or include mask outside the chosen classifications cannot be counted and are left out.
    """

    updates: int
    has_service_pack: bool
    by_classification: dict[str, int] = field(default_factory=dict)
    counts_only: bool = False


def mask_matches(mask: str, name: str, version: str | None = None) -> bool:
    """``mask`` (``*``/``?`` wildcards) against the whole ``name`` or ``name_version``."""
    pattern = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in mask))
    candidates = (name, f"{name}_{version}") if version else (name,)
    return any(pattern.fullmatch(candidate) for candidate in candidates)


def is_selected(definition: DeploymentDefinition, patch: AvailablePatch) -> bool:
    """Whether an install built from ``definition`` takes ``patch`` (rules in the module docstring)."""
    chosen = not set(patch.classifications).isdisjoint(definition.classifications)
    if definition.operating_system is OsType.LINUX:
        if any(mask_matches(m, patch.name, patch.version) for m in definition.packages_to_exclude):
            return False
        named = any(mask_matches(m, patch.name, patch.version) for m in definition.packages_to_include)
        return chosen or named
    if patch.kb_id in definition.kb_numbers_to_exclude:
        return False
    if patch.kb_id is not None and patch.kb_id in definition.kb_numbers_to_include:
        return True
    # An optional update without a KB number cannot be excluded by number, so the install would
    # take it like any other update of its classification.
    if patch.kb_id is not None and is_optional(OsType.WINDOWS, patch.name):
        return False
    return chosen


def selected_patches(
    definition: DeploymentDefinition, patches: Iterable[AvailablePatch]
) -> list[AvailablePatch]:
    """The ``patches`` an ``installPatches`` call built from ``definition`` would install, in order."""
    return [patch for patch in patches if is_selected(definition, patch)]


def optional_kbs(patches: Iterable[AvailablePatch]) -> list[str]:
    """KB digits of the optional Windows updates among ``patches``: the install's ``exclude_kbs``."""
    kbs = (p.kb_id for p in patches if p.kb_id and is_optional(OsType.WINDOWS, p.name))
    return list(dict.fromkeys(kbs))


def pending_estimate(definition: DeploymentDefinition, outcome: AssessmentOutcome) -> PendingEstimate:
    """What ``definition`` would install on the machine ``outcome`` assessed (:class:`PendingEstimate`)."""
    os_type = definition.operating_system
    if outcome.patches is not None:
        selected = selected_patches(definition, outcome.patches)
        counts = Counter(_shown_class(os_type, p.classifications) for p in selected)
        return PendingEstimate(
            updates=len(selected),
            has_service_pack=any(SERVICE_PACK in p.classifications for p in selected),
            by_classification=dict(counts),
        )
    chosen = set(definition.classifications)
    arc_counts = _arc_counts(os_type, outcome, chosen)
    counts = Counter({name: n for name, n in arc_counts.items() if name in chosen and n})
    return PendingEstimate(
        updates=sum(counts.values()),
        has_service_pack=counts[SERVICE_PACK] > 0,
        by_classification=dict(counts),
        counts_only=True,
    )


def _catch_all(os_type: OsType) -> str:
    """The API class of an update listed under none of the OS's classes ("Updates" / "Other")."""
    display = to_display(os_type, [])
    return next(api for api, shown in api_classes(os_type).items() if shown is display)


def _shown_class(os_type: OsType, classifications: Sequence[str]) -> str:
    """One API class per update, the most urgent, as the inventory shows it."""
    display = to_display(os_type, classifications)
    return next(api for api, shown in api_classes(os_type).items() if shown is display)


def _arc_counts(os_type: OsType, outcome: AssessmentOutcome, chosen: set[str]) -> Counter[str]:
    # A count outside the OS's own classes belongs to its catch-all class, as the recorder reads it.
    known = api_classes(os_type)
    counts: Counter[str] = Counter()
    for name, count in outcome.counts_by_classification.items():
        counts[name if name in known else _catch_all(os_type)] += count
    if not outcome.counts_by_classification:
        # Only the two totals: the pair goes under whichever of the two classes is chosen, so
        # the estimate stays an upper bound when a deployment chooses just one of them.
        pair_class = next((c for c in _CRITICAL_OR_SECURITY if c in chosen), _CRITICAL_OR_SECURITY[0])
        counts[pair_class] += outcome.critical_and_security_count
        counts[_catch_all(os_type)] += outcome.other_count
    return counts
