"""Test evidence's bake time: a timer judges again every update in test, so one whose bake time ended with
no new install becomes ``passed`` without waiting for another run (shared.deployments.governed)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import azure.durable_functions as df
import azure.functions as func

from shared.deployments.governed import evaluate_baking
from shared.settings import load_settings

bp = df.Blueprint()
log = logging.getLogger(__name__)

# Hourly, at ten past: a category's bake time is counted in whole hours (testEvidence.bakeHours), so an
# update passes at most an hour after its bake time ends.
BAKE_CHECK_SCHEDULE = "0 10 * * * *"


@bp.timer_trigger(schedule=BAKE_CHECK_SCHEDULE, arg_name="timer", run_on_startup=False)
def evaluate_test_evidence(timer: func.TimerRequest) -> None:
    moved = evaluate_baking(load_settings(), datetime.now(UTC))
    if moved:
        log.info("test evidence: %d update(s) passed once their bake time ended", moved)
