"""The layering rules of the codebase, checked on every run.

Inside ``shared/`` imports run one way: capability packages (fleet, assessment, deployments, and the
ones to come) → ``azure/`` (one adapter per Azure service) → the floors (``model/`` and the top-level
common modules). Pure modules reach no Azure SDK, and the packages never import each other in a cycle.

The import graph is read with ``ast``, not by importing: an import inside a function or under
``if TYPE_CHECKING:`` counts like any other, since the rule is about what a module knows of.
"""

from __future__ import annotations

import ast
import itertools
import re
import sys
import textwrap
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SHARED = "shared"
# The package-graph node of the top-level common modules (shared/settings.py, messages.py, ...).
TOP_LEVEL = "top-level"
MODEL = "model"
ADAPTERS = "azure"
# Floors import only floors; adapters import floors and adapters; any other package is a capability.
LAYER = {TOP_LEVEL: 0, MODEL: 0, ADAPTERS: 1}
CAPABILITY_LAYER = 2
# What model/ may import besides model/ and the standard library.
MODEL_THIRD_PARTY = frozenset({"pydantic"})
# The Functions runtime and the app around shared/: shared/ imports none of them.
APP = ("azure.functions", "azure.durable_functions", "functions", "function_app", "local")

# The rule modules of the capability packages: they reach no Azure SDK, directly or through another
# module. model/, the top-level modules and the packages' __init__ are pure by place, not listed here.
PURE_RULES = frozenset({
    "shared.fleet.scope",  # which machines a run covers: subscriptions, groups, tags, OS, ids
    "shared.fleet.machine_query",  # the machine list's query string: filters, tag filters, page bounds
    "shared.fleet.machine_names",  # a machine by its key, resource id or computer name, in any directory
    "shared.fleet.heartbeats",  # a discovered machine's Heartbeat_CL row
    "shared.fleet.placement",  # a machine's asset category and ring as the fleet keeps them
    "shared.fleet.messages",  # discovery orchestration inputs and counts (pydantic)
    "shared.assessment.records",  # an assessment as update records, a summary and Log Analytics rows
    "shared.assessment.messages",  # assessment orchestration ids, tuning and counts
    "shared.assessment.light_check",  # which machines to reassess, from the listing and Resource Graph
    "shared.deployments.definition",  # a deployment definition and every rule that validates it
    "shared.deployments.schedule",  # the Schedule model and its occurrences
    "shared.deployments.rollout",  # window arithmetic and the start gate, `now` passed in
    "shared.deployments.selection",  # which missing updates a deployment would install
    "shared.deployments.results",  # an install's meaning for a machine: status, UpdateRunProgress_CL rows
    "shared.deployments.messages",  # messages between the deployment functions
    "shared.governance.patch_refs",  # one update at one exact version, and its keys
    "shared.governance.audit",  # installed vs authorized, missing, overdue and failed on a day; the daily row
    "shared.governance.categories",  # asset categories: membership, rings, deadlines; placement of a machine
    "shared.governance.patches",  # an update's state per category, its transitions and history
    "shared.governance.releases",  # a release's model and rules; the install lists and held packages it makes
    "shared.governance.evidence",  # the test-evidence rule (passed, failed, in test), change-history values
    "shared.governance.enforcement",  # the approval rule of deployments; approvedOnly's install lists
    "shared.governance.deadlines",  # which missing updates' deadlines fall within the warning window
    "shared.safety.policy",  # a safety policy: health checks, bake, snapshots, rollback; its record values
    "shared.safety.checks",  # health-check messages and how Azure's answers are judged (exit codes, rows)
    "shared.safety.messages",  # snapshot and rollback step messages, a rollback's record
})

