"""How commands show sizes and transaction ids."""

from __future__ import annotations

import datetime

from persistent.TimeStamp import TimeStamp


def fmt_bytes(n: float) -> str:
    """`n` bytes in binary units, one decimal (``1.5 GiB``, ``512 B``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def tid_hex(tid: bytes) -> str:
    """A transaction id as ``--at`` takes it: 16 hex digits."""
    return tid.hex()


def tid_time(tid: bytes) -> datetime.datetime:
    """When transaction `tid` committed, in local time (with its offset)."""
    ts = TimeStamp(tid)
    return datetime.datetime.fromtimestamp(ts.timeTime(), datetime.timezone.utc).astimezone()
