"""Every app setting the code reads, in one place.

Each setting is declared once in :data:`SETTINGS` (name, meaning, default, rule).
:func:`load_settings` reads them all from the environment and fails with one
message that names every missing or malformed setting. ``local.settings.example.json``
and the Bicep app settings are checked against this table by tests, so the three
places cannot drift apart.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlparse

from shared.model.classification import Classification
from shared.timer_slots import is_valid_ncrontab

_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
# Azure Storage task hub names: 3-45 characters, letters and digits, starting with a letter
# (Durable Functions docs, "Task hubs in Durable Functions").
_TASK_HUB = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,44}$")
# Data collection rule immutable ids look like dcr-<32 hex> (Azure Monitor DCR structure docs).
_DCR_IMMUTABLE_ID = re.compile(r"^dcr-[0-9a-f]{32}$")
# Blob container names: 3-63 lowercase letters, digits and single hyphens, starting and ending with a
# letter or digit (Azure Storage naming rules).
_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
# Functions timer triggers take six-field NCRONTAB expressions (second minute hour day month weekday).
_NCRONTAB_FIELDS = 6


class SettingsError(ValueError):
    """Raised at start-up when app settings are missing or malformed; names each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "App settings are missing or malformed:\n" + "\n".join(f"  - {p}" for p in problems)
        )


class AuthMode(StrEnum):
    MANAGED_IDENTITY = "managed-identity"  # Azure: the app's user-assigned identity
    DEFAULT_CREDENTIAL = "default-credential"  # a developer's az login, env vars, ...
    EMULATOR = "emulator"  # local stand-ins only: a static token, loopback endpoints only


def _guid(value: str) -> str:
    if not _GUID.match(value):
        raise ValueError("must be a GUID like 00000000-0000-0000-0000-000000000000")
    return value.lower()


def _guid_list(value: str) -> tuple[str, ...]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError("must list at least one subscription id, comma-separated")
    return tuple(_guid(v) for v in items)


def _url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("https", "http") or not parsed.netloc:
        raise ValueError("must be an absolute http(s) URL")
    if parsed.scheme == "http" and not _is_loopback(value):
        raise ValueError("must use https (plain http is accepted only for loopback addresses)")
    return value.rstrip("/")


