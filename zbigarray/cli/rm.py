"""``zbigarray rm DB PATH``: remove an array from the database."""

from __future__ import annotations

import argparse

from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.cli._errors import CliError
from zbigarray.cli._open import connection
from zbigarray.cli._units import fmt_bytes
from zbigarray.cli._walk import split_parent


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "rm", help="remove an array",
        description="Remove the array PATH from its group, in one transaction.  Its "
                    "blocks stay in the database file, readable with --at, until "
                    "`zbigarray pack` removes what no longer is reachable.")
    p.add_argument("db", metavar="DB", help="FileStorage path or URI (zeo://host:port, ...)")
    p.add_argument("path", metavar="PATH", help="the array, e.g. grp/b")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with connection(args.db, write=True) as conn:
        parent, key = split_parent(conn.root(), args.path)
        A = parent.get(key)
        if A is None:
            raise CliError(f"{args.path}: no such array")
        if not isinstance(A, ZBigArray):
            raise CliError(f"{args.path}: is not an array (rm removes arrays only)")
        nbytes = A.nbytes
        del parent[key]
        txn = conn.transaction_manager.get()
        txn.note(f"zbigarray rm {args.path.strip('/')}")
        txn.commit()
    print(f"removed {args.path.strip('/')} ({fmt_bytes(nbytes)}); "
          f"`zbigarray pack` frees its space")
    return 0
