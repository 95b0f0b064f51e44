"""History events and orchestrator actions in the JSON shapes azure-functions-durable 1.7.0 reads and writes.

The SDK replays an orchestrator from a list of DTFx history events (``EventType``, ``EventId``,
``IsPlayed``, ``Timestamp`` plus per-type fields) and answers with a list of actions. This
module builds the former and reads the latter; it knows nothing about scheduling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

# The SDK formats datetimes with this pattern (azure/durable_functions/constants.py).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# Replay schema V2 (ReplaySchema.V2 == 1): one flat action list per episode, with compound
# WhenAll/WhenAny actions. V3 only adds long timers, which need host settings we do not send.
UPPER_SCHEMA_VERSION = 1
# The SDK's uncaught-failure message ends with this label followed by the orchestrator state JSON.
OUT_OF_PROC_LABEL = "$OutOfProcData$:"


class EventType(IntEnum):
    """DTFx ``EventType`` values (azure/durable_functions/models/history/HistoryEventType.py)."""

    EXECUTION_STARTED = 0
    EXECUTION_COMPLETED = 1
    EXECUTION_FAILED = 2
    EXECUTION_TERMINATED = 3
    TASK_SCHEDULED = 4
    TASK_COMPLETED = 5
    TASK_FAILED = 6
    SUB_ORCHESTRATION_CREATED = 7
    SUB_ORCHESTRATION_COMPLETED = 8
    SUB_ORCHESTRATION_FAILED = 9
    TIMER_CREATED = 10
    TIMER_FIRED = 11
    ORCHESTRATOR_STARTED = 12
    ORCHESTRATOR_COMPLETED = 13
    EVENT_RAISED = 15
    CONTINUE_AS_NEW = 16


class ActionType(IntEnum):
    """Orchestrator action types (azure/durable_functions/models/actions/ActionType.py)."""

    CALL_ACTIVITY = 0
    CALL_ACTIVITY_WITH_RETRY = 1
    CALL_SUB_ORCHESTRATOR = 2
    CALL_SUB_ORCHESTRATOR_WITH_RETRY = 3
    CONTINUE_AS_NEW = 4
    CREATE_TIMER = 5
    WAIT_FOR_EXTERNAL_EVENT = 6
    CALL_ENTITY = 7
    CALL_HTTP = 8
    SIGNAL_ENTITY = 9
    WHEN_ANY = 11
    WHEN_ALL = 12


ACTIVITY_ACTIONS = frozenset({ActionType.CALL_ACTIVITY, ActionType.CALL_ACTIVITY_WITH_RETRY})
SUB_ORCHESTRATOR_ACTIONS = frozenset(
    {ActionType.CALL_SUB_ORCHESTRATOR, ActionType.CALL_SUB_ORCHESTRATOR_WITH_RETRY}
)
RETRY_ACTIONS = frozenset({ActionType.CALL_ACTIVITY_WITH_RETRY, ActionType.CALL_SUB_ORCHESTRATOR_WITH_RETRY})
# Actions the SDK gives no sequence number (WaitForExternalEvent is keyed by name; ContinueAsNew
# is fire-and-forget); every other atomic action consumes the next task id when first yielded.
ACTIONS_WITHOUT_TASK_ID = frozenset({ActionType.WAIT_FOR_EXTERNAL_EVENT, ActionType.CONTINUE_AS_NEW})
SUPPORTED_ACTIONS = ACTIVITY_ACTIONS | SUB_ORCHESTRATOR_ACTIONS | ACTIONS_WITHOUT_TASK_ID | {
    ActionType.CREATE_TIMER
}


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def new_event(
    event_type: EventType, timestamp: datetime, event_id: int = -1, **fields: Any
) -> dict[str, Any]:
    """One history event; ``EventId`` is the task id for scheduling events and -1 otherwise, as in DTFx."""
    return {
        "EventType": int(event_type),
        "EventId": event_id,
        "IsPlayed": False,
        "Timestamp": format_time(timestamp),
        **fields,
    }


def replay_view(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history as the SDK receives it: events before the current episode marked as played."""
    last_start = max(
        (i for i, e in enumerate(history) if e["EventType"] == EventType.ORCHESTRATOR_STARTED), default=0
    )
    return [{**event, "IsPlayed": index < last_start} for index, event in enumerate(history)]


