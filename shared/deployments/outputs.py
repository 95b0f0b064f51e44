"""Each deployment run's per-machine operation output, kept as JSON blobs.

Install and assessment results carry patch lists too long to pass between Durable functions or
to keep in a table row, so an activity writes the operation's output here and passes the blob
name on. Layout: ``{run_id}/{machine_key}/{step}.json`` in the container named by the
``RUN_LOGS_CONTAINER`` setting; ``machine_key`` is :func:`shared.model.machines.machine_key` of the
machine and ``step`` names the operation (``prescan``, ``install-1``, ``postscan``).
A write overwrites the blob of the same step, so a retried activity leaves one blob, not two.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings

from shared.azure.blobs import blob_service, ensure_container
from shared.settings import Settings

# One path segment: letters, digits, '.', '_', '-' and ':' (run ids may carry an ISO time),
# starting with a letter or digit. 255 characters is the segment limit of hierarchical-namespace
# accounts; three of them stay well inside the 1,024-character blob name limit (Azure Storage
# naming rules for blobs).
SEGMENT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")
LOG_SUFFIX = ".json"
CONTENT_TYPE = "application/json"


class RunLogNotFound(LookupError):
    """No run log at :attr:`blob_name` in :attr:`container`."""

    def __init__(self, container: str, blob_name: str) -> None:
        super().__init__(f"no run log {blob_name!r} in container {container!r}")
        self.container = container
        self.blob_name = blob_name


def _segment(argument: str, value: str) -> str:
    if not isinstance(value, str) or not SEGMENT_PATTERN.match(value) or ".." in value:
        raise ValueError(
            f"{argument}: {value!r} must be 1-255 letters, digits, '.', '_', '-' or ':', starting with a "
            "letter or digit, without '..'"
        )
    return value


def run_log_name(run_id: str, machine_key: str, step: str) -> str:
    """The blob name of one step's output; each part is checked (a ValueError names the argument)."""
    return (
        f"{_segment('run_id', run_id)}/{_segment('machine_key', machine_key)}/"
        f"{_segment('step', step)}{LOG_SUFFIX}"
    )


class RunLogStore:
    """Run logs in one Blob Storage container."""

    def __init__(self, service: BlobServiceClient, container: str) -> None:
        self._service = service
        self._container: ContainerClient = service.get_container_client(container)
        self.container = container

    def ensure(self) -> None:
        """Create the container if missing (asked once per process and account: see ensure_container)."""
        ensure_container(self._service, self.container)

    def put(self, run_id: str, machine_key: str, step: str, document: Mapping[str, Any]) -> str:
        """Write ``document`` as UTF-8 JSON, replacing an earlier write of the same step; returns the name."""
        name = run_log_name(run_id, machine_key, step)
        try:
            data = json.dumps(document, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as error:
            raise ValueError(f"document for {name}: not serialisable as JSON ({error})") from error
        self._container.upload_blob(
            name, data, overwrite=True, content_settings=ContentSettings(content_type=CONTENT_TYPE)
        )
        return name

    def get(self, run_id: str, machine_key: str, step: str) -> dict[str, Any]:
        """The document written for this step; :class:`RunLogNotFound` if there is none."""
        name = run_log_name(run_id, machine_key, step)
        try:
            data = self._container.download_blob(name).readall()
        except ResourceNotFoundError:
            raise RunLogNotFound(self.container, name) from None
        document = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError(f"run log {name} holds a JSON {type(document).__name__}, not an object")
        return document

    def list_steps(self, run_id: str, machine_key: str) -> list[str]:
        """The steps written for one machine of one run, in name order (empty if none)."""
        prefix = f"{_segment('run_id', run_id)}/{_segment('machine_key', machine_key)}/"
        steps = []
        try:
            for blob in self._container.list_blobs(name_starts_with=prefix):
                step = blob.name.removeprefix(prefix)
                if step.endswith(LOG_SUFFIX) and "/" not in step:
                    steps.append(step.removesuffix(LOG_SUFFIX))
        except ResourceNotFoundError:  # no container yet: nothing was written
            return []
        return sorted(steps)


def run_log_store(settings: Settings, credential: TokenCredential | None = None) -> RunLogStore:
    """The store in the ``RUN_LOGS_CONTAINER`` container of the app's storage account."""
    return RunLogStore(blob_service(settings, credential), settings.run_logs_container)
