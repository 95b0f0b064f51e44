"""Every kind of orchestration instance id the product builds passes Azure's rules for instance ids.

The rules (at most 256 characters, none of / \\ # ? or a control character, no leading @) are in
local/durable/limits.py with their sources; the local runner refuses an id that breaks them, as Azure does.
Each id is built here at its longest: the longest deployment name, the last batch, a nested light check.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from functions import assessment, compliance_audit, discovery, light_check
from functions.deployments import adhoc_run_id
from functions.durable import adhoc_instance_id, batch_instance_id, machine_instance_id
from local.durable.limits import instance_id_problem
from shared.deployments.scheduler import occurrence_instance_id
from shared.model.machines import OsType
from shared.timer_slots import slot_id

AT = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
SLOT = slot_id("0 */15 * * * *", AT)
# NAME_PATTERN allows 64 characters of letters, digits, '.', '_' and '-'.
LONGEST_DEPLOYMENT = "Patch_Tuesday.prod-" + "x" * 45
SUB = "00000000-0000-0000-0000-000000000001"
MACHINES = (
    f"/subscriptions/{SUB}/resourceGroups/rg-prod/providers/Microsoft.Compute/virtualMachines/vm-01",
    f"/subscriptions/{SUB}/resourceGroups/rg-dc1/providers/Microsoft.HybridCompute/machines/arc-01",
)
LAST_BATCH = 99_999  # the widest number the batch format writes


def _runs() -> dict[str, str]:
    """Every top-level run id, by kind."""
    check = light_check.instance_id_for(SLOT)
    return {
        "scheduled discovery": discovery.discovery_instance_id(SLOT),
        "ad-hoc discovery": adhoc_instance_id("discovery-"),
        "scheduled Linux assessment": assessment.scheduled_instance_id(OsType.LINUX, SLOT),
        "scheduled Windows assessment": assessment.scheduled_instance_id(OsType.WINDOWS, SLOT),
        "ad-hoc assessment": adhoc_instance_id(assessment.RUN_PREFIX),
        "light check": check,
        "light check's assessment": light_check.assessment_instance_id(check),
        "scheduled deployment": occurrence_instance_id(LONGEST_DEPLOYMENT, AT),
        "deployment started now": adhoc_run_id(LONGEST_DEPLOYMENT, AT),
        "daily compliance": compliance_audit.run_for("0 30 0 * * *", AT)[0],
    }


def _every_id() -> list[tuple[str, str]]:
    ids = []
    for kind, run_id in _runs().items():
        ids.append((kind, run_id))
        ids.append((f"{kind}: batch", batch_instance_id(run_id, LAST_BATCH)))
        ids.extend((f"{kind}: machine", machine_instance_id(run_id, m)) for m in MACHINES)
    return ids


@pytest.mark.parametrize("kind, instance_id", _every_id())
def test_every_instance_id_the_product_builds_is_one_azure_accepts(kind, instance_id):
    assert instance_id_problem(instance_id) is None, (kind, instance_id)


def test_the_longest_id_leaves_room_under_azures_limit():
    longest = max((instance_id for _, instance_id in _every_id()), key=len)
    assert longest.startswith(f"deploy-{LONGEST_DEPLOYMENT}-now-")
    assert len(longest) < 150  # 256 is the limit


@pytest.mark.parametrize("bad", ["deploy/x", "run#1", "run?1", "run\\1", "@run", "run\t1", "r" * 257])
def test_the_rule_refuses_what_azure_refuses(bad):
    assert instance_id_problem(bad) is not None
