"""An update's state for one asset category, the rules that move it, and the history each move writes.

One update (a :class:`~shared.governance.patch_refs.PatchRef`) has one state per category:

- ``new`` → ``in test`` → ``passed`` | ``failed``: test evidence from the category's test ring, moved by
  :data:`EVIDENCE_ACTOR` (shared.governance.evidence decides when; this module only records it);
- ``passed`` → ``authorized``: an operator requests approval (the update is fit for the category);
- ``authorized`` | ``deferred`` → ``approved`` | ``rejected`` | ``deferred`` (until a date): an approver
  decides, with a justification, and never on a request they made (separation of duties);
- ``passed`` | ``authorized`` → ``approved`` by the category's automatic rule, recorded as
  ``rule:<category>``;
- ``approved`` → ``authorized``: an approver revokes an approval, with a justification (separation of
  duties as for approving: never the requester).

:func:`transition` is the only way a state changes: it answers the new status and the
:class:`HistoryEntry` to append, or raises a :class:`TransitionRefused` whose :attr:`~TransitionRefused.rule`
names the rule broken. Who the actor is (role, name) is passed in; nothing here reads a clock or a table.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from shared.governance.patch_refs import PatchRef
from shared.principal import Role

# The actor test evidence moves states as (shared.governance.evidence), and the one the assessment
# creates an update's record as when it is first seen in the fleet.
EVIDENCE_ACTOR = "system:evidence"
FIRST_SEEN_ACTOR = "system:assessment"
# A category's automatic approval rule acts as ``rule:<category>`` (the design of issue 13).
RULE_ACTOR_PREFIX = "rule:"
# Names no person may act under: a principal called "system:..." or "rule:..." would pass for the
# evidence or an automatic rule in the history.
_RESERVED_PREFIXES = ("system:", RULE_ACTOR_PREFIX)
# A justification is a sentence or a paragraph; 2,000 characters bound what a history row holds (a Table
# string property takes 32K characters) and what an approval request stores per update.
MAX_JUSTIFICATION_CHARS = 2000
# An update's facts are written by hand: 50 references (support incidents, links) of 512 characters and
# 50 dependencies are far past what anyone lists, and keep the ~patch row well under an entity's 1 MiB.
MAX_REFERENCES = 50
MAX_DEPENDENCIES = 50
MAX_REFERENCE_CHARS = 512
# A week: an outage expected to last longer is not a patch's downtime but a migration.
MAX_DOWNTIME_MINUTES = 7 * 24 * 60
MAX_ORDER = 1_000_000


class PatchState(StrEnum):
    NEW = "new"
    IN_TEST = "in test"
    PASSED = "passed"
    FAILED = "failed"
    AUTHORIZED = "authorized"
    APPROVED = "approved"
    REJECTED = "rejected"
    DEFERRED = "deferred"


class Action(StrEnum):
    """What moves a state: evidence results, an operator's request, an approver's decision, a rule."""

    TEST = "test"  # evidence: installed somewhere on the test ring, not yet conclusive
    PASS = "pass"  # evidence: passed
    FAIL = "fail"  # evidence: failed, with the reason
    AUTHORIZE = "authorize"  # operator: request approval
    APPROVE = "approve"  # approver
    REJECT = "reject"  # approver
    DEFER = "defer"  # approver, until a date
    REVOKE = "revoke"  # approver: an approval taken back to authorized
    AUTO_APPROVE = "auto-approve"  # the category's automatic rule
    # Not state changes: the update's own record, written to the same history.
    FIRST_SEEN = "first seen"  # the assessment found this version in the fleet for the first time
    EDIT = "edit"  # an operator edited its facts (impact, references, justification)


# The evidence results record_evidence_result takes, as the action each is.
EVIDENCE_ACTIONS: Mapping[PatchState, Action] = {
    PatchState.IN_TEST: Action.TEST, PatchState.PASSED: Action.PASS, PatchState.FAILED: Action.FAIL,
}
# An approver's decision on a request, as the API names it (``revoke``: on a request already approved).
DECISIONS: Mapping[str, Action] = {"approve": Action.APPROVE, "reject": Action.REJECT, "defer": Action.DEFER,
                                   "revoke": Action.REVOKE}
DECIDED_BY_APPROVER = frozenset({Action.APPROVE, Action.REJECT, Action.DEFER, Action.REVOKE})

_EVIDENCE_FROM = frozenset({PatchState.NEW, PatchState.IN_TEST, PatchState.PASSED, PatchState.FAILED})
# Where each action may start, and where it leads (None: the evidence result's own state).
_FROM: Mapping[Action, frozenset[PatchState]] = {
    Action.TEST: _EVIDENCE_FROM,
    Action.PASS: _EVIDENCE_FROM,
    # A failure on the test ring also withdraws a pending request: nobody should approve what failed.
    Action.FAIL: _EVIDENCE_FROM | {PatchState.AUTHORIZED, PatchState.DEFERRED},
    Action.AUTHORIZE: frozenset({PatchState.PASSED}),
    Action.APPROVE: frozenset({PatchState.AUTHORIZED, PatchState.DEFERRED}),
    Action.REJECT: frozenset({PatchState.AUTHORIZED, PatchState.DEFERRED}),
    Action.DEFER: frozenset({PatchState.AUTHORIZED, PatchState.DEFERRED}),
    Action.REVOKE: frozenset({PatchState.APPROVED}),
    Action.AUTO_APPROVE: frozenset({PatchState.PASSED, PatchState.AUTHORIZED}),
}
_TO: Mapping[Action, PatchState] = {
    Action.TEST: PatchState.IN_TEST,
    Action.PASS: PatchState.PASSED,
    Action.FAIL: PatchState.FAILED,
    Action.AUTHORIZE: PatchState.AUTHORIZED,
    Action.APPROVE: PatchState.APPROVED,
    Action.REJECT: PatchState.REJECTED,
    Action.DEFER: PatchState.DEFERRED,
    Action.REVOKE: PatchState.AUTHORIZED,
    Action.AUTO_APPROVE: PatchState.APPROVED,
}
# The app role a person needs for each action (shared.principal: Operator requests, Approver decides).
_ROLE: Mapping[Action, Role] = {
    Action.AUTHORIZE: Role.OPERATOR,
    Action.APPROVE: Role.APPROVER,
    Action.REJECT: Role.APPROVER,
    Action.DEFER: Role.APPROVER,
    Action.REVOKE: Role.APPROVER,
}
# States a request waits for an approver in.
PENDING = frozenset({PatchState.AUTHORIZED, PatchState.DEFERRED})


class TransitionRefused(ValueError):
    """A state change the rules refuse. :attr:`rule` is the rule's name (the API's error code),
    :attr:`field` the request field at fault, when one is."""

    rule = "TransitionRefused"

    def __init__(self, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field_name


class InvalidTransition(TransitionRefused):
    """The action does not start from the update's current state (the API answers 409)."""

    rule = "InvalidTransition"


