"""Typed messages of the fleet discovery orchestration and its activities."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from pydantic import Field

from shared.messages import Message


class DiscoveryRunInput(Message):
    subscription_ids: tuple[str, ...] = Field(min_length=1)
    trigger: str = Field(description="what started the run: timer or http")


class SubscriptionDiscoveryInput(Message):
    run_id: str
    subscription_id: str
    observed_at: datetime


class DiscoveryCounts(Message):
    machines: int = 0
    heartbeats: int = 0  # Heartbeat_CL rows queued: machines changed or last sent an hour ago
    by_os: dict[str, int] = Field(default_factory=dict)
    by_environment: dict[str, int] = Field(default_factory=dict)
    by_power_state: dict[str, int] = Field(default_factory=dict)
    not_reachable: int = 0
    assessment_only: int = 0
    unsupported: int = 0
    subscriptions_failed: tuple[str, ...] = ()

    def plus(self, other: DiscoveryCounts) -> DiscoveryCounts:
        def add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return dict(Counter(a) + Counter(b))

        return DiscoveryCounts(
            machines=self.machines + other.machines,
            heartbeats=self.heartbeats + other.heartbeats,
            by_os=add(self.by_os, other.by_os),
            by_environment=add(self.by_environment, other.by_environment),
            by_power_state=add(self.by_power_state, other.by_power_state),
            not_reachable=self.not_reachable + other.not_reachable,
            assessment_only=self.assessment_only + other.assessment_only,
            unsupported=self.unsupported + other.unsupported,
            subscriptions_failed=self.subscriptions_failed + other.subscriptions_failed,
        )
