"""The local Durable Functions engine: runs a DFApp's orchestrators through the SDK's own replay.

Each orchestration wake-up ("episode") appends ``OrchestratorStarted`` and the new events to the
instance's history, calls the orchestrator handle with the whole history (exactly what the
Functions host does), checks that every action the code asks for again matches what history
recorded, and turns new actions into history events and work: activities on a thread pool,
sub-orchestrations as child instances, timers on the shared clock.

One dispatcher thread owns every history. Activity threads and API callers only append to an
instance's inbox under the runner's lock, so idle detection (no episode to run, no activity in
flight, no timer that can fire) is exact, which lets a :class:`VirtualClock` jump to the next
timer as soon as nothing else can happen.

Histories, inboxes and timers stand for what Azure keeps in storage, so
:meth:`DurableRunner.simulate_host_restart` can throw away everything else a host holds (its
running activities) and show that an orchestration survives a host dying mid-way. Given a
:class:`~local.durable.store.TableStore`, they are in storage for real: written before they count and
read back by :meth:`DurableRunner.start`, so a host process killed and started again resumes them.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import json
import logging
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from azure.functions.durable_functions import ActivityTriggerConverter
from azure.functions.meta import Datum

from local.app_index import app_functions
from local.clock import Clock
from local.durable.history import (
    ACTIVITY_ACTIONS,
    RETRY_ACTIONS,
    SUB_ORCHESTRATOR_ACTIONS,
    SUPPORTED_ACTIONS,
    UPPER_SCHEMA_VERSION,
    ActionSpec,
    ActionType,
    EventType,
    OrchestratorResult,
    format_time,
    new_event,
    parse_time,
    read_handle_failure,
    read_handle_result,
    replay_view,
)
from local.durable.limits import custom_status_problem, instance_id_problem, spill_reason

if TYPE_CHECKING:
    from local.durable.store import TableStore

log = logging.getLogger(__name__)

PENDING, RUNNING, COMPLETED, FAILED, TERMINATED, CONTINUED_AS_NEW = (
    "Pending", "Running", "Completed", "Failed", "Terminated", "ContinuedAsNew",
)
LIVE_STATUSES = frozenset({PENDING, RUNNING, CONTINUED_AS_NEW})
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, TERMINATED})
DEFAULT_ACTIVITY_CONCURRENCY = 8  # host.json maxConcurrentActivityFunctions is passed in by the stack
# The names of the threads that run activities and orchestrations (the bench counts their CPU apart).
ACTIVITY_THREAD_PREFIX = "durable-activity"
DISPATCHER_THREAD_NAME = "durable-dispatcher"
_POLL_SECONDS = 0.05  # re-check timers this often: another stand-in may move a shared VirtualClock
_IDLE_POLL_SECONDS = 0.5
_COMPLETION_EVENTS = frozenset({
    EventType.TASK_COMPLETED, EventType.TASK_FAILED, EventType.SUB_ORCHESTRATION_COMPLETED,
    EventType.SUB_ORCHESTRATION_FAILED, EventType.TIMER_FIRED,
})
_CHILD_ANSWERS = frozenset({EventType.SUB_ORCHESTRATION_COMPLETED, EventType.SUB_ORCHESTRATION_FAILED})


class DurableRunnerError(Exception):
    pass


class NonDeterminismError(DurableRunnerError):
    """The orchestrator asked for something other than what its history recorded."""


class InstanceAlreadyRunning(DurableRunnerError):
    pass


class InstanceNotFound(DurableRunnerError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "instance not found"


class InstanceGone(DurableRunnerError):
    """The instance has ended (completed, failed or terminated); it takes no more events."""


class UnknownFunction(DurableRunnerError, ValueError):
    pass


class InvalidInstanceId(DurableRunnerError, ValueError):
    """An instance id Azure refuses (local/durable/limits.py); the client API answers 400, as Azure does."""


@dataclass
class _Target:
    """What a task id stands for: an action of the code, or a retry timer / re-attempt of one."""

    action_index: int
    role: str  # "action" | "retry_timer" | "attempt"


@dataclass
class _RetryState:
    attempts: int
    max_attempts: int
    interval: timedelta


@dataclass
class _Execution:
    execution_id: str
    input_text: str | None  # the JSON text the orchestrator's get_input() decodes
    history: list[dict[str, Any]] = field(default_factory=list)
    actions: list[ActionSpec] = field(default_factory=list)
    action_task_ids: list[int | None] = field(default_factory=list)
    targets: dict[int, _Target] = field(default_factory=dict)
    retries: dict[int, _RetryState] = field(default_factory=dict)
    pending_timers: set[int] = field(default_factory=set)
    next_task_id: int = 0
    persisted: int = 0  # history events written to the store (local/durable/store.py)

    def allocate(self, target: _Target) -> int:
        task_id = self.next_task_id
        self.next_task_id += 1
        self.targets[task_id] = target
        return task_id


@dataclass
class _ParentLink:
    instance_id: str
    execution_id: str
    task_id: int


@dataclass
class _Instance:
    instance_id: str
    name: str
    execution: _Execution
    created: datetime
    last_updated: datetime
    status: str = PENDING
    output: Any = None
    custom_status: Any = None
    parent: _ParentLink | None = None
    inbox: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class HostRestartOutcome:
    """What :meth:`DurableRunner.simulate_host_restart` did."""

    redelivered_tasks: tuple[tuple[str, int], ...]  # (instance id, task id) of each activity run again
    replayed_instances: tuple[str, ...]  # live instances replayed from their history, in creation order
    failed_on_replay: tuple[str, ...]  # those whose code no longer fits their history


@dataclass(frozen=True)
class _ActivityRun:
    """One delivery of an activity work item to a worker; a host restart delivers it again."""

    run_id: int
    instance_id: str
    execution_id: str
    task_id: int
    name: str
    input_text: str | None


@dataclass(order=True)
class _Timer:
    fire_at: datetime
    seq: int
    instance_id: str = field(compare=False)
    execution_id: str = field(compare=False)
    task_id: int = field(compare=False)


class DurableRunner:
    """Runs the orchestrations and activities of a ``df.DFApp`` on one machine."""

    def __init__(self, app: Any, clock: Clock, *, activity_concurrency: int = DEFAULT_ACTIVITY_CONCURRENCY,
                 task_hub: str = "LocalHub", store: TableStore | None = None) -> None:
        if activity_concurrency < 1:
            raise ValueError(f"activity_concurrency must be at least 1, got {activity_concurrency}")
        self.clock = clock
        self.task_hub = task_hub
        self.activity_concurrency = activity_concurrency
        self._orchestrators, self._activities = _index(app)
        self._cond = threading.Condition(threading.RLock())
        self._instances: dict[str, _Instance] = {}
        self._ready: dict[str, None] = {}  # insertion-ordered set of instance ids with inbox events
        self._timers: list[_Timer] = []
        self._timer_seq = itertools.count()
        self._activity_runs: dict[int, _ActivityRun] = {}  # the runs whose completion history awaits
        self._run_ids = itertools.count()
        self._clock_holds = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._client_api: Any = None
        # With a store, every history event, timer and pending message is written before it counts, and
        # start() resumes what a previous host left; without one, the task hub lives in memory.
        self._store = store
        self._loaded = False
        self._in_episode: str | None = None
        self._deferred_runs: list[_ActivityRun] = []

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> DurableRunner:
        if self._thread is not None:
            return self
        self._stopping = False
        self._pool = self._new_pool()
        if self._store is not None and not self._loaded:
            with self._cond:
                self._resume_from_store()
        self._thread = threading.Thread(target=self._dispatch_loop, name=DISPATCHER_THREAD_NAME, daemon=True)
        self._thread.start()
        return self

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.activity_concurrency, thread_name_prefix=ACTIVITY_THREAD_PREFIX)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._pool is not None:
            # Activities still running are abandoned, as when a host shuts down; their results are dropped.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._client_api is not None:
            self._client_api.stop()
            self._client_api = None

    def __enter__(self) -> DurableRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client_binding_json(self) -> str:
        """The durable client binding document the host hands a function; starts the client API once."""
        with self._cond:
            if self._client_api is None:
                from local.durable.client_api import ClientApiServer

                self._client_api = ClientApiServer(self)
                self._client_api.start()
            return self._client_api.binding_json()

    # --- the client API ---------------------------------------------------------------------------

    def start_new(self, orchestrator_name: str, instance_id: str | None = None, input: Any = None) -> str:
        """Start an orchestration; ``input`` must be JSON-serialisable (it crosses as JSON, as in Azure)."""
        input_text = None if input is None else json.dumps(input)
        return self.start_new_raw(orchestrator_name, instance_id, input_text)

    def start_new_raw(self, orchestrator_name: str, instance_id: str | None, input_text: str | None) -> str:
        """Start with the input already as JSON text (what the HTTP client API receives)."""
        if orchestrator_name not in self._orchestrators:
            raise UnknownFunction(
                f"no orchestrator function named {orchestrator_name!r}; "
                f"orchestrators: {', '.join(sorted(self._orchestrators)) or 'none'}"
            )
        if instance_id:
            problem = instance_id_problem(instance_id)
            if problem is not None:
                raise InvalidInstanceId(f"instance id {instance_id!r} is not valid: {problem}")
        instance_id = instance_id or uuid.uuid4().hex
        with self._cond:
            existing = self._instances.get(instance_id)
            if existing is not None and existing.status in LIVE_STATUSES:
                raise InstanceAlreadyRunning(
                    f"an orchestration with instance id {instance_id!r} is already {existing.status}"
                )
            self._create_instance(orchestrator_name, instance_id, input_text, parent=None)
            self._cond.notify_all()
        return instance_id

    def get_status(self, instance_id: str, show_history: bool = False) -> dict[str, Any] | None:
        with self._cond:
            instance = self._instances.get(instance_id)
            return None if instance is None else _status(instance, show_history)

    def list_instances(self, runtime_status: str | list[str] | None = None) -> list[dict[str, Any]]:
        wanted = {runtime_status} if isinstance(runtime_status, str) else set(runtime_status or [])
        with self._cond:
            return [
                _status(i, False) for i in self._instances.values() if not wanted or i.status in wanted
            ]

    def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Deliver an external event; one raised before the orchestrator waits for it is kept for it."""
        if not name:
            raise ValueError("event name must be a non-empty string")
        payload = json.dumps(data)
        _warn_if_spills(instance_id, f"the data of event {name!r}", payload)
        with self._cond:
            instance = self._require(instance_id)
            if instance.status not in LIVE_STATUSES:
                raise InstanceGone(f"instance {instance_id!r} is {instance.status}; it takes no more events")
            event = new_event(EventType.EVENT_RAISED, self.clock.now(), Name=name, Input=payload)
            self._post(instance, event)
            self._cond.notify_all()

    def terminate(self, instance_id: str, reason: str) -> None:
        with self._cond:
            instance = self._require(instance_id)
            if instance.status not in LIVE_STATUSES:
                raise InstanceGone(f"instance {instance_id!r} is already {instance.status}")
            self._finish(instance, TERMINATED, reason, failure=f"terminated: {reason}")
            self._cond.notify_all()

    def purge(self, instance_id: str) -> bool:
        """Forget an ended instance; returns False when there was none. A live one cannot be purged."""
        with self._cond:
            instance = self._instances.get(instance_id)
            if instance is None:
                return False
            if instance.status in LIVE_STATUSES:
                raise DurableRunnerError(
                    f"only ended orchestrations can be purged; {instance_id!r} is {instance.status}"
                )
            del self._instances[instance_id]
            self._ready.pop(instance_id, None)
            if self._store is not None:
                self._store.delete_instance(instance_id)
            return True

    def wait_for_completion(self, instance_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Block (real seconds) until the instance ends; returns its status."""
        with self._cond:
            self._require(instance_id)
            ended = self._cond.wait_for(
                lambda: instance_id not in self._instances
                or self._instances[instance_id].status in TERMINAL_STATUSES,
                timeout,
            )
            instance = self._require(instance_id)
            if not ended:
                raise TimeoutError(
                    f"instance {instance_id!r} did not finish within {timeout:.1f}s; it is {instance.status}"
                )
            return _status(instance, False)

    def run_until_idle(self, timeout: float = 30.0) -> None:
        """Return once nothing can progress: every instance ended or waiting for external events."""
        with self._cond:
            if not self._cond.wait_for(self._quiet, timeout):
                raise TimeoutError(
                    f"the runner was still busy after {timeout:.1f}s: {len(self._ready)} instance(s) with "
                    f"work, {len(self._activity_runs)} activities running, "
                    f"{self._live_timer_count()} timer(s) pending"
                )

    @contextmanager
    def hold_clock(self) -> Iterator[None]:
        """Keep a virtual clock from jumping to the next timer (say, while a test raises events in time)."""
        with self._cond:
            self._clock_holds += 1
        try:
            yield
        finally:
            with self._cond:
                self._clock_holds -= 1
                self._cond.notify_all()

    # --- host restart -----------------------------------------------------------------------------

    def simulate_host_restart(self) -> HostRestartOutcome:
        """Act as if the Functions host died at this instant and a new host took over the task hub.

        In Azure, histories, queued messages and durable timers live in storage; a dead host loses
        only its memory and the work it was running. Accordingly, when this returns:

        * Every activity whose completion had not yet reached its orchestration (running, or queued
          for a worker) has been delivered again to a fresh worker pool, so it runs a second time:
          delivery is at least once. Whatever the first delivery later returns is discarded (that
          host died before recording it); only the new run's completion can reach history. Python
          cannot kill the old threads, so they run on, ignored, and hold no slot of the new pool.
        * Activities whose completion was delivered never run again: the result is in history, or
          waiting in the instance's inbox, which stands for a durable queue.
        * Sub-orchestrations already started, events already raised and pending timers (with their
          original fire times) are kept, as the messages they are in Azure.
        * Every live instance with a history has been replayed once through the SDK from that
          history alone: nothing is appended to it and nothing is scheduled. The code must ask for
          exactly the actions the history recorded, in order, and neither ask for more nor finish;
          otherwise the instance fails with :class:`NonDeterminismError` (or, if the code raises, with
          its error), as it would on the new host. Its next episode replays the full history again.
        * The clock has not moved.

        Kept as if stored is also the runner's bookkeeping beside the history events (the task id of
        each action, retry attempt counts), which a real host rebuilds from the history.
        """
        with self._cond:
            if self._pool is None:
                raise DurableRunnerError("the runner is not started; there is no host to restart")
            lost = sorted(self._activity_runs.values(), key=lambda run: run.run_id)
            self._activity_runs.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)  # queued runs of the old host vanish
            self._pool = self._new_pool()
            for run in lost:
                self._dispatch_activity(replace(run, run_id=next(self._run_ids)))
            replayed: list[str] = []
            failed: list[str] = []
            for instance in list(self._instances.values()):
                if instance.status not in LIVE_STATUSES or not instance.execution.history:
                    continue  # ended, or not yet past its first episode: nothing to replay
                replayed.append(instance.instance_id)
                if not self._replay_recorded_history(instance):
                    failed.append(instance.instance_id)
            self._cond.notify_all()
        log.info(
            "simulated host restart: %d activities delivered again, %d instances replayed, "
            "%d failed on replay",
            len(lost), len(replayed), len(failed),
        )
        return HostRestartOutcome(
            redelivered_tasks=tuple((run.instance_id, run.task_id) for run in lost),
            replayed_instances=tuple(replayed),
            failed_on_replay=tuple(failed),
        )

    def _replay_recorded_history(self, instance: _Instance) -> bool:
        """Run the code over the recorded history with nothing new; False when that ended the instance."""
        result = self._invoke(instance, replay_only=True)
        try:
            self._check_determinism(instance, result)
            if result.error is None:
                self._check_nothing_new(instance, result)
        except NonDeterminismError as error:
            self._fail_nondeterministic(instance, error)
            return False
        if result.error is not None:
            self._fail_orchestrator(instance, result.error)
            return False
        return True

    @staticmethod
    def _check_nothing_new(instance: _Instance, result: OrchestratorResult) -> None:
        """Replaying a history with no new event must lead exactly to where that history stopped."""
        execution = instance.execution
        where = f"orchestration {instance.instance_id!r} ({instance.name}) is not deterministic"
        extra = result.actions[len(execution.actions):]
        if extra:
            raise NonDeterminismError(
                f"{where}: replaying its history with no new event, the code asks for "
                f"{extra[0].describe()} (action #{len(execution.actions)}), which the history never recorded"
            )
        if result.done:
            raise NonDeterminismError(
                f"{where}: replaying its history with no new event, the code finishes, "
                f"but it had not finished when that history was recorded"
            )

    # --- dispatcher -------------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        with self._cond:
            while not self._stopping:
                try:
                    progressed = self._step()
                except Exception:  # the dispatcher must survive a bug in one episode
                    log.exception("durable dispatcher step failed")
                    progressed = False
                if progressed:
                    continue
                self._cond.notify_all()
                self._cond.wait(timeout=self._wait_seconds())

    def _step(self) -> bool:
        if self._fire_due_timers():
            return True
        if self._ready:
            instance_id = next(iter(self._ready))
            del self._ready[instance_id]
            instance = self._instances.get(instance_id)
            if instance is not None and instance.status in LIVE_STATUSES and instance.inbox:
                self._in_episode = instance_id
                try:
                    self._run_episode(instance)
                except Exception as error:
                    # A runner bug must not leave the instance looking alive forever.
                    log.exception("episode of %s failed inside the runner", instance_id)
                    message = f"local Durable runner error: {error!r}"
                    self._finish(instance, FAILED, message, failure=message)
                finally:
                    self._in_episode = None
                self._commit_episode(instance)
            return True
        if self.clock.virtual and not self._clock_holds and not self._activity_runs:
            earliest = self._earliest_timer()
            if earliest is not None:
                self.clock.advance_to(earliest.fire_at)  # type: ignore[attr-defined]
                return True
        return False

    def _quiet(self) -> bool:
        if self._ready or self._activity_runs:
            return False
        if self._live_timer_count() == 0:
            return True
        return bool(self.clock.virtual and self._clock_holds)  # held virtual timers cannot fire

    def _wait_seconds(self) -> float:
        earliest = self._earliest_timer()
        if earliest is None:
            return _IDLE_POLL_SECONDS
        # A sped-up clock (ScaledClock) reaches a timer ``speed`` times sooner in real seconds.
        remaining = (earliest.fire_at - self.clock.now()).total_seconds() / getattr(self.clock, "speed", 1)
        return max(0.0, min(remaining, _POLL_SECONDS if self.clock.virtual else _IDLE_POLL_SECONDS))

    def _timer_is_live(self, timer: _Timer) -> bool:
        instance = self._instances.get(timer.instance_id)
        return (
            instance is not None
            and instance.status in LIVE_STATUSES
            and instance.execution.execution_id == timer.execution_id
            and timer.task_id in instance.execution.pending_timers
        )

    def _earliest_timer(self) -> _Timer | None:
        while self._timers and not self._timer_is_live(self._timers[0]):
            heapq.heappop(self._timers)
        return self._timers[0] if self._timers else None

    def _live_timer_count(self) -> int:
        return sum(1 for t in self._timers if self._timer_is_live(t))

    def _fire_due_timers(self) -> bool:
        fired = False
        now = self.clock.now()
        while (timer := self._earliest_timer()) is not None and timer.fire_at <= now:
            heapq.heappop(self._timers)
            instance = self._instances[timer.instance_id]
            instance.execution.pending_timers.discard(timer.task_id)
            self._post(instance, new_event(
                EventType.TIMER_FIRED, now, TimerId=timer.task_id, FireAt=format_time(timer.fire_at)
            ))
            fired = True
        return fired

    # --- episodes ---------------------------------------------------------------------------------

    def _run_episode(self, instance: _Instance) -> None:
        execution = instance.execution
        batch = self._take_batch(instance)
        now = self.clock.now()
        if instance.status != RUNNING:
            instance.status = RUNNING
        execution.history.append(new_event(EventType.ORCHESTRATOR_STARTED, now))
        execution.history.extend(batch)
        result = self._invoke(instance)
        instance.last_updated = now
        # Azure sets the custom status before it looks at anything else the episode returned.
        status_problem = custom_status_problem(result.state.get("customStatus"))
        if status_problem is not None:
            self._fail_orchestrator(instance, status_problem)
            return
        if "customStatus" in result.state or result.error is None:
            instance.custom_status = result.state.get("customStatus")
        try:
            self._check_determinism(instance, result)
        except NonDeterminismError as error:
            self._fail_nondeterministic(instance, error)
            return
        if result.error is not None:
            self._fail_orchestrator(instance, result.error)
            return
        actions = result.actions
        unsupported = [a for a in actions[len(execution.actions):] if a.action_type not in SUPPORTED_ACTIONS]
        if unsupported:
            message = f"the local Durable runner does not support {unsupported[0].action_type.name} actions"
            self._finish(instance, FAILED, message, failure=message)
            return
        id_problem = self._sub_orchestration_id_problem(instance, actions[len(execution.actions):])
        if id_problem is not None:
            self._fail_orchestrator(instance, id_problem)
            return
        if not result.done:
            # The SDK numbered a retry's timer or re-attempt before any task the code yielded after it.
            if batch:
                self._advance_retry(instance, batch[0], now)
            for spec in actions[len(execution.actions):]:
                self._schedule(instance, spec, now)
            self._drop_canceled_timers(execution, actions)
        execution.history.append(new_event(EventType.ORCHESTRATOR_COMPLETED, now))
        if result.done:
            self._complete(instance, actions, result)

    @staticmethod
    def _sub_orchestration_id_problem(instance: _Instance, new_actions: list[ActionSpec]) -> str | None:
        """Why a sub-orchestration the code now asks for cannot start. The extension refuses, in the
        orchestrator, an id starting with '@' or equal to the caller's or its parent's
        (DurableOrchestrationContext.CallDurableTaskFunctionAsync); the other rules of instance ids are
        applied too, since such an id cannot be queried or managed through the HTTP API."""
        family = {instance.instance_id.lower()}
        if instance.parent is not None:
            family.add(instance.parent.instance_id.lower())
        for spec in new_actions:
            if spec.action_type not in SUB_ORCHESTRATOR_ACTIONS or not spec.instance_id:
                continue
            if spec.instance_id.lower() in family:
                return (
                    f"The instance ID of a sub-orchestration must be different than the instance ID of a "
                    f"parent orchestration ({spec.instance_id!r})."
                )
            problem = instance_id_problem(spec.instance_id)
            if problem is not None:
                return f"sub-orchestration {spec.name!r}: id {spec.instance_id!r} is not valid: {problem}"
        return None

    def _take_batch(self, instance: _Instance) -> list[dict[str, Any]]:
        """New events for one episode. An event of a with-retry task only ever comes first: the SDK
        numbers the retry timer or re-attempt when it reads that event, so only then is the order of
        task ids (that retry's first, then whatever the code yields) known without asking the SDK."""
        batch: list[dict[str, Any]] = []
        for event in instance.inbox:
            if batch and self._concerns_retry(instance.execution, event):
                break
            batch.append(event)
        del instance.inbox[: len(batch)]
        if instance.inbox:
            self._ready[instance.instance_id] = None
        return batch

    @staticmethod
    def _concerns_retry(execution: _Execution, event: dict[str, Any]) -> bool:
        if event["EventType"] not in _COMPLETION_EVENTS:
            return False
        target = execution.targets.get(_task_id_of(event))
        return target is not None and execution.actions[target.action_index].action_type in RETRY_ACTIONS

    def _invoke(self, instance: _Instance, *, replay_only: bool = False) -> OrchestratorResult:
        """Call the orchestrator handle; ``replay_only`` when no event is new (every one was played)."""
        execution = instance.execution
        history = replay_view(execution.history)
        if replay_only:
            history = [{**event, "IsPlayed": True} for event in history]
        context = {
            "history": history,
            "instanceId": instance.instance_id,
            "isReplaying": any(e["EventType"] == EventType.ORCHESTRATOR_COMPLETED for e in execution.history),
            "parentInstanceId": instance.parent.instance_id if instance.parent else None,
            "input": execution.input_text,
            "upperSchemaVersion": UPPER_SCHEMA_VERSION,
        }
        handle = self._orchestrators[instance.name]
        try:
            return read_handle_result(handle(json.dumps(context)))
        except Exception as error:  # noqa: BLE001 - an orchestrator failure is data: the instance fails
            return read_handle_failure(error)

    def _check_determinism(self, instance: _Instance, result: OrchestratorResult) -> None:
        """Every action already in history must come back identical, in the same order."""
        execution = instance.execution
        emitted = result.actions
        for index, recorded in enumerate(execution.actions):
            asked = emitted[index] if index < len(emitted) else None
            if asked is None and result.error is not None:
                return  # the code failed before reaching this point; the failure is reported instead
            if asked != recorded:
                task_id = execution.action_task_ids[index]
                where = f"task {task_id}" if task_id is not None else f"action {index}"
                raise NonDeterminismError(
                    f"orchestration {instance.instance_id!r} ({instance.name}) is not deterministic at "
                    f"{where} (action #{index}): history has {recorded.describe()}, but the code now asks "
                    f"for {asked.describe() if asked else 'nothing'}"
                )

    def _fail_nondeterministic(self, instance: _Instance, error: NonDeterminismError) -> None:
        log.error("%s", error)
        self._finish(instance, FAILED, f"{type(error).__name__}: {error}", failure=str(error))

    def _fail_orchestrator(self, instance: _Instance, error: str) -> None:
        message = f"Orchestrator function '{instance.name}' failed: {error}"
        log.error("instance %s: %s", instance.instance_id, message)
        self._finish(instance, FAILED, message, failure=error)

    # --- scheduling -------------------------------------------------------------------------------

    def _schedule(self, instance: _Instance, spec: ActionSpec, now: datetime) -> None:
        execution = instance.execution
        index = len(execution.actions)
        execution.actions.append(spec)
        if not spec.takes_task_id:
            execution.action_task_ids.append(None)
            return
        task_id = execution.allocate(_Target(index, "action"))
        execution.action_task_ids.append(task_id)
        if spec.action_type in RETRY_ACTIONS:
            execution.retries[index] = _RetryState(
                attempts=1,
                max_attempts=int(spec.retry_max_attempts or 1),
                interval=timedelta(milliseconds=int(spec.retry_first_interval_ms or 0)),
            )
        if spec.action_type == ActionType.CREATE_TIMER:
            assert spec.fire_at is not None
            self._start_timer(instance, task_id, parse_time(spec.fire_at), now)
        else:
            self._start_task(instance, spec, task_id, now)

    def _start_task(self, instance: _Instance, spec: ActionSpec, task_id: int, now: datetime) -> None:
        """Record and start one attempt of an activity or sub-orchestration."""
        history = instance.execution.history
        if spec.action_type in ACTIVITY_ACTIONS:
            _warn_if_spills(instance.instance_id, f"the input of activity {spec.name!r}", spec.input)
            history.append(
                new_event(EventType.TASK_SCHEDULED, now, task_id, Name=spec.name, Input=spec.input)
            )
            self._submit_activity(instance, task_id, str(spec.name), spec.input)
        elif spec.action_type in SUB_ORCHESTRATOR_ACTIONS:
            child_id = spec.instance_id or f"{instance.instance_id}:{task_id}"
            history.append(new_event(
                EventType.SUB_ORCHESTRATION_CREATED, now, task_id,
                Name=spec.name, InstanceId=child_id, Input=spec.input,
            ))
            self._start_child(instance, task_id, str(spec.name), child_id, spec.input, now)

    def _start_timer(self, instance: _Instance, task_id: int, fire_at: datetime, now: datetime) -> None:
        execution = instance.execution
        execution.history.append(
            new_event(EventType.TIMER_CREATED, now, task_id, FireAt=format_time(fire_at))
        )
        execution.pending_timers.add(task_id)
        heapq.heappush(self._timers, _Timer(
            fire_at, next(self._timer_seq), instance.instance_id, execution.execution_id, task_id
        ))

    def _advance_retry(self, instance: _Instance, event: dict[str, Any], now: datetime) -> None:
        """DTFx retry semantics, which the SDK mirrors: after every failed attempt (the last one
        too) a timer of the first retry interval; when it fires, a new attempt unless attempts are used up."""
        execution = instance.execution
        if not self._concerns_retry(execution, event):
            return
        target = execution.targets[_task_id_of(event)]
        retry = execution.retries[target.action_index]
        if event["EventType"] in (EventType.TASK_FAILED, EventType.SUB_ORCHESTRATION_FAILED):
            timer_id = execution.allocate(_Target(target.action_index, "retry_timer"))
            self._start_timer(instance, timer_id, now + retry.interval, now)
        elif event["EventType"] == EventType.TIMER_FIRED and retry.attempts < retry.max_attempts:
            retry.attempts += 1
            attempt_id = execution.allocate(_Target(target.action_index, "attempt"))
            self._start_task(instance, execution.actions[target.action_index], attempt_id, now)

    @staticmethod
    def _drop_canceled_timers(execution: _Execution, actions: list[ActionSpec]) -> None:
        for index, spec in enumerate(actions[: len(execution.action_task_ids)]):
            task_id = execution.action_task_ids[index]
            if spec.action_type == ActionType.CREATE_TIMER and spec.canceled and task_id is not None:
                execution.pending_timers.discard(task_id)

    # --- activities -------------------------------------------------------------------------------

    def _submit_activity(self, instance: _Instance, task_id: int, name: str, input_text: str | None) -> None:
        execution_id = instance.execution.execution_id
        self._dispatch_activity(
            _ActivityRun(next(self._run_ids), instance.instance_id, execution_id, task_id, name, input_text)
        )

    def _dispatch_activity(self, run: _ActivityRun) -> None:
        if self._pool is None:
            raise DurableRunnerError("the runner is not started")
        self._activity_runs[run.run_id] = run
        if self._store is not None and self._in_episode is not None:
            self._deferred_runs.append(run)  # sent once the episode's TaskScheduled is in storage
            return
        self._pool.submit(self._run_activity, run)

    def _run_activity(self, run: _ActivityRun) -> None:
        try:
            event = self._call_activity(run.task_id, run.name, run.input_text)
            _warn_if_spills(run.instance_id, f"the result of activity {run.name!r}", event["Result"])
        except BaseException as error:  # noqa: BLE001 - even a SystemExit in an activity is a task failure
            reason = f"Activity function '{run.name}' failed"
            event = self._failure_event(EventType.TASK_FAILED, run.task_id, reason, error)
        with self._cond:
            if self._activity_runs.pop(run.run_id, None) is None:
                # Delivered by a host that has since restarted: that host died before recording this.
                log.info(
                    "dropped the result of activity %s (task %d of %s) from before the host restart",
                    run.name, run.task_id, run.instance_id,
                )
                return
            self._deliver(run.instance_id, run.execution_id, event)
            self._cond.notify_all()

    def _call_activity(self, task_id: int, name: str, input_text: str | None) -> dict[str, Any]:
        registered = self._activities.get(name)
        if registered is None:
            raise UnknownFunction(f"the function {name!r} doesn't exist or is not an activity function")
        function, binding = registered
        # The worker decodes the input and encodes the result as Azure does: JSON both ways.
        argument = ActivityTriggerConverter.decode(Datum(input_text or "null", "json"), trigger_metadata=None)
        result = function(**{binding: argument})
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        encoded = ActivityTriggerConverter.encode(result, expected_type=None).value
        return new_event(EventType.TASK_COMPLETED, self.clock.now(), TaskScheduledId=task_id, Result=encoded)

    def _failure_event(self, event_type: EventType, task_id: int, reason: str,
                       error: BaseException) -> dict[str, Any]:
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return new_event(
            event_type, self.clock.now(), TaskScheduledId=task_id,
            Reason=f"{reason}: {type(error).__name__}: {error}", Details=details,
        )

    # --- instances --------------------------------------------------------------------------------

    def _create_instance(self, name: str, instance_id: str, input_text: str | None,
                         parent: _ParentLink | None) -> _Instance:
        now = self.clock.now()
        execution = _Execution(execution_id=uuid.uuid4().hex, input_text=input_text)
        instance = _Instance(instance_id, name, execution, created=now, last_updated=now, parent=parent)
        _warn_if_spills(instance_id, f"the input of orchestration {name!r}", input_text)
        self._instances[instance_id] = instance
        self._post(instance, self._execution_started(instance, now))
        return instance

    @staticmethod
    def _execution_started(instance: _Instance, now: datetime) -> dict[str, Any]:
        return new_event(
            EventType.EXECUTION_STARTED, now,
            Name=instance.name, Version="", Input=instance.execution.input_text,
            OrchestrationInstance={
                "InstanceId": instance.instance_id, "ExecutionId": instance.execution.execution_id,
            },
        )

    def _start_child(self, parent: _Instance, task_id: int, name: str, child_id: str,
                     input_text: str | None, now: datetime) -> None:
        link = _ParentLink(parent.instance_id, parent.execution.execution_id, task_id)
        existing = self._instances.get(child_id)
        problem = None
        if name not in self._orchestrators:
            problem = f"the function {name!r} doesn't exist or is not an orchestrator function"
        elif existing is not None and existing.status in LIVE_STATUSES:
            if existing.parent == link:
                return  # created by this very action in an episode whose commit a host crash lost
            problem = f"a sub-orchestration with instance id {child_id!r} is already {existing.status}"
        if problem is not None:
            self._post(parent, new_event(
                EventType.SUB_ORCHESTRATION_FAILED, now,
                TaskScheduledId=task_id, Reason=problem, Details=problem,
            ))
            return
        self._create_instance(name, child_id, input_text, parent=link)

    def _complete(self, instance: _Instance, actions: list[ActionSpec], result: OrchestratorResult) -> None:
        continue_as_new = next((a for a in actions if a.action_type == ActionType.CONTINUE_AS_NEW), None)
        if continue_as_new is None:
            output = result.state.get("output")
            _warn_if_spills(instance.instance_id, f"the output of orchestration {instance.name!r}",
                            json.dumps(output))
            self._finish(instance, COMPLETED, output)
            return
        # A new execution: fresh history, same id. Events that reached the instance but not yet an
        # episode are messages to the instance and go to the new execution; completions do not.
        now = self.clock.now()
        _warn_if_spills(instance.instance_id, f"the input {instance.name!r} continues as new with",
                        continue_as_new.input)
        carried = [e for e in instance.inbox if e["EventType"] == EventType.EVENT_RAISED]
        instance.execution = _Execution(execution_id=uuid.uuid4().hex, input_text=continue_as_new.input)
        instance.status = CONTINUED_AS_NEW
        instance.last_updated = now
        instance.inbox = [self._execution_started(instance, now), *carried]
        self._ready[instance.instance_id] = None

    def _finish(self, instance: _Instance, status: str, output: Any, failure: str | None = None) -> None:
        """End an instance; pending work (inbox, timers, running activities' results) is ignored from now."""
        instance.status = status
        instance.output = output
        instance.last_updated = self.clock.now()
        instance.inbox.clear()
        instance.execution.pending_timers.clear()
        self._ready.pop(instance.instance_id, None)
        parent = instance.parent
        if parent is None:
            self._save(instance)
            return
        now = self.clock.now()
        if status == COMPLETED:
            event = new_event(
                EventType.SUB_ORCHESTRATION_COMPLETED, now,
                TaskScheduledId=parent.task_id, Result=json.dumps(output),
            )
        else:
            reason = (
                f"Sub-orchestration '{instance.name}' ({instance.instance_id}) {status.lower()}: {failure}"
            )
            event = new_event(
                EventType.SUB_ORCHESTRATION_FAILED, now, TaskScheduledId=parent.task_id, Reason=reason,
                Details=str(output),
            )
        # The parent's row first: a crash in between ends the child again, and _already_answered drops that.
        self._deliver(parent.instance_id, parent.execution_id, event)
        self._save(instance)

    def _deliver(self, instance_id: str, execution_id: str, event: dict[str, Any]) -> None:
        """Post a completion to the execution that asked for it; one that has ended drops it."""
        instance = self._instances.get(instance_id)
        if instance is None or instance.execution.execution_id != execution_id:
            return
        if instance.status in LIVE_STATUSES and not self._already_answered(instance, event):
            self._post(instance, event)

    @staticmethod
    def _already_answered(instance: _Instance, event: dict[str, Any]) -> bool:
        """A child that ended again after a host crash (its ending episode was not committed) must not
        answer its parent twice."""
        if event["EventType"] not in _CHILD_ANSWERS:
            return False
        task_id = _task_id_of(event)
        return any(
            e["EventType"] == event["EventType"] and _task_id_of(e) == task_id
            for e in itertools.chain(instance.inbox, instance.execution.history)
        )

    def _post(self, instance: _Instance, event: dict[str, Any]) -> None:
        instance.inbox.append(event)
        self._ready[instance.instance_id] = None
        self._save(instance)

    # --- storage ----------------------------------------------------------------------------------

    def _save(self, instance: _Instance) -> None:
        """Write the instance row (status, pending messages, bookkeeping); an episode commits at its end."""
        if self._store is None or self._in_episode == instance.instance_id:
            return
        execution = instance.execution
        parent = instance.parent
        self._store.save_instance(instance.instance_id, {
            "Name": instance.name,
            "RuntimeStatus": instance.status,
            "Input": execution.input_text,
            "Output": json.dumps(instance.output),
            "CustomStatus": json.dumps(instance.custom_status),
            "CreatedTime": format_time(instance.created),
            "LastUpdatedTime": format_time(instance.last_updated),
            "ExecutionId": execution.execution_id,
            "HistoryCount": execution.persisted,
            "ParentInstanceId": parent.instance_id if parent else None,
            "ParentExecutionId": parent.execution_id if parent else None,
            "ParentTaskId": parent.task_id if parent else None,
            "Pending": json.dumps(instance.inbox),
            "Bookkeeping": json.dumps(_bookkeeping(execution)),
        })

    def _commit_episode(self, instance: _Instance) -> None:
        """History first, then the row that says how much of it counts; then the activities it scheduled."""
        runs, self._deferred_runs = self._deferred_runs, []
        if self._store is not None:
            execution = instance.execution
            new = execution.history[execution.persisted:]
            if new:
                self._store.append_history(
                    instance.instance_id, execution.execution_id, execution.persisted, new
                )
                execution.persisted = len(execution.history)
            self._save(instance)
        for run in runs:
            if run.run_id in self._activity_runs and self._pool is not None:
                self._pool.submit(self._run_activity, run)

    def _resume_from_store(self) -> None:
        """Rebuild every instance from the tables and deliver again what a dead host had in flight."""
        assert self._store is not None
        self._loaded = True
        redelivered = timers = 0
        for stored in self._store.load():
            instance = _instance_from_row(stored.row, stored.history)
            self._instances[instance.instance_id] = instance
            if instance.status not in LIVE_STATUSES:
                continue
            execution = instance.execution
            if instance.inbox:
                self._ready[instance.instance_id] = None
            answered = {
                _task_id_of(e) for e in itertools.chain(execution.history, instance.inbox)
                if e["EventType"] in (EventType.TASK_COMPLETED, EventType.TASK_FAILED)
            }
            for event in execution.history:
                if event["EventType"] == EventType.TASK_SCHEDULED and event["EventId"] not in answered:
                    self._dispatch_activity(_ActivityRun(
                        next(self._run_ids), instance.instance_id, execution.execution_id, event["EventId"],
                        str(event["Name"]), event.get("Input"),
                    ))
                    redelivered += 1
                elif (event["EventType"] == EventType.TIMER_CREATED
                      and event["EventId"] in execution.pending_timers):
                    heapq.heappush(self._timers, _Timer(
                        parse_time(event["FireAt"]), next(self._timer_seq), instance.instance_id,
                        execution.execution_id, event["EventId"],
                    ))
                    timers += 1
        if self._instances:
            live = sum(1 for i in self._instances.values() if i.status in LIVE_STATUSES)
            log.info(
                "resumed the task hub from storage: %d instances (%d live), %d activities delivered again, "
                "%d timers", len(self._instances), live, redelivered, timers,
            )

    def _require(self, instance_id: str) -> _Instance:
        instance = self._instances.get(instance_id)
        if instance is None:
            raise InstanceNotFound(f"no orchestration instance with id {instance_id!r}")
        return instance


def _index(app: Any) -> tuple[dict[str, Callable[[str], Any]], dict[str, tuple[Callable[..., Any], str]]]:
    """Orchestrator handles and activity functions (with their trigger binding's name) by function name."""
    orchestrators: dict[str, Callable[[str], Any]] = {}
    activities: dict[str, tuple[Callable[..., Any], str]] = {}
    for function in app_functions(app):
        for binding in function.get_bindings():
            if binding.type == "orchestrationTrigger":
                orchestrators[function.get_function_name()] = function.get_user_function()
            elif binding.type == "activityTrigger":
                activities[function.get_function_name()] = (function.get_user_function(), binding.name)
    return orchestrators, activities


def _warn_if_spills(instance_id: str, what: str, text: str | None) -> None:
    """Log a payload Azure would move to a blob (local/durable/limits.py): it works there, slowly."""
    reason = spill_reason(text)
    if reason is not None:
        log.warning(
            "instance %s: %s is %s; Azure Storage keeps such a payload in a blob, compressed, and reads it "
            "back on every replay (slow): pass ids and counts, keep lists in storage",
            instance_id, what, reason,
        )


def _task_id_of(event: dict[str, Any]) -> int:
    """The task a completion event answers (-1, matching nothing, for other events)."""
    task_id = event.get("TaskScheduledId", event.get("TimerId"))
    return task_id if isinstance(task_id, int) else -1


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _decoded(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _status(instance: _Instance, show_history: bool) -> dict[str, Any]:
    """The status shape of the Durable HTTP API (``StatusResponsePayload``)."""
    status: dict[str, Any] = {
        "name": instance.name,
        "instanceId": instance.instance_id,
        "runtimeStatus": instance.status,
        "input": _decoded(instance.execution.input_text),
        "customStatus": instance.custom_status,
        "output": instance.output,
        "createdTime": instance.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastUpdatedTime": instance.last_updated.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if show_history:
        status["historyEvents"] = [dict(e) for e in instance.execution.history]
    return status


def _bookkeeping(execution: _Execution) -> dict[str, Any]:
    """What the runner knows beside the history events: task numbering, retry attempts, live timers."""
    return {
        "actions": [
            {**{k: v for k, v in vars(a).items() if v is not None}, "action_type": int(a.action_type)}
            for a in execution.actions
        ],
        "actionTaskIds": execution.action_task_ids,
        "targets": {str(k): [t.action_index, t.role] for k, t in execution.targets.items()},
        "retries": {
            str(k): [r.attempts, r.max_attempts, r.interval / timedelta(milliseconds=1)]
            for k, r in execution.retries.items()
        },
        "pendingTimers": sorted(execution.pending_timers),
        "nextTaskId": execution.next_task_id,
    }


def _instance_from_row(row: dict[str, Any], history: list[dict[str, Any]]) -> _Instance:
    """An instance as local/durable/store.py keeps it (the inverse of ``DurableRunner._save``)."""
    from local.durable.store import get_text

    books = json.loads(get_text(row, "Bookkeeping") or "{}")
    execution = _Execution(
        execution_id=row["ExecutionId"],
        input_text=get_text(row, "Input"),
        history=history,
        actions=[
            ActionSpec(**{**a, "action_type": ActionType(a["action_type"])}) for a in books.get("actions", [])
        ],
        action_task_ids=list(books.get("actionTaskIds", [])),
        targets={int(k): _Target(v[0], v[1]) for k, v in books.get("targets", {}).items()},
        retries={
            int(k): _RetryState(v[0], v[1], timedelta(milliseconds=v[2]))
            for k, v in books.get("retries", {}).items()
        },
        pending_timers=set(books.get("pendingTimers", [])),
        next_task_id=int(books.get("nextTaskId", 0)),
        persisted=len(history),
    )
    parent = None
    if row.get("ParentInstanceId"):
        parent = _ParentLink(row["ParentInstanceId"], row["ParentExecutionId"], int(row["ParentTaskId"]))
    return _Instance(
        instance_id=row["PartitionKey"],
        name=row["Name"],
        execution=execution,
        created=parse_time(row["CreatedTime"]),
        last_updated=parse_time(row["LastUpdatedTime"]),
        status=row["RuntimeStatus"],
        output=json.loads(get_text(row, "Output") or "null"),
        custom_status=json.loads(get_text(row, "CustomStatus") or "null"),
        parent=parent,
        inbox=json.loads(get_text(row, "Pending") or "[]"),
    )
