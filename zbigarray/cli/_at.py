"""``--at TID|ISO-TIME``: which past revision of the database a read command
sees."""

from __future__ import annotations

import datetime
import re

from zbigarray.cli._errors import CliError

HELP = ("read the database as it was after transaction TID (16 hex digits, as `info` "
        "shows them) or at a time (ISO 8601, e.g. 2024-05-01T12:00 or "
        "2024-05-01T12:00:00+02:00; without an offset: local time)")

_TID = re.compile(r"(?:0x)?([0-9a-fA-F]{16})")


def parse_at(text: str) -> bytes | datetime.datetime:
    """The transaction id or the (timezone-aware) time `text` names, as
    ``ZODB.DB.open(at=...)`` takes it.

    Raises
    ------
    CliError
        Neither 16 hex digits nor an ISO 8601 date and time.
    """
    m = _TID.fullmatch(text.strip())
    if m:
        return bytes.fromhex(m.group(1))
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"--at {text!r}: neither a transaction id (16 hex digits) nor an "
                       f"ISO 8601 time such as 2024-05-01T12:00") from None
    # A naive time is the user's wall clock, as `date` shows it.
    return when if when.tzinfo is not None else when.astimezone()
