"""Runs driven through the in-process local host, for the benches: assessments, deployments, histories.

The benches start runs over the app's own HTTP API (``LocalStack.functions``) and read the Durable
runner's instances, as an operator and the Durable client would; nothing here reaches into ``shared/``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from local.durable.runner import TERMINAL_STATUSES
from local.stack import LocalStack
from shared.deployments.definition import MAX_GROUPS

# The deployment's classifications, in each operating system's own vocabulary (shared.model.classification).
CLASSIFICATIONS = {
    "Linux": ["Critical and security updates"],
    "Windows": ["Critical Updates", "Security Updates"],
}
# The longest maintenance window a deployment may have (shared.deployments.definition.MAX_WINDOW_MINUTES).
WINDOW_MINUTES = 360
# Wall-clock limit for one run, in real seconds.
RUN_TIMEOUT_SECONDS = 3600
# How often the bench looks whether a run has ended, in real seconds.
POLL_SECONDS = 0.2
# A long phase says how far it has got this often (on stderr, so the figures on stdout stay a table).
PROGRESS_SECONDS = 60


def definition(name: str, os_type: str, groups: Sequence[Mapping[str, Any]],
               max_concurrent: int | str) -> dict[str, Any]:
    """A deployment of ``os_type``'s machines held by the filter ``groups``, evaluated when a run starts."""
    return {
        "name": name, "operatingSystem": os_type,
        "targets": {"groups": [{"filter": dict(g)} for g in groups], "evaluateGroupsAt": "run"},
        "classifications": CLASSIFICATIONS[os_type],
        "schedule": {"startTime": "2099-01-01T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": WINDOW_MINUTES, "rebootSetting": "IfRequired",
        "rollout": {"maxConcurrent": max_concurrent},
    }  # fmt: skip


def max_concurrent_value(text: str) -> int | str:
    """``--max-concurrent``: a machine count or a percentage such as ``50%``."""
    return text if text.strip().endswith("%") else int(text)


@dataclass(frozen=True)
class Placement:
    """Where a machine is, as a deployment's filter group can name it."""

    subscription: str
    resource_group: str
    location: str


def target_groups(machines: Iterable[Placement], limit: int,
                  max_groups: int = MAX_GROUPS) -> list[list[dict[str, Any]]]:
    """Filter groups for deployments that together hold every one of ``machines``, at most ``limit`` each.

    One deployment naming the subscriptions when they fit; else one group per subscription, resource group
    and location, packed largest first into as few deployments as fit ``limit`` machines and
    ``max_groups`` groups (a filter group names a place, not a count, so a place is never split).
    """
    places = Counter(machines)
    if not places:
        return []
    if sum(places.values()) <= limit:
        return [[{"subscriptionIds": sorted({p.subscription for p in places})}]]
    too_big = [p for p, n in places.items() if n > limit]
    if too_big:
        raise ValueError(f"{places[too_big[0]]} machines in {too_big[0]}, more than {limit} per deployment")
    bins: list[tuple[int, list[Placement]]] = []
    for place, count in sorted(places.items(), key=lambda item: (-item[1], _key(item[0]))):
        for index, (held, members) in enumerate(bins):
            if held + count <= limit and len(members) < max_groups:
                bins[index] = (held + count, [*members, place])
                break
        else:
            bins.append((count, [place]))
    return [
        [{"subscriptionIds": [p.subscription], "resourceGroups": [p.resource_group],
          "locations": [p.location]} for p in sorted(members, key=_key)]
        for _, members in bins
    ]


def _key(place: Placement) -> tuple[str, str, str]:
    return place.subscription, place.resource_group, place.location


def start_assessment(stack: LocalStack) -> str:
    """Start an assessment of every machine over HTTP; its run id."""
    assert stack.functions
    response = stack.functions.request("POST", "/api/assessments", body={"all": True})
    if response.status_code != 202:
        raise SystemExit(f"starting an assessment failed: {response.status_code} {response.get_body()!r}")
    run_id: str = json.loads(response.get_body())["runId"]
    return run_id


def create_deployment(stack: LocalStack, spec: Mapping[str, Any]) -> None:
    assert stack.functions
    created = stack.functions.request("POST", "/api/deployments", body=dict(spec))
    if created.status_code != 201:
        raise SystemExit(f"creating {spec['name']} failed: {created.status_code} {created.get_body()!r}")


def start_deployment_run(stack: LocalStack, name: str) -> str:
    """Run deployment ``name`` now, over HTTP; the run's id."""
    assert stack.functions
    response = stack.functions.request("POST", f"/api/deployments/{name}/runs")
    if response.status_code != 202:
        raise SystemExit(f"starting {name} failed: {response.status_code} {response.get_body()!r}")
    run_id: str = json.loads(response.get_body())["runId"]
    return run_id


def wait_for_runs(stack: LocalStack, run_ids: Mapping[str, str], started: float,
                  timeout: float = RUN_TIMEOUT_SECONDS) -> dict[str, tuple[dict[str, Any], float]]:
    """Each run's final status and the real seconds from ``started`` (``time.perf_counter``) to its end,
    by the key it has in ``run_ids``; polled, so that each run's own end is timed."""
    assert stack.durable
    finals: dict[str, tuple[dict[str, Any], float]] = {}
    said = time.perf_counter()
    while len(finals) < len(run_ids):
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"runs not finished after {timeout:.0f} s: {dict(run_ids)}")
        statuses: dict[str, Any] = {}
        for key, run_id in run_ids.items():
            status = stack.durable.get_status(run_id) or {}
            statuses[key] = status.get("customStatus")
            if key not in finals and status.get("runtimeStatus") in TERMINAL_STATUSES:
                finals[key] = (status, time.perf_counter() - started)
        if time.perf_counter() - said >= PROGRESS_SECONDS:
            said = time.perf_counter()
            print(f"{said - started:7.0f} s: {len(finals)} of {len(run_ids)} runs done; "
                  + "; ".join(f"{key}: {_progress(status)}" for key, status in statuses.items()),
                  file=sys.stderr, flush=True)
        time.sleep(POLL_SECONDS)
    return finals


def _progress(status: Any) -> str:
    """A run's custom status in a few words: batches done of all (a deployment's master), else as is."""
    if isinstance(status, dict) and "batches" in status:
        return f"{status.get('batchesDone', 0)}/{status['batches']} batches {status.get('batchResults', {})}"
    return json.dumps(status)[:200]


def history_length(stack: LocalStack, instance_id: str) -> int:
    assert stack.durable
    return len((stack.durable.get_status(instance_id, show_history=True) or {}).get("historyEvents", []))


def instance_ids(stack: LocalStack) -> set[str]:
    assert stack.durable
    return {i["instanceId"] for i in stack.durable.list_instances()}


def histories_by_orchestrator(stack: LocalStack, since: set[str]) -> dict[str, list[int]]:
    """The history lengths (events) of the orchestrations started after ``since`` was taken
    (:func:`instance_ids`), by orchestrator name."""
    assert stack.durable
    lengths: dict[str, list[int]] = defaultdict(list)
    for instance in stack.durable.list_instances():
        if instance["instanceId"] not in since:
            lengths[instance["name"]].append(history_length(stack, instance["instanceId"]))
    return dict(lengths)
