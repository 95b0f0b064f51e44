"""Azure Resource Graph: KQL over the resources of many subscriptions at once, paged and throttled.

One call, ``ResourceGraphClient.resources(QueryRequest(...))`` (``POST {ARM}/providers/
Microsoft.ResourceGraph/resources``), answers a KQL query with at most 1,000 rows and a ``$skipToken``
for the next page. :class:`ResourceGraph` pages until the token is absent and keeps to the caller's
quota: Resource Graph reports it in every answer (``x-ms-user-quota-remaining``, and
``x-ms-user-quota-resets-after`` as ``hh:mm:ss``), 15 queries per 5 seconds by default, and answers 429
past it ("Guidance for throttled requests in Azure Resource Graph"). No query is sent while the last
answer said the quota was spent. A 429 is resent here, after the reset: azure-core's retry policy
resends a POST only on 500/503/504 or when the answer has ``Retry-After`` (azure-core 1.41,
``RetryPolicy._is_method_retryable``), and Resource Graph documents no ``Retry-After``.

The product's queries over the Update Manager tables (``patchassessmentresources``,
``patchinstallationresources``) are the functions at the end, each returning typed rows built on the
model's nouns (:class:`AvailablePatch`, :class:`PatchInstallResult`). The row shapes are Azure
Update Manager's ("Access Azure Update Manager operations data using Azure Resource Graph" and
"Sample queries", MicrosoftDocs/azure-docs articles/update-manager/query-logs.md and
sample-query-logs.md); the fixtures in ``tests/fixtures/azure/`` hold them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline import PipelineResponse
from azure.mgmt.resourcegraph import ResourceGraphClient
from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

from shared.azure.clients import shared_client
from shared.azure.patch_operations import TRUNCATED_PATCH_ID  # the agent's placeholder for cut patches
from shared.model.assessment_outcome import AvailablePatch
from shared.model.install_outcome import InstallationState, PatchInstallResult
from shared.model.kb import kb_digits
from shared.model.machines import parse_resource_id

logger = logging.getLogger(__name__)

# Pinned so that a library upgrade cannot silently change the wire format (the SDK's default today).
RESOURCE_GRAPH_API_VERSION = "2021-03-01"
# "a result set would exceed the maximum allowed value of 1000 returned records, use paging"
# ("Working with large Azure resource data sets", paging results); QueryRequestOptions.$top: 1 to 1000.
PAGE_SIZE = 1000
# "The group size is recommended to be less than 300" for subscriptions or resource ids in one query;
# the examples there use 100 ("Guidance for throttled requests in Azure Resource Graph", grouping queries).
GROUP_SIZE = 100
# The quota window is 5 seconds by default (same page); a reset announced further away than this is not
# waited out inside an activity: the query fails as transient and is retried later.
MAX_QUOTA_WAIT_SECONDS = 30.0
# After a 429 that says nothing of the quota, wait one default window before resending.
DEFAULT_THROTTLE_WAIT_SECONDS = 5.0
# A query answered 429 this many times in a row fails as transient (another client of the same identity
# keeps spending the quota).
MAX_THROTTLED_ATTEMPTS = 4
QUOTA_REMAINING_HEADER = "x-ms-user-quota-remaining"
QUOTA_RESETS_AFTER_HEADER = "x-ms-user-quota-resets-after"

_RESETS_AFTER = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")


class ResourceGraphError(Exception):
    """A query that did not give its rows. ``transient``: throttling, 5xx or connection trouble (retry
    later); otherwise the query or the caller's access is wrong, and the message says how."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "", transient: bool = False):
        super().__init__(message)
        self.status = status
        self.code = code
        self.transient = transient


# --- the quota ------------------------------------------------------------------------------------


