"""Email over SMTP (aiosmtplib): a text body with an HTML alternative."""

from __future__ import annotations

import hashlib
from email.message import EmailMessage

import aiosmtplib

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

    def unreachable(self, contact: Contact | None) -> str | None:
        return None if contact is not None and contact.email else "no email address"

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
        try:
            await aiosmtplib.send(
                message,
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                start_tls=self.start_tls,
                timeout=self.timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"smtp: {type(exc).__name__}: {exc}") from exc