@dataclass(frozen=True)
class ActionSpec:
    """One atomic action the orchestrator asked for, reduced to what must be identical on replay."""

    action_type: ActionType
    name: str | None = None
    input: str | None = None
    fire_at: str | None = None
    instance_id: str | None = None
    retry_first_interval_ms: int | None = None
    retry_max_attempts: int | None = None
    canceled: bool = field(default=False, compare=False)

    def describe(self) -> str:
        kind = self.action_type.name
        if self.action_type == ActionType.CREATE_TIMER:
            return f"{kind}(fireAt={self.fire_at})"
        if self.action_type == ActionType.WAIT_FOR_EXTERNAL_EVENT:
            return f"{kind}({self.name!r})"
        detail = f"{kind}({self.name!r}, input={_short(self.input)}"
        if self.instance_id:
            detail += f", instanceId={self.instance_id!r}"
        return detail + ")"

    @property
    def takes_task_id(self) -> bool:
        return self.action_type not in ACTIONS_WITHOUT_TASK_ID


def _short(text: str | None, limit: int = 120) -> str:
    if text is None:
        return "None"
    return text if len(text) <= limit else text[:limit] + "..."


def action_spec(raw: dict[str, Any]) -> ActionSpec:
    """Read one atomic action JSON object (see the SDK's ``*Action.to_json``)."""
    action_type = ActionType(int(raw["actionType"]))
    retry = raw.get("retryOptions") or {}
    return ActionSpec(
        action_type=action_type,
        name=raw.get("functionName") or raw.get("externalEventName"),
        input=raw.get("input"),
        fire_at=raw.get("fireAt"),
        instance_id=raw.get("instanceId"),
        retry_first_interval_ms=retry.get("firstRetryIntervalInMilliseconds"),
        retry_max_attempts=retry.get("maxNumberOfAttempts"),
        canceled=bool(raw.get("isCanceled", False)),
    )


def flatten_actions(actions: list[Any]) -> list[ActionSpec]:
    """Atomic actions in the order the SDK numbered them: lists and WhenAll/WhenAny expanded depth-first."""
    flat: list[ActionSpec] = []

    def visit(item: Any) -> None:
        if isinstance(item, list):
            for child in item:
                visit(child)
        elif int(item["actionType"]) in (ActionType.WHEN_ALL, ActionType.WHEN_ANY):
            for child in item.get("compoundActions", []):
                visit(child)
        else:
            flat.append(action_spec(item))

    visit(actions)
    return flat


@dataclass
class OrchestratorResult:
    """What one call of the SDK handle produced."""

    state: dict[str, Any]
    error: str | None = None  # set when the orchestrator raised an uncaught exception

    @property
    def done(self) -> bool:
        return bool(self.state.get("isDone"))

    @property
    def actions(self) -> list[ActionSpec]:
        return flatten_actions(self.state.get("actions", []))


def read_handle_result(returned: Any) -> OrchestratorResult:
    """The handle returns the state as a JSON string (``OrchestratorState.to_json_string``)."""
    state = json.loads(returned) if isinstance(returned, str | bytes) else dict(returned)
    return OrchestratorResult(state=state)


def read_handle_failure(error: BaseException) -> OrchestratorResult:
    """An uncaught orchestrator exception: the message ends with ``$OutOfProcData$:{state json}``."""
    message = str(error)
    head, label, tail = message.partition(OUT_OF_PROC_LABEL)
    state: dict[str, Any] = {}
    if label:
        try:
            state = json.loads(tail)
        except json.JSONDecodeError:
            state = {}
    text = (state.get("error") or head).strip() or type(error).__name__
    return OrchestratorResult(state=state, error=text)
