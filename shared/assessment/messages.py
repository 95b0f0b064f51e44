"""Typed messages of the assessment orchestrations and their activities: ids, tuning and counts."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from shared.messages import Message, PollingTuning
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


class MachineAssessmentInput(Message):
    run_id: str
    batch: int
    resource_id: str
    tuning: AssessmentTuning


class AssessmentActivityInput(Message):
    """Input of start_assessment, check_assessment and record_assessment_failure."""

    run_id: str
    batch: int
    resource_id: str
    token: str | None = None
    at: datetime | None = None
    failure_code: str | None = None
    failure_message: str | None = None


class MachineResult(Message):
    """What one machine's child orchestration ended with: a state and counts, never patch lists."""

    state: Literal["assessed", "failed", "not_assessable", "unsupported", "timed_out"]
    compliant: bool | None = None
    missing_by_classification: dict[str, int] = Field(default_factory=dict)


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
            compliant=int(result.compliant is True),
            non_compliant=int(result.compliant is False),
            missing_by_classification=dict(result.missing_by_classification),
        )
