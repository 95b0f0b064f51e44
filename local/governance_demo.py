"""Governed patching on the demo fleet (issue 13), driven over HTTP on a running local host after its
assessment, as an operator, an approver and an auditor would drive it:

1. an asset category of the fleet's Ubuntu 20.04 servers (a saved log search), with a ``test`` ring (two
   resource groups) and a ``production`` ring (every other machine of the category);
2. a candidate release of the exact versions the category's machines are missing, run on the test ring:
   one update fails on one test machine (the fleet file's ``failingPatches``), the others install; after the
   category's bake time the evidence says ``passed`` for them and ``failed`` with the reason for it;
3. a baseline release of what passed; operator A requests its approval, A approving it herself is refused
   (403, separation of duties), approver B approves it with a justification;
4. the distribution publishes a newer version of one package of the baseline (a simulation control of the
   ARM stand-in, :meth:`local.arm.server.ArmStandIn.publish_version`);
5. the production ring's run of the baseline installs exactly the tested versions and holds the newer one;
6. the audit of the day, for the category;
7. one unapproved install: an operator hot-fixes a test-ring machine with the newly published version (the
   test ring may take untested updates), and while it installs the category is edited so that the machine
   leaves the test ring: the install lands on a production machine without approval, and the audit, its
   ``UpdateRunProgress_CL`` row (``Authorized == false``) and the ``unauthorized-installs`` alert's query
   say so.

:func:`run_governance_demo` returns what happened (:class:`GovernanceDemo`); it prints nothing
(local/run.py prints it). It answers None on a fleet without the demo fleet's machines for it.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from local.clock import VirtualClock
from local.stack import LocalStack
from shared.principal import PRINCIPAL_HEADER, Role, encode_principal

REPO_ROOT = Path(__file__).resolve().parents[1]
ALERT_RULES = REPO_ROOT / "infra" / "alerts" / "alert-rules.json"
UNAUTHORIZED_ALERT = "unauthorized-installs"

# The people (local principals, as App Service Authentication would present them).
OPERATOR_A = "olga@contoso.com"  # requests approval; holds the Approver role too, never for her own request
APPROVER_B = "adam@contoso.com"  # approves
AUDITOR = "rita@contoso.com"  # reads
PRINCIPALS: dict[str, list[Role]] = {
    OPERATOR_A: [Role.OPERATOR, Role.APPROVER],
    APPROVER_B: [Role.APPROVER],
    AUDITOR: [Role.READER],
}

# The demo fleet (local/fleets/demo.yaml): its Ubuntu 20.04 servers, found by their heartbeats; the test
# ring is the machines of two resource groups, one of which (file-dc1-000) fails to install libssl1.1.
OS_KEY = "ubuntu-20.04"  # the catalogue's key of that distribution (local/arm/catalogue.py)
CATEGORY_BASE = "ubuntu-focal"
CATEGORY_QUERY = 'Heartbeat_CL | where OSName == "ubuntu" and OSVersion == "20.04" | distinct ResourceId'
TEST_RING_GROUPS = ("rg-arc-dc1", "rg-batch-test")
TEST_RING, PRODUCTION_RING = "test", "production"
DESCRIPTION = "Ubuntu 20.04 servers (the make run demo of governed patching)"  # marks the demo's categories
# The package whose newer version the demo publishes, when the baseline has it (else its first).
PREFERRED_HELD = ("openssl", "tzdata")
# Short deadlines and bake time, so that a few virtual days show what is overdue.
DEADLINES = {"critical": 3, "security": 5, "other": 30}
BAKE_HOURS = 2
MAX_DEMO_RUNS = 100  # names tried on a state folder that earlier runs used
RUN_TIMEOUT_SECONDS = 240
_POLL_SECONDS = 0.1
# What GET /api/categories/{name} adds to the category (not part of a PUT's body).
_VIEW_ONLY = ("created", "modified", "testRing", "machines", "placement")
_INSTALL_FAILURES = ("failed install", "incomplete install")
SCHEDULE = {"startTime": "2099-01-01T02:00:00", "timeZone": "UTC"}  # run on demand only


class DemoError(RuntimeError):
    """A step answered what the demo did not expect; the message names the call and its answer."""


# --- the record ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    name: str
    items: tuple[str, ...]  # PatchRef keys: name=version
    created_by: str


@dataclass(frozen=True)
class MachineRun:
    computer: str
    ring: str
    status: str
    installed: tuple[str, ...]  # name=version, as UpdateRunProgress_CL reports them
    failed: tuple[str, ...]
    held: tuple[str, ...]  # "openssl: offered X, tested Y"
    reason: str


@dataclass(frozen=True)
class RingRun:
    deployment: str
    run_id: str
    state: str
    machines: tuple[MachineRun, ...]

    def machine(self, computer: str) -> MachineRun:
        return next(m for m in self.machines if m.computer == computer)

    @property
    def installed(self) -> tuple[str, ...]:
        return tuple(sorted({key for m in self.machines for key in m.installed}))

    @property
    def held(self) -> tuple[str, ...]:
        return tuple(sorted({h for m in self.machines for h in m.held}))


@dataclass(frozen=True)
class Evidence:
    """One update's state for the category after the test ring's run and the bake time."""

    key: str
    state: str  # passed | failed | in test | new
    reason: str | None
    installed: int
    failed: int


@dataclass(frozen=True)
class Approval:
    request_id: str
    release: str
    requested_by: str
    request_justification: str
    self_approval_status: int  # what A deciding her own request answered (403)
    self_approval_code: str  # its error code (SeparationOfDuties)
    approved_by: str
    justification: str
    state: str  # approved


@dataclass(frozen=True)
class Published:
    package: str
    tested_version: str
    new_version: str
    machines: tuple[str, ...]  # resource ids offered it


@dataclass(frozen=True)
class AuditFinding:
    computer: str
    ring: str
    finding: str
    update: str
    authorized_by: str | None


@dataclass(frozen=True)
class AuditDay:
    day: str
    machines: int
    findings: dict[str, int]
    rows: tuple[AuditFinding, ...]

    def count(self, finding: str) -> int:
        return self.findings.get(finding, 0)

    @property
    def production_findings(self) -> tuple[AuditFinding, ...]:
        return tuple(r for r in self.rows if r.ring == PRODUCTION_RING)

    @property
    def clean(self) -> bool:
        """No unauthorized install, nothing overdue, nothing approved still missing, and no failed or
        unfinished install on the production ring (the test ring's failure is its evidence)."""
        return (
            not self.count("installed unauthorized") and not self.count("overdue")
            and not self.count("authorized missing")
            and not any(r.finding in _INSTALL_FAILURES for r in self.production_findings)
        )


@dataclass(frozen=True)
class Unauthorized:
    computer: str
    resource_id: str
    update: str  # name=version
    deployment: str
    run_id: str
    moved_from: str  # the ring the machine was on when the run started
    run_rows: tuple[dict[str, Any], ...]  # UpdateRunProgress_CL rows of the run
    alert_rows: tuple[dict[str, Any], ...]  # the alert query's rows of the run
    audit: AuditDay  # the audit of that day for the machine


@dataclass(frozen=True)
class GovernanceDemo:
    category: str
    machines: dict[str, str]  # computer -> ring
    resource_ids: dict[str, str]  # computer -> resource id
    operator: str
    approver: str
    candidate: Release
    test_run: RingRun
    evidence: tuple[Evidence, ...]
    baseline: Release
    approval: Approval
    published: Published
    production_run: RingRun
    audit: AuditDay
    unauthorized: Unauthorized
    started_at: datetime  # the virtual clock when the demo began (the day of the assessment)
    notifications: dict[str, int]  # CloudEvent types the Event Grid topic received during the demo

    def evidence_of(self, key: str) -> Evidence:
        return next(e for e in self.evidence if e.key == key)


# --- HTTP as each principal ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any

    @property
    def code(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("code")) if isinstance(error, dict) else ""


class Api:
    """The app's HTTP API over real HTTP, signed in as a principal (App Service Authentication's header)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def call(self, who: str, method: str, path: str, body: Any = None,
             headers: Mapping[str, str] | None = None) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        principal = encode_principal(who, PRINCIPALS.get(who, [Role.READER]))
        sent = {"Content-Type": "application/json", PRINCIPAL_HEADER: principal, **(headers or {})}
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            raw, status = error.read(), error.code
        text = raw.decode("utf-8-sig") if raw else ""
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return Answer(status, parsed)

    def ok(self, who: str, method: str, path: str, body: Any = None,
           expect: int | Sequence[int] = (200, 201, 202)) -> Any:
        answer = self.call(who, method, path, body)
        wanted = (expect,) if isinstance(expect, int) else tuple(expect)
        if answer.status not in wanted:
            raise DemoError(f"{method} {path} as {who} answered {answer.status}: {answer.body}")
        return answer.body


def quoted(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# --- the process --------------------------------------------------------------------------------------


def demo_names(api: Api) -> dict[str, str]:
    """The names this run uses: plain on a fresh state, with a suffix (``-2``, ``-3``, ...) when an earlier
    run used them. An update's states and approval requests are kept per category name, after the category
    is gone, so a name is never reused for another run's process."""
    releases = {r["name"] for r in api.ok(AUDITOR, "GET", "/api/releases")["releases"]}
    deployments = {d["name"] for d in api.ok(AUDITOR, "GET", "/api/deployments")["deployments"]}
    for n in range(1, MAX_DEMO_RUNS + 1):
        suffix = "" if n == 1 else f"-{n}"
        category = CATEGORY_BASE + suffix
        names = {"category": category, "candidate": f"{CATEGORY_BASE}-candidate{suffix}",
                 "baseline": f"{CATEGORY_BASE}-baseline{suffix}", "test": f"{category}-test-ring",
                 "production": f"{category}-production", "hotfix": f"{category}-hotfix"}
        if names["candidate"] in releases or names["baseline"] in releases or deployments & {
                names["test"], names["production"], names["hotfix"]}:
            continue
        if api.call(AUDITOR, "GET", f"/api/categories/{quoted(category)}").status != 404:
            continue
        patches = api.ok(AUDITOR, "GET", f"/api/patches?category={quoted(category)}")["patches"]
        states = [c for p in patches for c in p.get("categories") or ()  # "new" without a move: none
                  if str(c.get("category")).lower() == category.lower() and c.get("since")]
        requests = api.ok(AUDITOR, "GET", f"/api/approvals?category={quoted(category)}")["count"]
        if not states and not requests:
            return names
    raise DemoError(f"every name from {CATEGORY_BASE} to {CATEGORY_BASE}-{MAX_DEMO_RUNS} was used by an "
                    "earlier run: start from a fresh state (python -m local run --fresh)")


def retire_earlier_demos(api: Api) -> list[str]:
    """Delete the categories an earlier run of the demo created, with the demo's deployments and releases
    that name them (a category in use cannot be deleted); their runs, approvals, patch states and change
    history stay. A machine belongs to the first matching category, and the classification deployment of
    ``make run`` may not run on machines of a category that requires approval. Answers the names deleted."""
    names = [c["name"] for c in api.ok(AUDITOR, "GET", "/api/categories")["categories"]
             if re.fullmatch(rf"{CATEGORY_BASE}(-\d+)?", c["name"]) and c.get("description") == DESCRIPTION]
    for name in names:
        path = f"/api/categories/{quoted(name)}"
        answer = api.call(OPERATOR_A, "DELETE", path)
        if answer.status == 409 and answer.code == "CategoryInUse":
            error = answer.body["error"]
            for kind, route in (("deployments", "deployments"), ("releases", "releases")):
                for used_by in error.get(kind) or ():
                    if used_by.startswith(CATEGORY_BASE):  # the demo's own; anything else stays
                        api.ok(OPERATOR_A, "DELETE", f"/api/{route}/{quoted(used_by)}",
                               expect=(200, 204, 404))
            answer = api.call(OPERATOR_A, "DELETE", path)
        if answer.status not in (200, 404):
            raise DemoError(f"DELETE {path} answered {answer.status}: {answer.body}")
    return names


def demo_fleet_fits(api: Api) -> bool:
    """Whether the fleet has what the demo needs: running Ubuntu 20.04 servers on the test ring's resource
    groups and outside them."""
    machines = api.ok(AUDITOR, "GET", "/api/machines")["machines"]
    focal = [m for m in machines if m.get("osName") == "ubuntu" and m.get("osVersion") == "20.04"
             and m.get("powerState") == "running"]
    groups = {str(m.get("resourceGroup") or _group_of(m["resourceId"])).lower() for m in focal}
    return bool(groups & set(TEST_RING_GROUPS)) and bool(groups - set(TEST_RING_GROUPS))


def _group_of(resource_id: str) -> str:
    parts = resource_id.split("/")
    return parts[4] if len(parts) > 4 else ""


def run_governance_demo(stack: LocalStack) -> GovernanceDemo | None:
    """The whole process on the running ``stack`` (served over HTTP, after discovery and assessment)."""
    assert stack.api_base_url and stack.durable and stack.functions and stack.logs and stack.arm
    api = Api(stack.api_base_url)
    if not demo_fleet_fits(api):
        return None
    started_at = stack.clock.now()
    received = len(stack.events.events) if stack.events else 0
    retire_earlier_demos(api)
    names = demo_names(api)
    category = names["category"]

    # 1. The category: its machines are placed when it is created.
    api.ok(OPERATOR_A, "POST", "/api/categories", {
        "name": category, "description": DESCRIPTION,
        "role": "Linux application servers", "criticality": 2,
        "owner": {"name": "Linux team", "contact": "linux-team@example.com"}, "priority": 10, "patchOrder": 1,
        "membership": {"osType": "Linux", "savedSearch": {"query": CATEGORY_QUERY}},
        "rings": [{"name": TEST_RING, "membership": {"resourceGroups": list(TEST_RING_GROUPS)}},
                  {"name": PRODUCTION_RING}],
        "deadlines": DEADLINES, "requiresApproval": True,
        "testEvidence": {"minMachines": 1, "bakeHours": BAKE_HOURS},
    }, expect=201)  # fmt: skip
    members = api.ok(AUDITOR, "GET", f"/api/machines?category={quoted(category)}")["machines"]
    if not members:
        raise DemoError(f"category {category} holds no machine: {CATEGORY_QUERY}")
    rings = {m["computerName"]: str(m.get("ring") or "") for m in members}
    resource_ids = {m["computerName"]: m["resourceId"] for m in members}

    # 2. The candidate release: the exact versions the category's machines are missing; its test-ring run.
    missing = _missing_versions(api, [m["id"] for m in members])
    candidate = _release(api.ok(OPERATOR_A, "POST", "/api/releases", {
        "name": names["candidate"], "category": category,
        "description": "what the Ubuntu 20.04 servers were missing at the assessment",
        "items": [{"osType": "Linux", "key": key} for key in missing],
    }, expect=201))  # fmt: skip
    test_run = _run_release(stack, api, names["test"], candidate.name, category, TEST_RING, rings)
    # The bake time: the evidence is judged again by the hourly timer once it has passed.
    _advance(stack, timedelta(hours=BAKE_HOURS, minutes=1))
    stack.functions.fire_timer("evaluate_test_evidence")
    evidence = _evidence(api, category, candidate.items)

    # 3. The baseline: what passed; approval requested by A, refused to A, granted by B.
    baseline = _release(api.ok(OPERATOR_A, "POST", "/api/releases", {
        "name": names["baseline"], "category": category, "from": "passed",
        "description": "the versions that passed on the test ring",
    }, expect=201))  # fmt: skip
    request_why = f"passed on the {TEST_RING} ring ({test_run.run_id}), baked {BAKE_HOURS} h"
    request = api.ok(OPERATOR_A, "POST", "/api/approvals", {
        "category": category, "release": baseline.name, "justification": request_why}, expect=201)
    approve_why = "Change CHG-1042: test ring clean for the baseline, rollout approved for production"
    own = api.call(OPERATOR_A, "POST", f"/api/approvals/{request['id']}/decision",
                   {"decision": "approve", "justification": approve_why})
    if own.status != 403:
        raise DemoError(f"the requester approving her own request answered {own.status}: {own.body}")
    decided = api.ok(APPROVER_B, "POST", f"/api/approvals/{request['id']}/decision",
                     {"decision": "approve", "justification": approve_why})
    approval = Approval(request["id"], baseline.name, request["requestedBy"], request_why, own.status,
                        own.code, decided["decidedBy"], decided["decisionJustification"], decided["state"])

    # 4. The distribution publishes a newer version of a package of the baseline.
    production = [c for c, ring in rings.items() if ring == PRODUCTION_RING]
    published = _publish_newer(stack, api, baseline, [resource_ids[c] for c in production], test_run)

    # 5. Production: exactly the tested versions; the newer one is held.
    production_run = _run_release(stack, api, names["production"], baseline.name, category, PRODUCTION_RING,
                                  rings)

    # 6. The audit of the day.
    today = stack.clock.now().date().isoformat()
    audit = _audit(api, f"on={today}&category={quoted(category)}", rings)

    # 7. One unapproved install.
    unauthorized = _unapproved_install(stack, api, names["hotfix"], category, published, test_run, rings,
                                       resource_ids)
    events = stack.events.events[received:] if stack.events else []
    notifications = dict(Counter(str(e["type"]).removeprefix("PatchManagement.") for e in events))
    return GovernanceDemo(
        category=category, machines=rings, resource_ids=resource_ids, operator=OPERATOR_A,
        approver=APPROVER_B, candidate=candidate, test_run=test_run, evidence=evidence, baseline=baseline,
        approval=approval, published=published, production_run=production_run, audit=audit,
        unauthorized=unauthorized, started_at=started_at, notifications=notifications,
    )  # fmt: skip


def _release(body: Mapping[str, Any]) -> Release:
    items = tuple(item["key"] for item in body["items"])
    return Release(body["name"], items, str(body.get("createdBy") or ""))


def _missing_versions(api: Api, machine_ids: Iterable[str]) -> list[str]:
    """``name=version`` of every Linux package the machines' last assessment found missing (one version per
    package: the machines run one distribution)."""
    versions: dict[str, str] = {}
    for machine_id in machine_ids:
        detail = api.ok(AUDITOR, "GET", f"/api/machines/{quoted(machine_id)}")
        for gap in detail.get("missingUpdates") or []:
            if gap.get("package") and gap.get("version"):
                versions.setdefault(gap["package"], gap["version"])
    if not versions:
        raise DemoError("the category's machines are missing no Linux package with a version")
    return [f"{name}={version}" for name, version in sorted(versions.items())]


def _advance(stack: LocalStack, delta: timedelta) -> None:
    if isinstance(stack.clock, VirtualClock):
        stack.clock.advance(delta)


def _run_release(stack: LocalStack, api: Api, name: str, release: str, category: str, ring: str,
                 rings: Mapping[str, str]) -> RingRun:
    api.ok(OPERATOR_A, "POST", "/api/deployments", {
        "name": name, "operatingSystem": "Linux", "release": release,
        "targets": {"categories": [{"category": category, "ring": ring}]},
        "schedule": SCHEDULE, "maintenanceWindowMinutes": 180, "rebootSetting": "IfRequired",
    }, expect=201)  # fmt: skip
    started = api.ok(OPERATOR_A, "POST", f"/api/deployments/{name}/runs", expect=202)
    return _finished_run(stack, api, name, started["runId"], rings)


def _finished_run(stack: LocalStack, api: Api, deployment: str, run_id: str,
                  rings: Mapping[str, str]) -> RingRun:
    assert stack.durable and stack.logs
    final = stack.durable.wait_for_completion(run_id, timeout=RUN_TIMEOUT_SECONDS)
    if final.get("runtimeStatus") != "Completed":
        raise DemoError(f"run {run_id} of {deployment} ended {final.get('runtimeStatus')}: "
                        f"{final.get('output')}")
    shown = api.ok(AUDITOR, "GET", f"/api/deployment-runs/{run_id}")
    rows = _progress_rows(stack, run_id)
    machines = []
    for m in shown["machines"]:
        mine = [r for r in rows if r["Computer"] == m["computer"]]
        machines.append(MachineRun(
            computer=m["computer"], ring=rings.get(m["computer"], ""), status=m["status"],
            installed=tuple(sorted(f"{r['PackageName']}={r['PackageVersion']}" for r in mine
                                   if r["InstallationStatus"] == "succeeded")),
            failed=tuple(sorted(f"{r['PackageName']}={r['PackageVersion']}" for r in mine
                                if r["InstallationStatus"] == "failed")),
            held=tuple(str(h["update"]) for h in m.get("held") or ()),
            reason=str(m.get("reason") or m.get("errorCode") or ""),
        ))  # fmt: skip
    return RingRun(deployment, run_id, shown["state"], tuple(sorted(machines, key=lambda m: m.computer)))


def _progress_rows(stack: LocalStack, run_id: str) -> list[dict[str, Any]]:
    """The run's per-update rows in Log Analytics (``UpdateRunProgress_CL``), as the workspace has them."""
    assert stack.logs
    kql = (f'UpdateRunProgress_CL | where UpdateRunId == "{run_id}" '
           "| project Computer, ResourceId, PackageName, PackageVersion, KBID, InstallationStatus, "
           "Authorized, AuthorizedBy, UpdateRunName, UpdateRunId")
    return [dict(r) for r in stack.logs.query(kql)]


def _evidence(api: Api, category: str, keys: Iterable[str]) -> tuple[Evidence, ...]:
    found = []
    for key in keys:
        patch = api.ok(AUDITOR, "GET", f"/api/patches/Linux/{quoted(key)}", expect=(200, 404))
        status = next((c for c in (patch or {}).get("categories") or [] if c["category"] == category), None)
        if status is None:
            found.append(Evidence(key, "new", None, 0, 0))
            continue
        counts = status.get("evidence") or {}
        found.append(Evidence(key, status["state"], status.get("justification"),
                              int(counts.get("installed") or 0), int(counts.get("failed") or 0)))
    return tuple(found)


def newer_version(version: str) -> str:
    """The next build of a Debian version: its last number plus one (``2.21`` -> ``2.22``)."""
    match = re.search(r"(\d+)(\D*)$", version)
    if not match:
        return version + ".1"
    digits = match.group(1)  # its width kept: "20.04" -> "20.05"
    return f"{version[:match.start(1)]}{int(digits) + 1:0{len(digits)}d}{match.group(2)}"


def _publish_newer(stack: LocalStack, api: Api, baseline: Release, production: Sequence[str],
                   test_run: RingRun) -> Published:
    """Publish a newer version of a baseline package that a production machine still needs and a test-ring
    machine installed (preferring :data:`PREFERRED_HELD`)."""
    assert stack.arm
    tested = {key.split("=", 1)[0]: key.split("=", 1)[1] for key in baseline.items}
    installed_on_test = {key.split("=", 1)[0] for key in test_run.installed}
    needed = set()
    for resource_id in production:
        detail = api.ok(AUDITOR, "GET", f"/api/machines/{quoted(resource_id)}")
        needed |= {g["package"] for g in detail.get("missingUpdates") or [] if g.get("package")}
    fits = sorted(p for p in tested if p in needed and p in installed_on_test)
    if not fits:
        raise DemoError(f"no package of {baseline.name} is both installed on the test ring and needed in "
                        "production")
    package = next((p for p in PREFERRED_HELD if p in fits), fits[0])
    version = newer_version(tested[package])
    offered = stack.arm.publish_version(OS_KEY, package, version)
    return Published(package, tested[package], version, tuple(offered))


def _audit(api: Api, query: str, rings: Mapping[str, str]) -> AuditDay:
    body = api.ok(AUDITOR, "GET", f"/api/audit?{query}")
    rows = []
    for machine in body["machines"]:
        for finding in machine.get("findings") or []:
            ring = rings.get(machine["computer"], str(machine.get("ring") or ""))
            rows.append(AuditFinding(machine["computer"], ring, finding["finding"], finding["update"],
                                     finding.get("authorizedBy")))
    summary = body["summary"]
    return AuditDay(body["on"], int(summary["machines"]), dict(summary["findings"]), tuple(rows))


def _unapproved_install(stack: LocalStack, api: Api, name: str, category: str, published: Published,
                        test_run: RingRun, rings: Mapping[str, str], resource_ids: Mapping[str, str]
                        ) -> Unauthorized:
    """A hotfix of the newly published version on a test-ring machine (allowed: the test ring takes untested
    updates); while it installs, the category is edited and the machine leaves the test ring. The install
    lands on a production machine of a category that requires approval, without one: unauthorized."""
    assert stack.durable
    computer = next(m.computer for m in test_run.machines
                    if any(k.split("=", 1)[0] == published.package for k in m.installed))
    resource_id = resource_ids[computer]
    update = f"{published.package}={published.new_version}"
    api.ok(OPERATOR_A, "POST", "/api/deployments", {
        "name": name, "operatingSystem": "Linux", "targets": {"machines": [resource_id]},
        # A deployment names a classification; "Other" adds nothing here: the test ring has installed
        # its other updates (the candidate release named every missing one).
        "classifications": ["Other"], "packagesToInclude": [update], "schedule": SCHEDULE,
        "maintenanceWindowMinutes": 120,
        "rebootSetting": "IfRequired",
    }, expect=201)  # fmt: skip
    with stack.durable.hold_clock():  # the run starts (the rule lets it: a test-ring machine) and waits
        started = api.ok(OPERATOR_A, "POST", f"/api/deployments/{name}/runs", expect=202)
        _wait_resolved(api, started["runId"])
        stack.durable.run_until_idle(timeout=60)
        current = api.ok(AUDITOR, "GET", f"/api/categories/{quoted(category)}")
        group = _group_of(resource_id).lower()
        rings_now = [dict(r) for r in current["rings"]]
        test = rings_now[0]
        groups = [g for g in test["membership"]["resourceGroups"] if g.lower() != group]
        test["membership"] = {**test["membership"], "resourceGroups": groups}
        edited = {k: v for k, v in current.items() if k not in _VIEW_ONLY}
        edited["rings"] = rings_now
        api.ok(OPERATOR_A, "PUT", f"/api/categories/{quoted(category)}", edited)
    moved = {**rings, computer: PRODUCTION_RING}
    run = _finished_run(stack, api, name, started["runId"], moved)
    rows = tuple(_progress_rows(stack, run.run_id))
    alert = json.loads(ALERT_RULES.read_text(encoding="utf-8"))
    query = next(r["query"] for r in alert if r["name"] == UNAUTHORIZED_ALERT)
    assert stack.logs
    alert_rows = tuple(dict(r) for r in stack.logs.query(query) if r.get("UpdateRunId") == run.run_id)
    day = stack.clock.now().date().isoformat()
    audit = _audit(api, f"on={day}&machine={quoted(resource_id)}", moved)
    return Unauthorized(computer, resource_id, update, name, run.run_id, rings.get(computer, ""), rows,
                        alert_rows, audit)


def _wait_resolved(api: Api, run_id: str) -> None:
    """Until the run has listed its machines (and checked the approval rule)."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        run = api.ok(AUDITOR, "GET", f"/api/deployment-runs/{run_id}", expect=(200, 404))
        if run and run.get("state") not in (None, "queued"):
            if run["state"] == "failed":
                raise DemoError(f"run {run_id} failed at its start: {run.get('error')}")
            return
        time.sleep(_POLL_SECONDS)
    raise DemoError(f"run {run_id} did not start within {RUN_TIMEOUT_SECONDS}s")
