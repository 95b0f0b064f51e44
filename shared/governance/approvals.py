"""Approval requests and decisions, with separation of duties, and the categories' automatic rules.

An operator requests approval of updates (or of a release's items) for a category: each update must have
``passed`` there, and moves to ``authorized`` under the request's id. An approver decides the whole
request at once (approve, reject, or defer until a date) with a justification, and never a request they
made. A category's ``autoApprove`` rule approves, as ``rule:<category>``, the updates of its groups that
passed and baked long enough: evaluated when updates or requests are read, and whenever a caller that
records evidence asks (:func:`evaluate_auto_rules`). Each request, decision and rule approval raises its
notification (shared.governance.notifications).

Refusals are :class:`ApprovalRefused` (or the pure rules' :class:`TransitionRefused`), each naming its
rule: the API maps them to 400 (a field), 403 (who), 404, 409 (state) without a 500.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from shared.governance.approvals_table import (
    ApprovalRequest,
    ApprovalStore,
    RequestChanged,
    RequestState,
    Skipped,
    approval_store,
)
from shared.governance.categories import AssetCategory, classification_group
from shared.governance.categories_table import CategoryNotFound, CategoryStore, category_store
from shared.governance.notifications import EventType, Notification, NotificationError, notify
from shared.governance.patch_refs import PatchRef, PatchRefError, parse_patch_ref
from shared.governance.patches import (
    DECISIONS,
    MAX_JUSTIFICATION_CHARS,
    PENDING,
    Action,
    CategoryPatchStatus,
    PatchState,
    SeparationOfDuties,
    TransitionRefused,
    auto_approval_due,
    rule_actor,
    transition,
)
from shared.governance.patches_table import PatchInventory, patch_inventory
from shared.governance.releases import MAX_RELEASE_ITEMS
from shared.governance.releases_table import ReleaseNotFound, release_store
from shared.model.machines import OsType
from shared.principal import Principal
from shared.settings import Settings

log = logging.getLogger(__name__)

# A request names at most a release's worth of updates (shared.governance.releases.MAX_RELEASE_ITEMS).
MAX_REQUEST_PATCHES = MAX_RELEASE_ITEMS
_WINDOWS_KEY = re.compile(r"^(KB)?\d+$", re.IGNORECASE)


class ApprovalRefused(ValueError):
    """A request or decision refused: :attr:`rule` its name (the API's error code), :attr:`status` the HTTP
    status it means, :attr:`field` the body field at fault, :attr:`details` every (field, rule)."""

    def __init__(self, status: int, rule: str, message: str, field_name: str | None = None,
                 details: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.rule = rule
        self.message = message
        self.field = field_name
        self.details: tuple[tuple[str, str], ...] = tuple(details)


class ApprovalBodyError(ValueError):
    """An invalid body; :attr:`field` the first field at fault, :attr:`details` every one (a 400)."""

    def __init__(self, details: Sequence[tuple[str, str]]) -> None:
        super().__init__(f"{details[0][0]}: {details[0][1]}")
        self.field = details[0][0]
        self.message = details[0][1]
        self.details = tuple(details)


# --- bodies ------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              str_strip_whitespace=True)


class PatchItem(_Model):
    os_type: OsType
    key: str = Field(min_length=1, max_length=300)


class RequestBody(_Model):
    """``POST /api/approvals``: the updates (``KB5034441``, ``name=version`` or ``{osType, key}``) or a
    release, for one category, and why."""

    category: str = Field(min_length=1, max_length=64)
    patches: list[str | PatchItem] | None = Field(default=None, min_length=1, max_length=MAX_REQUEST_PATCHES)
    release: str | None = Field(default=None, min_length=1, max_length=64)
    justification: str = Field(min_length=1, max_length=MAX_JUSTIFICATION_CHARS)


class DecisionBody(_Model):
    """``POST /api/approvals/{id}/decision``."""

    decision: Literal["approve", "reject", "defer", "revoke"]
    justification: str = Field(min_length=1, max_length=MAX_JUSTIFICATION_CHARS)
    defer_until: datetime | None = None

    @field_validator("defer_until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("a time with its zone, for example 2026-04-01T00:00:00Z")
        return value


def _pydantic_details(error: ValidationError) -> list[tuple[str, str]]:
    details = [(".".join(str(p) for p in e["loc"]) or "body", str(e["msg"]).removeprefix("Value error, "))
               for e in error.errors()]
    return list(dict.fromkeys(details))


def _patch_ref(item: str | PatchItem) -> PatchRef:
    if isinstance(item, PatchItem):
        return parse_patch_ref(item.os_type, item.key)
    os_type = OsType.WINDOWS if _WINDOWS_KEY.match(item) else OsType.LINUX
    return parse_patch_ref(os_type, item)


@dataclass(frozen=True)
class ParsedRequest:
    body: RequestBody
    refs: tuple[PatchRef, ...]  # the updates named; empty when a release is named (read when requested)


def parse_request(body: Any) -> ParsedRequest:
    """The request in ``body`` (parsed JSON), or one :class:`ApprovalBodyError` listing every bad field."""
    if not isinstance(body, dict):
        raise ApprovalBodyError([("body", "must be a JSON object")])
    details: list[tuple[str, str]] = []
    parsed: RequestBody | None = None
    try:
        parsed = RequestBody.model_validate(body)
    except ValidationError as error:
        details = _pydantic_details(error)
    if (body.get("patches") is None) == (body.get("release") is None):
        details.append(("patches", "name either the updates (patches) or a release, not both"))
    refs: list[PatchRef] = []
    items = parsed.patches if parsed is not None else body.get("patches")
    for n, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, str | PatchItem):
            continue  # the model named it
        try:
            refs.append(_patch_ref(item))
        except PatchRefError as error:
            details.append((f"patches.{n}", error.message))
    if len(set(refs)) != len(refs):
        details.append(("patches", "names an update more than once"))
    if details or parsed is None:
        raise ApprovalBodyError(list(dict.fromkeys(details)))
    return ParsedRequest(parsed, tuple(refs))


def parse_decision(body: Any) -> DecisionBody:
    """The decision in ``body``, or one :class:`ApprovalBodyError` listing every bad field: a missing
    justification and a deferral without ``deferUntil`` are named together."""
    if not isinstance(body, dict):
        raise ApprovalBodyError([("body", "must be a JSON object")])
    details: list[tuple[str, str]] = []
    parsed: DecisionBody | None = None
    try:
        parsed = DecisionBody.model_validate(body)
    except ValidationError as error:
        details = _pydantic_details(error)
    defer = body.get("decision") == "defer"
    if defer and body.get("deferUntil") is None:
        details.append(("deferUntil", "a deferral needs the date until which it holds"))
    if not defer and body.get("deferUntil") is not None:
        details.append(("deferUntil", "only a deferral has a date"))
    if details or parsed is None:
        raise ApprovalBodyError(details)
    return parsed


# --- requests ----------------------------------------------------------------------------------------


def new_request_id(now: datetime) -> str:
    return f"apr-{now.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"


def _category(categories: CategoryStore, name: str) -> AssetCategory:
    try:
        return categories.get(name).category
    except CategoryNotFound:
        raise ApprovalRefused(400, "InvalidField", f"category: no asset category named {name!r}",
                              "category", [("category", f"no asset category named {name!r}")]) from None


def _refs_of(settings: Settings, parsed: ParsedRequest, category: AssetCategory) -> tuple[PatchRef, ...]:
    if parsed.body.release is None:
        return parsed.refs
    try:
        release = release_store(settings).get(parsed.body.release)
    except ReleaseNotFound as error:
        raise ApprovalRefused(400, "InvalidField", f"release: {error}", "release",
                              [("release", str(error))]) from None
    if release.category.lower() != category.name.lower():
        rule = f"release {release.name!r} is of category {release.category!r}, not {category.name!r}"
        raise ApprovalRefused(400, "InvalidField", f"release: {rule}", "release", [("release", rule)])
    return release.items


def _dry_run(status: CategoryPatchStatus, action: Action, principal: Principal, at: datetime,
             justification: str | None, **kwargs: Any) -> TransitionRefused | None:
    try:
        transition(status, action, principal.name, at, justification, roles=principal.roles, **kwargs)
    except TransitionRefused as refused:
        return refused
    return None


# States an update is in once a request took it (awaiting a decision, or approved): a new request leaves
# such an update out and says so, instead of refusing the whole request.
ALREADY_REQUESTED = frozenset({PatchState.AUTHORIZED, PatchState.DEFERRED, PatchState.APPROVED})


def _state_text(status: CategoryPatchStatus) -> str:
    since = status.since.isoformat() if status.since else "?"
    request = f" (request {status.request_id})" if status.request_id else ""
    return f"{status.state.value} since {since} by {status.by}{request}"


def request_approval(settings: Settings, parsed: ParsedRequest, principal: Principal,
                     now: datetime) -> ApprovalRequest:
    """Open a request for the updates still awaiting one: each must be ``passed`` in the category (else
    nothing changes and the refusal lists each update that is not) and moves to ``authorized`` under the
    request's id. Updates already authorized, deferred or approved for the category are left out and
    listed under ``skipped`` with their state; when that leaves nothing, a 409 ``AlreadyRequested``."""
    category = _category(category_store(settings), parsed.body.category)
    refs = _refs_of(settings, parsed, category)
    inventory = patch_inventory(settings)
    request_id = new_request_id(now)
    statuses = [inventory.state(ref, category.name) for ref in refs]
    field_name = "patches" if parsed.body.release is None else "release"
    already = [(n, s) for n, s in enumerate(statuses) if s.state in ALREADY_REQUESTED]
    if len(already) == len(statuses):
        details = [(f"{field_name}.{n}" if parsed.body.release is None else "release",
                    f"{s.ref.key}: {_state_text(s)}") for n, s in already]
        raise ApprovalRefused(
            409, "AlreadyRequested",
            f"nothing left to request: every update named is already authorized, deferred or approved for "
            f"category {category.name!r} (a request moves an update only from passed); {details[0][1]}",
            field_name, details)
    asked = [(n, s) for n, s in enumerate(statuses) if s.state not in ALREADY_REQUESTED]
    errors = [(f"patches.{n}", s.ref, _dry_run(s, Action.AUTHORIZE, principal, now, parsed.body.justification,
                                               request_id=request_id)) for n, s in asked]
    _raise_first(errors)
    refs = tuple(s.ref for _, s in asked)
    store = approval_store(settings)
    request = store.create(ApprovalRequest(
        request_id=request_id, category=category.name, patches=refs, requested_by=principal.name,
        requested_at=now, justification=parsed.body.justification, release=parsed.body.release,
        skipped=tuple(Skipped(s.ref, f"already {_state_text(s)}", s.state.value) for _, s in already),
    ))  # fmt: skip
    authorized, refused = [], []
    for ref in refs:
        try:
            inventory.change(ref, category.name, Action.AUTHORIZE, principal.name, now,
                             parsed.body.justification, roles=principal.roles, request_id=request_id)
            authorized.append(ref)
        except TransitionRefused as error:  # changed since the check (evidence failed it meanwhile)
            refused.append(Skipped(ref, str(error)))
    if refused:
        request = store.replace(_with_patches(request, authorized, refused))
    if authorized:
        _notify(settings, EventType.APPROVAL_REQUESTED, f"/approvals/{request_id}",
                {"requestId": request_id, "category": category.name, "patches": _patches(authorized),
                 "requestedBy": principal.name, "justification": parsed.body.justification,
                 "requestedAt": now, "release": parsed.body.release},
                f"Approval.Requested|{request_id}", now)
    return request


def _with_patches(request: ApprovalRequest, kept: Sequence[PatchRef],
                  skipped: Sequence[Skipped]) -> ApprovalRequest:
    return replace(request, patches=tuple(kept), skipped=(*request.skipped, *skipped))


def _raise_first(checks: Sequence[tuple[str, PatchRef, TransitionRefused | None]]) -> None:
    """Raise when any check refused: a refusal of who acts (403) as itself, else one listing every update."""
    refused = [(at, ref, error) for at, ref, error in checks if error is not None]
    if not refused:
        return
    for _, _, error in refused:
        if error.rule in ("SeparationOfDuties", "ActorNotAllowed", "JustificationRequired",
                          "DeferUntilRequired"):
            raise error
    details = [(at, f"{ref.key}: {error.message}") for at, ref, error in refused]
    message = f"{len(refused)} of the updates cannot move: {details[0][1]}"
    raise ApprovalRefused(409, "InvalidTransition", message, details[0][0], details)


def _patches(refs: Iterable[PatchRef]) -> list[dict[str, str]]:
    return [{"osType": ref.os_type.value, "key": ref.key} for ref in refs]


def _notify(settings: Settings, event_type: EventType, subject: str, data: dict[str, Any], dedup_key: str,
            at: datetime) -> None:
    """Raise the notification; one the schema refuses is logged (the change it tells of stands)."""
    try:
        notification = Notification(event_type, subject, {k: v for k, v in data.items() if v is not None},
                                    dedup_key)
    except NotificationError as error:
        log.error("%s not raised: %s", event_type.value, error)
        return
    notify(settings, notification, at)


# --- decisions ---------------------------------------------------------------------------------------


_STATE_OF = {"approve": RequestState.APPROVED, "reject": RequestState.REJECTED,
             "defer": RequestState.DEFERRED}
_EVENT_OF = {"approve": EventType.APPROVAL_GRANTED, "reject": EventType.APPROVAL_REJECTED,
             "defer": EventType.APPROVAL_DEFERRED, "revoke": EventType.APPROVAL_REVOKED}


def decide(settings: Settings, request_id: str, decision: DecisionBody, principal: Principal,
           now: datetime, store: ApprovalStore | None = None) -> ApprovalRequest:
    """Decide the whole request: each of its updates still awaiting it moves to approved, rejected or
    deferred; those that no longer await it (failed testing since, decided otherwise) are left and listed
    as ``skipped``. The requester may not decide (SeparationOfDuties); a request decided meanwhile is a
    409 (RequestDecided)."""
    store = store or approval_store(settings)
    request = store.get(request_id)
    if request.requested_by.strip().casefold() == principal.name.strip().casefold():
        raise SeparationOfDuties(
            f"separation of duties: {principal.name} requested approval request {request_id} and may not "
            "decide it; another approver must"
        )
    if decision.decision == "revoke":
        return _revoke(settings, store, request, decision, principal, now)
    if request.state not in (RequestState.PENDING, RequestState.DEFERRED):
        raise ApprovalRefused(409, "RequestDecided", f"approval request {request_id} was "
                              f"{request.state.value} by {request.decided_by} at {request.decided_at}")
    action = DECISIONS[decision.decision]
    inventory = patch_inventory(settings)
    statuses = [inventory.state(ref, request.category) for ref in request.patches]
    waiting = [s for s in statuses if s.state in PENDING and s.request_id == request_id]
    skipped = [Skipped(s.ref, f"{s.state.value} since {s.since.isoformat() if s.since else '?'} by {s.by}",
                       s.state.value) for s in statuses if s not in waiting]
    checks = [(f"patches.{n}", s.ref, _dry_run(s, action, principal, now, decision.justification,
                                               defer_until=decision.defer_until, request_id=request_id))
              for n, s in enumerate(waiting)]
    _raise_first(checks)
    try:  # claim the decision first: of two approvers at once, one decides
        decided = store.replace(request.decided(_STATE_OF[decision.decision], principal.name, now,
                                                decision.justification, decision.defer_until, skipped))
    except RequestChanged as error:
        raise ApprovalRefused(409, "RequestDecided", str(error)) from None
    moved, late = [], []
    for status in waiting:
        try:
            inventory.change(status.ref, request.category, action, principal.name, now,
                             decision.justification, roles=principal.roles, defer_until=decision.defer_until,
                             request_id=request_id)
            moved.append(status.ref)
        except TransitionRefused as error:  # changed between the check and the move
            late.append(Skipped(status.ref, str(error)))
    if late:
        decided = store.replace(_with_patches(decided, decided.patches, late))
    if moved:
        data = {"category": request.category, "patches": _patches(moved), "decidedBy": principal.name,
                "justification": decision.justification, "decidedAt": now, "requestId": request_id,
                "requestedBy": request.requested_by, "release": request.release,
                "deferUntil": decision.defer_until}
        event = _EVENT_OF[decision.decision]
        dedup = f"{event.value.removeprefix('PatchManagement.')}|{request_id}|{now.isoformat()}"
        _notify(settings, event, f"/approvals/{request_id}", data, dedup, now)
    return decided


def _revoke(settings: Settings, store: ApprovalStore, request: ApprovalRequest, decision: DecisionBody,
            principal: Principal, now: datetime) -> ApprovalRequest:
    """Take back an approved request's approval (the requester was refused already: separation of duties
    as for approving): each of its updates still approved under it moves back to ``authorized``, recorded
    in the history and PatchInventory_CL; the request is pending again, the decision it undid kept under
    ``revocations``; ``Approval.Revoked`` tells of it. Updates no longer approved under it are listed
    under ``skipped``. A request not approved is a 409 ``RequestNotApproved``."""
    request_id = request.request_id
    if request.state is not RequestState.APPROVED:
        raise ApprovalRefused(409, "RequestNotApproved", f"approval request {request_id} is "
                              f"{request.state.value}: only an approved request's approval can be revoked")
    inventory = patch_inventory(settings)
    statuses = [inventory.state(ref, request.category) for ref in request.patches]
    held = [s for s in statuses if s.state is PatchState.APPROVED and s.request_id == request_id]
    if not held:
        raise ApprovalRefused(409, "RequestNotApproved", f"approval request {request_id}: none of its "
                              "updates is approved under it any more; nothing to revoke")
    skipped = [Skipped(s.ref, f"not revoked: {_state_text(s)}", s.state.value)
               for s in statuses if s not in held]
    checks = [(f"patches.{n}", s.ref, _dry_run(s, Action.REVOKE, principal, now, decision.justification,
                                               request_id=request_id)) for n, s in enumerate(held)]
    _raise_first(checks)
    try:  # claim the revocation first, as a decision is claimed
        revoked = store.replace(request.revoked(principal.name, now, decision.justification, skipped))
    except RequestChanged as error:
        raise ApprovalRefused(409, "RequestDecided", str(error)) from None
    moved, late = [], []
    for status in held:
        try:
            inventory.change(status.ref, request.category, Action.REVOKE, principal.name, now,
                             decision.justification, roles=principal.roles, request_id=request_id)
            moved.append(status.ref)
        except TransitionRefused as error:  # changed between the check and the move
            late.append(Skipped(status.ref, str(error)))
    if late:
        revoked = store.replace(_with_patches(revoked, revoked.patches, late))
    if moved:
        data = {"category": request.category, "patches": _patches(moved), "decidedBy": principal.name,
                "justification": decision.justification, "decidedAt": now, "requestId": request_id,
                "requestedBy": request.requested_by, "release": request.release}
        dedup = f"Approval.Revoked|{request_id}|{now.isoformat()}"
        _notify(settings, EventType.APPROVAL_REVOKED, f"/approvals/{request_id}", data, dedup, now)
    return revoked


def list_requests(settings: Settings, state: str | None, category: str | None,
                  now: datetime) -> list[ApprovalRequest]:
    """Requests, newest first. ``state`` ``pending``: those awaiting an approver (deferred ones whose date
    has come included); any other state: those in it."""
    requests = approval_store(settings).list(category=category)
    if state is None:
        return requests
    if state == RequestState.PENDING.value:
        return [r for r in requests if r.awaiting(now)]
    return [r for r in requests if r.state.value == state]


# --- automatic rules ---------------------------------------------------------------------------------


def evaluate_auto_rules(settings: Settings, now: datetime, only: str | None = None,
                        inventory: PatchInventory | None = None,
                        categories: Sequence[AssetCategory] | None = None) -> list[CategoryPatchStatus]:
    """Approve, as ``rule:<category>``, what each category's ``autoApprove`` covers now (``only``: one
    category). Answers what it approved. Idempotent: an approved update is not evaluated again."""
    found = categories if categories is not None else category_store(settings).categories()
    store = inventory or patch_inventory(settings)
    approved = []
    for category in found:
        rule = category.auto_approve
        if rule is None or (only is not None and category.name.lower() != only.lower()):
            continue
        groups = [g.value for g in rule.classifications]
        for status in store.statuses_in(category.name, (PatchState.PASSED, PatchState.AUTHORIZED)):
            facts = store.facts_or_none(status.ref)
            group = classification_group(status.ref.os_type, (facts.classification if facts else None) or "")
            if not auto_approval_due(status, group.value, groups, rule.min_bake_hours, now):
                continue
            why = (f"automatic rule of {category.name}: {', '.join(groups)} updates that passed and baked "
                   f"{rule.min_bake_hours} hours")
            try:
                changed = store.change(status.ref, category.name, Action.AUTO_APPROVE,
                                       rule_actor(category.name), now, why)
            except TransitionRefused as refused:  # moved meanwhile
                log.info("rule of %s left %s: %s", category.name, status.ref.key, refused)
                continue
            approved.append(changed)
            data = {"category": category.name, "patches": _patches([status.ref]),
                    "decidedBy": rule_actor(category.name), "justification": why, "decidedAt": now}
            dedup = f"Approval.Granted|{rule_actor(category.name)}|{status.ref.key}|{now.isoformat()}"
            subject = f"/categories/{category.name}/rules"
            _notify(settings, EventType.APPROVAL_GRANTED, subject, data, dedup, now)
    return approved

