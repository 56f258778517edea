"""Prints notices instead of sending them: the embedded demo's channel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas.text import printable
from services.notifier.contacts import Contact
from services.notifier.notices import Notice
from services.notifier.templates import Rendered


class PrintChannel:
    name = "print"

    def __init__(self, echo: Callable[[str], Any]) -> None:
        self.echo = echo

    def unreachable(self, contact: Contact | None) -> str | None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, notice: Notice, rendered: Rendered, contact: Contact | None) -> None:
        line = f"{notice.member_id}: {rendered.subject}  [{notice.kind}; {notice.cause}]"
        self.echo(printable(line))
