"""Delivery channels: email over SMTP, signed webhooks, and printing (the embedded demo)."""

from __future__ import annotations

from typing import Protocol

from services.notifier.contacts import Contact
from services.notifier.notices import Notice
from services.notifier.templates import Rendered


class DeliveryError(Exception):
    """The channel did not accept the notice; the sender retries it later."""


class Channel(Protocol):
    name: str

    def unreachable(self, contact: Contact | None) -> str | None:
        """Why this member cannot be reached on this channel (the notice is suppressed)."""
        ...

    async def send(self, notice: Notice, rendered: Rendered, contact: Contact | None) -> None:
        """Deliver, or raise DeliveryError."""
        ...

    async def close(self) -> None:
        """Release connections kept between sends (called after each batch)."""
        ...
