"""``zbigarray migrate DB``: a wendelin.core database's arrays rewritten as
zbigarray's classes (see :mod:`zbigarray.storage.wendelin_migrate`)."""

from __future__ import annotations

import argparse
import sys

from zbigarray.cli._progress import Progress


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "migrate", help="rewrite a wendelin.core database's arrays as zbigarray's classes",
        description="Rewrite the arrays of a database written by wendelin.core (its "
                    "ZBigArray, ZBigFile and block objects, and the references to them) "
                    "as zbigarray's own classes, in one transaction committed at the end: "
                    "interrupting leaves the database unchanged, and a second run finds "
                    "nothing to do.  Afterwards the database opens without the "
                    "compatibility layer, and wendelin.core no longer reads its arrays.  "
                    "Stop every process writing to the database first.")
    p.add_argument("db", metavar="DB",
                   help="FileStorage path or URI (zeo://host:port, postgres://...)")
    p.add_argument("--dry-run", action="store_true",
                   help="scan and report what would be rewritten; write nothing")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zbigarray.storage.wendelin_migrate import migrate

    # The storage's object count includes unreachable objects: the bar may
    # end short of full.
    bar: Progress | None = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress("scanning", total, "objects")
        bar.update(done)

    try:
        summary = migrate(args.db, dry_run=args.dry_run, progress=progress)
    except KeyboardInterrupt:
        sys.stderr.write("\nzbigarray migrate: interrupted; the database is unchanged\n")
        return 130
    except (OSError, RuntimeError, ValueError) as e:
        sys.stderr.write(f"zbigarray migrate: error: {e}\n")
        return 1
    finally:
        if bar is not None:
            bar.close()
    print(summary.describe(args.dry_run))
    return 0
