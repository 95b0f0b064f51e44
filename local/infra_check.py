"""``python -m local.infra_check CHECKOV``: checkov over ``infra/``, failing on what checkov lets pass.

checkov exits 0 when a file does not parse (it just skips the file), so this runs it with JSON
output and fails on a parse error as on a failed check. It prints every skipped check with the
reason written next to the resource, so a reader sees what was waived and why.

``infra/modules/entra-app.bicep`` is left out: it holds only Microsoft Graph resources, for which
checkov has no policies, and checkov 3.3.30 parses Bicep with pycep-parser 0.5.1, which predates
the ``extension`` statement. tests/infra parses that file with the current pycep-parser.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
# Files checkov cannot parse and has no policies for; see the module docstring.
NOT_CHECKED = ("infra/modules/entra-app.bicep",)


def run_checkov(checkov: str) -> tuple[dict[str, Any], float]:
    command = [checkov, "--directory", "infra", "--framework", "bicep", "--output", "json",
               "--skip-download"]  # no network: the guideline download and external checks stay off
    for path in NOT_CHECKED:
        command += ["--skip-path", path]
    # BC_SKIP_MAPPING: do not fetch the Prisma Cloud id mapping (this machine has no internet).
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"checkov printed no JSON report (exit code {done.returncode})") from None
    # One framework gives one report object; checkov gives a list when several ran.
    if isinstance(report, list):
        report = next(r for r in report if r.get("check_type") == "bicep")
    return report, elapsed


def summarise(report: dict[str, Any], elapsed: float) -> int:
    results = report.get("results", {})
    summary = report.get("summary", {})
    failed = results.get("failed_checks", [])
    skipped = results.get("skipped_checks", [])
    parse_errors = results.get("parsing_errors", [])
    for check in skipped:
        print(f"  skipped {check['check_id']} on {check['resource']} ({check['file_path']}): "
              f"{check.get('check_result', {}).get('suppress_comment', '').strip()}")
    for check in failed:
        lines = check.get("file_line_range", [])
        print(f"  FAILED  {check['check_id']} {check['check_name']}\n"
              f"          {check['resource']} in {check['file_path']} lines {lines}")
    for path in parse_errors:
        print(f"  NOT PARSED {path}: checkov skipped the file")
    print(f"checkov {summary.get('checkov_version', '?')}: {summary.get('passed', 0)} passed, "
          f"{len(failed)} failed, {len(skipped)} skipped, {len(parse_errors)} not parsed, "
          f"{summary.get('resource_count', 0)} resources, {elapsed:.1f} s")
    return 1 if failed or parse_errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.infra_check", description=__doc__.splitlines()[0])
    parser.add_argument("checkov", help="the checkov executable (its own virtualenv)")
    args = parser.parse_args(argv)
    report, elapsed = run_checkov(args.checkov)
    return summarise(report, elapsed)


if __name__ == "__main__":
    sys.exit(main())
