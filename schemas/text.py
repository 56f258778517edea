"""The character policy of stored text, and how stored text is neutralised when printed.

Text that is stored (reasons, actors, names, e-mail addresses) may hold any Unicode character
but the control characters (C0 ``U+0000``-``U+001F``, ``DEL`` and C1 ``U+0080``-``U+009F``):
they are refused with 422 on input. Text printed to a terminal, an e-mail or a web page goes
through ``printable`` first, so whatever older records hold cannot forge a line or a header.
"""

from __future__ import annotations

import re
from typing import Final

CONTROL_CLASS: Final = r"\x00-\x1f\x7f-\x9f"
"""The control characters, as a regular-expression class body (Python, Rust and ECMA 262)."""

NO_CONTROL_PATTERN: Final = rf"^[^{CONTROL_CLASS}]*$"
"""Pattern of stored free text: no control character anywhere (tab and line breaks included)."""

_CONTROL: Final = re.compile(rf"[{CONTROL_CLASS}]")
_UNPRINTABLE: Final = re.compile(rf"[{CONTROL_CLASS}\u2028\u2029]")


def has_control(text: str) -> bool:
    """Whether ``text`` holds a character the policy refuses (``NO_CONTROL_PATTERN``)."""
    return _CONTROL.search(text) is not None


def printable(text: str) -> str:
    """``text`` with each control character (and U+2028/U+2029) shown as a ``\\xNN``/``\\uNNNN``
    escape, so it stays on one line and cannot forge output; other text is unchanged."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
