"""``python -m local``: the one-machine host's command line.

  run [--fresh] [--state-dir DIR]      what `make run` does: adds the demo data to the state folder
                                       (--fresh: starts from nothing)
  serve [--fleet FILE] [--state-dir DIR] [--port N] [--speed X]
                                       keep the whole host up until Ctrl-C, on the state folder's
                                       clock (X times wall time, 60 by default), firing every timer
  azure --state-dir DIR [--fleet FILE] [--speed X]
                                       only the stand-ins for Azure (Azurite, ARM, Log Analytics,
                                       Resource Graph), which outlive a crashed host
  host --state-dir DIR [--port N]      only the Functions host, attached to `azure` on the same folder
  query "<KQL>"                        query the local Log Analytics of the last run
  fleet generate --machines N --seed S [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from local.clock import Clock
from local.stack import DEFAULT_STATE_DIR, DEMO_FLEET


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local", description="The one-machine host.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="run the product's main job on the demo fleet and summarise")
    run_cmd.add_argument("--fleet", type=Path, default=DEMO_FLEET)
    run_cmd.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    run_cmd.add_argument("--fresh", action="store_true",
                         help="start from nothing: drop what the state folder holds (deployments included)")
    serve_cmd = commands.add_parser("serve", help="keep the host up with the API on a local port")
    serve_cmd.add_argument("--fleet", type=Path, default=DEMO_FLEET)
    serve_cmd.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    serve_cmd.add_argument("--port", type=int, default=0, help="the API's port (default: any free one)")
    serve_cmd.add_argument("--speed", type=_positive, default=None,
                           help="the clock runs this many times faster than wall time (default: the "
                           "state folder's last speed, else 60: a 2-hour window in two minutes)")
    azure_cmd = commands.add_parser("azure", help="only the stand-ins for Azure, for `host` to attach to")
    azure_cmd.add_argument("--fleet", type=Path, default=DEMO_FLEET)
    azure_cmd.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    azure_cmd.add_argument("--speed", type=_positive, default=1.0, help="time runs this many times faster")
    host_cmd = commands.add_parser("host", help="only the Functions host, attached to `azure`")
    host_cmd.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    host_cmd.add_argument("--port", type=int, default=0)
    query_cmd = commands.add_parser("query", help="run KQL against the local Log Analytics")
    query_cmd.add_argument("kql")
    query_cmd.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    fleet_cmd = commands.add_parser("fleet", help="simulated fleets")
    fleet_sub = fleet_cmd.add_subparsers(dest="fleet_command", required=True)
    generate = fleet_sub.add_parser("generate", help="generate a fleet file from a seed")
    generate.add_argument("--machines", type=int, required=True)
    generate.add_argument("--seed", type=int, default=1)
    generate.add_argument("--out", type=Path, help="write here (.yaml or .json); default: stdout as YAML")
    args = parser.parse_args(argv)

    if args.command == "run":
        from local.run import run

        return run(args.fleet, args.state_dir, fresh=args.fresh)
    if args.command == "serve":
        from local.serve import serve

        return serve(args.fleet, args.state_dir, args.speed, args.port)
    if args.command == "azure":
        return _azure(args.fleet, args.state_dir, args.speed)
    if args.command == "host":
        import logging

        from local.host_process import run_host

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("azure").setLevel(logging.WARNING)  # not every HTTP request of the SDKs
        return run_host(args.state_dir, args.port)
    if args.command == "query":
        return _query(args.kql, args.state_dir)
    if args.command == "fleet":
        return _generate(args.machines, args.seed, args.out)
    return 2


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _azure(fleet_file: Path, state_dir: Path, speed: float) -> int:
    import signal
    from datetime import UTC, datetime

    from local.arm.fleet import load_fleet
    from local.clock import ScaledClock, save_clock, saved_clock
    from local.stack import LocalStack

    saved = saved_clock(state_dir)  # one clock: go on from where the last command on the folder stopped
    clock = ScaledClock(saved.now if saved else datetime.now(UTC), speed)
    stack = LocalStack(load_fleet(fleet_file), clock=clock, state_dir=state_dir).start_azure()
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"Azure stand-ins up; attach a host: python -m local host --state-dir {state_dir}", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        stack.stop()
        save_clock(state_dir, clock.now(), speed)
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _query(kql: str, state_dir: Path) -> int:
    from local.loganalytics.query_errors import refusal_line
    from local.loganalytics.store import KqlQueryError, LogStore, StoreBusy
    from local.report import table

    db = state_dir / "loganalytics.duckdb"
    if not db.exists():
        print(f"no local Log Analytics data at {db}: run `make run` first", file=sys.stderr)
        return 1
    store = LogStore.open_read_only(db, clock=_stopped_clock(state_dir))
    try:
        rows = store.query(kql)
    except (KqlQueryError, StoreBusy) as error:
        print(refusal_line(kql, str(error)), file=sys.stderr)
        return 1
    if not rows:
        print("(no rows)")
        return 0
    print(table(rows, list(rows[0].keys())))
    return 0


def _stopped_clock(state_dir: Path) -> Clock | None:
    """``ago()`` in a query means before where the state folder's clock stopped, as in the workbook."""
    from local.clock import VirtualClock, saved_clock

    saved = saved_clock(state_dir)
    return VirtualClock(saved.now) if saved else None


def _generate(machines: int, seed: int, out: Path | None) -> int:
    from local.arm.generator import generate_fleet

    fleet = generate_fleet(machines=machines, seed=seed)
    if out is None:
        sys.stdout.write(fleet.to_yaml())
    else:
        fleet.save(out)
        print(f"wrote {machines} machines to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
