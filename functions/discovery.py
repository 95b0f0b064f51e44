"""Fleet discovery: the timer and ``POST /api/discoveries`` start the run that keeps the inventory current."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from pydantic import BaseModel, ConfigDict

from functions.durable import adhoc_instance_id, current_slot, send_log_rows, start_once
from functions.http import error_response, read_json, requires, run_accepted
from shared.azure.credentials import credential_for
from shared.fleet.discovery import discover_subscription as discover_subscription_machines
from shared.fleet.messages import DiscoveryCounts, DiscoveryRunInput, SubscriptionDiscoveryInput
from shared.governance.categories_table import fleet_placer, refresh_all_searches
from shared.principal import Role
from shared.settings import load_settings

bp = df.Blueprint()

# ARM list calls fail transiently (throttling survives azure-core's own retries under load):
# three attempts a minute apart before the subscription is recorded as failed.
_DISCOVERY_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=60_000, max_number_of_attempts=3)


def discovery_instance_id(slot: str) -> str:
    return f"discovery-{slot}"


class StartDiscoveryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subscriptionIds: list[str] | None = None


@bp.timer_trigger(schedule="%FLEET_DISCOVERY_SCHEDULE%", arg_name="timer", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def discover_fleet(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    """Start one discovery run per timer slot; a doubled or late firing of the same slot starts nothing."""
    settings = load_settings()
    instance_id = discovery_instance_id(current_slot(settings.fleet_discovery_schedule))
    run = DiscoveryRunInput(subscription_ids=settings.target_subscription_ids, trigger="timer")
    await start_once(client, "fleet_discovery_run", instance_id, run.model_dump(mode="json"))


@bp.route(route="discoveries", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
@requires(Role.OPERATOR)
async def start_discovery(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    settings = load_settings()
    # An empty body discovers every subscription in TARGET_SUBSCRIPTION_IDS: discovery only reads.
    body = read_json(req, StartDiscoveryBody.model_validate, if_empty={})
    if isinstance(body, func.HttpResponse):
        return body
    requested = tuple(s.lower() for s in (body.subscriptionIds or settings.target_subscription_ids))
    outside = sorted(set(requested) - set(settings.target_subscription_ids))
    if outside:
        return error_response(
            400, "InvalidField",
            f"subscriptionIds: {', '.join(outside)} not in TARGET_SUBSCRIPTION_IDS", "subscriptionIds",
        )
    run = DiscoveryRunInput(subscription_ids=requested, trigger="http")
    instance_id = await client.start_new(
        "fleet_discovery_run", adhoc_instance_id("discovery-"), run.model_dump(mode="json")
    )
    return run_accepted(instance_id)


@bp.orchestration_trigger(context_name="context")
def fleet_discovery_run(context: df.DurableOrchestrationContext) -> Any:
    run = DiscoveryRunInput.model_validate(context.get_input())
    context.set_custom_status({"stage": "category searches"})
    # The asset categories' saved searches run once per pass, before the subscriptions are placed. A
    # failure leaves their last members in place (each activity places with those), never the pass.
    try:
        searches = yield context.call_activity(
            "refresh_category_searches", context.current_utc_datetime.isoformat()
        )
    except Exception as error:  # noqa: BLE001 - a failed activity reaches the orchestrator as Exception
        searches = {"error": str(error)}
    context.set_custom_status({"stage": "discovering", "subscriptions": len(run.subscription_ids)})
    tasks = [
        context.call_activity_with_retry(
            "discover_subscription",
            _DISCOVERY_RETRY,
            SubscriptionDiscoveryInput(
                run_id=context.instance_id,
                subscription_id=subscription_id,
                observed_at=context.current_utc_datetime,
            ).model_dump(mode="json"),
        )
        for subscription_id in run.subscription_ids
    ]
    # A subscription that cannot be read comes back as a counted failure, not an exception,
    # so one bad subscription never hides the others.
    results = yield context.task_all(tasks)
    total = DiscoveryCounts()
    for result in results:
        total = total.plus(DiscoveryCounts.model_validate(result))
    summary = total.model_dump(mode="json") | {"categorySearches": searches}
    yield send_log_rows(context)  # the heartbeats the activities queued
    context.set_custom_status({"stage": "done", **summary})
    return summary


@bp.activity_trigger(input_name="request")
def discover_subscription(request: dict[str, Any]) -> dict[str, Any]:
    request_model = SubscriptionDiscoveryInput.model_validate(request)
    settings = load_settings()
    counts = discover_subscription_machines(settings, request_model, fleet_placer(settings))
    return counts.model_dump(mode="json")


@bp.activity_trigger(input_name="at")
def refresh_category_searches(at: str) -> dict[str, Any]:
    """Run every asset category's saved search once for this discovery pass (see categories_table)."""
    settings = load_settings()
    return refresh_all_searches(settings, credential_for(settings), datetime.fromisoformat(at)).to_json()

