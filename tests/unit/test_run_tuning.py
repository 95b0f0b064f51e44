"""Run tuning comes from the app settings: what a run's orchestrators wait for is what the operator set."""

from __future__ import annotations

from functions.deployments import run_input
from shared.assessment.messages import AssessmentTuning
from shared.deployments.definition import validate_definition
from shared.deployments.messages import DeploymentRunInput
from shared.settings import load_settings
from tests.unit.test_settings import VALID

DEFINITION = validate_definition({
    "name": "nightly",
    "operatingSystem": "Linux",
    "classifications": ["Critical and security updates"],
    "targets": {"machines": [
        "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/"
        "Microsoft.Compute/virtualMachines/web01"
    ]},
    "schedule": {"startTime": "2026-12-03T02:00:00", "timeZone": "UTC"},
    "maintenanceWindowMinutes": 120,
})


def test_assessment_deadline_setting_sets_a_deployment_runs_scan_deadline() -> None:
    settings = load_settings(VALID)
    default = DeploymentRunInput.model_validate(run_input("deploy-a", DEFINITION, "http", settings))
    changed = DeploymentRunInput.model_validate(run_input(
        "deploy-b", DEFINITION, "http",
        load_settings(VALID | {"ASSESSMENT_DEADLINE_MINUTES": "7", "ASSESSMENT_POLL_SECONDS": "10"}),
    ))
    assert default.tuning.scan_deadline_minutes == 30
    assert changed.tuning.scan_deadline_minutes == 7
    assert changed.tuning.poll_seconds == 10


def test_assessment_tuning_follows_the_same_settings() -> None:
    tuning = AssessmentTuning.from_settings(load_settings(VALID | {"ASSESSMENT_DEADLINE_MINUTES": "12"}))
    assert tuning.deadline_minutes == 12