class ActorNotAllowed(TransitionRefused):
    """The actor may not take this action: a role missing, or evidence and rules only as themselves (403)."""

    rule = "ActorNotAllowed"


class SeparationOfDuties(TransitionRefused):
    """An approver deciding a request they made (403)."""

    rule = "SeparationOfDuties"


class JustificationRequired(TransitionRefused):
    """An approver's decision without a justification (400 naming ``justification``)."""

    rule = "JustificationRequired"


class DeferUntilRequired(TransitionRefused):
    """A deferral without a future date (400 naming ``deferUntil``)."""

    rule = "DeferUntilRequired"


def rule_actor(category: str) -> str:
    """The actor a category's automatic approval rule is recorded as."""
    return f"{RULE_ACTOR_PREFIX}{category}"


def is_person(by: str) -> bool:
    return not by.lower().startswith(_RESERVED_PREFIXES)


def _same_person(a: str | None, b: str) -> bool:
    # Entra ID user principal names are case-insensitive.
    return a is not None and a.strip().casefold() == b.strip().casefold()


@dataclass(frozen=True)
class EvidenceCounts:
    """What the test ring showed: machines installed, machines failed, and since when it baked
    (the K-th install, shared.governance.evidence)."""

    installed: int = 0
    failed: int = 0
    baked_since: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"installed": self.installed, "failed": self.failed,
                "bakedSince": self.baked_since.isoformat() if self.baked_since else None}


