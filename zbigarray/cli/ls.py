"""``zbigarray ls DB [PATH]``: the arrays of a database, one line each."""

from __future__ import annotations

import argparse

from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.cli import _at
from zbigarray.cli._inspect import array_stats
from zbigarray.cli._open import connection
from zbigarray.cli._units import fmt_bytes
from zbigarray.cli._walk import resolve, walk

COLUMNS = ("PATH", "SHAPE", "DTYPE", "ORDER", "BLKSIZE", "FORMAT", "SIZE", "STORED")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "ls", help="list the arrays of a database",
        description="List the arrays found under the database root, or under PATH, "
                    "walking the mappings that hold them (names as paths, grp/b): "
                    "shape, dtype, order, block size, block format, logical size, and "
                    "the bytes their block records take (older revisions, kept until "
                    "`zbigarray pack`, not counted).")
    p.add_argument("db", metavar="DB", help="FileStorage path or URI (zeo://host:port, ...)")
    p.add_argument("path", metavar="PATH", nargs="?", default="",
                   help="a group or an array (default: the root)")
    p.add_argument("--at", metavar="TID|TIME", help=_at.HELP)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    at = _at.parse_at(args.at) if args.at else None
    with connection(args.db, at=at) as conn:
        top = resolve(conn.root(), args.path)
        found = ([(args.path.strip("/"), top)] if isinstance(top, ZBigArray)
                 else list(walk(top, args.path.strip("/"))))
        rows = [COLUMNS]
        for path, A in found:
            stats = array_stats(A, conn.db(), conn.before)
            rows.append((path, "x".join(map(str, A.shape)) or "()", str(A.dtype), A.order,
                         fmt_bytes(A.zfile.blksize), stats.format, fmt_bytes(A.nbytes),
                         fmt_bytes(stats.stored)))
    if len(rows) == 1:
        print(f"no arrays under {args.path or 'the root'}")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
