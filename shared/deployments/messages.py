"""Typed messages between the update-deployment functions: the run, its batches, each machine's steps.

Small by design, as :mod:`shared.messages`: ids, times, counts, one continuation token. The
definition, the target list and each machine's output live in Table and Blob Storage.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field

from shared.deployments.rollout import Window
from shared.messages import Message, PollingTuning
from shared.settings import Settings

# A claim writes the run and its batch's machine rows in one transaction of at most 100 entities
# (Azure Table Storage limit), so a batch holds at most 99 machines; 50 keeps the rows small.
DEPLOYMENT_BATCH_SIZE = 50
# A batch waiting for a slot asks at most this many slot_poll_seconds apart: a slot another batch frees is
# taken at most 2 minutes late by default (a window is at least 30 minutes, an install takes minutes to
# hours), and a long wait costs half the asks (each reads the run row and the batch's rows).
SLOT_POLL_BACKOFF_MAX = 2
# A machine's steps, in order. Installs are numbered: one call may last at most 3 h 55 min, so a
# 6-hour window can need a second call for what the first left pending.
PRESCAN, POSTSCAN, RESTART = "prescan", "postscan", "restart"
MAX_INSTALL_CALLS = 2
Step = Literal["prescan", "install1", "install2", "restart", "postscan"]


def install_step(call: int) -> Step:
    if not 1 <= call <= MAX_INSTALL_CALLS:
        raise ValueError(f"call must be 1 to {MAX_INSTALL_CALLS}, got {call}")
    return "install1" if call == 1 else "install2"


class DeploymentTuning(PollingTuning):
    """Timing and batching of a run, fixed when it starts (orchestrators read no settings)."""

    # A batch with machines waiting but no free slot asks the gate again after this long, then, while its
    # asks start nothing, SLOT_POLL_BACKOFF_MAX times as long.
    slot_poll_seconds: int = Field(default=60, ge=1)

    def slot_poll(self, fruitless: int) -> timedelta:
        """How long a batch waits before asking the gate again, after ``fruitless`` asks in a row that
        started nothing: a batch waiting for a slot asks 1, 2, 2, ... minutes apart by default."""
        factor = min(2 ** max(fruitless - 1, 0), SLOT_POLL_BACKOFF_MAX)
        return timedelta(seconds=self.slot_poll_seconds * factor)

    # Read by no orchestrator since the master's status shows only the batches' counts; kept because every
    # input written before carries them and a run or child replaying one must still accept it.
    progress_seconds: int = Field(default=60, ge=1)
    max_progress_seconds: int = Field(default=300, ge=1)
    # A pre- or post-scan assessment that takes longer is given up (ASSESSMENT_DEADLINE_MINUTES).
    scan_deadline_minutes: int = Field(default=30, ge=1)
    # An install still running this long after the window's end is given up: the agent stops
    # starting updates at the end, and the reboot it may still do takes minutes.
    install_grace_minutes: int = Field(default=30, ge=0)
    batch_size: int = Field(default=DEPLOYMENT_BATCH_SIZE, ge=1, le=DEPLOYMENT_BATCH_SIZE)

    @classmethod
    def from_settings(cls, settings: Settings) -> DeploymentTuning:
        """The tuning the app settings ask for: pre- and post-scans poll and give up as assessments do."""
        return cls(poll_seconds=settings.assessment_poll_seconds,
                   scan_deadline_minutes=settings.assessment_deadline_minutes)


class DeploymentRunInput(Message):
    run_id: str
    deployment: str
    trigger: str = Field(description="schedule, http or http-inline")
    tuning: DeploymentTuning = Field(default_factory=DeploymentTuning)


class ResolveInput(Message):
    run_id: str
    at: datetime
    batch_size: int


class RunPlan(Message):
    """The resolved run: how many machines, in how many batches, and the window."""

    targets: int = 0
    to_run: int = 0
    batches: int = 0
    settled: int = 0
    window_start: datetime | None = None
    window_minutes: int = 0
    reboot: bool = True
    # rebootSetting "RebootOnly": restart the machines, install nothing.
    restart_only: bool = False
    error: str | None = None
    # A ring waiting for the previous ring's bake (shared.deployments.ring_bake): resolve again then.
    wait_until: datetime | None = None

    def window(self) -> Window:
        assert self.window_start is not None, "a plan without a window failed to resolve"
        return Window(self.window_start, self.window_minutes)


class DeploymentBatchInput(Message):
    run_id: str
    batch: int
    window_start: datetime
    window_minutes: int
    reboot: bool
    restart_only: bool = False
    tuning: DeploymentTuning


class ClaimInput(Message):
    run_id: str
    batch: int
    # One batch's waiting machines: the only list of ids that crosses a Durable boundary in a run.
    resource_ids: tuple[str, ...] = Field(max_length=DEPLOYMENT_BATCH_SIZE)
    at: datetime
    # The batch's children that ended since its last claim: their results are recorded, and their slots
    # freed, in the claim's transaction (one write of the run row for both).
    finished: tuple[MachineRunResult, ...] = Field(default=(), max_length=DEPLOYMENT_BATCH_SIZE)
    # The batch's first and last row keys (BatchMachines.key_range; None: a run without batch bounds).
    key_range: tuple[str, str] | None = None


class ClaimResult(Message):
    start: tuple[str, ...] = Field(default=(), max_length=DEPLOYMENT_BATCH_SIZE)
    stop_reason: str | None = None
    not_started: tuple[str, ...] = Field(default=(), max_length=DEPLOYMENT_BATCH_SIZE)
    # Machines of the run running once the claim was made, every batch's (None: not told).
    running: int | None = None


class BatchMachinesRead(Message):
    """Input of read_deployment_batch: one batch's machines from after the row key ``after`` (None: from
    the first); answered as a part (BatchMachines)."""

    run_id: str
    batch: int
    after: str | None = None
    key_range: tuple[str, str] | None = None  # as the first part answered it


class BatchMachines(Message):
    """Part of a batch's machines: their resource ids and, beside each, the machine as JSON (None when
    its row keeps none), at most MAX_BATCH_PART_CHARS of it (shared.assessment.messages), so no event of
    the batch's history spills to a blob; ``after``: where the next part starts (None: done)."""

    resource_ids: tuple[str, ...] = Field(default=(), max_length=DEPLOYMENT_BATCH_SIZE)
    machines: tuple[str | None, ...] = Field(default=(), max_length=DEPLOYMENT_BATCH_SIZE)
    after: str | None = None
    # Beside each machine, its safety policy's key in the run's policies ("" for none; empty tuple in
    # answers from before safe rollouts).
    safety_keys: tuple[str, ...] = Field(default=(), max_length=DEPLOYMENT_BATCH_SIZE)
    # The batch's first and last row keys in the run's table (RunStore.batch_range): its rows are one key
    # range. None for a run resolved before batches had bounds.
    key_range: tuple[str, str] | None = None


