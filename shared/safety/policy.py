"""A safety policy: the health checks around each machine's install, its bake time, its pre-patch
snapshots and when it is rolled back (issue 14).

A category carries one (``safety`` on :class:`shared.governance.categories.AssetCategory`) and a
deployment may carry its own, which then wins for every machine of its runs. Checks:

- ``agentReady``: the machine runs and its agent reports ready (a VM's guest agent ``Ready``, an Arc
  server ``Connected``) within ``withinMinutes``;
- ``command``: a script run on the machine through Run Command (VM action ``runCommand``, Arc
  ``runCommands``); it passes when it exits 0 and, if ``expectOutput`` is given, its output matches
  that regular expression;
- ``logQuery``: KQL against the workspace that must return no row (``{resourceId}`` and ``{computer}``
  are replaced by the machine's values, quoted as KQL strings); before the install it looks back
  ``lookbackMinutes``, after it over the time since the install;
- ``verdict``: after the install, the run waits up to ``timeoutMinutes`` for a test system to post
  ``pass`` or ``fail`` for the machine (``POST /api/deployment-runs/{runId}/machines/{machineId}/verdict``);
  no verdict in time fails the check.

Before an install every check but ``verdict`` runs once: a machine failing one is not patched
(``skipped``, "unhealthy before install"). After it every check runs, then again every
``recheckMinutes`` until ``bakeMinutes`` have passed; the first failure ends the bake. With ``snapshot``
``os`` or ``all`` a VM's disks are snapshotted (incremental) right before its install and kept
``snapshotRetentionDays``; ``rollback`` says when the machine is restored from them.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from shared.model.validation import MAX_QUERY_CHARS, NAME_PATTERN, NAME_RULE, error_rule

# A check's name is part of its Run Command resource name and of the records: a name people create.
# Ten checks are more than any real gate (agent, a probe or two, a log search, a verdict).
MAX_CHECKS = 10
# VM Run Command (action) stops a script after 90 minutes ("The maximum time a script can run is 90
# minutes", Run Command docs' restrictions; MicrosoftDocs/azure-docs#10409). The same bound is used for
# Arc's runCommands ``timeoutInSeconds``, so a check means the same on both.
MAX_COMMAND_MINUTES = 90
DEFAULT_COMMAND_MINUTES = 10
# A Run Command script is sent in the request body; the action's scripts are small probes, and
# 100 lines of 1,000 characters keeps the stored definition small.
MAX_SCRIPT_LINES = 100
MAX_SCRIPT_LINE_CHARS = 1000
MAX_PATTERN_CHARS = 1000
# The agent reports within minutes of a boot; an hour covers a slow Windows restart with updates.
DEFAULT_AGENT_MINUTES = 15
MAX_AGENT_MINUTES = 120
# A logQuery before the install looks back an hour by default; a day at most (Log Analytics answers
# any span, but a gate that looks further back judges yesterday, not the machine now).
DEFAULT_LOOKBACK_MINUTES = 60
MAX_LOOKBACK_MINUTES = 1440
# A test system's verdict: an hour by default, a day at most (the machine's orchestration waits).
DEFAULT_VERDICT_MINUTES = 60
MAX_VERDICT_MINUTES = 1440
# Bake time per machine: the checks repeat over it. A day at most: a machine's orchestration holds
# its run open while it bakes; longer soaks belong to the ring's bake (ringBakeHours).
DEFAULT_BAKE_MINUTES = 0
MAX_BAKE_MINUTES = 1440
DEFAULT_RECHECK_MINUTES = 15
MIN_RECHECK_MINUTES = 5
# Between rings of a category: a week at most (the next ring's run waits on durable timers).
MAX_RING_BAKE_HOURS = 168
# Snapshots are kept a week by default; 90 days at most (incremental snapshots are billed by the
# changed data; a restore point older than a quarter is not one anyone should boot).
DEFAULT_RETENTION_DAYS = 7
MAX_RETENTION_DAYS = 90


class PolicyError(ValueError):
    """A safety policy that cannot work: :attr:`details` every field at fault with its rule."""

    def __init__(self, details: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {rule}" for field, rule in details))
        self.details = details


class CheckKind(StrEnum):
    AGENT_READY = "agentReady"
    COMMAND = "command"
    LOG_QUERY = "logQuery"
    VERDICT = "verdict"


class SnapshotScope(StrEnum):
    NONE = "none"
    OS = "os"  # the OS disk only
    ALL = "all"  # the OS disk and every data disk


class RollbackWhen(StrEnum):
    OFF = "off"
    HEALTH_FAILURE = "onHealthFailure"
    HEALTH_OR_INSTALL_FAILURE = "onHealthOrInstallFailure"


class ArcServers(StrEnum):
    """What a policy with snapshots does with an Arc-enabled server, which has no disks in Azure."""

    SKIP = "skip"  # not patched: "cannot be rolled back" (the default: the policy asked for rollback)
    WITHOUT_ROLLBACK = "patchWithoutRollback"  # patched and checked, its result says it cannot be restored


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class _Check(_Model):
    name: str = Field(json_schema_extra={"pattern": NAME_PATTERN.pattern})

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(NAME_RULE)
        return value


class AgentReadyCheck(_Check):
    type: Literal["agentReady"]
    within_minutes: int = Field(default=DEFAULT_AGENT_MINUTES, ge=1, le=MAX_AGENT_MINUTES)


class CommandCheck(_Check):
    type: Literal["command"]
    script: list[Annotated[str, Field(max_length=MAX_SCRIPT_LINE_CHARS)]] = Field(
        min_length=1, max_length=MAX_SCRIPT_LINES)
    expect_output: str | None = Field(default=None, min_length=1, max_length=MAX_PATTERN_CHARS,
                                      description="a regular expression the script's output must match")
    timeout_minutes: int = Field(default=DEFAULT_COMMAND_MINUTES, ge=1, le=MAX_COMMAND_MINUTES)

    @field_validator("expect_output")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"must be a regular expression ({error})") from None
        return value


class LogQueryCheck(_Check):
    type: Literal["logQuery"]
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS,
                       description="KQL that must return no row; {resourceId} and {computer} are replaced")
    lookback_minutes: int = Field(default=DEFAULT_LOOKBACK_MINUTES, ge=1, le=MAX_LOOKBACK_MINUTES)


class VerdictCheck(_Check):
    type: Literal["verdict"]
    timeout_minutes: int = Field(default=DEFAULT_VERDICT_MINUTES, ge=1, le=MAX_VERDICT_MINUTES)


HealthCheck = Annotated[AgentReadyCheck | CommandCheck | LogQueryCheck | VerdictCheck,
                        Field(discriminator="type")]


class SafetyPolicy(_Model):
    checks: list[HealthCheck] = Field(default_factory=list, max_length=MAX_CHECKS)
    bake_minutes: int = Field(default=DEFAULT_BAKE_MINUTES, ge=0, le=MAX_BAKE_MINUTES)
    recheck_minutes: int = Field(default=DEFAULT_RECHECK_MINUTES, ge=MIN_RECHECK_MINUTES, le=MAX_BAKE_MINUTES)
    ring_bake_hours: int = Field(default=0, ge=0, le=MAX_RING_BAKE_HOURS)
    snapshot: SnapshotScope = SnapshotScope.NONE
    snapshot_retention_days: int = Field(default=DEFAULT_RETENTION_DAYS, ge=1, le=MAX_RETENTION_DAYS)
    # None: onHealthFailure with snapshots, off without (filled in by the validator).
    rollback: RollbackWhen | None = None
    arc_servers: ArcServers = ArcServers.SKIP

    @model_validator(mode="after")
    def _consistent(self) -> SafetyPolicy:
        names = [check.name for check in self.checks]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"checks: each check needs its own name ({', '.join(twice)} used twice)")
        if self.rollback is None:
            rollback = RollbackWhen.HEALTH_FAILURE if self.takes_snapshots else RollbackWhen.OFF
            object.__setattr__(self, "rollback", rollback)
        elif self.rollback is not RollbackWhen.OFF and self.snapshot is SnapshotScope.NONE:
            raise ValueError('rollback: restoring a machine needs its snapshots: '
                             'set snapshot to "os" or "all"')
        return self

    @property
    def rolls_back(self) -> bool:
        return self.rollback is not RollbackWhen.OFF

    @property
    def takes_snapshots(self) -> bool:
        return self.snapshot is not SnapshotScope.NONE

    def checks_before(self) -> list[AgentReadyCheck | CommandCheck | LogQueryCheck | VerdictCheck]:
        """The checks run before an install: every one but ``verdict`` (a test system judges the install)."""
        return [check for check in self.checks if check.type != CheckKind.VERDICT]

    def is_active(self) -> bool:
        """Whether the policy does anything at all (an empty one leaves the install as it was)."""
        return bool(self.checks) or self.takes_snapshots


def parse_policy(body: Any, field: str = "safety") -> SafetyPolicy:
    """A policy from an HTTP body's ``field``; :class:`PolicyError` names every field at fault."""
    try:
        return SafetyPolicy.model_validate(body)
    except ValidationError as error:
        raise PolicyError(_details(error, field)) from None


