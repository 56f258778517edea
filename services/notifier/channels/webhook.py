"""Webhooks signed with HMAC-SHA256 over `<timestamp>.<body>` (as Stripe signs its own).

Header `Loyalty-Signature: t=<unix seconds>,v1=<hex digest>`; `Idempotency-Key` is the
notice key, the same on every retry, so a receiver can drop a repeat."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx

from services.notifier.channels import DeliveryError
from services.notifier.contacts import Contact
from services.notifier.notices import Notice
from services.notifier.templates import Rendered

SIGNATURE_HEADER = "Loyalty-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, header: str, body: bytes, now: int, tolerance: int = 300) -> bool:
    """What a receiver checks: a valid v1 signature and a timestamp within `tolerance`."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def payload(notice: Notice, rendered: Rendered) -> bytes:
    """The body: the notice and its rendered text; never the member's contact details."""
    return json.dumps(
        {
            "id": notice.key,
            "type": f"notice.{notice.kind}",
            "member_id": notice.member_id,
            "kind": str(notice.kind),
            "subject": notice.subject,
            "window": notice.window,
            "at": notice.at.isoformat(),
            "data": notice.data,
            "title": rendered.subject,
            "text": rendered.text,
        },
        sort_keys=True,
    ).encode()


class WebhookChannel:
    name = "webhook"

    def __init__(self, url: str, secret: bytes, *, timeout: float = 10.0) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout

    def unreachable(self, contact: Contact | None) -> str | None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, notice: Notice, rendered: Rendered, contact: Contact | None) -> None:
        body = payload(notice, rendered)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
            IDEMPOTENCY_HEADER: notice.key,
        }
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook: {type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"webhook: HTTP {response.status_code}")