# The modules of the capability packages that use an Azure SDK or an adapter, directly or through
# another such module. The test fails when one of them stops reaching the SDK: it belongs above then.
USES_ADAPTERS = frozenset({
    "shared.fleet.discovery",  # lists the fleet (arm), records Machines, queues heartbeats (log outbox)
    "shared.fleet.machines_table",  # the Machines table
    "shared.assessment.arc_patches",  # an Arc server's update list from Resource Graph
    "shared.assessment.baselines_table",  # LightCheckBaseline; the light check's ARM and Resource Graph reads
    "shared.assessment.journal",  # a batch's InventoryJournal, applied to Machines, index, catalogue, outbox
    "shared.assessment.recording",  # writes the update tables and queues the Log Analytics rows
    "shared.assessment.run",  # the assessment activities' work: ARM calls, AssessmentTargets table
    "shared.assessment.updates_table",  # the update inventory and its history
    "shared.assessment.views",  # read models over the inventory tables
    "shared.deployments.arc_results",  # an Arc server's per-update install results from Resource Graph
    "shared.deployments.definitions_table",  # the Deployments table
    "shared.deployments.finish",  # a machine's result in the run table and its Log Analytics row
    "shared.deployments.groups",  # group evaluation: ARM listing, Log Analytics saved searches
    # The request rules are pure, but it returns the SDK's parameters (patch_operations.to_sdk_parameters).
    "shared.deployments.install",
    "shared.deployments.outputs",  # per-machine operation output in Blob Storage
    "shared.deployments.resolve",  # lists a run's targets (ARM) and queues them in the run table
    "shared.deployments.reconcile",  # closes runs whose orchestration is gone, through finish and runs_table
    "shared.deployments.runs_table",  # the DeploymentRuns table
    "shared.deployments.run_machines",  # a run's machine rows, looked up by any name of the machine
    # Its rules take RunState/RunStore from runs_table and StoredDeployment from definitions_table.
    "shared.deployments.scheduler",
    "shared.deployments.scheduler_state",  # the SchedulerState table
    "shared.deployments.steps",  # one machine step: patch operations, run table, blobs, ingestion
    "shared.governance.patches_table",  # the PatchInventory table: facts, states, history; PatchInventory_CL
    "shared.governance.first_seen",  # a new update version's inventory record and FirstSeen notification
    "shared.governance.approvals",  # approval requests, decisions and automatic rules, over the stores
    "shared.governance.approvals_table",  # the ApprovalRequests table
    "shared.governance.audit_inputs",  # the audit's reads per machine partition; daily rows to the outbox
    "shared.governance.categories_table",  # the AssetCategories table; placement written to Machines
    "shared.governance.notifications",  # the NotificationOutbox table; Event Grid and the webhook
    "shared.governance.releases_table",  # the Releases table
    "shared.governance.evidence_table",  # the PatchEvidence and MachineChanges tables
    "shared.governance.deadline_warnings",  # the DeadlineWarnings table; Deadline.Approaching notifications
    "shared.governance.machine_changes",  # a machine's changes, with the evidence and approval behind each
    "shared.deployments.ring_notifications",  # RingRun.Started/Finished/Failed of a run on a category ring
    # Releases, approvedOnly, the approval rule and a batch's evidence: reads and writes governance's tables.
    "shared.deployments.governed",
    # Which safety policy each machine of a run gets: the categories' policies and the Machines placements.
    "shared.deployments.safety_plan",
    "shared.deployments.ring_bake",  # the wait for the previous ring's bake: definitions, runs, categories
    # A rollback's record: the run's row, the change history, the category's inventory, a notification.
    "shared.deployments.rollback_record",
    "shared.safety.probes",  # Run Command on VMs and Arc servers, agent readiness, log queries
    "shared.safety.restore_points",  # the RollbackPoints table
    "shared.safety.restore",  # pre-patch snapshots and the rollback's stages (shared.azure.disks)
    "shared.safety.cleanup",  # deletes expired snapshots and replaced disks, then their points
})

