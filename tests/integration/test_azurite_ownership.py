"""Azurite belongs to the process that starts it (local/azurite.py): it dies with that process, even by
SIGKILL, and a folder never gets a second Azurite beside a running one."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from local.azurite import AZURITE_BIN, PID_FILE, StateFolderInUse, start_azurite
from local.ports import free_ports, wait_for_port
from local.stack import REPO_ROOT


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0) until reaped; /proc says whether it runs.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_dead(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _bare_azurite(location: Path) -> subprocess.Popen[bytes]:
    """An Azurite started the way the old host did (own session, nobody watching), as a crash leaves it."""
    blob, queue, table = free_ports(3)
    process = subprocess.Popen(
        [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(blob), "--queueHost", "127.0.0.1",
         "--queuePort", str(queue), "--tableHost", "127.0.0.1", "--tablePort", str(table),
         "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent", "--location", str(location)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    wait_for_port(table, 20, "Azurite")
    return process


def _record(location: Path, azurite_pid: int, owner: int) -> None:
    (location / PID_FILE).write_text(json.dumps({"pid": azurite_pid, "owner": owner, "ports": []}))


def test_azurite_dies_with_a_host_killed_by_sigkill(tmp_path):
    location = tmp_path / "azurite"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from local.azurite import start_azurite\n"
        f"a = start_azurite(Path({str(location)!r}))\n"
        "print(a.process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    host = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE)
    assert host.stdout is not None
    azurite_pid = int(host.stdout.readline())
    assert _alive(azurite_pid)
    os.kill(host.pid, signal.SIGKILL)
    host.wait()
    assert _wait_dead(azurite_pid), "Azurite outlived the host that started it"


def test_a_stale_azurite_left_by_a_dead_host_is_stopped_with_a_warning(tmp_path, caplog):
    location = tmp_path / "azurite"
    location.mkdir()
    stale = _bare_azurite(location)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _record(location, stale.pid, gone.pid)
    try:
        with caplog.at_level(logging.WARNING, logger="local.azurite"), start_azurite(location) as fresh:
            assert stale.wait(10) is not None, "the stale Azurite still runs beside the new one"
            assert fresh.process.poll() is None
            assert json.loads((location / PID_FILE).read_text())["pid"] == fresh.process.pid
        assert f"stopping a stale Azurite (pid {stale.pid})" in caplog.text
        assert not (location / PID_FILE).exists()
    finally:
        if stale.poll() is None:
            stale.kill()


def test_a_folder_whose_azurite_owner_still_runs_is_refused(tmp_path):
    location = tmp_path / "azurite"
    location.mkdir()
    running = _bare_azurite(location)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    _record(location, running.pid, owner.pid)
    try:
        with pytest.raises(StateFolderInUse, match=f"process {owner.pid}"):
            start_azurite(location)
        assert running.poll() is None, "the Azurite in use was left alone"
    finally:
        owner.kill()
        running.kill()
        running.wait()
