"""Bounds of inbound input, in one place so the models, the JSON Schemas and the ingest agree."""

from typing import Final

MAX_MESSAGE_BYTES: Final = 64 * 1024
"""Largest inbound message, in bytes, before any parsing is attempted."""

MAX_AMOUNT_MINOR: Final = 10**11
"""Largest money amount, in minor units (1 billion in a two-decimal currency)."""

MAX_POINTS: Final = 10**9
"""Largest number of points a single event may ask for."""

MAX_LINES: Final = 500
"""Most lines in one purchase or refund."""

MAX_QUANTITY: Final = 100_000
"""Largest quantity on one line."""

MAX_EVENT_ID_LENGTH: Final = 128
MAX_ID_LENGTH: Final = 64
MAX_REFERENCE_LENGTH: Final = 128
MAX_CODE_LENGTH: Final = 64
MAX_REASON_LENGTH: Final = 500

ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*(/[A-Za-z0-9][A-Za-z0-9._:@-]*)*$"
"""Identifiers (member, event, order, refund, SKU, redemption, reference, hold): ASCII letters,
digits and ``. _ : @ -``, with ``/`` between segments; each segment starts with a letter or
digit. So an id is never empty and holds no space, control character, ``#``, ``?`` or ``%``,
no ``/`` is doubled, leading or trailing, and no segment is ``.`` or ``..``: a client that
puts a member id in a path without percent-encoding it stays on that member's path."""

CODE_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]*$"
"""Lowercase codes chosen by us or by the program file: sources, categories, activities, rewards."""

CURRENCY_PATTERN: Final = r"^[A-Z]{3}$"
"""ISO 4217 alphabetic codes, uppercase only."""

RFC3339_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"  # date
    r"[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"  # time, seconds required
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"  # zone, required
)
"""RFC 3339 ``date-time`` with a mandatory zone; the parser then checks the values themselves."""

MIN_OCCURRED_YEAR: Final = 2000
MAX_OCCURRED_YEAR: Final = 2100
"""Inclusive range of years (in UTC) accepted for ``occurred_at``."""

OCCURRED_AT_PATTERN: Final = "^(20[0-9]{2}|2100)" + RFC3339_PATTERN.removeprefix("^[0-9]{4}")
"""RFC 3339 with the years 2000 to 2100 as written (the model then checks them in UTC)."""
