"""How an update deployment run over a large fleet behaves through the local host: time, history sizes,
ARM traffic, and contention on the rollout gate.

Prints figures; asserts nothing. One deployment per operating system targets every machine of that
system through a filter group evaluated when the run starts (no discovery needed: the run lists the
fleet itself), and is run now over HTTP. The gate (``RunStore.claim`` / ``finish_machine``) writes the
run row under an ETag, so batches and finishing machines race for it; the bench counts the lost races
by wrapping ``RunStore._retrying`` from here, without changing ``shared/``. Stand-ins are in-process
and single-machine, so wall time says little about Azure; history sizes and request counts say a lot.

    .venv/bin/python -m bench.deployment_fanout --machines 300 --seed 11 --max-concurrent 50%
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.counting import arm_operation
from bench.runs import (
    create_deployment,
    definition,
    history_length,
    max_concurrent_value,
    start_deployment_run,
    wait_for_runs,
)
from local.arm.generator import generate_fleet
from local.clock import VirtualClock
from local.stack import LocalStack
from shared.deployments.runs_table import RunStore, counts_by_status, run_store
from shared.settings import load_settings

# An ETag that no longer matches (412), or a row another writer created first (409): what the gate retries.
CONFLICT_STATUSES = (409, 412)


@dataclass
class GateContention:
    """Calls to the gate's ETag-guarded writes and the attempts they lost, by operation."""

    calls: Counter[str] = field(default_factory=Counter)
    conflicts: Counter[str] = field(default_factory=Counter)
    most_conflicts_in_one_call: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, operation: str, conflicts: int) -> None:
        with self._lock:
            self.calls[operation] += 1
            self.conflicts[operation] += conflicts
            self.most_conflicts_in_one_call[operation] = max(
                self.most_conflicts_in_one_call[operation], conflicts
            )


@contextmanager
def counting_gate_conflicts() -> Iterator[GateContention]:
    """Wrap ``RunStore._retrying`` so that every attempt lost to a conflict is counted, by operation."""
    contention = GateContention()
    original: Callable[[RunStore, Callable[[], Any]], Any] = RunStore._retrying

    def retrying(store: RunStore, attempt: Callable[[], Any]) -> Any:
        # The attempt is a closure of the operation: "RunStore.claim.<locals>.attempt" -> "claim".
        operation = attempt.__qualname__.split(".")[-3]
        conflicts = 0

        def counted() -> Any:
            nonlocal conflicts
            try:
                return attempt()
            except Exception as error:  # counted, then raised again unchanged
                if getattr(error, "status_code", None) in CONFLICT_STATUSES:
                    conflicts += 1
                raise

        try:
            return original(store, counted)
        finally:
            contention.record(operation, conflicts)

    RunStore._retrying = retrying  # type: ignore[method-assign, assignment]
    try:
        yield contention
    finally:
        RunStore._retrying = original  # type: ignore[method-assign, assignment]


def report_run(stack: LocalStack, os_type: str, run_id: str, final: dict[str, Any], elapsed: float) -> None:
    assert stack.durable
    rows = run_store(load_settings()).machines(run_id)
    output = final.get("output") or {}
    children = [i for i in stack.durable.list_instances() if i["instanceId"].startswith(run_id)]
    batches = [history_length(stack, i["instanceId"]) for i in children if i["name"] == "deployment_batch"]
    machines = [history_length(stack, i["instanceId"]) for i in children if i["name"] == "deploy_machine"]
    print(f"--- {os_type} run {run_id}")
    print(f"runtime status / state   {final.get('runtimeStatus')} / {output.get('state')}")
    print(f"targets                  {output.get('machines')}  (stop reason: {output.get('stopReason')})")
    for status, count in sorted(counts_by_status(rows).items(), key=lambda item: -item[1]):
        print(f"  {status:<22} {count}")
    rate = len(rows) / elapsed if elapsed else 0.0
    print(f"wall time                {elapsed:.1f} s  ({rate:.1f} machines/s)")
    print(f"master history events    {history_length(stack, run_id)}")
    print(f"batches                  {len(batches)}")
    if batches:
        print(f"batch history events     max {max(batches)}, mean {sum(batches) / len(batches):.0f}")
    print(f"deploy_machine instances {len(machines)}")
    if machines:
        print(f"machine history events   max {max(machines)}, mean {sum(machines) / len(machines):.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--max-concurrent", type=max_concurrent_value, default="50%",
                        help='machines at once per run: a count or a percentage such as "50%%"')
    parser.add_argument("--os", choices=("linux", "windows", "both"), default="linux",
                        help="which deployments to run (both: one per operating system, at the same time)")
    args = parser.parse_args()
    os_types = {"linux": ["Linux"], "windows": ["Windows"], "both": ["Linux", "Windows"]}[args.os]

    fleet = generate_fleet(machines=args.machines, seed=args.seed)
    # The virtual clock starts at the real time, as the deployments are created at the real time.
    clock = VirtualClock(datetime.now(UTC).replace(second=0, microsecond=0))
    with LocalStack(fleet, clock=clock).start() as stack, counting_gate_conflicts() as contention:
        assert stack.functions and stack.durable and stack.arm
        everything = [{"subscriptionIds": fleet.subscription_ids()}]
        for os_type in os_types:
            create_deployment(stack, definition(f"bench-{os_type.lower()}", os_type, everything,
                                                args.max_concurrent))
        started, virtual_start = time.perf_counter(), clock.now()
        run_ids = {os_type: start_deployment_run(stack, f"bench-{os_type.lower()}") for os_type in os_types}
        finals = wait_for_runs(stack, run_ids, started)
        virtual_elapsed = clock.now() - virtual_start

        print(f"machines in fleet        {args.machines}  "
              f"(seed {args.seed}, maxConcurrent {args.max_concurrent})")
        print(f"virtual time passed      {virtual_elapsed}  (durable timers and simulated installs)")
        for os_type, (final, elapsed) in finals.items():
            report_run(stack, os_type, run_ids[os_type], final, elapsed)
        print("--- ARM requests by kind")
        kinds = Counter(arm_operation(r.method, r.path) for r in stack.arm.requests)
        for kind, count in kinds.most_common():
            print(f"  {kind:<40} {count}")
        print(f"  {'total':<40} {sum(kinds.values())}")
        print(f"  by status                                {dict(sorted(stack.arm.status_counts().items()))}")
        print("--- rollout gate: ETag-guarded writes of the run row")
        for operation in sorted(contention.calls):
            calls, conflicts = contention.calls[operation], contention.conflicts[operation]
            worst = contention.most_conflicts_in_one_call[operation]
            print(f"  {operation:<16} calls {calls:>5}, conflict retries {conflicts:>5} "
                  f"({conflicts / calls:.2f} per call, at most {worst} in one call)")


if __name__ == "__main__":
    main()