class BatchJournalApply(Message):
    """Input of apply_deployment_journal: the batch whose journal and rows are applied at its end."""

    run_id: str
    batch: int
    at: datetime
    key_range: tuple[str, str] | None = None


class MachineDeploymentInput(Message):
    run_id: str
    resource_id: str
    # The machine as the run's resolution saw it (machine_to_json) and its batch, so that the steps read
    # no row for them; None in inputs from before they were carried (read from the machine's row).
    machine: str | None = None
    batch: int | None = None
    window_start: datetime
    window_minutes: int
    reboot: bool
    restart_only: bool = False
    tuning: DeploymentTuning
    # The key of the machine's safety policy in the run's policies (read_safety_policy); None: none.
    safety_key: str | None = None

    def window(self) -> Window:
        return Window(self.window_start, self.window_minutes)

    def install_deadline(self) -> datetime:
        return self.window().end + timedelta(minutes=self.tuning.install_grace_minutes)


class SafetyPolicyRead(Message):
    """Input of read_safety_policy: a machine's safety policy by its key in the run's policies."""

    run_id: str
    key: str


class StepInput(Message):
    """Input of start_machine_step and check_machine_step."""

    run_id: str
    resource_id: str
    step: Step
    at: datetime | None = None
    token: str | None = None
    machine: str | None = None  # as in MachineDeploymentInput
    batch: int | None = None
    # Post-scan: the install step left Arc results for it to read again (StepOutcome.results_pending). No
    # longer acted on (the batch's end reads them: steps.apply_batch_journal); kept for in-flight histories.
    results_pending: bool = False
    # First install call: the machine row's ETag as the pre-scan left it (StepOutcome.row_etag).
    row_etag: str | None = None


class StepFailure(Message):
    """A permanent error: recorded as the machine's result, never raised past the child."""

    code: str
    message: str
    hint: str = ""
    unreachable: bool = False


class StepOutcome(Message):
    """What a finished step tells the child orchestration (the details are stored by the activity)."""

    # Pre-scan: the updates the deployment would install; install: what is left pending.
    pending: int = 0
    has_service_pack: bool = False
    # Pre-scan only: nothing selectable because the distribution classifies nothing (selection).
    unclassified: bool = False
    # Pre-scan only: release packages offered only at an untested version (shared.governance.releases).
    held: int = 0
    # Install only: the machine's result status by the run_results rules, and counts.
    status: str | None = None
    installed: int = 0
    failed: int = 0
    window_exceeded: bool = False
    # Install only: an Arc server's per-update results Resource Graph did not have yet (steps). No longer
    # set (the batch's end reads every Arc install's results); kept so that in-flight histories validate.
    results_pending: bool = False
    # Pre-scan only: the ETag of the machine row the pre-scan wrote, when the install needs nothing from
    # that row but the machine (no optional KBs to leave out, no governed lists): the install's start then
    # writes its intent under that ETag instead of reading the row first (steps.start_step).
    row_etag: str | None = None


class StepAnswer(Message):
    """start_machine_step: ``token``; check_machine_step: ``outcome`` once done; either: ``failure``."""

    token: str | None = None
    in_progress: bool = False
    outcome: StepOutcome | None = None
    failure: StepFailure | None = None


class FinishInput(Message):
    run_id: str
    resource_id: str
    status: str
    reason: str = ""
    at: datetime
    failure: StepFailure | None = None


class MachineRunResult(Message):
    """What a child ends with; its batch records it with its next claim (RunStore.claim)."""

    status: str
    reason: str = ""
    resource_id: str = ""  # empty in results from before the batch recorded them
    at: datetime | None = None
    failure: StepFailure | None = None
    # Steps whose output is kept but not yet in the row's list: the post-scan's, whose check writes
    # nothing else to the row; listed in the write that records the result.
    outputs: tuple[str, ...] = ()
    # Safe rollouts (shared.safety.policy's HEALTH_* and ROLLBACK_* values; empty when no policy applied).
    health: str = ""
    rollback: str = ""
    restore_point: datetime | None = None

    def safety(self) -> dict[str, Any]:
        """The MachineOutcomeRecord fields of the health checks and the rollback."""
        return {"health": self.health, "rollback": self.rollback, "restore_point": self.restore_point}
