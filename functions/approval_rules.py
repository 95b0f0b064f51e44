"""The categories' automatic approval rules, applied hourly: an update a rule covers is approved (as
``rule:<category>``) once it passed and baked, even if nobody reads the inventory meanwhile, so a
deployment installing only approved updates gets it (shared.governance.approvals)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import azure.durable_functions as df
import azure.functions as func

from shared.governance.approvals import evaluate_auto_rules
from shared.settings import load_settings

bp = df.Blueprint()
log = logging.getLogger(__name__)

# Hourly, at twenty past: after the test evidence's bake check at ten past (functions.evidence), so an
# update that passed then is approved within the same hour; minBakeHours is counted in whole hours.
AUTO_APPROVAL_SCHEDULE = "0 20 * * * *"


@bp.timer_trigger(schedule=AUTO_APPROVAL_SCHEDULE, arg_name="timer", run_on_startup=False)
def apply_approval_rules(timer: func.TimerRequest) -> None:
    approved = evaluate_auto_rules(load_settings(), datetime.now(UTC))
    if approved:
        log.info("automatic rules approved %d update(s): %s", len(approved),
                 ", ".join(f"{s.ref.key} in {s.category}" for s in approved[:20]))