# A capability uses another capability's pure modules only; these adapter-using imports across
# capabilities are the known exceptions, each with its reason. Anything new fails the test.
CROSS_CAPABILITY_ADAPTERS = {
    # Assessments write their columns (LastAssessed, Compliant, ...) into the fleet's Machines table
    # and read it; the table's name is the fleet's.
    ("shared.assessment.baselines_table", "shared.fleet.machines_table"),
    ("shared.assessment.updates_table", "shared.fleet.machines_table"),
    ("shared.assessment.views", "shared.fleet.machines_table"),
    # A deployment's pre- and post-scans are assessments, recorded as any other assessment.
    ("shared.deployments.steps", "shared.assessment.recording"),
    # ... into the deployment batch's inventory journal, applied when the batch ends.
    ("shared.deployments.steps", "shared.assessment.journal"),
    # ... and an Arc server's scan takes its update list from Resource Graph as any Arc assessment does.
    ("shared.deployments.steps", "shared.assessment.arc_patches"),
    # The audit reads what a machine was missing on a past day from the assessments' MachineUpdates
    # partition (gaps and ~history rows), and the machines to audit (with their placement) from Machines.
    ("shared.governance.audit_inputs", "shared.assessment.updates_table"),
    ("shared.governance.audit_inputs", "shared.fleet.machines_table"),
    # A category created, edited or deleted re-places the fleet: AssetCategory and Ring on the fleet's
    # Machines entities (read with the columns placement needs, merged where they changed).
    ("shared.governance.categories_table", "shared.fleet.machines_table"),
    # Governed deployments (shared.deployments.governed): a release or approvedOnly names what a machine
    # installs, from the release, the machine's placement on its Machines entity and its category's
    # approved updates; a run's start checks the approval rule; a batch's end writes test evidence, the
    # change history and each update's state.
    ("shared.deployments.governed", "shared.fleet.machines_table"),
    # A run's safety policies: its deployment's, or each machine's category's (placement on Machines).
    ("shared.deployments.safety_plan", "shared.fleet.machines_table"),
    ("shared.deployments.safety_plan", "shared.governance.categories_table"),
    # A ring waits for the previous ring's bake: the category's policy and rings.
    ("shared.deployments.ring_bake", "shared.governance.categories_table"),
    # A rollback's record: the installs the run's row carries (the journal's carried columns), the
    # change history, the updates failed for the category, the Machine.RolledBack notification.
    ("shared.deployments.rollback_record", "shared.assessment.journal"),
    ("shared.deployments.rollback_record", "shared.governance.evidence_table"),
    ("shared.deployments.rollback_record", "shared.governance.notifications"),
    ("shared.deployments.rollback_record", "shared.governance.patches_table"),
    ("shared.deployments.governed", "shared.governance.categories_table"),
    ("shared.deployments.governed", "shared.governance.evidence_table"),
    ("shared.deployments.governed", "shared.governance.patches_table"),
    ("shared.deployments.governed", "shared.governance.releases_table"),
    # A pre-scan names a release that was deleted: the machine fails with the release's error.
    ("shared.deployments.steps", "shared.governance.releases_table"),
    # A run on a category ring tells of its start and end (RingRun.*) through governance's notifications.
    ("shared.deployments.ring_notifications", "shared.governance.notifications"),
}


# --- the import graph ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    source: str  # the importing file, relative to the root
    line: int
    target: str  # a module of shared/ when one matches, else the dotted name as written

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


@dataclass(frozen=True)
class Graph:
    modules: dict[str, str]  # dotted name -> file relative to the root
    imports: dict[str, list[Import]]  # dotted name -> what it imports, in line order

    def package_of(self, name: str) -> str | None:
        """The package of shared/ a dotted name falls in; None outside shared/."""
        parts = name.split(".")
        if parts[0] != SHARED:
            return None
        if len(parts) > 2 or (len(parts) == 2 and self.modules.get(name, "").endswith("__init__.py")):
            return parts[1]
        return TOP_LEVEL

    def in_package(self, package: str) -> list[str]:
        return sorted(m for m in self.modules if self.package_of(m) == package)

    def chain_to_sdk(self, name: str) -> list[str]:
        """The shortest import chain from ``name`` to an Azure SDK module, or [] when it reaches none."""
        previous: dict[str, str] = {}
        queue, seen = [name], {name}
        while queue:
            current = queue.pop(0)
            for imp in self.imports.get(current, []):
                if is_sdk(imp.target):
                    chain = [current, imp.target]
                    while chain[0] != name:
                        chain.insert(0, previous[chain[0]])
                    return chain
                if imp.target in self.modules and imp.target not in seen:
                    seen.add(imp.target)
                    previous[imp.target] = current
                    queue.append(imp.target)
        return []


