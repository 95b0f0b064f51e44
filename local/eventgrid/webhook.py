"""A webhook receiver that checks each delivery's ``X-Signature-256`` as a subscriber should.

The check is the one GitHub documents for its webhooks ("Validating webhook deliveries"): compute the
HMAC-SHA256 of the raw request body, keyed with the shared secret, as hex; prefix ``sha256=``; compare
with the header in constant time. Written here from that description, not with the product's signer, so
a test through it checks the product against the convention.

A delivery with a good signature is kept (:attr:`WebhookReceiver.deliveries`) and answered 200; a missing
or wrong one is counted (:attr:`WebhookReceiver.bad_signatures`) and answered 401. Plain http on a
loopback port: the app accepts http only for loopback addresses.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from typing import Any

from local.background_server import BackgroundServer, Reply, ServedStandIn, json_handler


class WebhookReceiver(ServedStandIn):
    def __init__(self, secret: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.secret = secret
        self._lock = threading.Lock()
        self._deliveries: list[dict[str, Any]] = []
        self._bad = 0
        self._refusals: list[int] = []
        self._server = BackgroundServer(json_handler(self._handle), name="webhook-receiver", host=host,
                                        port=port)

    @property
    def url(self) -> str:
        return self._server.url + "/hooks/patch-management"

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        """``{"headers", "body" (raw text), "event" (parsed)}`` of each delivery whose signature verified."""
        with self._lock:
            return list(self._deliveries)

    @property
    def bad_signatures(self) -> int:
        with self._lock:
            return self._bad

    def refuse_next(self, calls: int = 1, status: int = 503) -> None:
        with self._lock:
            self._refusals += [status] * calls

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if method != "POST" or path.split("?")[0] != "/hooks/patch-management":
            return Reply(404, {"error": "not found"})
        received = next((v for k, v in headers.items() if k.lower() == "x-signature-256"), "")
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, received):
            with self._lock:
                self._bad += 1
            return Reply(401, {"error": "X-Signature-256 does not match the body"})
        with self._lock:
            if self._refusals:
                return Reply(self._refusals.pop(0), {"error": "refused by the receiver (refuse_next)"})
            self._deliveries.append({"headers": headers, "body": body.decode(), "event": json.loads(body)})
        return Reply(200)
