"""Which safety policy (shared.safety.policy) applies to each machine of a deployment run.

Decided once, when the run resolves its machines, and kept with the run: the deployment's own policy for
every machine when it has one; else each machine's asset category's policy, whatever the deployment
targets (a category's health gate also guards its machines in a plain deployment). Machines of no
category with a policy are deployed as before. The run row keeps the policies by key (``*`` for the
deployment's, else the category's name) and each machine row its key, so that a later edit of the
category or the deployment does not change a run already going.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from shared.azure.tables import table_service
from shared.deployments.definition import DeploymentDefinition
from shared.fleet.machines_table import MachineInventory
from shared.fleet.placement import ASSET_CATEGORY
from shared.governance.categories_table import category_store
from shared.safety.policy import SafetyPolicy, policy_json
from shared.settings import Settings

# The key of the deployment's own policy: not a category name (those start with a letter or digit).
DEPLOYMENT_POLICY_KEY = "*"


def run_policies(settings: Settings, definition: DeploymentDefinition,
                 resource_ids: Sequence[str]) -> tuple[dict[str, str], dict[str, SafetyPolicy]]:
    """Each machine's policy key (by lower-case resource id; machines with none left out) and the
    policies by key. Reads the categories, and the Machines table's placements only when a category
    has a policy."""
    if definition.safety is not None and definition.safety.is_active():
        return ({rid.lower(): DEPLOYMENT_POLICY_KEY for rid in resource_ids},
                {DEPLOYMENT_POLICY_KEY: definition.safety})
    guarded = {c.name.lower(): c.safety for c in category_store(settings).categories()
               if c.safety is not None and c.safety.is_active()}
    if not guarded:
        return {}, {}
    wanted = {rid.lower() for rid in resource_ids}
    keys: dict[str, str] = {}
    for entity in MachineInventory(table_service(settings)).columns(["ResourceId", ASSET_CATEGORY]):
        rid = str(entity.get("ResourceId") or "").lower()
        category = str(entity.get(ASSET_CATEGORY) or "").lower()
        if rid in wanted and category in guarded:
            keys[rid] = category
    used = set(keys.values())
    return keys, {key: policy for key, policy in guarded.items() if key in used and policy is not None}


def policies_text(policies: Mapping[str, SafetyPolicy]) -> str:
    return json.dumps({key: policy_json(policy) for key, policy in sorted(policies.items())},
                      separators=(",", ":"))


def stored_policies(text: str) -> dict[str, SafetyPolicy]:
    """The policies a run row keeps (empty for runs from before safe rollouts)."""
    if not text:
        return {}
    return {key: SafetyPolicy.model_validate(body) for key, body in json.loads(text).items()}