def _pattern(regex: re.Pattern[str], rule: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not regex.match(value):
            raise ValueError(rule)
        return value

    return parse


def _ncrontab(value: str) -> str:
    if len(value.split()) != _NCRONTAB_FIELDS or not is_valid_ncrontab(value):
        raise ValueError("must be a six-field NCRONTAB expression, e.g. '0 0 */3 * * *'")
    return value


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be a whole number from {low} to {high}") from None
        if not low <= number <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return number

    return parse


def _classifications(value: str) -> frozenset[Classification]:
    by_name = {c.value.lower(): c for c in Classification}
    chosen = set()
    for name in filter(None, (v.strip() for v in value.split(","))):
        if name.lower() not in by_name:
            raise ValueError(f"names {name!r}; accepted: {', '.join(c.value for c in Classification)}")
        chosen.add(by_name[name.lower()])
    if not chosen:
        raise ValueError("must name at least one classification")
    return frozenset(chosen)


def _auth_mode(value: str) -> AuthMode:
    try:
        return AuthMode(value)
    except ValueError:
        raise ValueError("must be one of " + ", ".join(m.value for m in AuthMode)) from None


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError("must be True or False")
    return value.lower() == "true"


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class SettingSpec:
    name: str
    meaning: str
    parse: Callable[[str], Any]
    default: str | None = None
    required: bool = True


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("DURABLE_TASK_HUB", "Durable Functions task hub name (host.json reads it)",
                _pattern(_TASK_HUB, "must be 3-45 letters or digits, starting with a letter")),
    SettingSpec("AZURE_AUTH_MODE", "How the app signs in to Azure: managed-identity, "
                "default-credential, or emulator (local stand-ins only)", _auth_mode,
                default=AuthMode.MANAGED_IDENTITY.value),
    SettingSpec("AZURE_CLIENT_ID", "Client id of the app's user-assigned managed identity",
                _guid, required=False),
    SettingSpec("TARGET_SUBSCRIPTION_IDS", "Subscriptions whose machines are managed, comma-separated",
                _guid_list),
    SettingSpec("ARM_ENDPOINT", "Azure Resource Manager endpoint", _url,
                default="https://management.azure.com"),
    # Resource Graph is an ARM resource provider (POST {ARM}/providers/Microsoft.ResourceGraph/resources):
    # empty means ARM_ENDPOINT, which is right in every Azure cloud; set it to reach a local stand-in.
    SettingSpec("RESOURCE_GRAPH_ENDPOINT", "Azure Resource Graph endpoint (ARM_ENDPOINT when empty)", _url,
                required=False),
    SettingSpec("STORAGE_TABLE_ENDPOINT", "Table service URI of the inventory storage account",
                _url, required=False),
    SettingSpec("STORAGE_BLOB_ENDPOINT", "Blob service URI of the run-log storage account",
                _url, required=False),
    SettingSpec("STORAGE_CONNECTION_STRING", "Connection string for the storage emulator "
                "(local only; in Azure the endpoints and the managed identity are used)",
                str, required=False),
    SettingSpec("LOGS_INGESTION_ENDPOINT", "Data collection endpoint for the Logs Ingestion API",
                _url),
    SettingSpec("LOGS_DCR_IMMUTABLE_ID", "Immutable id of the data collection rule",
                _pattern(_DCR_IMMUTABLE_ID, "must look like dcr-<32 lowercase hex digits>")),
    SettingSpec("LOG_ANALYTICS_WORKSPACE_ID", "Workspace (customer) id queried by the API", _guid),
    SettingSpec("LOGS_QUERY_ENDPOINT", "Log Analytics query endpoint", _url,
                default="https://api.loganalytics.io/v1"),
    SettingSpec("FLEET_DISCOVERY_SCHEDULE", "NCRONTAB schedule of the fleet discovery timer",
                _ncrontab, default="0 */15 * * * *"),
    SettingSpec("ASSESSMENT_SCHEDULE_LINUX", "NCRONTAB schedule of the Linux fleet assessment "
                "(every 3 hours by default)", _ncrontab, default="0 0 */3 * * *"),
    SettingSpec("ASSESSMENT_SCHEDULE_WINDOWS", "NCRONTAB schedule of the Windows fleet assessment "
                "(every 12 hours by default)", _ncrontab, default="0 0 */12 * * *"),
    SettingSpec("LIGHT_CHECK_SCHEDULE", "NCRONTAB schedule of the light check that reassesses changed "
                "and new machines (every 15 minutes by default)", _ncrontab, default="0 */15 * * * *"),
    # An assessment normally takes minutes; the patch extension itself gives up on a silent agent
    # after about 5. Four hours bounds a pathological one without letting runs pile up.
    SettingSpec("ASSESSMENT_DEADLINE_MINUTES", "How long one machine's assessment may take before it is "
                "recorded as timed out", _int_between(1, 240), default="30"),
    # ARM allows about 25 reads/s per principal after a burst (AZURE-FACTS): polls are spaced out. An
    # assessment takes up to minutes: the patch extension refreshes the package lists before listing
    # (Azure/LinuxPatchExtension, PatchAssessor.start_assessment), and its maintainers put on-demand ones
    # at 250 s p99 (Azure/LinuxPatchExtension PR #386). A first wait of 60 s rather than 30 s makes one check
    # fewer (an ARM read, an activity, eight history events) for any assessment over 30 s but those of
    # 60-75 s, and sees the end at most 165 s later (POLL_GROWTH 1.5, checks capped at 300 s apart).
    SettingSpec("ASSESSMENT_POLL_SECONDS", "First wait before checking an assessment; later waits grow",
                _int_between(5, 600), default="60"),
    SettingSpec("COMPLIANCE_CLASSIFICATIONS", "Classifications a machine must miss none of to be compliant, "
                "comma-separated display names", _classifications,
                default="Critical Updates,Security Updates"),
    # Deployment occurrences are due to the minute, so the scheduler looks every minute; a late or
    # doubled firing starts nothing twice (one Durable instance per occurrence).
    SettingSpec("DEPLOYMENT_SCHEDULER_SCHEDULE", "NCRONTAB schedule of the timer that starts due update "
                "deployments (every minute by default)", _ncrontab, default="0 * * * * *"),
    # Rows wait in the outbox only while Log Analytics is away or between batches (each run sends at its
    # end); the timer picks up what an outage left.
    SettingSpec("LOG_OUTBOX_SCHEDULE", "NCRONTAB schedule of the timer that sends the Log Analytics rows "
                "waiting in the outbox (every 5 minutes by default)", _ncrontab, default="0 */5 * * * *"),
    # A run whose orchestration ended or vanished (terminated, purged, a lost host) is closed by the
    # reconciler; a quarter of an hour keeps such a run visible as stuck for at most that long.
    SettingSpec("RUN_RECONCILER_SCHEDULE", "NCRONTAB schedule of the timer that closes deployment runs "
                "whose orchestration no longer exists (every 15 minutes by default)", _ncrontab,
                default="0 */15 * * * *"),
    # Notifications (shared/governance/notifications.py): CloudEvents to an Event Grid topic and/or a signed
    # webhook; with neither set, notifications are only recorded in the NotificationOutbox table.
    SettingSpec("EVENT_GRID_TOPIC_ENDPOINT", "Event Grid topic endpoint the notifications are published to "
                "(https://<topic>.<region>-1.eventgrid.azure.net/api/events); empty: not published",
                _url, required=False),
    SettingSpec("NOTIFICATION_WEBHOOK_URL", "Webhook the notifications are also POSTed to, signed with "
                "NOTIFICATION_WEBHOOK_SECRET (header X-Signature-256); empty: no webhook", _url,
                required=False),
    SettingSpec("NOTIFICATION_WEBHOOK_SECRET", "HMAC-SHA256 key of the webhook's X-Signature-256 header "
                "(a Key Vault reference in Azure)", str, required=False),
    # Notifications are sent when raised; the timer sends what a refused or failed send left.
    SettingSpec("NOTIFICATION_OUTBOX_SCHEDULE", "NCRONTAB schedule of the timer that sends the notifications "
                "waiting in the outbox (every 5 minutes by default)", _ncrontab, default="0 */5 * * * *"),
    # The audit of a UTC day (PatchCompliance_CL, one row per machine) is written once the day is over; half
    # past midnight leaves the day's last assessments and installs time to be recorded.
    SettingSpec("COMPLIANCE_AUDIT_SCHEDULE", "NCRONTAB schedule of the timer that writes each machine's "
                "daily PatchCompliance_CL row for the day before (00:30 UTC by default)", _ncrontab,
                default="0 30 0 * * *"),
    # Pre-patch snapshots and the disks a rollback replaced are kept for days (shared.safety): a daily
    # pass deletes what passed its retention, an hour after the audit.
    SettingSpec("ROLLBACK_CLEANUP_SCHEDULE", "NCRONTAB schedule of the timer that deletes expired pre-patch "
                "snapshots and replaced disks (01:15 UTC by default)", _ncrontab, default="0 15 1 * * *"),
    SettingSpec("RUN_LOGS_CONTAINER", "Blob container holding each deployment run's per-machine operation "
                "output", _pattern(_CONTAINER, "must be 3-63 lowercase letters, digits or single hyphens, "
                "starting and ending with a letter or digit"), default="run-logs"),
    # Injected by the platform, never set by infra: "True" when App Service Authentication is on
    # ("Environment variables and app settings in Azure App Service", authentication section). Only then
    # is X-MS-CLIENT-PRINCIPAL put there by the platform (which strips any a caller sends).
    SettingSpec("WEBSITE_AUTH_ENABLED", "Whether App Service Authentication is in front of the app "
                "(set by the platform)", lambda value: value.lower() == "true", required=False),
    SettingSpec("LOCAL_AUTHENTICATION_STANDIN", "The local Functions host stands in for App Service "
                "Authentication and signs callers in (local only: accepted with AZURE_AUTH_MODE=emulator)",
                _flag, required=False),
)

