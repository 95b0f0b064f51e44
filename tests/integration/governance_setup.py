"""What the governance tests share: the people who act (an app role set each), a call to the API as one
of them, and a local host whose fleet is discovered and placed in a category with a test and a production
ring."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from local.arm.fleet import Fleet
from local.clock import VirtualClock
from local.functions_host import FunctionsHost
from local.stack import LocalStack
from shared.principal import PRINCIPAL_HEADER, Role, encode_principal

OLGA = encode_principal("olga@contoso.com", [Role.OPERATOR])  # requests
ANNA = encode_principal("anna@contoso.com", [Role.APPROVER])  # decides
BOB = encode_principal("bob@contoso.com", [Role.OPERATOR, Role.APPROVER])  # may do both, never on one request
RITA = encode_principal("rita@contoso.com", [Role.READER])
# Real seconds for a discovery or a deployment run of a few machines on the virtual clock.
RUN_TIMEOUT = 240


def body(response: Any) -> Any:
    return json.loads(response.get_body())


def call(host: FunctionsHost, who: str, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
    """The status and JSON answer of ``method path`` sent as ``who`` (a principal header value)."""
    response = host.request(method, path, body=payload, headers={PRINCIPAL_HEADER: who})
    raw = response.get_body()
    return response.status_code, json.loads(raw) if raw else None


def ringed_category(name: str, description: str, subscription: str, **fields: Any) -> dict[str, Any]:
    """A POST /api/categories body: every machine of ``subscription``, those tagged ``ring=test`` on the
    test ring, the rest in production."""
    return {
        "name": name, "description": description, "role": "web", "criticality": 2,
        "owner": {"name": "Web team", "contact": "web@example.com"}, "priority": 1, "patchOrder": 1,
        "membership": {"subscriptionIds": [subscription]},
        "rings": [{"name": "test", "membership": {"tags": {"ring": "test"}}}, {"name": "production"}],
    } | fields  # fmt: skip


@contextmanager
def governed_stack(fleet: Fleet, category: dict[str, Any]) -> Iterator[LocalStack]:
    """``fleet`` on a local host whose clock starts at the real time, discovered, with ``category`` created
    (so its machines are placed)."""
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    with LocalStack(fleet, clock=VirtualClock(start)).start() as running:
        assert running.functions is not None and running.durable is not None
        started = running.functions.request("POST", "/api/discoveries", body={})
        assert started.status_code == 202, started.get_body()
        final = running.durable.wait_for_completion(body(started)["runId"], timeout=RUN_TIMEOUT)
        assert final["runtimeStatus"] == "Completed", final
        created = running.functions.request("POST", "/api/categories", body=category)
        assert created.status_code == 201, created.get_body()
        yield running
