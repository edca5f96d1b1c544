"""``zbigarray info DB PATH``: one array in detail, with its metadata and
the transactions that changed it."""

from __future__ import annotations

import argparse
import json

from zbigarray.cli import _at
from zbigarray.cli._inspect import array_history, array_stats
from zbigarray.cli._open import connection
from zbigarray.cli._units import fmt_bytes, tid_hex, tid_time
from zbigarray.cli._walk import resolve_array


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "info", help="show one array: header, blocks, attrs and revision history",
        description="Show one array in detail: class and oid, shape, dtype, order, block "
                    "size, blocks stored and their format, logical and stored size, its "
                    "attrs, and the newest transactions that changed it (header, attrs "
                    "or data), each with the id `--at` takes.")
    p.add_argument("db", metavar="DB", help="FileStorage path or URI (zeo://host:port, ...)")
    p.add_argument("path", metavar="PATH", help="the array, e.g. grp/b")
    p.add_argument("--at", metavar="TID|TIME", help=_at.HELP)
    p.add_argument("--history", metavar="N", type=int, default=10,
                   help="transactions shown, newest first (default: 10)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    at = _at.parse_at(args.at) if args.at else None
    with connection(args.db, at=at) as conn:
        A = resolve_array(conn.root(), args.path)
        db = conn.db()
        stats = array_stats(A, db, conn.before)
        history = array_history(A, db, max(args.history, 0), conn.before)
        klass = type(A)
        nblocks = -(-A.nbytes // A.zfile.blksize)
        formats = ", ".join(f"{k}: {n}" for k, n in sorted(stats.formats.items()))
        lines = [
            args.path.strip("/"),
            f"  class       {klass.__module__}.{klass.__qualname__}  (oid {tid_hex(A._p_oid)})",
            f"  shape       {A.shape}",
            f"  dtype       {A.dtype}",
            f"  order       {A.order}",
            f"  block size  {fmt_bytes(A.zfile.blksize)} ({A.zfile.blksize} bytes)",
            f"  blocks      {stats.blocks} stored of {nblocks}"
            + (f" ({formats})" if formats else "")
            + ("; the others are holes (read as zeros)" if stats.blocks < nblocks else ""),
            f"  size        {fmt_bytes(A.nbytes)} ({A.nbytes} bytes); "
            f"stored {fmt_bytes(stats.stored)} ({stats.stored} bytes)",
        ]
        attrs = A.attrs.asdict()
        if attrs:
            lines.append("  attrs")
            lines += [f"    {k}: {json.dumps(v)}" for k, v in sorted(attrs.items())]
        else:
            lines.append("  attrs       (none)")
        lines.append(f"  history     newest first, at most {args.history}"
                     + (f", as of --at {args.at}" if at is not None else ""))
        for h in history:
            what = h.get("description") or ""
            if isinstance(what, bytes):
                what = what.decode("utf-8", "replace")
            user = h.get("user_name") or ""
            if isinstance(user, bytes):
                user = user.decode("utf-8", "replace")
            when = tid_time(h["tid"]).isoformat(sep=" ", timespec="seconds")
            by = f" (by {user})" if user else ""
            lines.append(f"    {tid_hex(h['tid'])}  {when}  {what}{by}".rstrip())
        if not history:
            lines.append("    (none kept by this storage)")
    print("\n".join(lines))
    return 0