class QuotaGate:
    """What Resource Graph last said of the caller's quota, and the waits it asks for.

    One per client (the quota is per user, and a client has one identity); thread-safe. ``clock`` and
    ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_wait_seconds: float = MAX_QUOTA_WAIT_SECONDS,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._max_wait = max_wait_seconds
        self._lock = threading.Lock()
        self._remaining: int | None = None
        self._resets_at = 0.0

    def observe(self, headers: Mapping[str, str]) -> None:
        """Note the quota an answer reports (answers without the headers change nothing)."""
        remaining = _header_int(headers, QUOTA_REMAINING_HEADER)
        resets_after = _resets_after_seconds(_header(headers, QUOTA_RESETS_AFTER_HEADER))
        if remaining is None or resets_after is None:
            return
        with self._lock:
            self._remaining = remaining
            self._resets_at = self._clock() + resets_after

    def wait_turn(self) -> float:
        """Sleep until the quota resets when the last answer said it was spent; the seconds slept."""
        with self._lock:
            spent = self._remaining is not None and self._remaining <= 0
            wait = max(0.0, self._resets_at - self._clock()) if spent else 0.0
            if spent:
                self._remaining = None  # after the wait the window is a new one
        if wait > self._max_wait:
            raise ResourceGraphError(
                f"the Resource Graph quota resets in {wait:.0f} s, longer than the {self._max_wait:.0f} s an "
                "activity waits: retry later", status=429, code="RateLimiting", transient=True,
            )  # fmt: skip
        if wait > 0:
            logger.info("Resource Graph quota spent: waiting %.1f s for it to reset", wait)
            self._sleep(wait)
        return wait

    def throttled(self) -> float:
        """After a 429: wait for the reset it announced, or a default window when it announced none."""
        with self._lock:
            known = self._remaining is not None and self._remaining <= 0
        if known:
            return self.wait_turn()
        self._sleep(DEFAULT_THROTTLE_WAIT_SECONDS)
        return DEFAULT_THROTTLE_WAIT_SECONDS

    def on_response(self, response: PipelineResponse[Any, Any]) -> None:
        """azure-core's ``raw_response_hook``, called for every attempt (429s included): note the quota."""
        self.observe(response.http_response.headers)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = _header(headers, name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _resets_after_seconds(text: str | None) -> float | None:
    """``hh:mm:ss`` (Kusto timespan, optionally ``d.hh:mm:ss.fff``) as seconds; None if absent or odd."""
    match = _RESETS_AFTER.match(text.strip()) if text else None
    if match is None:
        return None
    days = int(match["d"] or 0)
    return ((days * 24 + int(match["h"])) * 60 + int(match["m"])) * 60 + float(match["s"])


# --- the client and the paging loop -----------------------------------------------------------------


class ResourceGraph:
    """Runs KQL over subscriptions, every page, within the caller's quota."""

    def __init__(self, client: ResourceGraphClient, gate: QuotaGate | None = None) -> None:
        self._client = client
        self._gate = gate or QuotaGate()

    def rows(self, kql: str, subscriptions: Sequence[str]) -> Iterator[dict[str, Any]]:
        """Every row of ``kql`` over ``subscriptions``, page after page (objectArray: one dict a row).

        The query must project ``id`` when it can return more than a page: Resource Graph pages only
        such queries, and cuts the others at 1,000 rows, which raises here rather than lose rows."""
        if not subscriptions:
            raise ValueError("a Resource Graph query needs at least one subscription")
        skip_token: str | None = None
        while True:
            options = QueryRequestOptions(top=PAGE_SIZE, skip_token=skip_token, result_format="objectArray")
            request = QueryRequest(subscriptions=list(subscriptions), query=kql, options=options)
            page = self._send(request)
            data = page.data
            if not isinstance(data, list):
                raise ResourceGraphError(f"Resource Graph answered {type(data).__name__} data, not rows")
            yield from data
            skip_token = page.skip_token
            if skip_token:
                continue
            if str(page.result_truncated).lower() == "true" and len(data) < (page.total_records or 0):
                raise ResourceGraphError(
                    f"Resource Graph returned {len(data)} of {page.total_records} rows and cannot page this "
                    "query: project the id column", code="ResultTruncated",
                )  # fmt: skip
            return

    def _send(self, request: QueryRequest) -> Any:
        for attempt in range(1, MAX_THROTTLED_ATTEMPTS + 1):
            self._gate.wait_turn()
            try:
                return self._client.resources(request, raw_response_hook=self._gate.on_response)
            except HttpResponseError as error:
                if error.status_code != 429 or attempt == MAX_THROTTLED_ATTEMPTS:
                    raise _query_error(error) from error
                waited = self._gate.throttled()
                logger.info("Resource Graph answered 429 (try %d): resent after %.1f s", attempt, waited)
            except (ServiceRequestError, ServiceResponseError) as error:
                message = f"connection to Resource Graph failed: {error}"
                raise ResourceGraphError(message, transient=True) from error
        raise AssertionError("unreachable: the last attempt returns or raises")


def _query_error(error: HttpResponseError) -> ResourceGraphError:
    """The error with what Resource Graph said: its code, and the details where it puts the reason
    (``{"error": {"code", "message", "details": [{"code", "message"}]}}``)."""
    status = error.status_code
    body: Any = None
    if error.response is not None:
        try:
            body = json.loads(error.response.text())
        except (ValueError, TypeError):
            body = None
    inner = body.get("error") if isinstance(body, dict) else None
    inner = inner if isinstance(inner, dict) else {}
    code = str(inner.get("code") or getattr(error.error, "code", None) or "")
    details = [
        f"{d.get('code')}: {d.get('message')}" for d in inner.get("details") or [] if isinstance(d, dict)
    ]
    reason = "; ".join(details) or str(inner.get("message") or error.message)
    support = f" ({inner['message']})" if details and inner.get("message") else ""
    transient = status is not None and (status in (408, 429) or status >= 500)
    return ResourceGraphError(
        f"Resource Graph refused the query: HTTP {status} {code}: {reason}{support}",
        status=status, code=code, transient=transient,
    )  # fmt: skip


def resource_graph(credential: TokenCredential, endpoint: str) -> ResourceGraph:
    """The process's Resource Graph client for ``endpoint`` and ``credential`` (shared.azure.clients),
    with the quota gate of that identity."""
    client, gate = shared_client(
        ("resourcegraph", endpoint, credential), lambda: (_new_client(credential, endpoint), QuotaGate())
    )
    return ResourceGraph(client, gate)


def _new_client(credential: TokenCredential, endpoint: str) -> ResourceGraphClient:
    # Resource Graph is an ARM provider: the token is for the ARM audience of the endpoint's cloud.
    scopes = [endpoint.rstrip("/") + "/.default"]
    return ResourceGraphClient(
        credential, base_url=endpoint, credential_scopes=scopes, api_version=RESOURCE_GRAPH_API_VERSION
    )


# --- typed rows of the Update Manager tables ----------------------------------------------------------


@dataclass(frozen=True)
class AssessedPatch:
    """One update of a machine's latest assessment: a ``patchassessmentresources`` row of type
    ``.../patchassessmentresults/softwarepatches``, id ``<machine>/patchAssessmentResults/latest/
    softwarePatches/<patch>``. Azure VMs and Arc-enabled servers alike."""

    machine_id: str  # the VM's or Arc server's resource id, as Resource Graph wrote it
    patch: AvailablePatch
    last_modified: datetime | None


@dataclass(frozen=True)
class InstalledPatch:
    """One update of one installation run: a ``patchinstallationresources`` row of type
    ``.../patchinstallationresults/softwarepatches``, id ``<machine>/patchInstallationResults/<run>/
    softwarePatches/<patch>``."""

    machine_id: str
    installation_id: str
    patch: PatchInstallResult
    last_modified: datetime | None


@dataclass(frozen=True)
class LastAssessment:
    """A machine's latest assessment summary (``<machine>/patchAssessmentResults/latest``; its name is
    the assessment's id)."""

    machine_id: str
    assessment_id: str
    at: datetime | None  # lastModifiedDateTime
    status: str  # "" when the row has none
    started_at: datetime | None = None  # startDateTime


@dataclass(frozen=True)
class LastInstallation:
    """One installation run's summary (``<machine>/patchInstallationResults/<run>``)."""

    machine_id: str
    installation_id: str
    at: datetime | None  # lastModifiedDateTime
    status: str  # NotStarted | InProgress | Failed | Succeeded | CompletedWithWarnings
    started_by: str


@dataclass(frozen=True)
class MachinePatchActivity:
    """What the light check compares between looks: a machine's last assessment and last installation
    as Resource Graph has them (None: none kept, assessments 7 days, installations 30)."""

    machine_id: str
    assessment: LastAssessment | None = None
    installation: LastInstallation | None = None


_RESULT_MARKERS = ("/patchassessmentresults/", "/patchinstallationresults/")


def machine_id_of(row_id: str) -> str | None:
    """The machine part of a patch row's id (before ``/patchAssessmentResults/`` or
    ``/patchInstallationResults/``, in any case); None for any other id."""
    lower = row_id.lower()
    for marker in _RESULT_MARKERS:
        at = lower.find(marker)
        if at > 0:
            return row_id[:at]
    return None


def _run_id_of(row_id: str) -> str:
    """The installation run's id: the segment after ``/patchInstallationResults/``."""
    at = row_id.lower().find(_RESULT_MARKERS[1])
    return row_id[at + len(_RESULT_MARKERS[1]):].split("/", 1)[0] if at > 0 else ""


def _properties(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's ``properties`` bag (an object in objectArray answers; JSON text after ``tostring``)."""
    value = row.get("properties")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _prop(props: Mapping[str, Any], name: str) -> Any:
    """A property by name; the documentation spells some differently from the rows (``Kbid``/``kbId``),
    so a case-insensitive match is the fallback."""
    if name in props:
        return props[name]
    folded = name.casefold()
    return next((v for k, v in props.items() if k.casefold() == folded), None)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _classifications(value: Any) -> tuple[str, ...]:
    """An array of names (as the patch API writes them), or one string in rows that carry it so."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value if v)
    return ()


def _patch_id(row: Mapping[str, Any]) -> str:
    return _text(row.get("name")) or _text(row.get("id")).rstrip("/").rsplit("/", 1)[-1]


def _is_patch_row(row: Mapping[str, Any]) -> bool:
    return _text(row.get("type")).lower().endswith("/softwarepatches")


def assessed_patch(row: Mapping[str, Any]) -> AssessedPatch | None:
    """The typed row, or None for a row that is not a patch of an assessment (a summary, a placeholder
    for patches the agent cut, a row of another kind)."""
    row_id = _text(row.get("id"))
    machine = machine_id_of(row_id)
    if machine is None or not _is_patch_row(row) or _RESULT_MARKERS[0] not in row_id.lower():
        return None
    patch_id = _patch_id(row)
    if patch_id == TRUNCATED_PATCH_ID:
        return None
    props = _properties(row)
    return AssessedPatch(
        machine_id=machine,
        patch=AvailablePatch(
            patch_id=patch_id,
            name=_text(_prop(props, "patchName")),
            classifications=_classifications(_prop(props, "classifications")),
            kb_id=kb_digits(_text(_prop(props, "kbId")) or None),
            version=_text(_prop(props, "version")) or None,
            reboot_behavior=_text(_prop(props, "rebootBehavior")) or "Unknown",
            published_date=_moment(_prop(props, "publishedDateTime")),
        ),
        last_modified=_moment(_prop(props, "lastModifiedDateTime")),
    )


def installed_patch(row: Mapping[str, Any]) -> InstalledPatch | None:
    """The typed row, or None for a row that is not a patch of an installation run."""
    row_id = _text(row.get("id"))
    machine = machine_id_of(row_id)
    if machine is None or not _is_patch_row(row) or _RESULT_MARKERS[1] not in row_id.lower():
        return None
    patch_id = _patch_id(row)
    if patch_id == TRUNCATED_PATCH_ID:
        return None
    props = _properties(row)
    try:
        state = InstallationState(_text(_prop(props, "installationState")))
    except ValueError:
        state = InstallationState.UNKNOWN
    return InstalledPatch(
        machine_id=machine,
        installation_id=_run_id_of(row_id),
        patch=PatchInstallResult(
            patch_id=patch_id,
            name=_text(_prop(props, "patchName")),
            classifications=_classifications(_prop(props, "classifications")),
            state=state,
            kb_id=kb_digits(_text(_prop(props, "kbId")) or None),
            version=_text(_prop(props, "version")) or None,
        ),
        last_modified=_moment(_prop(props, "lastModifiedDateTime")),
    )


def last_assessment(row: Mapping[str, Any]) -> LastAssessment | None:
    """An assessment summary row typed; None for any other row."""
    machine = machine_id_of(_text(row.get("id")))
    if machine is None or _is_patch_row(row) or not _text(row.get("type")).lower().endswith(
        "/patchassessmentresults"
    ):
        return None
    props = _properties(row)
    return LastAssessment(
        machine_id=machine,
        assessment_id=_text(row.get("name")),
        at=_moment(_prop(props, "lastModifiedDateTime")),
        status=_text(_prop(props, "status")),
        started_at=_moment(_prop(props, "startDateTime")),
    )


def last_installation(row: Mapping[str, Any]) -> LastInstallation | None:
    """An installation summary row typed; None for any other row."""
    row_id = _text(row.get("id"))
    machine = machine_id_of(row_id)
    if machine is None or _is_patch_row(row) or not _text(row.get("type")).lower().endswith(
        "/patchinstallationresults"
    ):
        return None
    props = _properties(row)
    return LastInstallation(
        machine_id=machine,
        installation_id=_text(_prop(props, "installationActivityId")) or _run_id_of(row_id),
        at=_moment(_prop(props, "lastModifiedDateTime")) or _moment(_prop(props, "startDateTime")),
        status=_text(_prop(props, "status")),
        started_by=_text(_prop(props, "startedBy")),
    )


# --- the product's queries ------------------------------------------------------------------------------


def kql_string(value: str) -> str:
    """``value`` as a KQL string literal (single quotes; backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _kql_datetime(moment: datetime) -> str:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return f"datetime({aware.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')})"


def assessment_patches_query(machine_ids: Sequence[str]) -> str:
    """The per-patch rows of the latest assessment of ``machine_ids`` (VMs and Arc servers)."""
    listed = ", ".join(kql_string(m.lower()) for m in machine_ids)
    return (
        "patchassessmentresources"
        " | where type has 'softwarepatches'"
        " | extend machineId = tostring(split(tolower(id), '/patchassessmentresults/')[0])"
        f" | where machineId in~ ({listed})"
        " | project id, name, type, properties"
        " | order by id asc"
    )


def installation_patches_query(machine_id: str, installation_id: str) -> str:
    """The per-patch rows of one installation run of one machine."""
    prefix = f"{machine_id}/patchInstallationResults/{installation_id}/softwarePatches/".lower()
    return (
        "patchinstallationresources"
        " | where type has 'softwarepatches'"
        f" | where tolower(id) startswith {kql_string(prefix)}"
        " | project id, name, type, properties"
        " | order by id asc"
    )


def summaries_query(table: str, since: datetime | None = None) -> str:
    """The summary rows (not the per-patch ones) of ``table``, changed after ``since`` when given.

    Not summarized server-side: Resource Graph pages only rows that carry an id ("Working with large
    Azure resource data sets"), so the latest per machine is picked here."""
    changed = (
        f" | where todatetime(properties.lastModifiedDateTime) > {_kql_datetime(since)}" if since else ""
    )
    return (
        f"{table} | where type !has 'softwarepatches'{changed}"
        " | project id, name, type, properties | order by id asc"
    )


def _groups(items: Sequence[str], size: int = GROUP_SIZE) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _machines(machine_ids: Iterable[str]) -> list[str]:
    """Distinct machine ids (case-insensitive), each checked to be a VM or an Arc server."""
    seen: dict[str, str] = {}
    for machine_id in machine_ids:
        parse_resource_id(machine_id)  # raises naming the id: only machines are queried
        seen.setdefault(machine_id.lower(), machine_id)
    return list(seen.values())


def latest_assessment_patches(graph: ResourceGraph, machine_ids: Iterable[str]) -> list[AssessedPatch]:
    """Every patch of the latest assessment of each machine, VMs and Arc servers alike: one query per
    :data:`GROUP_SIZE` machines, over the machines' own subscriptions."""
    found: list[AssessedPatch] = []
    for group in _groups(_machines(machine_ids)):
        subscriptions = sorted({parse_resource_id(m).subscription_id for m in group})
        for row in graph.rows(assessment_patches_query(group), subscriptions):
            typed = assessed_patch(row)
            if typed is not None:
                found.append(typed)
    return found


def installation_patches(graph: ResourceGraph, machine_id: str, installation_id: str) -> list[InstalledPatch]:
    """Every patch of one installation run, with its ``installationState``."""
    subscription = parse_resource_id(machine_id).subscription_id
    rows = graph.rows(installation_patches_query(machine_id, installation_id), [subscription])
    return [typed for row in rows if (typed := installed_patch(row)) is not None]


@dataclass(frozen=True)
class MachineAssessment:
    """A machine's latest assessment as Resource Graph has it: the summary (None when Resource Graph
    has none for the machine) and the patches listed under it."""

    machine_id: str
    summary: LastAssessment | None
    patches: tuple[AssessedPatch, ...]


@dataclass(frozen=True)
class InstallationRun:
    """One installation run as Resource Graph has it: the run's summary (None when Resource Graph has
    none yet) and its patches with their ``installationState``."""

    machine_id: str
    installation_id: str  # the run's id in the rows' ids
    summary: LastInstallation | None
    patches: tuple[InstalledPatch, ...]


def _under(prefix: str) -> str:
    """KQL: the row ``prefix`` itself or any row below it (ids compared in lower case)."""
    lower = prefix.lower()
    return f"tolower(id) == {kql_string(lower)} or tolower(id) startswith {kql_string(lower + '/')}"


def machine_assessment_query(machine_id: str) -> str:
    """The latest assessment of one machine: its summary row and its per-patch rows, in one query."""
    return (
        f"patchassessmentresources | where {_under(f'{machine_id}/patchAssessmentResults/latest')}"
        " | project id, name, type, properties | order by id asc"
    )


def installation_run_query(machine_id: str, installation_id: str) -> str:
    """One installation run of one machine: its summary row and its per-patch rows, in one query."""
    run = f"{machine_id}/patchInstallationResults/{installation_id}"
    return (
        f"patchinstallationresources | where {_under(run)}"
        " | project id, name, type, properties | order by id asc"
    )


def installation_by_activity_query(machine_id: str, installation_activity_id: str) -> str:
    """The summary row of the machine's run whose ``installationActivityId`` is the given one."""
    prefix = f"{machine_id}/patchInstallationResults/".lower()
    return (
        "patchinstallationresources | where type !has 'softwarepatches'"
        f" | where tolower(id) startswith {kql_string(prefix)}"
        f" | where tostring(properties.installationActivityId) =~ {kql_string(installation_activity_id)}"
        " | project id, name, type, properties | order by id asc"
    )


def latest_assessment(graph: ResourceGraph, machine_id: str) -> MachineAssessment:
    """One machine's latest assessment, summary and patches, with one query."""
    machine = _machines([machine_id])[0]
    rows = list(graph.rows(machine_assessment_query(machine), [parse_resource_id(machine).subscription_id]))
    return _machine_assessment(machine, rows)


def latest_assessments_query(machine_ids: Sequence[str]) -> str:
    """The latest assessment of each of ``machine_ids``, summary and patch rows: a row is kept when its id,
    cut before ``/softwarePatches/``, is one of the machines' ``.../patchAssessmentResults/latest``."""
    listed = ", ".join(kql_string(f"{m}/patchAssessmentResults/latest".lower()) for m in machine_ids)
    return (
        "patchassessmentresources"
        " | extend assessment = tostring(split(tolower(id), '/softwarepatches/')[0])"
        f" | where assessment in~ ({listed})"
        " | project id, name, type, properties | order by id asc"
    )


def latest_assessments(graph: ResourceGraph, machine_ids: Iterable[str]) -> dict[str, MachineAssessment]:
    """:func:`latest_assessment` of many machines, keyed by lower-case machine id (every machine asked
    for, with no summary when Resource Graph has none): one query per :data:`GROUP_SIZE` machines over
    their own subscriptions, paged, instead of one query per machine."""
    machines = _machines(machine_ids)
    rows: dict[str, list[dict[str, Any]]] = {m.lower(): [] for m in machines}
    for group in _groups(machines):
        subscriptions = sorted({parse_resource_id(m).subscription_id for m in group})
        asked = {m.lower() for m in group}
        for row in graph.rows(latest_assessments_query(group), subscriptions):
            machine = (machine_id_of(_text(row.get("id"))) or "").lower()
            if machine in asked:  # a row of a machine not asked for is not this answer's
                rows[machine].append(row)
    return {m.lower(): _machine_assessment(m, rows[m.lower()]) for m in machines}


def _machine_assessment(machine: str, rows: Sequence[Mapping[str, Any]]) -> MachineAssessment:
    summary = next((s for s in map(last_assessment, rows) if s is not None), None)
    patches = tuple(p for p in map(assessed_patch, rows) if p is not None)
    return MachineAssessment(machine, summary, patches)


def installation_run(graph: ResourceGraph, machine_id: str, installation_id: str) -> InstallationRun:
    """One installation run, summary and patches: one query by the run's id in the rows' ids, which is
    the ``installationActivityId`` of the install (the fixture's rows, and the stand-in's). Only when that
    finds nothing, a second query looks for the run by its ``installationActivityId`` property, and a
    third reads the patches of the run found: the equality of the two ids is not confirmed."""
    machine = _machines([machine_id])[0]
    subscriptions = [parse_resource_id(machine).subscription_id]
    run = _installation_run(graph, machine, installation_id, subscriptions)
    if run.summary is not None or run.patches:
        return run
    rows = graph.rows(installation_by_activity_query(machine, installation_id), subscriptions)
    found = next((_run_id_of(_text(r.get("id"))) for r in rows if last_installation(r) is not None), "")
    if not found or found.lower() == installation_id.lower():
        return run
    return _installation_run(graph, machine, found, subscriptions)


def _installation_run(
    graph: ResourceGraph, machine: str, installation_id: str, subscriptions: Sequence[str]
) -> InstallationRun:
    rows = list(graph.rows(installation_run_query(machine, installation_id), subscriptions))
    summary = next((s for s in map(last_installation, rows) if s is not None), None)
    patches = tuple(p for p in map(installed_patch, rows) if p is not None)
    return InstallationRun(machine, installation_id, summary, patches)


def installation_runs_query(runs: Sequence[tuple[str, str]], by_activity: bool = True) -> str:
    """The installation runs ``runs`` (machine id, installation id), summary and patch rows: a row is kept
    when its id, cut before ``/softwarePatches/``, is one of the runs' ``<machine>/patchInstallationResults/
    <installation>``. With ``by_activity``, also the summary rows whose ``installationActivityId`` is one
    of the installations (a run kept under another id: see :func:`installation_run`)."""
    listed = ", ".join(kql_string(f"{m}/patchInstallationResults/{i}".lower()) for m, i in runs)
    activities = ", ".join(kql_string(i) for i in sorted({i.lower() for _, i in runs}))
    activity = f"tostring(properties.installationActivityId) in~ ({activities})"
    also = f" or (type !has 'softwarepatches' and {activity})" if by_activity else ""
    return (
        "patchinstallationresources"
        " | extend installationRun = tostring(split(tolower(id), '/softwarepatches/')[0])"
        f" | where installationRun in~ ({listed}){also}"
        " | project id, name, type, properties | order by id asc"
    )


RunKey = tuple[str, str]  # (machine id, installation id), both in lower case


def installation_runs(graph: ResourceGraph, runs: Iterable[tuple[str, str]]) -> dict[RunKey, InstallationRun]:
    """:func:`installation_run` of many (machine id, installation id) pairs, keyed by the pair in lower
    case (every pair asked for, with no summary and no patches when Resource Graph has none): one query per
    :data:`GROUP_SIZE` machines (all the runs asked of them) over their own subscriptions, paged, instead
    of one query per run. A run found only by its ``installationActivityId`` (row ids under another id)
    costs one more query for all such runs of the group; the lag case (no row yet) costs none."""
    asked: dict[RunKey, tuple[str, str]] = {}
    for machine_id, installation_id in runs:
        parse_resource_id(machine_id)  # raises naming the id: only machines are queried
        asked.setdefault((machine_id.lower(), installation_id.lower()), (machine_id, installation_id))
    by_machine: dict[str, list[tuple[str, str]]] = {}
    for key, run in asked.items():
        by_machine.setdefault(key[0], []).append(run)
    found: dict[RunKey, list[dict[str, Any]]] = {key: [] for key in asked}
    renamed: dict[RunKey, str] = {}  # a run kept under another id: that id
    for group in _groups(list(by_machine)):
        group_runs = [run for machine in group for run in by_machine[machine]]
        keys = {(m.lower(), i.lower()) for m, i in group_runs}
        subscriptions = sorted({parse_resource_id(m).subscription_id for m, _ in group_runs})
        for row in graph.rows(installation_runs_query(group_runs), subscriptions):
            row_id = _text(row.get("id"))
            key = ((machine_id_of(row_id) or "").lower(), _run_id_of(row_id).lower())
            summary = last_installation(row)
            if key in keys:
                found[key].append(row)
            elif summary is not None and (key[0], summary.installation_id.lower()) in keys:
                renamed[(key[0], summary.installation_id.lower())] = _run_id_of(row_id)
            # else: a row of a run not asked for, not this answer's
        again = {key: (asked[key][0], renamed[key])
                 for key in sorted(keys) if key in renamed and not found[key]}
        if again:
            wanted = {(m.lower(), r.lower()): key for key, (m, r) in again.items()}
            query = installation_runs_query(list(again.values()), by_activity=False)
            for row in graph.rows(query, subscriptions):
                row_id = _text(row.get("id"))
                asked_as = wanted.get(((machine_id_of(row_id) or "").lower(), _run_id_of(row_id).lower()))
                if asked_as is not None:
                    found[asked_as].append(row)
    runs_found: dict[RunKey, InstallationRun] = {}
    for key, (machine_id, installation_id) in asked.items():
        rows = found[key]
        summary = next((s for s in map(last_installation, rows) if s is not None), None)
        patches = tuple(p for p in map(installed_patch, rows) if p is not None)
        run_id = renamed.get(key, installation_id) if rows else installation_id
        runs_found[key] = InstallationRun(machine_id, run_id, summary, patches)
    return runs_found


def fleet_patch_activity(
    graph: ResourceGraph, subscription_ids: Sequence[str], since: datetime | None = None
) -> dict[str, MachinePatchActivity]:
    """Each machine's last assessment and last installation, keyed by lower-case machine id: two
    queries per :data:`GROUP_SIZE` subscriptions (a query reads one of the two tables). With ``since``
    only what changed after it (the light check's "since the last look")."""
    assessments: dict[str, LastAssessment] = {}
    installations: dict[str, LastInstallation] = {}
    for group in _groups(list(dict.fromkeys(s.lower() for s in subscription_ids))):
        for row in graph.rows(summaries_query("patchassessmentresources", since), group):
            _keep_latest(assessments, last_assessment(row))
        for row in graph.rows(summaries_query("patchinstallationresources", since), group):
            _keep_latest(installations, last_installation(row))
    return {
        key: MachinePatchActivity(
            machine_id=(assessments.get(key) or installations[key]).machine_id,
            assessment=assessments.get(key),
            installation=installations.get(key),
        )
        for key in sorted(assessments.keys() | installations.keys())
    }


def _keep_latest(latest: dict[str, Any], summary: LastAssessment | LastInstallation | None) -> None:
    """Keep ``summary`` under its machine when it is the machine's latest so far (a summary without a
    time loses to one with)."""
    if summary is None:
        return
    key = summary.machine_id.lower()
    current = latest.get(key)
    if current is None or (summary.at is not None and (current.at is None or summary.at > current.at)):
        latest[key] = summary