_KINDS = ", ".join(kind.value for kind in CheckKind)


def _details(error: ValidationError, field: str) -> list[tuple[str, str]]:
    """pydantic's errors with the check's kind taken out of the path (``checks.0.command.script`` is
    ``checks.0.script`` to the caller) and an unknown kind said plainly."""
    found: list[tuple[str, str]] = []
    for item in error.errors():
        loc = [part for n, part in enumerate(item["loc"])
               if not (n and isinstance(item["loc"][n - 1], int) and part in set(CheckKind))]
        rule = None
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc, rule = [*loc, "type"], f"must be one of {_KINDS}"
        path = ".".join(str(part) for part in loc)
        found.append((f"{field}.{path}" if path else field, rule or error_rule(item)))
    return list(dict.fromkeys(found))


def policy_json(policy: SafetyPolicy) -> dict[str, Any]:
    return policy.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- what a machine's run record says (the run row and UpdateRunMachine_CL's Health and Rollback) ---

HEALTH_PASSED = "passed"
HEALTH_FAILED_PREFIX = "failed: "  # then "<check>: <why>"
HEALTH_UNHEALTHY_BEFORE = "unhealthy before install"
ROLLBACK_RESTORED = "restored"
ROLLBACK_FAILED = "failed"
ROLLBACK_NOT_POSSIBLE = "not possible"  # an Arc-enabled server, or no snapshot was taken


def health_failed(check: str, detail: str) -> str:
    return f"{HEALTH_FAILED_PREFIX}{check}: {detail}"
