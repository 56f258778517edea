"""Real receivers for the notifier's tests: an SMTP server (aiosmtpd) and an HTTP server
that checks each webhook's HMAC signature."""

from __future__ import annotations

import email
import email.policy
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from services.notifier.channels.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    messages: list[EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def notice_keys(self) -> list[str]:
        with self.lock:
            return [str(m["X-Loyalty-Notice-Key"]) for m in self.messages]


class _Handler:
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.mailbox.lock:
            self.mailbox.messages.append(message)
        return "250 Message accepted for delivery"


@contextmanager
def smtp_server() -> Iterator[tuple[int, Mailbox]]:
    """A real SMTP server on a free port; yields (port, what it received)."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(_Handler(mailbox), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, mailbox
    finally:
        controller.stop()


@dataclass
class Hook:
    key: str
    body: dict[str, Any]
    signed: bool


@dataclass
class WebhookReceiver:
    """Answers 500 to the first `fail_first` requests (or all, with `fail_always`), then
    204; records every request that carried a valid signature."""

    secret: bytes
    fail_first: int = 0
    fail_always: bool = False
    received: list[Hook] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def notice_keys(self) -> list[str]:
        with self.lock:
            return [h.key for h in self.received]


@contextmanager
def webhook_server(receiver: WebhookReceiver) -> Iterator[str]:
    """A real HTTP server in a thread; yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            signed = verify(
                receiver.secret, self.headers.get(SIGNATURE_HEADER, ""), body, int(time.time())
            )
            with receiver.lock:
                receiver.requests += 1
                failing = receiver.fail_always or receiver.requests <= receiver.fail_first
                if not failing:
                    receiver.received.append(
                        Hook(self.headers.get(IDEMPOTENCY_HEADER, ""), json.loads(body), signed)
                    )
            self.send_response(500 if failing else (204 if signed else 401))
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
