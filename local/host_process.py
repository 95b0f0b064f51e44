"""The Functions host alone, in its own process, attached to stand-ins for Azure that run elsewhere.

On Azure the Function App can die and Azure goes on: storage keeps the task hub, ARM keeps its
operations running, Log Analytics keeps its rows. ``python -m local azure`` plays that part in one
process and writes ``azure.json`` into the state folder; ``python -m local host`` (this module) reads
it, keeps the Durable task hub in that Azurite (local/durable/store.py), resumes whatever a previous
host left there, serves the HTTP API and writes ``host.json`` (its pid and API address). Kill it with
SIGKILL and start it again on the same folder: every live orchestration goes on from its history.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from local.app_clock import app_on_clock
from local.clock import Clock, RealClock, ScaledClock
from local.durable import DurableRunner
from local.durable.store import TableStore
from local.functions_host import FunctionsHost
from local.stack import ATTACH_FILE, LOCAL_OPERATOR, TASK_HUB, host_json_activity_concurrency
from shared.principal import Role, encode_principal

HOST_FILE = "host.json"
log = logging.getLogger(__name__)


def read_attach_file(state_dir: Path) -> dict[str, Any]:
    path = state_dir / ATTACH_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: start the stand-ins first (`python -m local azure`)")
    return dict(json.loads(path.read_text()))


def run_host(state_dir: Path, port: int = 0, stop: threading.Event | None = None) -> int:
    attach = read_attach_file(state_dir)
    os.environ.update(attach["settings"])
    clock: Clock = ScaledClock.from_json(attach["clock"]) if attach.get("clock") else RealClock()
    import function_app  # after the settings exist, as the host would

    with app_on_clock(clock):  # the app's "now" is the stand-ins' clock, as Azure's is in Azure
        return _host(function_app.app, attach, clock, state_dir, port, stop)


def _host(app: Any, attach: dict[str, Any], clock: Clock, state_dir: Path, port: int,
          stop: threading.Event | None) -> int:
    store = TableStore(attach["settings"]["STORAGE_CONNECTION_STRING"], TASK_HUB)
    durable = DurableRunner(app, clock, activity_concurrency=host_json_activity_concurrency(),
                            task_hub=TASK_HUB, store=store).start()
    functions = FunctionsHost(app, durable.client_binding_json,
                              signed_in_principal=encode_principal(LOCAL_OPERATOR, list(Role)))
    api = functions.serve(port=port)
    (state_dir / HOST_FILE).write_text(json.dumps({"pid": os.getpid(), "api": api}))
    log.info("host %d serving %s/api on the task hub in %s", os.getpid(), api, store.instances_table)
    stop = stop or threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        functions.stop()
        durable.stop()
    return 0
