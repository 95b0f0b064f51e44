"""Index a Functions app once, as the host does.

``FunctionApp.get_functions()`` validates name uniqueness against state it keeps, so a
second call on the same app raises "does not have a unique function name". The real
host indexes once at start-up; every local component asks this cache instead.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_indexed: dict[int, tuple[Any, list[Any]]] = {}


def app_functions(app: Any) -> list[Any]:
    with _lock:
        cached = _indexed.get(id(app))
        if cached is None or cached[0] is not app:
            cached = (app, list(app.get_functions()))
            _indexed[id(app)] = cached
        return cached[1]