@dataclass(frozen=True)
class CategoryPatchStatus:
    """One update's state for one category: since when, set by whom, and the request that holds it."""

    ref: PatchRef
    category: str
    state: PatchState = PatchState.NEW
    since: datetime | None = None  # None: never moved (no record yet)
    by: str | None = None
    justification: str | None = None  # why the last move happened (a failure's reason for evidence)
    defer_until: datetime | None = None
    requested_by: str | None = None  # who requested the approval that is pending or was decided
    request_id: str | None = None
    evidence: EvidenceCounts = field(default_factory=EvidenceCounts)
    etag: str | None = None  # the stored row's ETag, for a guarded write

    @property
    def pending(self) -> bool:
        return self.state in PENDING

    def to_json(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "state": self.state.value,
            "since": self.since.isoformat() if self.since else None,
            "by": self.by,
            "justification": self.justification,
            "deferUntil": self.defer_until.isoformat() if self.defer_until else None,
            "requestedBy": self.requested_by,
            "requestId": self.request_id,
            "evidence": self.evidence.to_json(),
        }


@dataclass(frozen=True)
class HistoryEntry:
    """One change of one update's state for one category: who, when, from, to, why, and the request."""

    ref: PatchRef
    category: str
    at: datetime
    by: str
    action: Action
    from_state: PatchState | None  # None for the update's own record (first seen, edited)
    to_state: PatchState | None
    justification: str | None = None
    request_id: str | None = None
    defer_until: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "osType": self.ref.os_type.value,
            "key": self.ref.key,
            "category": self.category,
            "at": self.at.isoformat(),
            "by": self.by,
            "action": self.action.value,
            "from": self.from_state.value if self.from_state else None,
            "to": self.to_state.value if self.to_state else None,
            "justification": self.justification,
            "requestId": self.request_id,
            "deferUntil": self.defer_until.isoformat() if self.defer_until else None,
        }


def initial_status(ref: PatchRef, category: str) -> CategoryPatchStatus:
    """The status of an update no evidence or person has touched in ``category``."""
    return CategoryPatchStatus(ref=ref, category=category)


def clean_justification(text: str | None, required: bool) -> str | None:
    """The justification stripped, or the refusal naming the field when it is required and empty,
    or too long."""
    value = text.strip() if isinstance(text, str) else ""
    if len(value) > MAX_JUSTIFICATION_CHARS:
        raise JustificationRequired(
            f"justification: at most {MAX_JUSTIFICATION_CHARS} characters, {len(value):,} given",
            "justification",
        )
    if required and not value:
        raise JustificationRequired(
            "justification: an approver's decision must say why (separation of duties records the reason)",
            "justification",
        )
    return value or None


def _check_actor(action: Action, by: str, roles: Collection[Role], category: str) -> None:
    if action in EVIDENCE_ACTIONS.values():
        if by != EVIDENCE_ACTOR:
            raise ActorNotAllowed(f"only test evidence ({EVIDENCE_ACTOR}) moves an update to "
                                  f"{_TO[action].value!r}; {by!r} cannot")
        return
    if action is Action.AUTO_APPROVE:
        if by != rule_actor(category):
            raise ActorNotAllowed(
                f"only the category's rule ({rule_actor(category)}) approves automatically; {by!r} cannot"
            )
        return
    if not by.strip() or not is_person(by):
        raise ActorNotAllowed(
            f"{by!r} is not a person: a request or decision is made by a signed-in principal"
        )
    role = _ROLE[action]
    if role not in roles:
        doing = "requests approval" if role is Role.OPERATOR else "decides on approval requests"
        raise ActorNotAllowed(f"{by} lacks the app role {role.value}: only an {role.name.title()} {doing}")


