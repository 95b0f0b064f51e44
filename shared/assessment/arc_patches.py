"""An Arc-enabled server's update list, from Azure Resource Graph.

An Arc server's ``assessPatches`` result has counts by classification only; Azure Update Manager writes
the per-patch list to Resource Graph (``patchassessmentresources``, AZURE-FACTS). Once an Arc assessment
has finished, :func:`with_patch_list` reads that machine's latest assessment there (one query, inside the
activity that saw the result) and gives the outcome its list, so the recorder writes the same
``Update_CL`` rows, inventory entries and gaps as for an Azure VM. Used by a deployment's pre-scan.

Which list: the summary row's name is the id of the assessment it describes ("Access Azure Update
Manager operations data using Azure Resource Graph"); the list is taken when that is the id of the
assessment just finished, or, should the two ids ever be written differently, when the row is no older
than that assessment's start. The counts of the ARM result stay the truth: a list shorter than they
say is marked truncated (as an agent's cut list is), and a longer one (another assessment's) is not used.

When Resource Graph lags (no summary yet, an older one, one still in progress) or cannot be read, the
assessment is recorded from the counts alone, as before: the summary and compliance are right, the
machine's gaps stay as the last list left them, and the next assessment (scheduled, a deployment's scan,
or one the light check starts) brings the list. No wait in the activity and no extra Durable round trip:
Resource Graph's delay is not documented, and an activity that sleeps holds a worker other machines need.

An assessment run does not ask per machine: Resource Graph allows 15 queries per 5 seconds per caller
(AZURE-FACTS), and a cycle holds thousands of Arc servers. Its ``check_assessment`` answers the run from
the counts and leaves only a flagged journal entry (:class:`ListWanted`); when the run applies finished
batches' journals, :func:`with_patch_lists` reads every flagged machine's latest assessment with one
query per ``GROUP_SIZE`` machines (``latest_assessments``, paged), and each machine is recorded then, at
the time its result was seen, with its list or, as above, from its counts. A deployment's post-scan does
the same (its batch's end applies the journal); its pre-scan keeps :func:`with_patch_list`: the pre-scan's
list chooses what the install includes, before the batch ends.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from azure.core.credentials import TokenCredential

from shared.azure.resource_graph import (
    LastAssessment,
    MachineAssessment,
    ResourceGraphError,
    latest_assessment,
    latest_assessments,
    resource_graph,
)
from shared.model.assessment_outcome import AssessmentOutcome
from shared.model.machines import MachineKind, parse_resource_id
from shared.settings import Settings

logger = logging.getLogger(__name__)

# Result statuses of an assessment that has a list worth recording (a failed one lists nothing reliable).
_COMPLETE = frozenset({"succeeded", "completedwithwarnings"})
# Resource Graph summary statuses of an assessment that has not ended.
_RUNNING = frozenset({"inprogress", "notstarted"})


def with_patch_list(
    settings: Settings, credential: TokenCredential, resource_id: str, outcome: AssessmentOutcome
) -> AssessmentOutcome:
    """``outcome`` with the per-patch list Resource Graph has for it, for an Arc server whose result
    came with counts only; ``outcome`` unchanged otherwise, or when Resource Graph has no matching list."""
    if not awaits_list(resource_id, outcome):
        return outcome
    try:
        found = latest_assessment(resource_graph(credential, settings.resource_graph_endpoint), resource_id)
    except ResourceGraphError as error:
        logger.warning("Resource Graph could not be read for %s (recorded from counts): %s",
                       resource_id, error)
        return outcome
    completed = with_listed_patches(outcome, found)
    if completed.patches is None:
        seen = found.summary.assessment_id if found.summary else "none"
        logger.info(
            "Resource Graph has no list yet for assessment %s of %s (its latest: %s): recorded from counts",
            outcome.activity_id, resource_id, seen,
        )  # fmt: skip
    return completed


def awaits_list(resource_id: str, outcome: AssessmentOutcome) -> bool:
    """Whether ``outcome`` is an Arc server's finished assessment whose list only Resource Graph has."""
    return (
        outcome.patches is None
        and outcome.status.lower() in _COMPLETE
        and parse_resource_id(resource_id).kind is MachineKind.ARC_SERVER
    )


def with_patch_lists(
    settings: Settings, credential: TokenCredential, outcomes: Sequence[tuple[str, AssessmentOutcome]]
) -> list[AssessmentOutcome]:
    """:func:`with_patch_list` for many machines (resource id, outcome) with one Resource Graph read for
    all that await a list: each outcome with its list, or unchanged (the same fallback: recorded from
    counts) when Resource Graph has none that describes it or cannot be read."""
    asked = [resource_id for resource_id, outcome in outcomes if awaits_list(resource_id, outcome)]
    if not asked:
        return [outcome for _, outcome in outcomes]
    try:
        found = latest_assessments(resource_graph(credential, settings.resource_graph_endpoint), asked)
    except ResourceGraphError as error:
        logger.warning("Resource Graph could not be read for %d Arc servers (recorded from counts): %s",
                       len(asked), error)
        return [outcome for _, outcome in outcomes]
    completed = [
        with_listed_patches(outcome, found.get(resource_id.lower(), MachineAssessment(resource_id, None, ())))
        if awaits_list(resource_id, outcome) else outcome
        for resource_id, outcome in outcomes
    ]  # fmt: skip
    lagging = sum(1 for (resource_id, before), after in zip(outcomes, completed, strict=True)
                  if awaits_list(resource_id, before) and after.patches is None)
    if lagging:
        logger.info("Resource Graph has no list yet for %d of %d Arc servers: recorded from counts",
                    lagging, len(asked))
    return completed


@dataclass(frozen=True)
class ListWanted:
    """An Arc server's finished assessment whose recording waits for the batch's journal to be applied
    (its list is read then): what recording it needs, kept in its entry (JournalEntry.awaiting_list)."""

    machine: str  # machine_to_json
    run_id: str
    outcome: AssessmentOutcome  # counts only

    def to_json(self) -> dict[str, Any]:
        outcome = asdict(replace(self.outcome, patches=None))
        started = self.outcome.started_at
        outcome["started_at"] = started.isoformat() if started else None
        return {"machine": self.machine, "run": self.run_id, "outcome": outcome}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ListWanted:
        outcome = dict(data["outcome"])
        started = outcome.pop("started_at")
        started_at = datetime.fromisoformat(started) if started else None
        return cls(data["machine"], data["run"], AssessmentOutcome(**outcome, started_at=started_at))


def with_listed_patches(outcome: AssessmentOutcome, found: MachineAssessment) -> AssessmentOutcome:
    """The rule of the module docstring: ``outcome`` with ``found``'s patches when they describe it."""
    if found.summary is None or not describes(found.summary, outcome):
        return outcome
    patches = tuple(p.patch for p in found.patches)
    total = outcome.critical_and_security_count + outcome.other_count
    if len(patches) > total:
        return outcome
    return replace(outcome, patches=patches, truncated=len(patches) < total)


def describes(summary: LastAssessment, outcome: AssessmentOutcome) -> bool:
    """Whether Resource Graph's latest assessment summary is the finished assessment ``outcome``."""
    if summary.status.lower() in _RUNNING:
        return False
    if outcome.activity_id and _guid(summary.assessment_id) == _guid(outcome.activity_id):
        return True
    return outcome.started_at is not None and summary.at is not None and summary.at >= outcome.started_at


def _guid(text: str) -> str:
    return text.strip().strip("{}").lower()
