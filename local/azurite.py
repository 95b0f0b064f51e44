"""Azurite, the Azure Storage emulator, started and stopped by the local host.

Installed by the set-up through npm (``package.json`` pins 3.35.0; 3.36+ needs Node 21).
Started on free ports and stopped by PID. ``--skipApiVersionCheck`` because the current
storage SDKs send an api-version newer than Azurite knows; ``--loose`` to ignore headers
it does not implement. In-memory for tests; a folder when a run's state must survive. Node starts it
with ``azurite_partition_index.js`` preloaded, so that a query of one partition reads that partition
through Azurite's PartitionKey index, as the Table service does, instead of every entity of the table,
and a read or write of one entity or one blob finds it through its key fields' indices instead of
testing its whole partition or every blob of the account.

Azurite belongs to the process that starts it: the kernel stops it when that process dies, even by
SIGKILL (``PR_SET_PDEATHSIG``), so no Azurite outlives a crashed host. A folder holds one Azurite at a
time: ``azurite.pid`` there names the running one and its owner. Two Azurites on one folder each keep
their own copy in memory and overwrite each other's files, so writes get lost without an error; at
start, one left by a dead owner is stopped (with a warning saying so), and a folder whose owner still
runs is refused.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from local.ports import free_ports, wait_for_port

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"
# Preloaded into Azurite: partition queries read through its PartitionKey index (see the file).
PARTITION_INDEX = Path(__file__).resolve().parent / "azurite_partition_index.js"
_READY_TIMEOUT_SECONDS = 20
_STOP_TIMEOUT_SECONDS = 5
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
PID_FILE = "azurite.pid"

log = logging.getLogger(__name__)

# Azurite's well-known development account (public, documented; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteNotInstalled(RuntimeError):
    pass


class StateFolderInUse(RuntimeError):
    """Another live process runs an Azurite on this state folder."""


@dataclass
class Azurite:
    blob_port: int
    queue_port: int
    table_port: int
    process: subprocess.Popen[bytes]
    log_file: Path | None
    location: Path | None = None

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
        if self.location is not None:
            (self.location / PID_FILE).unlink(missing_ok=True)

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
    node = shutil.which("node")
    if node is None:
        raise AzuriteNotInstalled("node is not on PATH: Azurite runs on Node.js (see `make setup`)")
    blob, queue, table = free_ports(3)
    args = [
        node, "--require", str(PARTITION_INDEX), str(AZURITE_BIN.resolve()),
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
        _clear_stale(location)
        args += ["--location", str(location)]
        log_file = location / "azurite.log"
        output = open(log_file, "ab")  # noqa: SIM115 - handed to the child, closed with it
    owner = os.getpid()
    process = subprocess.Popen(args, stdout=output, stderr=output, start_new_session=True,
                               preexec_fn=lambda: _die_with(owner))
    azurite = Azurite(blob, queue, table, process, log_file, location)
    if location is not None:
        (location / PID_FILE).write_text(json.dumps({"pid": process.pid, "owner": owner,
                                                     "ports": [blob, queue, table]}))
    try:
        for port in (blob, queue, table):
            wait_for_port(port, _READY_TIMEOUT_SECONDS, "Azurite")
    except TimeoutError:
        azurite.stop()
        raise
    return azurite


def _die_with(owner: int) -> None:
    """In the child before exec: ask the kernel for SIGTERM when the owner dies (Linux only). The kernel
    watches the thread that started the child, so start Azurite from one that lives as long as the owner."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: LocalStack.stop() still stops it; a crashed host leaves it for _clear_stale
    if os.getppid() != owner:  # the owner died before the request took effect
        os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_azurite_on(pid: int, location: Path) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _alive(pid)  # no /proc: trust the pid file
    return any(b"azurite" in part for part in command) and str(location).encode() in command


def _clear_stale(location: Path) -> None:
    """Refuse a folder whose Azurite's owner is alive; stop an Azurite whose owner died."""
    pid_file = location / PID_FILE
    try:
        recorded = json.loads(pid_file.read_text())
        pid, owner = int(recorded["pid"]), int(recorded["owner"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not _is_azurite_on(pid, location):
        pid_file.unlink(missing_ok=True)
        return
    if owner != os.getpid() and _alive(owner):
        raise StateFolderInUse(
            f"{location} is in use: Azurite (pid {pid}) runs there for process {owner}; stop that process "
            f"or use another state folder (two Azurites on one folder lose each other's writes)"
        )
    log.warning(
        "stopping a stale Azurite (pid %d) left on %s by process %d, which is gone; "
        "its data is in the folder and the new Azurite reads it", pid, location, owner,
    )
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