def transition(
    status: CategoryPatchStatus,
    action: Action,
    by: str,
    at: datetime,
    justification: str | None = None,
    *,
    roles: Collection[Role] = (),
    defer_until: datetime | None = None,
    request_id: str | None = None,
    evidence: EvidenceCounts | None = None,
) -> tuple[CategoryPatchStatus, HistoryEntry]:
    """The status after ``action`` by ``by`` at ``at``, and its history entry; or the refusal naming the rule.

    ``roles`` are the app roles of a person acting (evidence and rules act under their own names).
    ``justification`` is required for an approver's decision (approve, reject, defer, revoke); for
    evidence it is the result's reason. ``defer_until`` (after ``at``) is required to defer. ``request_id``
    is the approval request an authorization opens or a decision settles. Checks run in the order:
    actor and role, the state the action starts from, separation of duties, justification, date.
    """
    if at.tzinfo is None:
        raise ValueError("at: a time with its zone (UTC)")
    if action not in _FROM:
        raise InvalidTransition(f"{action.value!r} is not a change of state")
    _check_actor(action, by, roles, status.category)
    if status.state not in _FROM[action]:
        allowed = ", ".join(sorted(s.value for s in _FROM[action]))
        raise InvalidTransition(
            f"{status.ref.key} is {status.state.value!r} for category {status.category!r}; "
            f"{action.value!r} moves an update only from {allowed}"
        )
    # Revoking is a decision on the request as approving is: never by the person who requested it.
    if action in DECIDED_BY_APPROVER and _same_person(status.requested_by, by):
        raise SeparationOfDuties(
            f"separation of duties: {by} requested the approval of {status.ref.key} for {status.category!r} "
            f"(request {status.request_id}) and may not decide it; another approver must"
        )
    why = clean_justification(justification, required=action in DECIDED_BY_APPROVER)
    if action is Action.DEFER:
        if defer_until is None:
            raise DeferUntilRequired(
                "deferUntil: a deferral needs the date until which it holds", "deferUntil"
            )
        if defer_until.tzinfo is None:
            raise DeferUntilRequired("deferUntil: a time with its zone (for example 2026-01-31T00:00:00Z)",
                                     "deferUntil")
        if defer_until <= at:
            raise DeferUntilRequired(
                f"deferUntil: {defer_until.isoformat()} is not in the future", "deferUntil"
            )
    to_state = _TO[action]
    # The request a move belongs to: the one an authorization opens, else the one it settles.
    request = request_id if action is Action.AUTHORIZE else (request_id or status.request_id)
    requested_by = by if action is Action.AUTHORIZE else status.requested_by
    if action in EVIDENCE_ACTIONS.values():
        # Evidence reopening testing, or a failure withdrawing a pending request, ends the request.
        kept_request, requested_by = None, None
    else:
        kept_request = request
    new_status = replace(
        status,
        state=to_state,
        since=at,
        by=by,
        justification=why,
        defer_until=defer_until if action is Action.DEFER else None,
        requested_by=requested_by,
        request_id=kept_request,
        evidence=evidence if evidence is not None else status.evidence,
    )
    entry = HistoryEntry(
        ref=status.ref, category=status.category, at=at.astimezone(UTC), by=by, action=action,
        from_state=status.state, to_state=to_state, justification=why, request_id=request,
        defer_until=new_status.defer_until,
    )
    return new_status, entry


def auto_approval_due(
    status: CategoryPatchStatus,
    classification_group: str,
    classifications: Collection[str],
    min_bake_hours: float,
    now: datetime,
) -> bool:
    """Whether a category's automatic rule approves the update now: it ``passed`` (or awaits approval),
    its classification group (critical | security | other) is one the rule names, and it baked
    ``min_bake_hours`` since the test evidence's bake began (the K-th install), or since it passed when
    the evidence gave no such time. An approval a person revoked is left to people: only an operator's
    request (by its requester) and a revocation (never by the requester) lead to ``authorized``, so an
    authorized update whose last move was not its requester's was revoked."""
    if status.state not in _FROM[Action.AUTO_APPROVE] or classification_group not in classifications:
        return False
    if status.state is PatchState.AUTHORIZED and not _same_person(status.requested_by, status.by or ""):
        return False
    baked_since = status.evidence.baked_since
    if baked_since is None:
        if status.state is not PatchState.PASSED or status.since is None:
            return False
        baked_since = status.since
    return (now - baked_since).total_seconds() >= min_bake_hours * 3600


def waiting_past_deferral(status: CategoryPatchStatus, now: datetime) -> bool:
    """A deferred request whose date has come: approvers see it as pending again."""
    until = status.defer_until
    return status.state is PatchState.DEFERRED and until is not None and until <= now


# --- an update's facts ------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              str_strip_whitespace=True)


