"""The base of every message that crosses a Durable Functions boundary, and the polling tuning all share.

Small by design: ids, timestamps and counts. Lists of machines and patches live in
Table Storage and Log Analytics, never in orchestration history (payloads over about
45 KB spill to blobs and every replay reads them back; AZURE-FACTS, Durable limits).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PollingTuning(Message):
    """How a per-machine orchestration waits on ARM: checks of a long-running operation, and retries."""

    poll_seconds: int = Field(default=60, ge=1)  # ASSESSMENT_POLL_SECONDS's default (shared/settings.py)
    # Waits grow by half each poll up to this; ARM reads are rationed (AZURE-FACTS, ARM throttling).
    max_poll_seconds: int = Field(default=300, ge=1)
    # Transient errors (throttling, 5xx) retried this many times with growing waits before recording.
    max_attempts: int = Field(default=5, ge=1)
    backoff_seconds: int = Field(default=30, ge=1)
