"""Text and HTML bodies of each notice kind, from the Jinja2 templates next to this file.

`<kind>.txt.j2`: first line the subject, then the text body; `<kind>.html.j2`: the HTML."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from schemas.text import printable
from services.notifier.notices import Notice


def _neutral(value: object) -> object:
    # Every {{ value }}: a control character in a stored name or a program's reward name is
    # shown escaped, so it cannot add a line to the subject, the text or a webhook's body.
    return printable(value) if isinstance(value, str) else value


_ENV = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=select_autoescape(["html.j2"]),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    finalize=_neutral,
)


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


def render(notice: Notice, program: str, name: str | None = None) -> Rendered:
    context = {**notice.data, "program": program, "name": name, "member_id": notice.member_id}
    text = _ENV.get_template(f"{notice.kind}.txt.j2").render(context)
    subject, _, body = text.partition("\n")
    html = _ENV.get_template(f"{notice.kind}.html.j2").render({**context, "subject": subject})
    return Rendered(subject.strip(), body.lstrip("\n"), html)