class Impact(_Model):
    """What installing the update costs: a reboot, downtime, what must go first, and its place in order."""

    reboot_required: bool | None = None
    expected_downtime_minutes: int | None = Field(default=None, ge=0, le=MAX_DOWNTIME_MINUTES)
    dependencies: list[str] = Field(default_factory=list, max_length=MAX_DEPENDENCIES,
                                    json_schema_extra={"items": {"maxLength": MAX_REFERENCE_CHARS}})
    order: int | None = Field(default=None, ge=0, le=MAX_ORDER,
                              description="lower installs first among updates of one release")

    @field_validator("dependencies")
    @classmethod
    def _dependencies(cls, value: list[str]) -> list[str]:
        return _lines(value, "dependencies")


class FactsEdit(_Model):
    """An operator's edit of an update's facts (``PATCH /api/patches/{os}/{key}``): the fields given are
    replaced, the others kept."""

    impact: Impact | None = None
    references: list[str] | None = Field(default=None, max_length=MAX_REFERENCES,
                                         json_schema_extra={"items": {"maxLength": MAX_REFERENCE_CHARS}})
    justification: str | None = Field(default=None, max_length=MAX_JUSTIFICATION_CHARS)

    @field_validator("references")
    @classmethod
    def _references(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _lines(value, "references")

    def given(self) -> set[str]:
        return set(self.model_fields_set)


def _lines(values: list[str], name: str) -> list[str]:
    cleaned = [v.strip() for v in values]
    for item in cleaned:
        if not item:
            raise ValueError(f"{name}: an entry is empty")
        if len(item) > MAX_REFERENCE_CHARS:
            raise ValueError(f"{name}: an entry is longer than {MAX_REFERENCE_CHARS} characters")
    return list(dict.fromkeys(cleaned))


class FactsError(ValueError):
    """An invalid facts edit; :attr:`field` the first field at fault, :attr:`details` every one."""

    def __init__(self, details: list[tuple[str, str]]) -> None:
        super().__init__(f"{details[0][0]}: {details[0][1]}")
        self.field = details[0][0]
        self.message = details[0][1]
        self.details = tuple(details)


def parse_facts_edit(body: Any) -> FactsEdit:
    """The edit in ``body`` (parsed JSON), or one :class:`FactsError` listing every field at fault."""
    if not isinstance(body, dict):
        raise FactsError([("body", "must be a JSON object")])
    if not body:
        raise FactsError([("body", "name at least one of impact, references, justification")])
    try:
        return FactsEdit.model_validate(body)
    except ValidationError as error:
        details = [(".".join(str(p) for p in e["loc"]) or "body", str(e["msg"]).removeprefix("Value error, "))
                   for e in error.errors()]
        raise FactsError(list(dict.fromkeys(details))) from None


@dataclass(frozen=True)
class PatchFacts:
    """What is known of an update, whatever the category: the ``~patch`` row."""

    ref: PatchRef
    title: str | None = None
    classification: str | None = None  # the display name, as Update_CL ("Security Updates", "Security")
    product: str | None = None
    first_seen: datetime | None = None
    machines_needing_at_first_seen: int | None = None
    impact: Impact = field(default_factory=Impact)
    references: tuple[str, ...] = ()
    justification: str | None = None
    modified: datetime | None = None
    modified_by: str | None = None
    etag: str | None = None

    def edited(self, edit: FactsEdit, by: str, at: datetime) -> PatchFacts:
        given = edit.given()
        return replace(
            self,
            impact=edit.impact if "impact" in given and edit.impact is not None else self.impact,
            references=tuple(edit.references or ()) if "references" in given else self.references,
            justification=(edit.justification or None) if "justification" in given else self.justification,
            modified=at,
            modified_by=by,
        )

    def to_json(self) -> dict[str, Any]:
        return self.ref.to_json() | {
            "title": self.title,
            "classification": self.classification,
            "product": self.product,
            "firstSeen": self.first_seen.isoformat() if self.first_seen else None,
            "machinesNeedingAtFirstSeen": self.machines_needing_at_first_seen,
            "impact": self.impact.model_dump(by_alias=True, mode="json"),
            "references": list(self.references),
            "justification": self.justification,
            "modified": self.modified.isoformat() if self.modified else None,
            "modifiedBy": self.modified_by,
        }