SETTING_NAMES: frozenset[str] = frozenset(s.name for s in SETTINGS)
# Settings of SETTINGS the platform injects: read by the code, never set in infra or local settings files.
INJECTED_BY_PLATFORM: frozenset[str] = frozenset({"WEBSITE_AUTH_ENABLED"})


@dataclass(frozen=True)
class Settings:
    durable_task_hub: str
    azure_auth_mode: AuthMode
    azure_client_id: str | None
    target_subscription_ids: tuple[str, ...]
    arm_endpoint: str
    resource_graph_endpoint: str  # ARM_ENDPOINT when the setting is empty
    storage_table_endpoint: str | None
    storage_blob_endpoint: str | None
    storage_connection_string: str | None
    logs_ingestion_endpoint: str
    logs_dcr_immutable_id: str
    log_analytics_workspace_id: str
    logs_query_endpoint: str
    fleet_discovery_schedule: str
    assessment_schedule_linux: str
    assessment_schedule_windows: str
    light_check_schedule: str
    assessment_deadline_minutes: int
    assessment_poll_seconds: int
    compliance_classifications: frozenset[Classification]
    deployment_scheduler_schedule: str
    log_outbox_schedule: str
    run_reconciler_schedule: str
    event_grid_topic_endpoint: str | None
    notification_webhook_url: str | None
    notification_webhook_secret: str | None
    notification_outbox_schedule: str
    compliance_audit_schedule: str
    rollback_cleanup_schedule: str
    run_logs_container: str
    website_auth_enabled: bool | None
    local_authentication_standin: bool | None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting; raise :class:`SettingsError` naming all problems at once.

    Every activity calls this; the parsed settings are kept per set of raw values (an app's settings
    change only with a restart, tests change them at will), so a call costs the reads of the variables,
    not their parsing (0.7 ms a call, about a twentieth of an assessed machine's activity CPU)."""
    env = os.environ if environ is None else environ
    return _parsed(tuple(env.get(spec.name, "") for spec in SETTINGS))


@functools.lru_cache(maxsize=8)
def _parsed(raws: tuple[str, ...]) -> Settings:
    """The settings of these raw values (one per spec of SETTINGS, in order); a failure is not kept."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for spec, given in zip(SETTINGS, raws, strict=True):
        raw = given.strip()
        if not raw:
            raw = spec.default or ""
        if not raw:
            if spec.required:
                problems.append(f"{spec.name} is missing ({spec.meaning})")
            values[spec.name.lower()] = None
            continue
        try:
            values[spec.name.lower()] = spec.parse(raw)
        except ValueError as error:
            problems.append(f"{spec.name} {error} (got {raw!r})")
    problems.extend(_cross_checks(values))
    if problems:
        raise SettingsError(problems)
    values["resource_graph_endpoint"] = values["resource_graph_endpoint"] or values["arm_endpoint"]
    return Settings(**values)


def _cross_checks(values: dict[str, Any]) -> list[str]:
    problems = []
    has_connection = bool(values.get("storage_connection_string"))
    has_endpoints = bool(values.get("storage_table_endpoint")) and bool(values.get("storage_blob_endpoint"))
    if not has_connection and not has_endpoints:
        problems.append(
            "STORAGE_TABLE_ENDPOINT and STORAGE_BLOB_ENDPOINT are required "
            "(or STORAGE_CONNECTION_STRING for the local storage emulator)"
        )
    if values.get("azure_auth_mode") == AuthMode.EMULATOR:
        for name in ("arm_endpoint", "resource_graph_endpoint", "logs_ingestion_endpoint",
                     "logs_query_endpoint", "event_grid_topic_endpoint"):
            url = values.get(name)
            if url and not _is_loopback(url):
                problems.append(
                    f"{name.upper()} must be a loopback address when AZURE_AUTH_MODE is emulator "
                    f"(got {url!r}); the emulator token is never sent to a real endpoint"
                )
    if values.get("notification_webhook_url") and not values.get("notification_webhook_secret"):
        problems.append("NOTIFICATION_WEBHOOK_SECRET is required when NOTIFICATION_WEBHOOK_URL is set "
                        "(the webhook's X-Signature-256 is an HMAC-SHA256 with it)")
    if has_connection and values.get("azure_auth_mode") != AuthMode.EMULATOR:
        problems.append(
            "STORAGE_CONNECTION_STRING is accepted only with AZURE_AUTH_MODE=emulator; "
            "in Azure the app reaches storage with its managed identity"
        )
    if values.get("local_authentication_standin") and values.get("azure_auth_mode") != AuthMode.EMULATOR:
        problems.append(
            "LOCAL_AUTHENTICATION_STANDIN is accepted only with AZURE_AUTH_MODE=emulator; in Azure, App "
            "Service Authentication signs callers in"
        )
    return problems


class AuthenticationFront(StrEnum):
    """What puts the caller's X-MS-CLIENT-PRINCIPAL header on a request, if anything can be trusted to."""

    APP_SERVICE = "App Service Authentication (WEBSITE_AUTH_ENABLED=True)"
    LOCAL_HOST = "the local Functions host (LOCAL_AUTHENTICATION_STANDIN=True, AZURE_AUTH_MODE=emulator)"
    NONE = "none"


def authentication_front(environ: Mapping[str, str] | None = None) -> AuthenticationFront:
    """Who signs callers in, from the three settings that decide it (read on every request, so a
    broken unrelated setting never turns a 401 into a 500). The local stand-in counts only in
    emulator mode, so an app setting copied to Azure can never let a forged header in."""
    env = os.environ if environ is None else environ

    def flag(name: str) -> bool:
        return env.get(name, "").strip().lower() == "true"

    if flag("WEBSITE_AUTH_ENABLED"):
        return AuthenticationFront.APP_SERVICE
    if flag("LOCAL_AUTHENTICATION_STANDIN") and env.get("AZURE_AUTH_MODE", "").strip() == AuthMode.EMULATOR:
        return AuthenticationFront.LOCAL_HOST
    return AuthenticationFront.NONE


# Settings the Functions platform reads (not this code); named here so that
# local.settings.example.json and the Bicep app settings can be checked complete.
PLATFORM_SETTINGS: dict[str, str] = {
    "FUNCTIONS_WORKER_RUNTIME": "python",
    "AzureWebJobsStorage": "the host's own storage (Durable task hub, timers)",
    "PYTHON_THREADPOOL_THREAD_COUNT": "worker threads; at least host.json's concurrent "
    "activity + orchestrator functions, so neither starves the other",
}
