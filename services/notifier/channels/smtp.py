"""Email over SMTP (aiosmtplib): a text body with an HTML alternative.

One connection serves a batch of sends (the sender closes it after each batch), so the
time between the server accepting a message and the sent-log recording it is one
database commit, not a QUIT and a disconnect."""

from __future__ import annotations

import contextlib
import hashlib
from email.message import EmailMessage

import aiosmtplib

from schemas.text import has_control
from services.notifier.channels import DeliveryError
from services.notifier.contacts import Contact
from services.notifier.notices import Notice
from services.notifier.templates import Rendered


def message_id(key: str) -> str:
    """The same notice always gets the same Message-ID, so a repeat can be recognised."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}@loyalty-notifier>"


class SmtpChannel:
    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        username: str | None = None,
        password: str | None = None,
        start_tls: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password
        self.start_tls = start_tls
        self.timeout = timeout
        self._client: aiosmtplib.SMTP | None = None

    async def _connect(self) -> aiosmtplib.SMTP:
        if self._client is None or not self._client.is_connected:
            client = aiosmtplib.SMTP(
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                start_tls=self.start_tls,
                timeout=self.timeout,
            )
            await client.connect()
            self._client = client
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()

    def unreachable(self, contact: Contact | None) -> str | None:
        if contact is None or not contact.email:
            return "no email address"
        if has_control(contact.email):  # stored before the API refused them
            return "the email address holds a control character"
        return None

    async def send(self, notice: Notice, rendered: Rendered, contact: Contact | None) -> None:
        assert contact is not None
        assert contact.email
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = contact.email
        message["Subject"] = rendered.subject
        message["Message-ID"] = message_id(notice.key)
        message["X-Loyalty-Notice-Key"] = notice.key
        message["X-Loyalty-Notice-Kind"] = str(notice.kind)
        message.set_content(rendered.text)
        message.add_alternative(rendered.html, subtype="html")
        reused = self._client is not None and self._client.is_connected
        try:
            try:
                await (await self._connect()).send_message(message)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                if not reused:
                    raise
                # The server dropped an idle connection before this message: try a fresh one.
                await self._drop()
                await (await self._connect()).send_message(message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self._drop()
            raise DeliveryError(f"smtp: {type(exc).__name__}: {exc}") from exc

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
