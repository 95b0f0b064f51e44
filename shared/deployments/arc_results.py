"""An Arc-enabled server's per-update install results, from Azure Resource Graph.

An Arc server's ``installPatches`` result has counts only; Azure Update Manager writes each run to
Resource Graph (``patchinstallationresources``: the run's summary and one row per update with its
``installationState``, AZURE-FACTS). A deployment does not query per machine: Resource Graph allows 15
queries per 5 seconds per caller, and a cycle holds thousands of Arc servers. The install step keeps the
counts (the truth of the machine's result) and notes the install's ``installationActivityId`` on the
machine's row; the batch's end (``apply_batch_journal`` in :mod:`shared.deployments.steps`) reads every
noted run of its machines with :func:`patch_results_of_runs`, one query per ``GROUP_SIZE`` machines
(``installation_runs``, paged), and gives each machine the ``UpdateRunProgress_CL`` rows an Azure VM gets.

When Resource Graph does not have a finished run yet (lag) or cannot be read, that machine stays
counts-only: its result (status and counts, its ``UpdateRunMachine_CL`` row) is right, only its per-update
rows are missing, and the note stays on its row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from azure.core.credentials import TokenCredential

from shared.azure.resource_graph import (
    InstallationRun,
    ResourceGraphError,
    RunKey,
    installation_runs,
    resource_graph,
)
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


def patch_results_of_runs(
    settings: Settings, credential: TokenCredential, runs: Sequence[tuple[str, str]]
) -> dict[RunKey, tuple[PatchInstallResult, ...]]:
    """The per-update results of many finished installs, (resource id, installation id) each, read with
    one Resource Graph query per ``GROUP_SIZE`` machines; keyed by the pair in lower case, and only the
    runs Resource Graph has finished (the others lag, or Resource Graph could not be read: absent)."""
    if not runs:
        return {}
    try:
        found = installation_runs(resource_graph(credential, settings.resource_graph_endpoint), runs)
    except ResourceGraphError as error:
        logger.warning("Resource Graph could not be read for %d Arc installs (their results stay counts): %s",
                       len(runs), error)
        return {}
    listed = {key: patches for key, run in found.items() if (patches := finished_patches(run)) is not None}
    if len(listed) < len(found):
        logger.info("Resource Graph has no finished run yet for %d of %d Arc installs: counts only",
                    len(found) - len(listed), len(found))
    return listed


def finished_patches(run: InstallationRun) -> tuple[PatchInstallResult, ...] | None:
    """The run's patches once Resource Graph has its finished summary; None before."""
    if run.summary is None or run.summary.status.lower() in _RUNNING:
        return None
    return tuple(p.patch for p in run.patches)
