"""Typed messages of the assessment orchestrations and their activities: ids, tuning and counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from shared.messages import Message, PollingTuning
from shared.model.assessment_outcome import Compliance
from shared.settings import Settings


class AssessmentTuning(PollingTuning):
    """Timing and batching of a run, fixed when it starts (orchestrators read no settings)."""

    deadline_minutes: int = Field(default=30, ge=1)
    # Children per batch sub-orchestration: Durable replays a whole history on every completion, so
    # 100 keeps each batch's replay short and a 10,000-machine fleet is 100 batches (AZURE-FACTS).
    batch_size: int = Field(default=100, ge=1, le=1000)

    @classmethod
    def from_settings(cls, settings: Settings) -> AssessmentTuning:
        """The tuning the app settings ask for; the rest keeps its defaults."""
        return cls(poll_seconds=settings.assessment_poll_seconds,
                   deadline_minutes=settings.assessment_deadline_minutes)


class AssessmentRunInput(Message):
    trigger: str = Field(description="timer-linux, timer-windows, light-check or http")
    scope: dict[str, Any] = Field(default_factory=dict, description="AssessmentScope JSON form")
    subscription_ids: tuple[str, ...] = Field(min_length=1)
    tuning: AssessmentTuning = Field(default_factory=AssessmentTuning)
    machine_ids_stored: bool = Field(
        default=False,
        description="the scope's machine ids are in AssessmentTargets under the run's id (run.store_scope), "
        "written before the run starts, so the input stays small however many there are",
    )


class TargetListingInput(Message):
    run_id: str
    scope: dict[str, Any]
    subscription_ids: tuple[str, ...]
    observed_at: datetime
    batch_size: int
    machine_ids_stored: bool = False


class TargetListing(Message):
    machines: int = 0  # in scope
    to_assess: int = 0
    batches: int = 0
    not_assessable: int = 0
    unsupported: int = 0
    subscriptions_failed: tuple[str, ...] = ()


class BatchInput(Message):
    run_id: str
    batch: int
    tuning: AssessmentTuning


class BatchRead(Message):
    """Input of read_assessment_batch: one batch, from after the machine key ``after`` (None: the first)."""

    run_id: str
    batch: int
    after: str | None = None


# A batch's machines reach its orchestration in parts of at most this much machine JSON (assessment and
# deployment batches alike). The Azure Storage backend keeps a payload larger than a table property
# (64 KiB as UTF-16, about 30,000 characters) in a blob that every replay reads back (AZURE-FACTS, Durable
# limits); the activity's result encodes the JSON again (quotes escaped, about a tenth longer), so 25,000
# stays inline.
MAX_BATCH_PART_CHARS = 25_000


class BatchTargets(Message):
    """Part of a batch's machines as JSON (machine_to_json), and where the next part starts (None: done).
    A part stays under MAX_BATCH_PART_CHARS, so no history event of the batch spills to a blob."""

    machines: tuple[str, ...] = ()
    after: str | None = None


# A batch starts its machines in groups of at most this many, each an orchestration of its own. An
# orchestration replays its whole history each time one of its children ends, so a batch that waited on
# its 100 machines itself replayed about 20,000 history events (200 per machine, most of the CPU of its
# orchestrations); groups of ten replay about 25 events per machine, their batch about 3.
GROUP_SIZE = 10


class GroupInput(Message):
    """Input of assessment_group: a few machines of a batch as JSON (machine_to_json), at most GROUP_SIZE
    and MAX_BATCH_PART_CHARS of JSON, so the input never spills to a blob."""

    run_id: str
    batch: int
    tuning: AssessmentTuning
    machines: tuple[str, ...] = Field(min_length=1)


def machine_groups(machines: Sequence[str]) -> list[tuple[str, ...]]:
    """``machines`` in order, cut into groups of at most GROUP_SIZE machines and MAX_BATCH_PART_CHARS of
    JSON (a machine longer than that alone in its group)."""
    groups: list[tuple[str, ...]] = []
    group: list[str] = []
    size = 0
    for machine in machines:
        if group and (len(group) == GROUP_SIZE or size + len(machine) > MAX_BATCH_PART_CHARS):
            groups.append(tuple(group))
            group, size = [], 0
        group.append(machine)
        size += len(machine)
    if group:
        groups.append(tuple(group))
    return groups


class JournalApply(Message):
    """Input of apply_inventory_journal: journals of batches to apply together (assessment/journal.py)."""

    journals: tuple[str, ...] = Field(min_length=1)
    at: datetime


class MachineAssessmentInput(Message):
    run_id: str
    batch: int
    resource_id: str
    tuning: AssessmentTuning
    # The machine as the listing saw it (machine_to_json), so that recording reads no table for it.
    machine: str | None = None


class AssessmentActivityInput(Message):
    """Input of start_assessment, check_assessment and record_assessment_failure."""

    run_id: str
    batch: int
    resource_id: str
    machine: str | None = None  # as in MachineAssessmentInput; None: read from AssessmentTargets
    token: str | None = None
    at: datetime | None = None
    failure_code: str | None = None
    failure_message: str | None = None


class MachineResult(Message):
    """What one machine's child orchestration ended with: a state and counts, never patch lists."""

    state: Literal["assessed", "failed", "not_assessable", "unsupported", "timed_out"]
    compliant: bool | None = None
    compliance: Compliance | None = None
    missing_by_classification: dict[str, int] = Field(default_factory=dict)

    @property
    def verdict(self) -> Compliance | None:
        """``compliance``; a result without it (written before it existed) by its ``compliant``."""
        if self.compliance is not None or self.compliant is None:
            return self.compliance
        return Compliance.COMPLIANT if self.compliant else Compliance.NON_COMPLIANT


class AssessmentStep(Message):
    """check_assessment's answer: still running, or the machine's result (already recorded)."""

    in_progress: bool
    result: MachineResult | None = None


class AssessmentCounts(Message):
    machines: int = 0
    assessed: int = 0
    failed: int = 0
    timed_out: int = 0
    not_assessable: int = 0
    unsupported: int = 0
    compliant: int = 0
    non_compliant: int = 0
    # Assessed, but not judged: the distribution publishes no classification data (Compliance.UNKNOWN).
    compliance_unknown: int = 0
    missing_by_classification: dict[str, int] = Field(default_factory=dict)

    def plus(self, other: AssessmentCounts) -> AssessmentCounts:
        return AssessmentCounts(
            machines=self.machines + other.machines,
            assessed=self.assessed + other.assessed,
            failed=self.failed + other.failed,
            timed_out=self.timed_out + other.timed_out,
            not_assessable=self.not_assessable + other.not_assessable,
            unsupported=self.unsupported + other.unsupported,
            compliant=self.compliant + other.compliant,
            non_compliant=self.non_compliant + other.non_compliant,
            compliance_unknown=self.compliance_unknown + other.compliance_unknown,
            missing_by_classification=dict(
                Counter(self.missing_by_classification) + Counter(other.missing_by_classification)
            ),
        )

    @classmethod
    def of(cls, result: MachineResult) -> AssessmentCounts:
        return cls(
            machines=1,
            assessed=int(result.state == "assessed"),
            failed=int(result.state == "failed"),
            timed_out=int(result.state == "timed_out"),
            not_assessable=int(result.state == "not_assessable"),
            unsupported=int(result.state == "unsupported"),
            compliant=int(result.verdict is Compliance.COMPLIANT),
            non_compliant=int(result.verdict is Compliance.NON_COMPLIANT),
            compliance_unknown=int(result.verdict is Compliance.UNKNOWN),
            missing_by_classification=dict(result.missing_by_classification),
        )
