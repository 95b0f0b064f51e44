"""The app reads time from the host's clock.

In Azure the app's ``datetime.now(UTC)`` and Azure's own clocks are one clock. Locally the stand-ins run
on a virtual or sped-up clock (local/clock.py), so the app must read that clock too, or a deployment
created "now" would sit on another time line than the run that ends on the stand-ins' clock (a run's
``finished`` before its ``created``). :func:`app_on_clock` gives every module of the app (``functions``,
``shared``, ``function_app``) a ``datetime`` whose ``now``/``utcnow``/``today`` read the clock; nothing
outside the app (the SDKs, the stand-ins) is touched, and leaving the context puts everything back.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, tzinfo
from typing import Any

from local.clock import Clock

_APP_PACKAGES = ("functions", "shared")
_APP_MODULES = ("function_app",)
_REAL_DATETIME = datetime
_lock = threading.Lock()
_current: list[Clock] = []  # the innermost app_on_clock wins; restored on exit


class _ClockDatetimeType(type):
    # ``isinstance(value, datetime)`` in an app module must still accept every real datetime.
    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, _REAL_DATETIME)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, _REAL_DATETIME)


class ClockDatetime(datetime, metaclass=_ClockDatetimeType):
    """``datetime`` as the app's modules see it under :func:`app_on_clock`; results are plain datetimes."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> Any:
        moment = _now()
        return moment.astimezone(tz) if tz is not None else moment.astimezone().replace(tzinfo=None)

    @classmethod
    def utcnow(cls) -> Any:
        return _now().replace(tzinfo=None)

    @classmethod
    def today(cls) -> Any:
        return cls.now()


def _now() -> datetime:
    clock = _current[-1] if _current else None
    return clock.now() if clock is not None else _REAL_DATETIME.now(UTC)


def _app_modules() -> list[Any]:
    return [module for name, module in list(sys.modules.items())
            if module is not None and (name in _APP_MODULES or name.split(".")[0] in _APP_PACKAGES)]


@contextmanager
def app_on_clock(clock: Clock) -> Iterator[None]:
    """Within this block, the app's modules loaded so far read ``clock`` for "now"."""
    patched: list[Any] = []
    with _lock:
        _current.append(clock)
        for module in _app_modules():
            if getattr(module, "datetime", None) is _REAL_DATETIME:
                module.datetime = ClockDatetime
                patched.append(module)
    try:
        yield
    finally:
        with _lock:
            _current.remove(clock)
            if not _current:
                for module in patched:
                    if getattr(module, "datetime", None) is ClockDatetime:
                        module.datetime = _REAL_DATETIME
