"""Azurite, the Azure Storage emulator, started and stopped by the local host.

Installed by the set-up through npm (``package.json`` pins 3.35.0; 3.36+ needs Node 21).
Started on free ports and stopped by PID. ``--skipApiVersionCheck`` because the current
storage SDKs send an api-version newer than Azurite knows; ``--loose`` to ignore headers
it does not implement. In-memory for tests; a folder when a run's state must survive.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from local.ports import free_ports, wait_for_port

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"
_READY_TIMEOUT_SECONDS = 20
_STOP_TIMEOUT_SECONDS = 5

# Azurite's well-known development account (public, documented; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteNotInstalled(RuntimeError):
    pass


@dataclass
class Azurite:
    blob_port: int
    queue_port: int
    table_port: int
    process: subprocess.Popen[bytes]
    log_file: Path | None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{ACCOUNT};"
        )

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> Azurite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_azurite(location: Path | None = None) -> Azurite:
    """Start Azurite on free ports; in memory unless ``location`` is given (state kept there)."""
    if not AZURITE_BIN.exists():
        raise AzuriteNotInstalled(
            f"{AZURITE_BIN} is missing: run `make setup` (npm installs the pinned Azurite)"
        )
    blob, queue, table = free_ports(3)
    args = [
        str(AZURITE_BIN),
        "--blobHost", "127.0.0.1", "--blobPort", str(blob),
        "--queueHost", "127.0.0.1", "--queuePort", str(queue),
        "--tableHost", "127.0.0.1", "--tablePort", str(table),
        "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent",
    ]
    log_file = None
    output: int | IO[bytes]
    if location is None:
        args.append("--inMemoryPersistence")
        output = subprocess.DEVNULL
    else:
        location.mkdir(parents=True, exist_ok=True)
        args += ["--location", str(location)]
        log_file = location / "azurite.log"
        output = open(log_file, "ab")  # noqa: SIM115 - handed to the child, closed with it
    process = subprocess.Popen(args, stdout=output, stderr=output, start_new_session=True)
    azurite = Azurite(blob, queue, table, process, log_file)
    try:
        for port in (blob, queue, table):
            wait_for_port(port, _READY_TIMEOUT_SECONDS, "Azurite")
    except TimeoutError:
        azurite.stop()
        raise
    return azurite
