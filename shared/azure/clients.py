"""Kept per worker process: the SDK clients, and the tables and containers already made sure of.

A new client costs a TLS handshake (and, for a credential, a token request) on its first call; azure-core
clients and azure-identity credentials are thread-safe (Azure SDK design guidelines), so one per key serves
every invocation of the worker. The adapters key them by everything that identifies the client: the
endpoint or connection string, and the credential object itself, so a client of one account or local
stand-in is never handed to another. Cached clients are never closed: they live as long as the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

# Re-entrant, so a builder or an action may itself take a shared client.
_clients: dict[Hashable, Any] = {}
_clients_lock = threading.RLock()
_done: set[Hashable] = set()
_done_lock = threading.RLock()


def shared_client(key: Hashable, build: Callable[[], T]) -> T:
    """The client kept under ``key``, built by ``build`` the first time (building does no I/O)."""
    with _clients_lock:
        if key not in _clients:
            _clients[key] = build()
        client: T = _clients[key]
        return client


def once(key: Hashable, action: Callable[[], object]) -> None:
    """Run ``action`` the first time this process asks for ``key``; later calls return at once.

    A failing action is not remembered, so the next call tries again. One lock serialises the
    first calls (a table create is a few milliseconds, once per table per process), so no two
    threads act for the same key."""
    if key in _done:
        return
    with _done_lock:
        if key in _done:
            return
        action()
        _done.add(key)
