"""``zbigarray pack DB [--days N]``: drop old revisions and unreachable
objects."""

from __future__ import annotations

import argparse
import time

from zbigarray.cli._errors import CliError
from zbigarray.cli._open import open_database
from zbigarray.cli._units import fmt_bytes


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "pack", help="remove old revisions and unreachable objects",
        description="Pack the database: remove the revisions older than N days that a "
                    "newer one replaced, and the objects no longer reachable from the root "
                    "(removed arrays).  Afterwards --at cannot go further back than the "
                    "pack time.  A FileStorage keeps the previous file as DB.old.")
    p.add_argument("db", metavar="DB", help="FileStorage path or URI (zeo://host:port, ...)")
    p.add_argument("--days", metavar="N", type=float, default=0.0,
                   help="keep the history of the last N days (default: 0, none)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.days < 0:
        raise CliError(f"--days {args.days:g}: must not be negative")
    db = open_database(args.db, write=True)
    try:
        before = db.storage.getSize()
        # The storage's own pack: ZODB.DB.pack would also log the failure
        # with its traceback, and errors here are one line.
        db.storage.pack(time.time() - args.days * 86400, db.references)
        after = db.storage.getSize()
    finally:
        db.close()
    print(f"packed {args.db}: {fmt_bytes(before)} -> {fmt_bytes(after)}")
    return 0
