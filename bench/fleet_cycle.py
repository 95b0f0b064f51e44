"""What a cycle over a generated fleet costs through the local host, per machine: requests, bytes, time.

Prints figures; asserts nothing. Three phases, each measured on its own: an assessment of every machine,
a second assessment of the same unchanged fleet, and a deployment to every machine (one per operating
system, split into several when the fleet holds more machines of a system than a deployment may target:
shared.deployments.definition.MAX_MACHINES). Requests are counted where azure-core sends them
(bench/counting.py); counts are exact, times indicative (every stand-in runs in this process but Azurite).

    .venv/bin/python -m bench.fleet_cycle --machines 1000 --kind both --seed 11
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.counting import (
    BLOB,
    KINDS,
    LOGS_INGESTION,
    SERVICES_USED,
    TABLE,
    Request,
    Traffic,
    counting_requests,
)
from bench.runs import (
    RUN_TIMEOUT_SECONDS,
    Placement,
    create_deployment,
    definition,
    histories_by_orchestrator,
    instance_ids,
    max_concurrent_value,
    start_assessment,
    start_deployment_run,
    target_groups,
    wait_for_runs,
)
from bench.usage import Usage, reference_seconds
from local.arm.fleet import Fleet
from local.arm.generator import generate_fleet
from local.clock import VirtualClock
from local.stack import LocalStack
from shared.deployments.definition import MAX_MACHINES
from shared.deployments.runs_table import counts_by_status, run_store
from shared.settings import load_settings

# The orchestrations whose largest history the summary shows, by role (functions/assessment.py,
# functions/deployments.py); any other orchestration of a phase is shown under its own name.
ROLES = {
    "master": ("assessment_run", "deployment_run"),
    "batch": ("assessment_batch", "deployment_batch"),
    "group": ("assessment_group",),
    "machine": ("assess_machine", "deploy_machine"),
}


@dataclass
class Phase:
    name: str
    outcome: str  # what the runs did, in a few words
    usage: Usage
    traffic: Traffic
    histories: dict[str, list[int]]  # events per orchestration, by orchestrator name
    reference: tuple[float, float]  # usage.reference_seconds before and after the phase


def measure(stack: LocalStack, traffic: Traffic, name: str, run: Callable[[], str]) -> Phase:
    """Run ``run`` (which starts runs and waits for them, and says what they did) and what it cost."""
    assert stack.azurite
    pid = stack.azurite.process.pid
    reference_before = reference_seconds()
    known, counted, before = instance_ids(stack), traffic.snapshot(), Usage.now(pid)
    outcome = run()
    usage = Usage.now(pid).since(before)
    reference = (reference_before, reference_seconds())
    return Phase(name, outcome, usage, traffic.since(counted), histories_by_orchestrator(stack, known),
                 reference)


def assessment(stack: LocalStack, timeout: float) -> str:
    run_id = start_assessment(stack)
    final, _ = wait_for_runs(stack, {"run": run_id}, time.perf_counter(), timeout)["run"]
    output = final.get("output") or {}
    return (f"{final.get('runtimeStatus')}: {output.get('assessed')} assessed, "
            f"{output.get('failed')} failed, {output.get('not_assessable')} not assessable, "
            f"{output.get('unsupported')} unsupported")


def deployment_specs(fleet: Fleet, max_concurrent: int | str) -> list[dict[str, Any]]:
    """Deployments that together target every machine of the fleet, at most MAX_MACHINES each."""
    specs = []
    for os_type in ("Linux", "Windows"):
        places = [Placement(m.subscription, m.resource_group, m.location)
                  for m in fleet.machines if m.os_type == os_type]
        for n, groups in enumerate(target_groups(places, MAX_MACHINES), start=1):
            specs.append(definition(f"bench-{os_type.lower()}-{n}", os_type, groups, max_concurrent))
    return specs


def deployment(stack: LocalStack, names: Sequence[str], run_ids: dict[str, str], timeout: float) -> str:
    started = time.perf_counter()
    run_ids.update({name: start_deployment_run(stack, name) for name in names})
    finals = wait_for_runs(stack, run_ids, started, timeout)
    states = Counter(str(f.get("runtimeStatus")) for f, _ in finals.values())
    return f"{len(names)} runs: " + ", ".join(f"{n} {s}" for s, n in states.items())


def machine_results(run_ids: dict[str, str]) -> Counter[str]:
    """The machines' result statuses over every run (read after the phase, so not counted in it)."""
    store = run_store(load_settings())
    found: Counter[str] = Counter()
    for run_id in run_ids.values():
        found.update(counts_by_status(store.machines(run_id)))
    return found


