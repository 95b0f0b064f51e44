"""``python -m local.infra_gen``: write the Bicep's generated inputs from the code's declarations.

  python -m local.infra_gen            write infra/generated/log-tables.json and log-functions.json
  python -m local.infra_gen --check    exit 1 if a committed file differs from what the code declares

The monitoring module loads the files with ``loadJsonContent``, so the Log Analytics tables, the
data collection rule's streams and the workspace functions come from :mod:`shared.log_tables`, as
the local stand-in's do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.log_tables import bicep_functions, bicep_tables

ROOT = Path(__file__).resolve().parents[1]
LOG_TABLES_JSON = ROOT / "infra" / "generated" / "log-tables.json"
LOG_FUNCTIONS_JSON = ROOT / "infra" / "generated" / "log-functions.json"


def render_log_tables() -> str:
    return json.dumps(bicep_tables(), indent=2) + "\n"


def render_log_functions() -> str:
    return json.dumps(bicep_functions(), indent=2) + "\n"


GENERATED = {LOG_TABLES_JSON: render_log_tables, LOG_FUNCTIONS_JSON: render_log_functions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.infra_gen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = 0
    for path, render in GENERATED.items():
        wanted = render()
        relative = path.relative_to(ROOT)
        if args.check:
            current = path.read_text() if path.exists() else ""
            if current != wanted:
                print(f"{relative} is out of date: run python -m local.infra_gen", file=sys.stderr)
                stale += 1
            else:
                print(f"{relative} matches shared/log_tables.py")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted)
        print(f"wrote {relative}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
