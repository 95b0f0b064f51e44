"""The evidence rule over the PatchEvidence table and the patch inventory (Azurite): an update stays in test
while it bakes and passes once the bake time since the K-th install has passed with no failure, as the
hourly timer judges it; a failure afterwards fails it with its reason."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from shared.deployments.governed import evaluate
from shared.governance.categories import validate_category
from shared.governance.evidence import EvidenceRecord, EvidenceState, Outcome
from shared.governance.evidence_table import evidence_store
from shared.governance.patch_refs import parse_patch_ref
from shared.governance.patches import PatchState
from shared.governance.patches_table import patch_inventory
from shared.model.machines import OsType
from shared.settings import load_settings

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_an_update_bakes_then_passes_and_a_later_failure_fails_it(app_settings):
    settings = load_settings()
    category = validate_category({
        "name": f"bake-{uuid.uuid4().hex[:8]}", "criticality": 3, "membership": {"tags": {"role": "bake"}},
        "rings": [{"name": "test", "membership": {"tags": {"ring": "test"}}}, {"name": "production"}],
        "testEvidence": {"minMachines": 2, "bakeHours": 24},
    })  # fmt: skip
    ref = parse_patch_ref(OsType.LINUX, f"bakepkg-{uuid.uuid4().hex[:6]}=1.0-1")
    store, inventory = evidence_store(settings), patch_inventory(settings)

    def installed(machine: str, at: datetime) -> EvidenceRecord:
        return EvidenceRecord(ref, machine, Outcome.INSTALLED, at, "run-bake", computer=machine)

    store.record(category.name, [installed("m1", AT)])
    assert evaluate(store, inventory, category, ref, AT) is EvidenceState.IN_TEST
    assert inventory.state(ref, category.name).state is PatchState.IN_TEST
    store.record(category.name, [installed("m2", AT + timedelta(hours=2))])  # the K-th install
    assert evaluate(store, inventory, category, ref, AT + timedelta(hours=25)) is EvidenceState.IN_TEST
    assert evaluate(store, inventory, category, ref, AT + timedelta(hours=26)) is EvidenceState.PASSED
    status = inventory.state(ref, category.name)
    assert status.state is PatchState.PASSED and status.by == "system:evidence"
    assert (status.evidence.installed, status.evidence.failed) == (2, 0)

    store.record(category.name, [EvidenceRecord(ref, "m3", Outcome.FAILED, AT + timedelta(hours=30), "run-2",
                                                "dpkg: error processing package", "m3")])
    assert evaluate(store, inventory, category, ref, AT + timedelta(hours=31)) is EvidenceState.FAILED
    failed = inventory.state(ref, category.name)
    assert failed.state is PatchState.FAILED
    assert failed.justification == "failed on m3 in run run-2: dpkg: error processing package"
