"""An Arc-enabled server's per-update install results, from Azure Resource Graph.

An Arc server's ``installPatches`` result has counts only; Azure Update Manager writes each run to
Resource Graph (``patchinstallationresources``: the run's summary and one row per update with its
``installationState``, AZURE-FACTS). Once an Arc install has finished, :func:`with_patch_results` reads
that run there, by the install's ``installationActivityId`` (one query, inside the activity that saw the
result), so the machine gets ``UpdateRunProgress_CL`` rows as an Azure VM does. The counts of the ARM
result stay the truth for the machine's result; the list only gives the per-update rows.

When Resource Graph does not have the finished run yet (lag) or cannot be read, the outcome stays
counts-only: the machine's result is right, and the step keeps the run's id so the post-scan, a few
minutes later, reads it again (:mod:`shared.deployments.steps`).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from azure.core.credentials import TokenCredential

from shared.azure.resource_graph import InstallationRun, ResourceGraphError, installation_run, resource_graph
from shared.model.install_outcome import InstallOutcome, PatchInstallResult
from shared.model.machines import MachineKind, parse_resource_id
from shared.settings import Settings

logger = logging.getLogger(__name__)

# Resource Graph statuses of an installation run that has not ended: its patch rows are not final.
_RUNNING = frozenset({"inprogress", "notstarted"})


def needs_patch_results(resource_id: str, outcome: InstallOutcome) -> bool:
    """An Arc server's finished install that came with counts only."""
    arc = parse_resource_id(resource_id).kind is MachineKind.ARC_SERVER
    return arc and outcome.patches is None and bool(outcome.activity_id)


def patch_results(
    settings: Settings, credential: TokenCredential, resource_id: str, installation_id: str
) -> tuple[PatchInstallResult, ...] | None:
    """The per-update results Resource Graph has for the finished run; None while it has not (lag) or
    cannot be read."""
    try:
        graph = resource_graph(credential, settings.resource_graph_endpoint)
        run = installation_run(graph, resource_id, installation_id)
    except ResourceGraphError as error:
        logger.warning("Resource Graph could not be read for install %s of %s: %s",
                       installation_id, resource_id, error)
        return None
    listed = finished_patches(run)
    if listed is None:
        logger.info("Resource Graph has no finished run %s of %s yet", installation_id, resource_id)
    return listed


def finished_patches(run: InstallationRun) -> tuple[PatchInstallResult, ...] | None:
    """The run's patches once Resource Graph has its finished summary; None before."""
    if run.summary is None or run.summary.status.lower() in _RUNNING:
        return None
    return tuple(p.patch for p in run.patches)


def with_patch_results(
    settings: Settings, credential: TokenCredential, resource_id: str, outcome: InstallOutcome
) -> InstallOutcome:
    """``outcome`` with Resource Graph's per-update results for an Arc server's counts-only install;
    unchanged otherwise, or while Resource Graph does not have the run."""
    if not needs_patch_results(resource_id, outcome):
        return outcome
    listed = patch_results(settings, credential, resource_id, outcome.activity_id)
    return outcome if listed is None else replace(outcome, patches=listed)
