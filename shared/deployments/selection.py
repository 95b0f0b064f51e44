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
- Linux: a package is selected when its classification group is chosen or it matches a
  ``packagesToInclude`` mask. Azure's Linux agent installs by two groups, critical-and-security
  (``Critical``, ``Security``, ``Security-ESM``) and other (``Other``, ``Unclassified``): choosing
  ``Critical`` or ``Security`` takes the whole first group (Azure/LinuxPatchExtension,
  ``PackageManager.get_updates_for_classification``).
- Anything else is selected when one of its classifications is among the definition's.

Classification names are read through :mod:`shared.model.classification`: results carry Windows
Update's names ("Security Updates"), definitions the request enum ("Security").

Package masks are read as the Linux agent reads them (``PackageFilter``): ``fnmatch`` wildcards
(``*`` any run of characters, also none; ``?`` one character), case-sensitive, against the whole
package name with or without its architecture suffix (``.x86_64``, ``.noarch``, ``.i686``). An include
mask may pin versions as ``name=version`` (``openssl=3.0.2*``; the version may hold wildcards too);
an exclusion never looks at a version (definitions refuse one there).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from shared.assessment.records import is_optional, publishes_no_classification, unlisted_counts
from shared.deployments.definition import DeploymentDefinition
from shared.governance.releases import InstallLists
from shared.model.assessment_outcome import AssessmentOutcome, AvailablePatch
from shared.model.classification import catch_all, read_class, request_classes, to_display, to_request
from shared.model.machines import Machine, OsType

SERVICE_PACK = "ServicePack"  # the patch API's classification name (AZURE-FACTS, classification enums)
# With only the two totals, critical and security updates cannot be told apart.
_CRITICAL_OR_SECURITY = ("Security", "Critical")
# The architecture suffixes the Linux agent strips from a package name before matching a mask
# (Azure/LinuxPatchExtension PackageFilter.get_product_name_without_arch).
_ARCHITECTURES = (".x86_64", ".noarch", ".i686")


# Why a Linux machine whose scan classifies nothing as critical or security (CentOS: everything "Other")
# is skipped by a deployment that selects only by those classes, instead of ending "not needed".
NO_CLASSIFICATION_DATA = (
    "this distribution publishes no classification data: select Other updates or name the packages"
)


def lacks_classification_data(definition: DeploymentDefinition, machine: Machine,
                              outcome: AssessmentOutcome) -> bool:
    """A machine whose distribution publishes no classification data (records.publishes_no_classification:
    updates pending, none critical or security) while ``definition`` selects only Critical/Security and
    names no package: the deployment can never select anything there, and "not needed" would be a false
    comfort. The counts decide (they are the truth when a list is truncated)."""
    if definition.packages_to_include or not set(definition.classifications) <= set(_CRITICAL_OR_SECURITY):
        return False
    return publishes_no_classification(machine, outcome.critical_and_security_count, outcome.other_count)


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
    """Whether a package mask takes package ``name`` at ``version``, as the Linux agent decides it.

    ``mask`` is ``name`` or ``name=version`` (wildcards in either part). The name part is matched
    against the name with and without its architecture suffix; the version part only when a
    ``version`` is given: without one (the agent's exclusion check) a versioned mask matches by name."""
    name_mask, versioned, version_mask = mask.partition("=")
    name_mask = name_mask.strip()
    bare = next((name.removesuffix(arch) for arch in _ARCHITECTURES if name.endswith(arch)), name)
    if not (fnmatchcase(name, name_mask) or fnmatchcase(bare, name_mask)):
        return False
    return not versioned or version is None or fnmatchcase(version, version_mask.strip())


def with_install_lists(definition: DeploymentDefinition, lists: InstallLists) -> DeploymentDefinition:
    """The definition as the install request of a release or of ``approvedOnly`` sees it: no
    classification, and exactly the named KBs (Windows) or ``name=version`` masks (Linux) included; the
    definition's exclusions stay (an exclusion always wins)."""
    return definition.model_copy(update={
        "classifications": [], "kb_numbers_to_include": list(lists.kb_numbers_to_include),
        "packages_to_include": list(lists.packages_to_include),
    })  # fmt: skip


def _linux_groups(request_names: Iterable[str]) -> set[str]:
    """The agent's install groups these request classes fall in: critical-and-security, other."""
    return {"critical-and-security" if n in _CRITICAL_OR_SECURITY else "other" for n in request_names}


def _chosen_by_class(definition: DeploymentDefinition, patch: AvailablePatch) -> bool:
    os_type = definition.operating_system
    classes = request_classes(os_type, patch.classifications)
    if os_type is OsType.LINUX:
        return not _linux_groups(classes).isdisjoint(_linux_groups(definition.classifications))
    return not classes.isdisjoint(definition.classifications)


def is_selected(definition: DeploymentDefinition, patch: AvailablePatch) -> bool:
    """Whether an install built from ``definition`` takes ``patch`` (rules in the module docstring)."""
    chosen = _chosen_by_class(definition, patch)
    if definition.operating_system is OsType.LINUX:
        # The agent checks exclusions by name only, inclusions by name and version.
        if any(mask_matches(m, patch.name) for m in definition.packages_to_exclude):
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
        if outcome.truncated:
            counts.update(_unlisted(os_type, outcome, set(definition.classifications)))
        return PendingEstimate(
            updates=sum(counts.values()),
            has_service_pack=counts[SERVICE_PACK] > 0
            or any(SERVICE_PACK in request_classes(os_type, p.classifications) for p in selected),
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
    return to_request(os_type, catch_all(os_type))


def _shown_class(os_type: OsType, classifications: Sequence[str]) -> str:
    """One API class per update, the most urgent, as the inventory shows it."""
    return to_request(os_type, to_display(os_type, classifications))


def _arc_counts(os_type: OsType, outcome: AssessmentOutcome, chosen: set[str]) -> Counter[str]:
    # Every count is read by the one classification reader, as the recorder reads it: a name outside
    # the OS's own classes belongs to its catch-all class.
    counts: Counter[str] = Counter()
    for name, count in outcome.counts_by_classification.items():
        counts[to_request(os_type, read_class(os_type, name))] += count
    if not outcome.counts_by_classification:
        # Only the two totals: the pair goes under whichever of the two classes is chosen, so
        # the estimate stays an upper bound when a deployment chooses just one of them.
        pair_class = next((c for c in _CRITICAL_OR_SECURITY if c in chosen), _CRITICAL_OR_SECURITY[0])
        counts[pair_class] += outcome.critical_and_security_count
        counts[_catch_all(os_type)] += outcome.other_count
    return counts


def _unlisted(os_type: OsType, outcome: AssessmentOutcome, chosen: set[str]) -> Counter[str]:
    """Updates a truncated list left out, as an upper bound over the chosen classes: the result's two
    totals are the truth, so what they count beyond the list is added where the definition could
    take it (filters cannot be applied to updates nobody named)."""
    critical, other = unlisted_counts(os_type, outcome)
    counts: Counter[str] = Counter()
    pair_class = next((c for c in _CRITICAL_OR_SECURITY if c in chosen), None)
    if pair_class and critical:
        counts[pair_class] += critical
    other_class = next((c for c in chosen if c not in _CRITICAL_OR_SECURITY), None)
    if other_class and other:
        counts[other_class] += other
    return counts