def virtual_hours(elapsed: timedelta) -> str:
    minutes = round(elapsed.total_seconds() / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def per_machine(count: float, machines: int) -> str:
    return f"{count / machines:.2f} ({count:,.0f})" if count else "0"


def history_cell(lengths: Sequence[int]) -> str:
    if not lengths:
        return "-"
    return f"{max(lengths)} (mean {sum(lengths) / len(lengths):.0f} of {len(lengths)})"


def row(label: str, cells: Sequence[str]) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def report(fleet: Fleet, args: argparse.Namespace, phases: Sequence[Phase]) -> None:
    machines = len(fleet.machines)
    systems = Counter(m.os_type for m in fleet.machines)
    kinds = Counter(m.kind for m in fleet.machines)
    print(f"fleet cycle, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"{machines} machines (seed {args.seed}): "
          + ", ".join(f"{n} {k}" for k, n in sorted((systems + kinds).items()))
          + f"; deployments of at most {MAX_MACHINES} machines, maxConcurrent {args.max_concurrent}")
    print()
    print(row("per machine of the fleet (total)", [p.name for p in phases]))
    print(row("---", ["---"] * len(phases)))
    print(row("outcome", [p.outcome for p in phases]))
    print(row("requests, every kind", [per_machine(p.traffic.requests.total(), machines) for p in phases]))
    for kind in KINDS:
        counts = [p.traffic.by_kind()[kind] for p in phases]
        if any(counts) or kind in SERVICES_USED:
            print(row(f"  {kind}", [per_machine(c, machines) for c in counts]))
    print(row("  of them failed (4xx, 5xx)",
              [per_machine(p.traffic.failed.total(), machines) for p in phases]))
    print(row("entities in Table transactions",
              [per_machine(p.traffic.transaction_entities.total(), machines) for p in phases]))
    print(row("Logs Ingestion bytes sent (gzip)",
              [per_machine(p.traffic.ingestion_bytes["sent"], machines) for p in phases]))
    print(row("Logs Ingestion bytes of rows",
              [per_machine(p.traffic.ingestion_bytes["rows"], machines) for p in phases]))
    for role, names in ROLES.items():
        print(row(f"largest history, {role} (events)",
                  [history_cell([n for name in names for n in p.histories.get(name, [])]) for p in phases]))
    known = {name for names in ROLES.values() for name in names}
    for name in sorted({n for p in phases for n in p.histories} - known):
        print(row(f"largest history, {name} (events)",
                  [history_cell(p.histories.get(name, [])) for p in phases]))
    print(row("wall seconds", [f"{p.usage.wall / machines:.3f} ({p.usage.wall:,.1f})" for p in phases]))
    print(row("CPU seconds, this process",
              [f"{p.usage.cpu / machines:.3f} ({p.usage.cpu:,.1f})" for p in phases]))
    print(row("  of them activity threads",
              [f"{p.usage.activities_cpu / machines:.3f} ({p.usage.activities_cpu:,.1f})" for p in phases]))
    print(row("  of them the orchestration thread (with the local engine)",
              [f"{p.usage.orchestrations_cpu / machines:.3f} ({p.usage.orchestrations_cpu:,.1f})"
               for p in phases]))
    print(row("  of them stand-ins and the rest",
              [f"{p.usage.rest_cpu / machines:.3f} ({p.usage.rest_cpu:,.1f})" for p in phases]))
    print(row("CPU seconds, Azurite", [
        "-" if p.usage.other_cpu is None else f"{p.usage.other_cpu / machines:.3f} ({p.usage.other_cpu:,.1f})"
        for p in phases
    ]))
    print(row("core seconds of the machine: busy / idle / stolen by the hypervisor", [
        "-" if p.usage.cores is None else
        f"{p.usage.cores.busy / machines:.3f} / {p.usage.cores.idle / machines:.3f} / "
        f"{p.usage.cores.stolen / machines:.3f} ({p.usage.cores.stolen:,.0f} stolen)"
        for p in phases
    ]))
    print(row("reference work, CPU seconds before / after (same work every run: the machine's speed)",
              [f"{p.reference[0]:.3f} / {p.reference[1]:.3f}" for p in phases]))
    print(row("peak RSS KB, this process so far",
              [f"{p.usage.peak_rss_kb / machines:,.0f} ({p.usage.peak_rss_kb / 1024:,.0f} MB)"
               for p in phases]))
    print()
    detail(phases, machines, "Table requests by table and operation", lambda r: r.kind == TABLE)
    detail(phases, machines, "Blob requests by container and operation", lambda r: r.kind == BLOB)
    detail(phases, machines, "Logs Ingestion calls by stream", lambda r: r.kind == LOGS_INGESTION)
    detail(phases, machines, "other requests by operation",
           lambda r: r.kind not in (TABLE, BLOB, LOGS_INGESTION))
    failed = [p.traffic.failed for p in phases]
    if any(failed):
        detail(phases, machines, "failed requests", lambda r: True, counts=failed)


def detail(phases: Sequence[Phase], machines: int, title: str, wanted: Callable[[Request], bool],
           counts: Sequence[Counter[Request]] | None = None) -> None:
    counters = counts or [p.traffic.requests for p in phases]
    requests = sorted({r for c in counters for r in c if wanted(r)})
    if not requests:
        return
    print(row(f"{title}, per machine (total)", [p.name for p in phases]))
    print(row("---", ["---"] * len(phases)))
    for request in requests:
        label = " ".join(part for part in request if part)
        print(row(label, [per_machine(c[request], machines) for c in counters]))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--kind", choices=("assessment", "deployment", "both"), default="both",
                        help="two assessments (the second of the unchanged fleet), a deployment, or both")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--max-concurrent", type=max_concurrent_value, default="50%",
                        help='machines at once per deployment run: a count or a percentage such as "50%%"')
    parser.add_argument("--wait-hours", type=float, default=RUN_TIMEOUT_SECONDS / 3600,
                        help="real hours to wait for a phase's runs (a 10,000-machine deployment on 2 shared "
                             "cores takes more than the default)")
    args = parser.parse_args()
    timeout = args.wait_hours * 3600

    fleet = generate_fleet(machines=args.machines, seed=args.seed)
    # The virtual clock starts at the real time, as the deployments are created at the real time.
    clock = VirtualClock(datetime.now(UTC).replace(second=0, microsecond=0))
    phases: list[Phase] = []
    stack = LocalStack(fleet, clock=clock).start()
    with stack, counting_requests(stack.app_settings()) as traffic:
        if args.kind in ("assessment", "both"):
            assess = functools.partial(assessment, stack, timeout)
            phases.append(measure(stack, traffic, "assessment", assess))
            phases.append(measure(stack, traffic, "assessment, unchanged", assess))
        if args.kind in ("deployment", "both"):
            specs = deployment_specs(fleet, args.max_concurrent)
            for spec in specs:  # a definition is made once, not each cycle: not counted
                create_deployment(stack, spec)
            run_ids: dict[str, str] = {}
            virtual_start = clock.now()
            names = [spec["name"] for spec in specs]
            deploy = functools.partial(deployment, stack, names, run_ids, timeout)
            phases.append(measure(stack, traffic, "deployment", deploy))
            results = machine_results(run_ids)
            phases[-1].outcome += (
                "; machines: " + ", ".join(f"{n} {s}" for s, n in results.most_common())
                + f"; {virtual_hours(clock.now() - virtual_start)} virtual"
            )
    report(fleet, args, phases)


if __name__ == "__main__":
    main()