def is_sdk(name: str) -> bool:
    return name.split(".")[0] == "azure"


def read_graph(root: Path) -> Graph:
    """Every module of ``root/shared`` and what it imports."""
    modules: dict[str, str] = {}
    for path in sorted((root / SHARED).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path.relative_to(root).as_posix()
    imports = {name: sorted(_imports_of(name, root, modules), key=lambda i: (i.line, i.target))
               for name, file in modules.items()}
    return Graph(modules, imports)


def _imports_of(name: str, root: Path, modules: dict[str, str]) -> Iterator[Import]:
    file = modules[name]
    tree = ast.parse((root / file).read_text(), filename=file)
    package = name if file.endswith("__init__.py") else name.rpartition(".")[0]
    for node in ast.walk(tree):  # every node: function bodies and `if TYPE_CHECKING:` included
        if isinstance(node, ast.Import):
            yield from (Import(file, node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: max(0, len(parts) - node.level + 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                # `from shared.fleet import scope` imports the module shared.fleet.scope.
                submodule = f"{base}.{alias.name}"
                yield Import(file, node.lineno, submodule if submodule in modules else base)


# --- the rules, each a function of the graph -------------------------------------------------------


def pure_by_place(graph: Graph) -> set[str]:
    """model/, the top-level modules and every package's __init__ but azure's (importing a module runs it)."""
    inits = {m for m, f in graph.modules.items()
             if f.endswith("__init__.py") and graph.package_of(m) != ADAPTERS}
    return set(graph.in_package(MODEL)) | set(graph.in_package(TOP_LEVEL)) | inits


def impure_imports(graph: Graph, pure: Collection[str]) -> list[str]:
    """Imports of ``pure`` modules reaching an Azure SDK: directly, through an adapter or another module."""
    found = []
    for name in sorted(pure):
        for imp in graph.imports.get(name, []):
            chain = graph.chain_to_sdk(imp.target) if imp.target in graph.modules else []
            if is_sdk(imp.target):
                found.append(f"{imp}: an Azure SDK")
            elif graph.package_of(imp.target) == ADAPTERS:
                found.append(f"{imp}: an Azure adapter (shared/azure)")
            elif chain:
                found.append(f"{imp}, which reaches an Azure SDK: {' → '.join(chain)}")
    return found


def unclassified(graph: Graph, pure: Collection[str], uses_adapters: Collection[str]) -> list[str]:
    """Capability modules listed in neither list (or both, or wrongly), and list entries with no module."""
    capability_modules = {
        m for m in graph.modules
        if LAYER.get(graph.package_of(m) or "", CAPABILITY_LAYER) == CAPABILITY_LAYER
        and not graph.modules[m].endswith("__init__.py")
    }
    found = []
    for name in sorted(capability_modules):
        chain = graph.chain_to_sdk(name)
        reach = f"it reaches an Azure SDK: {' → '.join(chain)}" if chain else "it reaches no Azure SDK"
        if name in pure and name in uses_adapters:
            found.append(f"{name} is in both PURE_RULES and USES_ADAPTERS; {reach}")
        elif name not in pure and name not in uses_adapters:
            home = "USES_ADAPTERS" if chain else "PURE_RULES"
            found.append(f"{name} is new: add it to {home} in tests/unit/test_layering.py ({reach})")
        elif name in uses_adapters and not chain:
            found.append(f"{name} reaches no Azure SDK any more: move it from USES_ADAPTERS to PURE_RULES")
    found += [f"{name} is listed but is no module of a capability package"
              for name in sorted((set(pure) | set(uses_adapters)) - capability_modules)]
    return found


def model_imports_outside(graph: Graph) -> list[str]:
    """Imports of model/ that are not model/, the standard library or MODEL_THIRD_PARTY."""
    found = []
    for name in graph.in_package(MODEL):
        for imp in graph.imports[name]:
            top = imp.target.split(".")[0]
            inside = graph.package_of(imp.target) == MODEL
            allowed = top != SHARED and (top in sys.stdlib_module_names or top in MODEL_THIRD_PARTY)
            if not (inside or allowed):
                found.append(str(imp))
    return found


def imports_above(graph: Graph, package: str) -> list[str]:
    """Imports by ``package`` of a higher layer: a floor of azure/ or a capability, azure/ of a capability."""
    own = LAYER.get(package, CAPABILITY_LAYER)
    found = []
    for name in graph.in_package(package):
        for imp in graph.imports[name]:
            target = graph.package_of(imp.target)
            if target is not None and LAYER.get(target, CAPABILITY_LAYER) > own:
                found.append(f"{imp}: {package} may not import {target}")
    return found


def package_cycle(graph: Graph) -> str | None:
    """A cycle in the graph of the packages of shared/, with the import behind each edge; None if none."""
    edges: dict[str, dict[str, Import]] = {}
    for name, imports in graph.imports.items():
        source = graph.package_of(name) or ""
        for imp in imports:
            target = graph.package_of(imp.target)
            if target is not None and target != source:
                edges.setdefault(source, {}).setdefault(target, imp)
    done: set[str] = set()

    def visit(path: list[str]) -> str | None:
        for target in sorted(edges.get(path[-1], {})):
            if target in path:
                cycle = [*path[path.index(target):], target]
                return " → ".join([cycle[0]] + [f"{b} ({edges[a][b]})" for a, b in itertools.pairwise(cycle)])
            if target not in done:
                found = visit([*path, target])
                if found:
                    return found
        done.add(path[-1])
        return None

    for start in sorted(edges):
        found = visit([start]) if start not in done else None
        if found:
            return found
    return None


def cross_capability_adapter_imports(graph: Graph, pure: Collection[str],
                                     allowed: Collection[tuple[str, str]]) -> list[str]:
    """Imports by a capability of another capability's module that is not pure, unless ``allowed``."""
    found = []
    for name, imports in sorted(graph.imports.items()):
        source = graph.package_of(name)
        if source is None or source in LAYER:
            continue
        for imp in imports:
            target = graph.package_of(imp.target)
            if (target is None or target in LAYER or target == source or imp.target in pure
                    or (name, imp.target) in allowed):
                continue
            found.append(f"{imp}: a module of {target} that uses adapters; use its pure modules, or list "
                         "the pair in CROSS_CAPABILITY_ADAPTERS with the reason")
    return found


def app_imports(graph: Graph) -> list[str]:
    return [str(imp) for imports in graph.imports.values() for imp in imports
            if any(imp.target == app or imp.target.startswith(f"{app}.") for app in APP)]


# --- the rules on this codebase --------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return read_graph(ROOT)


def _listed(found: list[str]) -> str:
    return "\n" + "\n".join(found)


def test_pure_modules_reach_no_azure_sdk(graph: Graph):
    found = impure_imports(graph, pure_by_place(graph) | PURE_RULES)
    assert not found, _listed(found)


def test_every_capability_module_is_classified_pure_or_adapter_using(graph: Graph):
    found = unclassified(graph, PURE_RULES, USES_ADAPTERS)
    assert not found, _listed(found)


def test_model_imports_only_model_the_standard_library_and_pydantic(graph: Graph):
    found = model_imports_outside(graph)
    assert not found, _listed(found)


def test_azure_adapters_import_no_capability_package(graph: Graph):
    found = imports_above(graph, ADAPTERS)
    assert not found, _listed(found)


def test_no_cycle_between_the_packages_of_shared(graph: Graph):
    found = imports_above(graph, TOP_LEVEL)
    assert not found, _listed(found)
    cycle = package_cycle(graph)
    assert cycle is None, f"packages of shared/ import each other in a cycle: {cycle}"


def test_capabilities_use_each_others_pure_modules_only(graph: Graph):
    pure = pure_by_place(graph) | PURE_RULES
    found = cross_capability_adapter_imports(graph, pure, CROSS_CAPABILITY_ADAPTERS)
    assert not found, _listed(found)


def test_shared_imports_nothing_of_the_app_or_the_functions_runtime(graph: Graph):
    found = app_imports(graph)
    assert not found, _listed(found)


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_shared_knows_nothing_of_the_functions_runtime():
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources("shared")
        if re.search(r"azure\.functions|azure\.durable_functions", p.read_text())
    ]
    assert offenders == []


def test_app_code_never_imports_the_local_host():
    pattern = re.compile(r"^\s*(from|import)\s+local(\.|\s|$)", re.MULTILINE)
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("shared", "functions")
        for p in _sources(folder)
        if pattern.search(p.read_text())
    ]
    offenders += ["function_app.py"] if pattern.search((ROOT / "function_app.py").read_text()) else []
    assert offenders == []


def test_function_app_only_creates_the_app_and_registers_blueprints():
    text = (ROOT / "function_app.py").read_text()
    assert "df.DFApp(" in text
    assert not re.search(r"@app\.", text), "triggers belong on blueprints in functions/"


# --- the checks bite: small trees that break each rule ---------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Graph:
    for name, text in {"shared/__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return read_graph(root)


_VIA_TABLE = (
    "2 imports shared.fleet.table, which reaches an Azure SDK: shared.fleet.table → azure.data.tables"
)
_ADAPTER = "2 imports shared.azure.tables: an Azure adapter (shared/azure)"
_TABLE_MODULE = """\
    def service():
        from azure.data.tables import TableServiceClient
        return TableServiceClient
    PAGE = 1000
"""


@pytest.mark.parametrize(
    ("rules", "reported"),
    [
        ("from azure.data.tables import TableClient\n", "2 imports azure.data.tables: an Azure SDK"),
        ("import azure.data.tables as tables\n", "2 imports azure.data.tables: an Azure SDK"),
        (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from azure.data.tables import TableClient\n",
            "4 imports azure.data.tables: an Azure SDK",
        ),
        ("def f():\n    import azure.data.tables\n", "3 imports azure.data.tables: an Azure SDK"),
        ("from shared.azure import tables\n", _ADAPTER),
        ("from ..azure import tables\n", _ADAPTER),
        ("from shared.fleet.table import PAGE\n", _VIA_TABLE),
        ("from . import table\n", _VIA_TABLE),
        ("from .table import PAGE\n", _VIA_TABLE),
        ("import shared.fleet.table\n", _VIA_TABLE),
    ],
    ids=["sdk", "sdk-as", "type-checking", "in-function", "adapter", "adapter-relative",
         "table-module", "table-relative-package", "table-relative-module", "table-import"],
)
def test_a_pure_module_reaching_the_sdk_is_reported(tmp_path: Path, rules: str, reported: str):
    graph = _tree(tmp_path, {
        "shared/azure/__init__.py": "",
        "shared/azure/tables.py": "from azure.data.tables import TableServiceClient\n",
        "shared/fleet/__init__.py": "",
        "shared/fleet/table.py": _TABLE_MODULE,
        "shared/fleet/rules.py": '"""Rules."""\n' + rules,
    })
    assert impure_imports(graph, {"shared.fleet.rules"}) == [f"shared/fleet/rules.py:{reported}"]


def test_a_model_or_top_level_module_reaching_the_sdk_is_reported(tmp_path: Path):
    graph = _tree(tmp_path, {
        "shared/model/__init__.py": "",
        "shared/model/machines.py": "import requests\nfrom shared.settings import X\n"
                                    "from pydantic import Field\nfrom shared.model.kb import KB\n"
                                    "import datetime\n",
        "shared/model/kb.py": "KB = 1\n",
        "shared/settings.py": "from azure.identity import DefaultAzureCredential\nX = 1\n",
    })
    assert impure_imports(graph, pure_by_place(graph)) == [
        "shared/model/machines.py:2 imports shared.settings, which reaches an Azure SDK: "
        "shared.settings → azure.identity",
        "shared/settings.py:1 imports azure.identity: an Azure SDK",
    ]
    assert model_imports_outside(graph) == [
        "shared/model/machines.py:1 imports requests",
        "shared/model/machines.py:2 imports shared.settings",
    ]


def test_an_adapter_or_a_floor_importing_a_capability_is_reported(tmp_path: Path):
    graph = _tree(tmp_path, {
        "shared/azure/__init__.py": "",
        "shared/azure/tables.py": "from shared.model.machines import Machine\n"
                                  "from shared.fleet import scope\n",
        "shared/model/__init__.py": "",
        "shared/model/machines.py": "Machine = object\n",
        "shared/governance/__init__.py": "",
        "shared/governance/approvals.py": "",
        "shared/fleet/__init__.py": "",
        "shared/fleet/scope.py": "",
        "shared/settings.py": "def f():\n    from .governance.approvals import x\n",
    })
    assert imports_above(graph, ADAPTERS) == [
        "shared/azure/tables.py:2 imports shared.fleet.scope: azure may not import fleet"
    ]
    assert imports_above(graph, TOP_LEVEL) == [
        "shared/settings.py:2 imports shared.governance.approvals: top-level may not import governance"
    ]


def test_two_packages_importing_each_other_are_reported_with_the_cycle(tmp_path: Path):
    graph = _tree(tmp_path, {
        "shared/fleet/__init__.py": "",
        "shared/fleet/scope.py": "from shared.model.machines import Machine\n"
                                 "from shared.assessment import run\n",
        "shared/assessment/__init__.py": "",
        "shared/assessment/run.py": "def f():\n    from shared.fleet.scope import Scope\n",
        "shared/model/__init__.py": "",
        "shared/model/machines.py": "",
    })
    assert package_cycle(graph) == (
        "assessment → fleet (shared/assessment/run.py:2 imports shared.fleet.scope)"
        " → assessment (shared/fleet/scope.py:2 imports shared.assessment.run)"
    )
    (tmp_path / "shared/assessment/run.py").write_text("")
    assert package_cycle(read_graph(tmp_path)) is None


def test_a_module_left_unclassified_or_misclassified_is_reported(tmp_path: Path):
    graph = _tree(tmp_path, {
        "shared/fleet/__init__.py": "",
        "shared/fleet/rules.py": "",
        "shared/fleet/store.py": "from azure.data.tables import TableClient\n",
        "shared/fleet/was_a_table.py": "",
        "shared/fleet/listed.py": "",
    })
    pure, uses_adapters = {"shared.fleet.listed", "shared.fleet.gone"}, {"shared.fleet.was_a_table"}
    assert unclassified(graph, pure, uses_adapters) == [
        "shared.fleet.rules is new: add it to PURE_RULES in tests/unit/test_layering.py "
        "(it reaches no Azure SDK)",
        "shared.fleet.store is new: add it to USES_ADAPTERS in tests/unit/test_layering.py "
        "(it reaches an Azure SDK: shared.fleet.store → azure.data.tables)",
        "shared.fleet.was_a_table reaches no Azure SDK any more: move it from USES_ADAPTERS to PURE_RULES",
        "shared.fleet.gone is listed but is no module of a capability package",
    ]


def test_shared_importing_the_app_is_reported(tmp_path: Path):
    graph = _tree(tmp_path, {
        "shared/fleet/__init__.py": "",
        "shared/fleet/scope.py": "import azure.durable_functions as df\nfrom functions.http import x\n",
    })
    assert app_imports(graph) == [
        "shared/fleet/scope.py:1 imports azure.durable_functions",
        "shared/fleet/scope.py:2 imports functions.http",
    ]


def test_a_capability_using_another_capabilitys_adapter_module_is_reported(tmp_path: Path):
    tree = _tree(tmp_path, {
        "shared/fleet/table.py": "from azure.data.tables import TableClient\n",
        "shared/fleet/rules.py": "X = 1\n",
        "shared/assessment/work.py": (
            "from shared.fleet import rules\nfrom shared.fleet.table import TableClient\n"
        ),
    })
    pure = {"shared.fleet.rules"}
    found = cross_capability_adapter_imports(tree, pure, set())
    assert found == [
        "shared/assessment/work.py:2 imports shared.fleet.table: a module of fleet that uses adapters; "
        "use its pure modules, or list the pair in CROSS_CAPABILITY_ADAPTERS with the reason"
    ]
    allowed = {("shared.assessment.work", "shared.fleet.table")}
    assert cross_capability_adapter_imports(tree, pure, allowed) == []
