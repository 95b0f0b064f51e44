"""``python -m local.infra_gen``: write the Bicep's generated inputs from the code's declarations.

  python -m local.infra_gen            write infra/generated/log-tables.json
  python -m local.infra_gen --check    exit 1 if the committed file differs from what the code declares

The monitoring module loads the file with ``loadJsonContent``, so the Log Analytics tables and the
data collection rule's streams come from :mod:`shared.log_tables`, as the local stand-in's do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.log_tables import bicep_tables

ROOT = Path(__file__).resolve().parents[1]
LOG_TABLES_JSON = ROOT / "infra" / "generated" / "log-tables.json"


def render_log_tables() -> str:
    return json.dumps(bicep_tables(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.infra_gen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    wanted = render_log_tables()
    relative = LOG_TABLES_JSON.relative_to(ROOT)
    if args.check:
        current = LOG_TABLES_JSON.read_text() if LOG_TABLES_JSON.exists() else ""
        if current != wanted:
            print(f"{relative} is out of date: run python -m local.infra_gen", file=sys.stderr)
            return 1
        print(f"{relative} matches shared/log_tables.py")
        return 0
    LOG_TABLES_JSON.parent.mkdir(parents=True, exist_ok=True)
    LOG_TABLES_JSON.write_text(wanted)
    print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
