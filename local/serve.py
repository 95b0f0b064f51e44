"""``python -m local serve``: the whole host kept up, live, on the state folder's clock.

It goes on from the clock ``make run`` (or an earlier ``serve``) left in the state folder, so what they
wrote is current in the API and the workbook; the clock runs ``--speed`` times faster than wall time
(by default a 2-hour window passes in two minutes), and every timer of the app fires on it
(local/timers.py), printed as it fires. The Durable task hub lives in the state folder's Azurite
(local/durable/store.py): an orchestration that was running when ``serve`` stopped goes on at the next.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from local.arm.fleet import load_fleet
from local.clock import DEFAULT_SPEED, ScaledClock, save_clock, saved_clock
from local.stack import SIGN_IN_NOTICE, LocalStack
from local.timers import Firing, TimerScheduler
from local.workbook import serve_workbook

# How often (real seconds) the clock is written to the state folder while serving, so a serve that is
# killed rather than stopped leaves the next command at most this much behind.
_SAVE_CLOCK_SECONDS = 1.0


def _say(text: str = "") -> None:
    print(text, flush=True)


def _clock_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _announce(firing: Firing) -> None:
    if firing.error:
        _say(f"[{_clock_text(firing.at)}] timer {firing.timer} failed: {firing.error}")
        return
    late = (firing.at - firing.due).total_seconds()
    when = f", due {firing.due:%H:%M:%S}" + (" past due" if firing.past_due else f", {late:.0f} s late") \
        if late >= 1 else ""
    _say(f"[{_clock_text(firing.at)}] timer {firing.timer} fired ({firing.schedule}{when})")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def serve(fleet_file: Path, state_dir: Path, speed: float | None = None, port: int = 0) -> int:
    saved = saved_clock(state_dir)
    speed = speed or (saved.speed if saved else DEFAULT_SPEED)
    # A new folder starts at wall time; otherwise where the last command's clock stopped.
    start = saved.now if saved else datetime.now(UTC).replace(microsecond=0)
    clock = ScaledClock(start, speed)
    stack = LocalStack(load_fleet(fleet_file), clock=clock, state_dir=state_dir, durable_store=True)
    signal.signal(signal.SIGTERM, _interrupt)
    stop_saving = threading.Event()

    def keep_clock() -> None:
        while True:
            save_clock(state_dir, clock.now(), speed)
            if stop_saving.wait(_SAVE_CLOCK_SECONDS):
                return

    with stack.start(serve_http=True, port=port):
        assert stack.functions is not None
        scheduler = TimerScheduler(stack.functions, clock, on_fire=_announce)
        saver = threading.Thread(target=keep_clock, name="clock-keeper", daemon=True)
        try:
            _say(f"API          {stack.api_base_url}/api")
            _say(f"Sign-in      {SIGN_IN_NOTICE}")
            _say(f"             try: curl {stack.api_base_url}/api/machines")
            _say(f"Workbook     {serve_workbook(stack)}  (Update Management views over the local data)")
            _say(f"ARM          {stack.arm.base_url if stack.arm else ''}")
            _say(f"Log Analytics {stack.logs.base_url if stack.logs else ''}")
            _say(f"Resource Graph {stack.graph.base_url if stack.graph else ''}")
            origin = f"where the last command on {state_dir} stopped" if saved else "now (a new state folder)"
            _say(f"Clock        {_clock_text(start)}, {origin}; running {speed:g}x "
                 f"(2 hours in {120 / speed:g} min; --speed N to change)")
            _say("Timers       " + ", ".join(f"{t.name} ({t.schedule})" for t in scheduler.timers))
            _say("Ctrl-C stops everything.")
            saver.start()
            scheduler.start()
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            _say("stopping")
        finally:
            for stop_signal in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up
                signal.signal(stop_signal, signal.SIG_IGN)
            scheduler.stop()
            stop_saving.set()
            save_clock(state_dir, clock.now(), speed)
            _say(f"Clock        stopped at {_clock_text(clock.now())} (kept in {state_dir})")
    return 0
