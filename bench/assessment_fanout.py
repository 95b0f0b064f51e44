"""How an assessment of a large fleet behaves through the local host: time, and history sizes.

Prints figures; asserts nothing. The point of the batch layer is that the master
orchestration's history stays the same size whatever the fleet size (Durable replays the
whole history on every wake-up; AZURE-FACTS, Durable limits). Stand-ins are in-process
and single-machine, so wall time says little about Azure; history sizes say a lot.

    .venv/bin/python -m bench.assessment_fanout --machines 500 --seed 11
"""

from __future__ import annotations

import argparse
import time

from bench.runs import history_length, start_assessment
from local.arm.generator import generate_fleet
from local.stack import LocalStack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=500)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    fleet = generate_fleet(machines=args.machines, seed=args.seed)
    with LocalStack(fleet).start() as stack:
        assert stack.functions and stack.durable
        started = time.perf_counter()
        run_id = start_assessment(stack)
        final = stack.durable.wait_for_completion(run_id, timeout=3600)
        elapsed = time.perf_counter() - started
        master = stack.durable.get_status(run_id, show_history=True) or {}
        batches = [
            i for i in stack.durable.list_instances()
            if i["name"] == "assessment_batch" and i["instanceId"].startswith(run_id)
        ]
        batch_events = [history_length(stack, b["instanceId"]) for b in batches]
        output = final.get("output") or {}
        print(f"machines in fleet        {args.machines}")
        print(f"assessed / failed        {output.get('assessed')} / {output.get('failed')}")
        print(f"not assessable           {output.get('not_assessable')}")
        print(f"unsupported              {output.get('unsupported')}")
        print(f"wall time                {elapsed:.1f} s  ({args.machines / elapsed:.1f} machines/s)")
        print(f"master history events    {len(master.get('historyEvents', []))}")
        print(f"batches                  {len(batches)}")
        if batch_events:
            mean = sum(batch_events) / len(batch_events)
            print(f"batch history events     max {max(batch_events)}, mean {mean:.0f}")
        print(f"ARM requests             {len(stack.arm.requests) if stack.arm else 0}")


if __name__ == "__main__":
    main()
